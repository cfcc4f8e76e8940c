"""First boot per firmware: the real main.py on each unix port against iotsim.

For each target (tools/unixboard.py: the newest port from PyPI, and firmware
1.22.2 and 1.24.1 built by tools/oldports.py, each with the umqtt.simple it
freezes; and 1.24.1 built for 32-bit x86, an ESP32's object sizes) and each method, a factory-fresh board with the library compiled by
that release's own mpy-cross boots and provisions itself: the median wall
time of the first boot over a few runs, and the smallest ``-X heapsize`` at
which a first boot completes (4 KB steps). Also the compiled library's size
per mpy-cross. A port that is not built is listed as such.

The unix ports of 1.22 and 1.24 take mbedTLS's buffers from MicroPython's heap
(m_tracked_calloc in their mbedTLS configuration), so those count in their
smallest heap; ESP32 firmware takes them from the ESP-IDF heap.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
from pathlib import Path

from tools.bench.core import table
from tools.unixboard import (
    DEFAULT_TARGET,
    OLD_FIRMWARE_TARGETS,
    WORD32_TARGET,
    Board,
    Target,
    TargetUnavailable,
    compile_lib,
    make_flash,
    smallest_heap,
    use_target,
)

METHODS = ("keys", "csr")


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


def run(args: argparse.Namespace) -> None:
    from tools.iotsim.broker import free_port
    from tools.iotsim.stack import IotSim

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
        "\n(the 1.22 and 1.24 unix ports allocate mbedTLS's buffers from MicroPython's heap, ESP32 "
        "firmware from the ESP-IDF heap: compare heaps within a port, not across; 1.24.1-32bit is "
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


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
