"""First boot per firmware: the real main.py on each unix port against iotsim, and its heap budgets.

For each target (tools/unixboard.py: the newest port from PyPI, and firmware
1.22.2 and 1.24.1 built by tools/oldports.py, each with the umqtt.simple it
freezes; and 1.24.1 built for 32-bit x86, an ESP32's object sizes) and each
method, a factory-fresh board with the library compiled by that release's own
mpy-cross boots and provisions itself: the median wall time of the first boot
over a few runs, and the smallest ``-X heapsize`` (2 KB steps) at which every
one of several fresh boards completes its first boot, and then a provisioned
boot. A port that is not built is listed as such. The budgets are judged on
the 32-bit port, with 10 boards per size: first boot <= 64 KB (keys and CSR),
provisioned boot <= 40 KB.

Then the heap each lib module adds where a real first boot imports it, on the
default port and the 32-bit one (ESP32's object sizes): each import of a
device module is wrapped (builtins.__import__, harness code prefixed to the
boot, nothing of it on a board), gc.mem_alloc() after gc.collect() on both
sides, minus the device modules it imports itself. This is the cost a board
pays: the interpreter's name pools have already grown by then, whereas a
module imported first into an empty interpreter would also pay for pools that
every later module uses. Target: fleetprov adds <= 10 KB on the 32-bit port.

The 1.22 unix port builds mbedTLS with HAVEGE, whose entropy state is part of
the ssl.SSLContext object: 39.7 KB of MicroPython's heap per context (3 KB on
1.24 and 1.29); ESP32 firmware has no HAVEGE, so that port's first boot is
timed and its heap not searched.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

from .boards import HEAP_SEARCH, board_bench, unavailable
from .report import Target, at_most, heap_kb, heap_target, print_targets, table
from ..unixboard import (
    DEFAULT_TARGET,
    OLD_FIRMWARE_TARGETS,
    WORD32_TARGET,
    BOOT_CODE,
    LIB,
    Board,
    TargetUnavailable,
    make_flash,
    smallest_heap,
    use_target,
)

METHODS = ("keys", "csr")
# First boots whose imports are measured: together they import every device
# module (cbor only with the CBOR format, csr and p256 only for the CSR method).
IMPORT_BOOTS = (("keys", "json"), ("csr", "json"), ("keys", "cbor"))
IMPORT_PORTS = (DEFAULT_TARGET, WORD32_TARGET)
# Budgets on the 32-bit port (ESP32's object sizes), KB, judged with BUDGET_TRIALS boards per size.
FIRST_BOOT_KB = 64
PROVISIONED_KB = 40
BUDGET_TRIALS = 10
# Factory-fresh boards share nothing: this many boot at a time (copies of one
# provisioned board boot one by one).
FRESH_WORKERS = 2
# Ports whose smallest heap would say nothing about a board's: their first boot
# is timed, their heap not searched (the note under the table says why).
NO_HEAP_SEARCH = {"1.22.2": "not searched (HAVEGE)"}
# Heap an import may add where a first boot imports it, on the 32-bit port.
IMPORT_TARGETS = {"fleetprov": 10 * 1024}
# Prefixed to the boot code: prints "fleetprov IMPORT <depth> <module> <bytes>"
# when the import of a device module that was not loaded yet returns.
IMPORT_PROBE = """import builtins, gc, sys
_real_import = builtins.__import__
_lib = {lib!r}
_depth = [0]
def _measured_import(name, *args):
    if name in sys.modules or name not in _lib:
        return _real_import(name, *args)
    gc.collect()
    before = gc.mem_alloc()
    _depth[0] += 1
    try:
        return _real_import(name, *args)
    finally:
        _depth[0] -= 1
        gc.collect()
        print("fleetprov IMPORT", _depth[0], name, gc.mem_alloc() - before)
builtins.__import__ = _measured_import
"""


def _first_boots(sim_state: Path, work: Path, method: str, runs: int) -> tuple[list[float], Path]:
    """Wall times (ms) of ``runs`` first boots, and a pristine flash for the heap search."""
    pristine = make_flash(
        work / f"pristine-{method}", sim_state, {"method": method, "format": "json", **HEAP_SEARCH}, mpy=True
    )
    times = []
    for i in range(runs):
        flash = work / f"flash-{method}-{i}"
        shutil.copytree(pristine, flash)
        result = Board(flash).boot(timeout=120)
        if result.returncode != 0 or "done" not in result.steps():
            raise RuntimeError(f"{method} run {i}: the first boot failed:\n{result.text}")
        times.append(result.elapsed * 1000)
        shutil.rmtree(flash, ignore_errors=True)
    return times, pristine


def first_boot_imports(sim_state: Path, work: Path, method: str, fmt: str) -> list[tuple[str, int]]:
    """(module, bytes it adds itself) for each device-module import of one
    first boot, in order; a module loaded again after being let go appears again."""
    flash = make_flash(work / f"imports-{method}-{fmt}", sim_state, {"method": method, "format": fmt}, mpy=True)
    lib = tuple(sorted(src.stem for src in LIB.glob("*.py")))
    result = Board(flash).boot(code=IMPORT_PROBE.format(lib=lib) + BOOT_CODE, timeout=120)
    if result.returncode != 0 or "done" not in result.steps():
        raise RuntimeError(f"{method}/{fmt}: the measured first boot failed:\n{result.text}")
    return own_costs(result.text.splitlines())


def own_costs(lines: list[str]) -> list[tuple[str, int]]:
    """(module, bytes) per "fleetprov IMPORT <depth> <module> <bytes>" line, in
    order, each minus the device imports that finished inside it (a line
    comes when its import returns, so an import's nested ones come before it)."""
    costs: list[tuple[str, int]] = []
    inside: list[int] = [0]  # per depth: bytes of finished imports not yet claimed by the one around them
    for line in lines:
        if not line.startswith("fleetprov IMPORT "):
            continue
        depth, module, grew = line.split()[2:5]
        level = int(depth)
        while len(inside) <= level + 1:
            inside.append(0)
        costs.append((module, int(grew) - inside[level + 1]))
        inside[level + 1] = 0
        inside[level] += int(grew)
    return costs


def import_table(sim_state: Path, work: Path) -> tuple[list[list[object]], list[Target]]:
    """One row per device module: its own import cost per port, first import (and re-imports);
    and the import targets judged on the 32-bit port."""
    per_port: dict[str, dict[str, list[int]]] = {}
    for target in IMPORT_PORTS:
        costs: dict[str, list[int]] = {}
        try:
            target.check()
        except TargetUnavailable:
            per_port[target.id] = costs
            continue
        with use_target(target):
            for method, fmt in IMPORT_BOOTS:
                seen: set[str] = set()
                for module, own in first_boot_imports(sim_state, work / f"{target.id}-{method}-{fmt}", method, fmt):
                    if module not in costs:
                        costs[module] = [own]
                    elif module in seen and len(costs[module]) == 1:
                        costs[module].append(own)  # let go and loaded again in the same boot
                    seen.add(module)
        per_port[target.id] = costs
    modules = sorted({m for costs in per_port.values() for m in costs})
    rows: list[list[object]] = []
    for module in modules:
        row: list[object] = [module]
        for target in IMPORT_PORTS:
            got = per_port[target.id].get(module)
            row.append(" / ".join(str(b) for b in got) if got else "not measured" if not per_port[target.id] else "-")
        rows.append(row)
    judged = per_port[WORD32_TARGET.id]
    targets = [
        at_most(f"heap {module} adds where a first boot imports it, 32-bit port", judged[module][0], limit, "bytes")
        if judged.get(module) else Target(f"heap {module} adds, 32-bit port", "not measured", f"<= {limit} bytes",
                                          False)
        for module, limit in IMPORT_TARGETS.items()
    ]
    return rows, targets


def _provisioned(pristine: Path, work: Path) -> Path:
    """A copy of ``pristine`` after its first boot: a provisioned board to search the heap of."""
    flash = work / (pristine.name + "-provisioned")
    shutil.copytree(pristine, flash)
    result = Board(flash).boot(timeout=120)
    if result.returncode != 0 or "done" not in result.steps():
        raise RuntimeError(f"the first boot of {flash} failed:\n{result.text}")
    return flash


def run(args: argparse.Namespace) -> list[Target]:
    runs = 2 if args.quick else 5
    rows: list[list[object]] = []
    targets: list[Target] = []
    with board_bench("ports") as (work, sim):
        for target in (DEFAULT_TARGET, *OLD_FIRMWARE_TARGETS, WORD32_TARGET):
            budgets = target is WORD32_TARGET
            why = unavailable(target)
            if why:
                rows.append([target.id, "-", "-", "-", "-", "-", f"not measured: {why}"])
                if budgets:
                    targets += [Target("heap budgets, 32-bit port", "not measured", "the port built", False)]
                continue
            trials = BUDGET_TRIALS if budgets else 3
            with use_target(target):
                for method in METHODS:
                    where = work / f"{target.id}-{method}"
                    where.mkdir()
                    times, pristine = _first_boots(sim.state, where, method, runs)
                    median = f"{statistics.median(times):.0f}"
                    if target.port in NO_HEAP_SEARCH:
                        why_not = NO_HEAP_SEARCH[target.port]
                        provisioned_why_not = why_not if method == METHODS[0] else ""
                        rows.append([target.id, method, runs, median, why_not, provisioned_why_not, "-"])
                        continue
                    first_kb = smallest_heap(pristine, where, trials=trials, workers=FRESH_WORKERS)
                    heaps = [("first boot heap, " + method, first_kb, FIRST_BOOT_KB)]
                    provisioned = ""
                    if method == METHODS[0]:  # a provisioned boot is the same whichever method provisioned
                        again_kb = smallest_heap(_provisioned(pristine, where), where, trials=trials)
                        heaps.append(("provisioned boot heap", again_kb, PROVISIONED_KB))
                        provisioned = heap_kb(again_kb)
                    rows.append([target.id, method, runs, median, heap_kb(first_kb), provisioned, trials])
                    if budgets:
                        targets += [heap_target(name + ", 32-bit port", kb, limit) for name, kb, limit in heaps]
        imports, import_targets = import_table(sim.state, work)

    print(
        "### First boot per firmware (unix ports, each with its own mpy-cross and frozen umqtt.simple, "
        "JSON, iotsim on loopback)\n"
    )
    print(table(["target", "method", "runs", "first boot median ms", "smallest heap, first boot",
                 "smallest heap, provisioned boot", "fresh boards per size"], rows))
    print(
        "\n(smallest heap: -X heapsize, 2 KB steps, every board passes; the 1.22 unix port's ssl.SSLContext holds "
        "mbedTLS's HAVEGE entropy state, 39.7 KB of MicroPython's heap that ESP32 firmware does not have, so "
        "its smallest heap would say nothing about a board's; 1.24.1-32bit is 1.24.1 built for 32-bit x86, an "
        "ESP32's pointer and object sizes, with umqtt.simple frozen in as ESP32 firmware has it; the other ports "
        "load it compiled from the flash, its code in the heap)"
    )
    print("\n### Heap each device module adds where a first boot imports it (.mpy, iotsim; keys, csr, keys+CBOR)\n")
    print(table(["module", f"{DEFAULT_TARGET.id} bytes", f"{WORD32_TARGET.id} bytes"], imports))
    print(
        "\n(gc.mem_alloc() after gc.collect() around the import, minus the device modules it imports "
        "itself; \"a / b\": the first import, then the import after the first boot let the module go "
        "and needed it again, which finds its names already interned; 1.24.1-32bit has an ESP32's "
        "object sizes)"
    )
    return print_targets(targets + import_targets)


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
