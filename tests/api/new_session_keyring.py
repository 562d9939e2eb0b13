"""Runs a command in a new anonymous kernel session keyring (keyctl JOIN_SESSION_KEYRING), as a
login session would have: containers and CI runners often hand processes a session keyring they
may not use. Usage: python3 new_session_keyring.py COMMAND [ARGS...]"""

import ctypes
import os
import sys

KEYCTL = 250  # x86_64 syscall number
JOIN_SESSION_KEYRING = 1

libc = ctypes.CDLL(None, use_errno=True)
if libc.syscall(KEYCTL, JOIN_SESSION_KEYRING, None) < 0:
    sys.exit("keyctl(JOIN_SESSION_KEYRING): " + os.strerror(ctypes.get_errno()))
os.execvp(sys.argv[1], sys.argv[1:])
