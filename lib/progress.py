# The first boot's progress lines: one per step, ``fleetprov <ms> ms  <step>
# <detail>``, with the milliseconds since start, and the heap in use sampled
# at each step (MicroPython). Never pass a secret in a detail.

import gc

from runtime import ticks_diff, ticks_ms


class Progress:
    """Prints one line per step: ``fleetprov <ms> ms  <step>  <detail>``.

    printer: callable(str), default print. hook: callable(step) or None,
    called after each step and at each credential write boundary."""

    def __init__(self, printer=print, hook=None):
        self.t0 = ticks_ms()
        self.printer = printer
        self.hook = hook
        self.heap_peak = 0  # most heap in use seen at a step, before collecting

    def _heap(self):
        # MicroPython only: the heap in use, then a collection, so each step
        # starts from the live data alone (CPython's collector would walk
        # every object of the process, for nothing).
        alloc = getattr(gc, "mem_alloc", None)
        if alloc is not None:
            used = alloc()
            if used > self.heap_peak:
                self.heap_peak = used
            gc.collect()

    def elapsed(self):
        """Milliseconds since start."""
        return ticks_diff(ticks_ms(), self.t0)

    def step(self, name, detail=""):
        """Report step ``name`` (never pass a secret in ``detail``)."""
        self._heap()
        line = "fleetprov {:>6} ms  {}".format(self.elapsed(), name)
        if detail:
            line = line + "  " + detail
        self.printer(line)
        self.mark(name)

    def mark(self, name):
        """A boundary without a line (credential file writes)."""
        if self.hook is not None:
            self.hook(name)
