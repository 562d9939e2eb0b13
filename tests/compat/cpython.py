"""Runs CPython's own test modules (Debian's libpython3.11-testsuite), each in a `python3 -m test`
process of its own, two at a time, and prints one line `BKG-COMPAT {"module": passed, ...}`.

The same file runs outside, as an unprivileged user, and inside a sandbox through `bkg exe`;
tests/compat/main.rs compares the two. Usage: cpython.py MODULE...
"""
import concurrent.futures
import json
import subprocess
import sys


def run(module):
    done = subprocess.run([sys.executable, "-m", "test", "--timeout", "300", module],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        # The end of a failing module's output says which of its tests failed and why.
        sys.stderr.write("---- %s (exit %d)\n%s\n" % (module, done.returncode,
                                                      done.stdout.decode(errors="replace")[-3000:]))
    return module, done.returncode == 0


with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = dict(pool.map(run, sys.argv[1:]))
print("BKG-COMPAT " + json.dumps(results, sort_keys=True))
