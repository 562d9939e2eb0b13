# How deep the script may recurse before RecursionError, at its top level and in an atexit
# handler: an interpreter started ahead runs the script from a call into C (engine/prestart.py),
# which Python 3.11 counts towards the limit, and must give the script bare python3's depth.
import atexit
import sys


def deepest(depth=1):
    try:
        return deepest(depth + 1)
    except RecursionError:
        return depth


print("limit", sys.getrecursionlimit(), "script", deepest())
sys.setrecursionlimit(2000)
print("limit", sys.getrecursionlimit(), "script", deepest())
atexit.register(lambda: print("atexit", deepest()))
