# An uncaught exception: the traceback must name this file and these lines, in every mode.
import sys


def inner(value):
    return 10 // value


def outer():
    return inner(0)


print("before", file=sys.stderr)
outer()
