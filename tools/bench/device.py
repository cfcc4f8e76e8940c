"""End-to-end time of one device: the real main.py on the MicroPython unix port against iotsim.

Each run is a factory-fresh board (a scratch flash folder with the compiled
library, as `make deploy` puts it) that boots, provisions itself, commits its
credentials and reconnects as its thing; then it boots again, provisioned.
Reported per method: the first boot and the provisioned boot (median and
p90 of wall time, process start to exit), and the median time of each step
from the device's own progress lines.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from tools.bench.core import table
from tools.unixboard import Board, make_flash


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _step_times(lines: list[str]) -> dict[str, int]:
    """{step: elapsed ms at that line} from lines like ``fleetprov 123 ms  connect-claim ...``."""
    out: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "fleetprov" and parts[2] == "ms" and parts[1].isdigit():
            out.setdefault(parts[3], int(parts[1]))
    return out


def run(args: argparse.Namespace) -> None:
    from tools.iotsim.broker import free_port
    from tools.iotsim.stack import IotSim

    runs = 3 if args.quick else 10
    with tempfile.TemporaryDirectory(prefix="fleetprov-bench-device-") as tmp:
        work = Path(tmp)
        sim = IotSim(work / "iotsim", free_port()).start()
        try:
            summary = []
            steps_by_method: dict[str, dict[str, list[int]]] = {}
            for method in ("keys", "csr"):
                first: list[float] = []
                again: list[float] = []
                steps: dict[str, list[int]] = {}
                for i in range(runs):
                    flash = work / f"flash-{method}-{i}"
                    make_flash(flash, sim.state, {"method": method, "format": "json"}, mpy=True)
                    board = Board(flash)
                    result = board.boot(timeout=120)
                    if result.returncode != 0 or "done" not in result.steps():
                        raise RuntimeError(f"{method} run {i}: the first boot failed:\n{result.text}")
                    first.append(result.elapsed * 1000)
                    for name, ms in _step_times(result.lines).items():
                        steps.setdefault(name, []).append(ms)
                    second = board.boot(timeout=60)
                    if second.returncode != 0:
                        raise RuntimeError(f"{method} run {i}: the provisioned boot failed:\n{second.text}")
                    again.append(second.elapsed * 1000)
                    shutil.rmtree(flash, ignore_errors=True)
                summary.append([
                    method,
                    runs,
                    f"{statistics.median(first):.0f}",
                    f"{_percentile(first, 0.9):.0f}",
                    f"{statistics.median(again):.0f}",
                    f"{_percentile(again, 0.9):.0f}",
                ])
                steps_by_method[method] = steps
        finally:
            sim.stop()

    print("### One device end to end (unix port, compiled library, JSON, iotsim on loopback)\n")
    print(table(["method", "runs", "first boot median ms", "p90", "provisioned boot median ms", "p90"], summary))
    print("\n### Where the first boot spends its time (median ms since power-on at each progress line)\n")
    names: list[str] = []
    for steps in steps_by_method.values():
        for name in steps:
            if name not in names:
                names.append(name)
    def when(name: str) -> float:
        return min(statistics.median(s[name]) for s in steps_by_method.values() if name in s)

    rows = []
    for name in sorted(names, key=when):
        row: list[object] = [name]
        for method in ("keys", "csr"):
            values = steps_by_method[method].get(name)
            row.append(f"{statistics.median(values):.0f}" if values else "-")
        rows.append(row)
    print(table(["step", "keys", "csr"], rows))
    print("\n(an ESP32 runs MicroPython about 50x slower and talks to AWS over Wi-Fi: expect seconds, "
          "dominated by TLS handshakes and, for csr, on-device key generation)")


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
