# What a fork could get wrong where bare python3 cannot (found by a new-user trial of the zygote):
# the main thread's id as glibc caches it (a thread signalling it) and its CPU clock, and whether
# stdio can seek (Python notes that at its start, on the descriptors it had then).
import io, signal, sys, threading, time

received = []
signal.signal(signal.SIGUSR1, lambda number, frame: received.append(number))
other = threading.Thread(target=signal.pthread_kill, args=(threading.main_thread().ident, signal.SIGUSR1))
other.start()
other.join()
print("pthread_kill", received)
print("thread CPU clock", time.clock_gettime(time.pthread_getcpuclockid(threading.get_ident())) >= 0)
print("seekable", [stream.seekable() for stream in (sys.stdin, sys.stdout, sys.stderr)])
try:
    sys.stdin.buffer.seek(0)
except io.UnsupportedOperation as error:
    print("stdin cannot seek:", error)
print("stdin", len(sys.stdin.buffer.read()), "bytes")
