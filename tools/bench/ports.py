"""First boot per firmware: the real main.py on each unix port against iotsim.

For each target (tools/unixboard.py: the newest port from PyPI, and firmware
1.22.2 and 1.24.1 built by tools/oldports.py, each with the umqtt.simple it
freezes; and 1.24.1 built for 32-bit x86, an ESP32's object sizes) and each method, a factory-fresh board with the library compiled by
that release's own mpy-cross boots and provisions itself: the median wall
time of the first boot over a few runs, and the smallest ``-X heapsize`` at
which a first boot completes (4 KB steps). Also the compiled library's size
per mpy-cross. A port that is not built is listed as such.

Then the heap each lib module adds where a real first boot imports it, on the
default port and the 32-bit one (ESP32's object sizes): each import of a
device module is wrapped (builtins.__import__, harness code prefixed to the
boot, nothing of it on a board), gc.mem_alloc() after gc.collect() on both
sides, minus the device modules it imports itself. This is the cost a board
pays: the interpreter's name pools have already grown by then, whereas a
module imported first into an empty interpreter (section core) also pays for
pools that every later module uses.

The 1.22 unix port builds mbedTLS with HAVEGE, whose entropy state is part of
the ssl.SSLContext object: 39.7 KB of MicroPython's heap per context (3 KB on
1.24 and 1.29), so it counts in that port's smallest heap; ESP32 firmware has
no HAVEGE.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
from pathlib import Path

from .core import table, verdict
from ..unixboard import (
    DEFAULT_TARGET,
    OLD_FIRMWARE_TARGETS,
    WORD32_TARGET,
    BOOT_CODE,
    LIB,
    Board,
    Target,
    TargetUnavailable,
    compile_lib,
    make_flash,
    smallest_heap,
    use_target,
)

METHODS = ("keys", "csr")
# First boots whose imports are measured: together they import every device
# module (cbor only with the CBOR format, csr and p256 only for the CSR method).
IMPORT_BOOTS = (("keys", "json"), ("csr", "json"), ("keys", "cbor"))
IMPORT_PORTS = (DEFAULT_TARGET, WORD32_TARGET)
# Heap an import may add where a first boot imports it (issue 11).
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
        work / f"pristine-{method}", sim_state, {"method": method, "format": "json"}, mpy=True
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


def import_table(sim_state: Path, work: Path) -> list[list[object]]:
    """One row per device module: its own import cost per port, first import (and re-imports)."""
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
        verdicts = []
        target_bytes = IMPORT_TARGETS.get(module)
        for target in IMPORT_PORTS:
            got = per_port[target.id].get(module)
            if not got:
                row.append("not measured" if not per_port[target.id] else "-")
                continue
            row.append(" / ".join(str(b) for b in got))
            if target_bytes:
                verdicts.append(f"{target.id}: {verdict(got[0], target_bytes)}")
        row += [target_bytes or "", ", ".join(verdicts)]
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> None:
    from ..iotsim.broker import free_port
    from ..iotsim.stack import IotSim

    runs = 2 if args.quick else 5
    targets: tuple[Target, ...] = (DEFAULT_TARGET, *OLD_FIRMWARE_TARGETS, WORD32_TARGET)
    boot_rows: list[list[object]] = []
    size_rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="fleetprov-bench-ports-") as tmp:
        work = Path(tmp)
        sim = IotSim(work / "iotsim", free_port()).start()
        try:
            for target in targets:
                try:
                    target.check()
                except TargetUnavailable as exc:
                    boot_rows.append([target.id, "-", "-", "-", f"not measured: {exc}"])
                    continue
                with use_target(target):
                    out = work / f"mpy-{target.id}"
                    sizes = compile_lib(out)
                    digest = hashlib.sha256(
                        b"".join((out / n).read_bytes() for n in sorted(sizes))
                    ).hexdigest()
                    size_rows.append([target.port, sizes["fleetprov.mpy"], sum(sizes.values()), digest[:12]])
                    for method in METHODS:
                        where = work / f"{target.id}-{method}"
                        where.mkdir()
                        times, pristine = _first_boots(sim.state, where, method, runs)
                        heap_kb = smallest_heap(pristine, where, trials=3)
                        boot_rows.append(
                            [
                                target.id,
                                method,
                                runs,
                                f"{statistics.median(times):.0f}",
                                f"{heap_kb} KB" if heap_kb else "over 256 KB",
                            ]
                        )
            imports = import_table(sim.state, work)
        finally:
            sim.stop()

    print(
        "### First boot per firmware (unix ports, each with its own mpy-cross and frozen umqtt.simple, "
        "JSON, iotsim on loopback)\n"
    )
    print(
        table(["target", "method", "runs", "first boot median ms", "smallest heap (-X heapsize, 3/3 fresh boards)"], boot_rows)
    )
    print(
        "\n(the 1.22 unix port's ssl.SSLContext holds mbedTLS's HAVEGE entropy state, 39.7 KB of "
        "MicroPython's heap that ESP32 firmware does not have: compare heaps within a port, not across; 1.24.1-32bit is "
        "1.24.1 built for 32-bit x86, an ESP32's pointer and object sizes, with umqtt.simple frozen in "
        "as ESP32 firmware has it; the other ports load it compiled from the flash, its code in the heap)"
    )
    print("\n### Compiled library per mpy-cross\n")
    print(
        table(
            ["mpy-cross of port", "fleetprov.mpy bytes", "lib/*.mpy total bytes", "sha256 of all .mpy"],
            size_rows,
        )
    )
    print("\n### Heap each device module adds where a first boot imports it (.mpy, iotsim; keys, csr, keys+CBOR)\n")
    print(
        table(
            ["module", f"{DEFAULT_TARGET.id} bytes", f"{WORD32_TARGET.id} bytes", "target", ""],
            imports,
        )
    )
    print(
        "\n(gc.mem_alloc() after gc.collect() around the import, minus the device modules it imports "
        "itself; \"a / b\": the first import, then the import after the first boot let the module go "
        "and needed it again, which finds its names already interned; 1.24.1-32bit has an ESP32's "
        "object sizes)"
    )


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
