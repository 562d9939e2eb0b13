# What a Python program can learn about how it was started (docs/testing.md, conformance).
# Printed as one JSON object; tests/conformance/main.rs compares it across bare, cold and warm
# runs after replacing the script's own directory with <dir>.
import atexit, json, os, signal, sys

here = os.path.dirname(os.path.abspath(__file__))


def portable(value):
    if isinstance(value, str):
        return value.replace(here, "<dir>")
    if isinstance(value, (list, tuple)):
        return [portable(item) for item in value]
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    return value


facts = {
    "name": __name__,
    "file": __file__,
    "argv": sys.argv,
    "orig_argv": sys.orig_argv,
    "executable": sys.executable,
    "path": sys.path,
    "flags": repr(sys.flags),
    "modules": sorted(sys.modules),
    "builtins_imported": sorted(name for name in sys.builtin_module_names if name in sys.modules),
    "globals": sorted(globals()),
    "spec": repr(__spec__),
    "cached": __cached__ if "__cached__" in globals() else None,
    "cwd": os.getcwd(),
    "environ": dict(os.environ),
    "stdin": sys.stdin.read(),
    "stdio": [(stream.encoding, stream.errors, stream.line_buffering) for stream in (sys.stdin, sys.stdout, sys.stderr)],
    "isatty": [os.isatty(fd) for fd in (0, 1, 2)],
    "umask": os.umask(0o022),
    "blocked_signals": sorted(int(sig) for sig in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    "ignored_signals": sorted(int(sig) for sig in signal.valid_signals() if sig not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(sig) == signal.SIG_IGN),
    "handled_signals": sorted(int(sig) for sig in signal.valid_signals() if sig not in (signal.SIGKILL, signal.SIGSTOP) and callable(signal.getsignal(sig))),
    "open_fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "scheduling": (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)),
}
print(json.dumps(portable(facts), sort_keys=True))
sys.stdout.flush()


def goodbye():
    print("atexit ran")


atexit.register(goodbye)
received = []
signal.signal(signal.SIGUSR1, lambda number, frame: received.append(number))
os.kill(os.getpid(), signal.SIGUSR1)
print("handler saw", received)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
