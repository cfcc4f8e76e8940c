# What MicroPython, CPython and CircuitPython differ in, in one place: the
# millisecond clock, const(), SHA-256, and forgetting a module. Every device
# module takes these from here; this module imports nothing of ours.

import gc
import hashlib
import sys

# MicroPython's millisecond clock; on CPython and CircuitPython a fallback with
# the same contract. monotonic_ns, not monotonic: CircuitPython's float
# monotonic() loses millisecond resolution after about an hour of uptime.
try:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # ints do not wrap here, so plain arithmetic will do
    from time import monotonic_ns, sleep

    def ticks_ms():
        return monotonic_ns() // 1000000

    def ticks_add(t, delta):
        return t + delta

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        sleep(ms / 1000)


# The compiler folds `NAME = const(value)` by the name `const` alone, wherever
# it was imported from; elsewhere it is the identity.
try:
    from micropython import const
except ImportError:

    def const(x):
        return x


def sha256(data):
    """hashlib.sha256(data); CircuitPython's hashlib has only new(name, data)."""
    make = getattr(hashlib, "sha256", None)
    if make is not None:
        return make(data)
    return getattr(hashlib, "new")("sha256", data)  # not in MicroPython's hashlib


def release(*names):
    """Forget modules the device no longer needs, so their code leaves the heap.

    MicroPython keeps an imported module's code in RAM (frozen modules stay in
    flash, and forgetting them costs nothing); CPython keeps them."""
    if sys.implementation.name == "micropython":
        for n in names:
            sys.modules.pop(n, None)
        gc.collect()
