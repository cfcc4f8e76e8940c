"""End-to-end time of one device: the real main.py on the MicroPython unix port against iotsim.

Each run is a factory-fresh board (a scratch flash folder with the compiled
library, as `make deploy` puts it) that boots, provisions itself, commits its
credentials and reconnects as its thing; then it boots again, provisioned.
Reported per method: the first boot and the provisioned boot (median and
p90 of wall time, process start to exit), and the median time of each step
from the device's own progress lines.

Then how fleetprov waits for an answer (the real umqtt.simple on the unix
port, compiled library, against tests/fakes/rawbroker.py): check_msg() calls
per second while the server is silent (target <= 25: no busy poll), heap
allocated per idle poll (target 0, gc off while waiting so every byte shows),
and how far past its deadline a wait flooded with stray PUBACKs ends.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .core import table
from ..unixboard import DEPS, SUPPORT, Board, ROOT, compile_lib, make_flash, micropython_binary

FAKES = ROOT / "tests" / "fakes"
HOSTILE_SCRIPT = ROOT / "tests" / "device" / "scripts" / "hostile_broker.py"
POLLS_PER_S_TARGET = 25
FIRST_BOOT_TARGET_MS = 150


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
    from ..iotsim.broker import free_port
    from ..iotsim.stack import IotSim

    runs = 3 if args.quick else 10
    with tempfile.TemporaryDirectory(prefix="fleetprov-bench-device-") as tmp:
        work = Path(tmp)
        sim = IotSim(work / "iotsim", free_port()).start()
        try:
            summary = []
            steps_by_method: dict[str, dict[str, list[int]]] = {}
            # PyPI's unix port runs inside a CPython launcher: its start is not the device's
            idle = Board(make_flash(work / "flash-idle", sim.state))
            start_ms = statistics.median(idle.boot(code="", timeout=60).elapsed * 1000 for _ in range(5))
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
                device_ms = statistics.median(first) - start_ms
                summary.append([
                    method,
                    runs,
                    f"{statistics.median(first):.0f}",
                    f"{_percentile(first, 0.9):.0f}",
                    f"{device_ms:.0f} ({'ok' if device_ms <= FIRST_BOOT_TARGET_MS else 'OVER'})",
                    f"{statistics.median(again):.0f}",
                    f"{_percentile(again, 0.9):.0f}",
                ])
                steps_by_method[method] = steps
        finally:
            sim.stop()

    print("### One device end to end (unix port, compiled library, JSON, iotsim on loopback)\n")
    print(table(["method", "runs", "first boot median ms", "p90",
                 f"less interpreter start, target <= {FIRST_BOOT_TARGET_MS}", "provisioned boot median ms", "p90"],
                summary))
    print(f"\n(interpreter start: {start_ms:.0f} ms, the median of `micropython -c ''` from PyPI's "
          "package, a CPython launcher around the unix port)")
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
    waiting(args)


def _hostile_run(mpy: Path, broker_kw: dict[str, str], timeout_ms: int, mqtt_ms: int, *flags: str) -> dict[str, str]:
    """One CreateKeysAndCertificate by the unix port against a scripted broker; the script's report."""
    if str(FAKES) not in sys.path:
        sys.path.append(str(FAKES))
    from rawbroker import RawBroker

    broker = RawBroker(**broker_kw)
    try:
        env = dict(os.environ, MICROPYPATH=os.pathsep.join([".frozen", str(mpy), str(DEPS), str(SUPPORT), str(FAKES)]))
        proc = subprocess.run(
            [str(micropython_binary()), str(HOSTILE_SCRIPT), str(broker.port), str(timeout_ms), str(mqtt_ms), *flags],
            capture_output=True, text=True, timeout=120, env=env,
        )
    finally:
        broker.close()
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        raise RuntimeError("hostile_broker.py failed:\n" + proc.stdout[-2000:] + proc.stderr[-2000:])
    words = lines[-2].split()
    return dict(zip(words[::2], words[1::2]))


def waiting(args: argparse.Namespace) -> None:
    """How fleetprov waits for an answer: polls per second, heap per idle poll, flood overshoot."""
    timeout_ms = 1000 if args.quick else 3000
    with tempfile.TemporaryDirectory(prefix="fleetprov-bench-wait-") as tmp:
        mpy = Path(tmp)
        compile_lib(mpy)
        silent = _hostile_run(mpy, {}, timeout_ms, 5000, "heap")
        flood = _hostile_run(mpy, {"publish": "flood"}, timeout_ms, 5000)
    calls = int(silent["check_msg"])
    elapsed = int(silent["elapsed_ms"])
    per_poll = [int(d) for d in silent["idle_alloc"].split(",") if d]
    rate = calls / (elapsed / 1000)
    rows = [
        ["check_msg() calls per second, silent server", f"{rate:.1f}", f"<= {POLLS_PER_S_TARGET}",
         "ok" if rate <= POLLS_PER_S_TARGET else "OVER"],
        ["heap allocated per idle poll, bytes (median / max)",
         f"{statistics.median(per_poll):.0f} / {max(per_poll)}" if per_poll else "-", "0",
         "ok" if per_poll and max(per_poll) == 0 else "OVER"],
        [f"stray-PUBACK flood: whole call, ms ({timeout_ms} ms timeout)", flood["elapsed_ms"],
         f"<= {timeout_ms + 100}", "ok" if int(flood["elapsed_ms"]) <= timeout_ms + 100 else "OVER"],
        ["stray-PUBACK flood: check_msg() calls", flood["check_msg"], "", ""],
    ]
    print(f"\n### Waiting for an answer (unix port, real umqtt.simple, compiled library, {timeout_ms} ms timeout)\n")
    print(table(["measure", "value", "target", ""], rows))
    print(f"\n(silent server: {calls} polls in {elapsed} ms, subscribe/publish/unsubscribe included)")


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
