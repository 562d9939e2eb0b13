# A program that ends by a signal: the exit status says which, in every mode.
import os, signal, sys

print("about to die")
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGTERM)
