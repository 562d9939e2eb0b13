# Writes to stdout and stderr in turn, as a program's progress and its warnings do, then fails.
# Run with both on one pipe (`2>&1`), what it wrote must come in the order it wrote it.
import os
import sys

for i in range(200):
    print("out", i)
    print("err", i, file=sys.stderr)
sys.stdout.write("no newline, then ")
sys.stderr.write("stderr's line\n")
print("one file:", os.path.samestat(os.fstat(1), os.fstat(2)))
raise SystemExit("failed at the end")
