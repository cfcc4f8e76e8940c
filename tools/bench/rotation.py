"""Certificate rotation on the device: its time and its heap, beside the first boot's.

On the 32-bit unix port (an ESP32's object sizes, umqtt.simple frozen in) and
the default one, against iotsim with its rotation template, hook and retire
rule: a board provisions itself (keys), then boots with a certificate that
expires within ``rotate_days`` and rotates it (a P-256 key and CSR made on the
device, CreateCertificateFromCsr, RegisterThing with the rotation template,
the new identity connected and committed, the old certificate retired).

Time: the progress clock from ``connect-thing`` (connected with the old
identity) to ``retired`` (the old certificate retired over the new
connection), median of a few boards; the first boot: ``config`` to ``done``.
Heap: the smallest ``-X heapsize`` (2 KB steps) at which every one of several
boards completes it (tools/unixboard.smallest_heap); a rotation trial is a
board provisioned in a roomy heap, then rotating in the heap under test.
Target: a rotation fits where a provisioned board runs its application,
<= 64 KB on the 32-bit port with 10 boards per size.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ..unixboard import (
    DEFAULT_TARGET,
    WORD32_TARGET,
    Board,
    BootResult,
    make_flash,
    smallest_heap,
    update_config,
    use_target,
)
from .boards import HEAP_SEARCH, board_bench, unavailable
from .report import Target, heap_kb, heap_target, print_targets, table

ROTATION_KB = 64
BUDGET_TRIALS = 10
FRESH_WORKERS = 2
ROTATION_WORKERS = 5
# Rotation is due whatever the certificate's validity: it expires "within" this many days.
DUE = {"rotate_days": 100000}
NOT_DUE = {"rotate_days": 0}


def step_ms(result: BootResult, step: str) -> int | None:
    """The progress clock's reading at ``step`` (its first line), or None."""
    for line in result.lines:
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "fleetprov" and parts[2] == "ms" and parts[3] == step:
            return int(parts[1])
    return None


def provision(flash: Path) -> BootResult:
    """The first boot of a factory-fresh ``flash``, in the port's default heap."""
    update_config(flash, NOT_DUE)
    result = Board(flash).boot(timeout=60)
    if result.returncode != 0 or "done" not in result.steps():
        raise RuntimeError(f"the first boot of {flash} failed:\n{result.text}")
    return result


def rotate(flash: Path, kb: int | None = None) -> BootResult:
    """A provisioned ``flash`` boots with its rotation due (in a ``kb`` KB heap)."""
    update_config(flash, DUE)
    return Board(flash, heapsize=kb * 1024 if kb else None).boot(timeout=60)


def rotated(result: BootResult) -> bool:
    steps = result.steps()
    return result.returncode == 0 and "rotated" in steps and "retired" in steps and "done" in steps


def rotation_trial(flash: Path, kb: int) -> bool:
    """One trial of the heap search: provision ``flash``, then rotate in ``kb`` KB."""
    provision(flash)
    return rotated(rotate(flash, kb))


def run(args: argparse.Namespace) -> list[Target]:
    runs = 2 if args.quick else 5
    rows: list[list[object]] = []
    targets: list[Target] = []
    with board_bench("rotation") as (work, sim):
        for target in (WORD32_TARGET, DEFAULT_TARGET):
            budget = target is WORD32_TARGET
            why = unavailable(target)
            if why:
                rows.append([target.id, "-", "-", "-", "-", f"not measured: {why}"])
                if budget:
                    targets.append(Target("rotation heap, 32-bit port", "not measured", "the port built", False))
                continue
            trials = BUDGET_TRIALS if budget else 3
            with use_target(target):
                pristine = make_flash(work / f"{target.id}-pristine", sim.state, {**NOT_DUE, **HEAP_SEARCH},
                                      mpy=True)
                first_ms: list[int] = []
                rotation_ms: list[int] = []
                for n in range(runs):
                    flash = work / f"{target.id}-run{n}"
                    make_flash(flash, sim.state, NOT_DUE, mpy=True)
                    first = provision(flash)
                    first_ms.append((step_ms(first, "done") or 0) - (step_ms(first, "config") or 0))
                    r = rotate(flash)
                    start, end = step_ms(r, "connect-thing"), step_ms(r, "retired")
                    if not rotated(r) or start is None or end is None:
                        raise RuntimeError(f"the rotation of {flash} failed:\n{r.text}")
                    rotation_ms.append(end - start)
                first_kb = smallest_heap(pristine, work, trials=trials, workers=FRESH_WORKERS)
                # each trial a board of its own, mostly waiting out the connect gap
                rotation_kb = smallest_heap(pristine, work, trials=trials, trial=rotation_trial,
                                            workers=ROTATION_WORKERS)
            rows.append([target.id, runs, f"{statistics.median(first_ms):.0f}",
                         f"{statistics.median(rotation_ms):.0f}", heap_kb(first_kb), heap_kb(rotation_kb), trials])
            if budget:
                targets.append(heap_target("rotation heap, 32-bit port", rotation_kb, ROTATION_KB))

    print("### Rotation beside the first boot (unix ports, compiled library, iotsim on loopback)\n")
    print(table(["target", "runs", "first boot median ms", "rotation median ms", "smallest heap, first boot",
                 "smallest heap, rotation", "boards per size"], rows))
    print(
        "\n(first boot: config to done, keys; rotation: connect-thing to retired, a P-256 key and CSR made on "
        "the device; smallest heap: -X heapsize, 2 KB steps, every board passes; a rotation trial is a board "
        "provisioned in the port's default heap, then rotating in the heap under test)"
    )
    return print_targets(targets)


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
