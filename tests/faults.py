"""Functions that misbehave for real, run by the isolation tests in child processes."""

import ctypes
import os
import signal
import time


def segfault():
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def abort():
    os.kill(os.getpid(), signal.SIGABRT)


def hang(seconds: float = 3600):
    time.sleep(seconds)


def allocate(mib: int):
    block = bytearray(mib * 2**20)
    for i in range(0, len(block), 4096):  # touch every page so it is resident
        block[i] = 1
    time.sleep(30)
    return len(block)


def fail(message: str):
    raise ValueError(message)


def shout(message: str) -> str:
    """Writes to both of the child's output streams, as a chatty compiler would."""
    import sys
    print(f"stdout: {message}", flush=True)
    print(f"stderr: {message}", file=sys.stderr, flush=True)
    return message


def echo(value):
    return value


def exit_silently(code: int):
    os._exit(code)
