# The standard streams opened again by name, as shell scripts (`echo x > /dev/stderr`), loggers
# and tools given a path for their output do.
import subprocess

with open("/dev/stdout", "w") as out:
    out.write("to /dev/stdout\n")
with open("/dev/stderr", "w") as err:
    err.write("to /dev/stderr\n")
with open("/proc/self/fd/1", "w") as out:
    out.write("to /proc/self/fd/1\n")
print("stdin:", open("/dev/stdin").read().splitlines())
subprocess.run(["sh", "-c", "echo from sh > /dev/stderr; echo sh said $?"])
