"""End-to-end time of one device: the real main.py on the MicroPython unix port against iotsim.

Each run is a factory-fresh board (a scratch flash folder with the compiled
library, as `make deploy` puts it) that boots, provisions itself, commits its
credentials and reconnects as its thing; then it boots again, provisioned.
Reported per method: the first boot and the provisioned boot (median and
p90 of wall time, process start to exit). Target: a first boot, less the
interpreter's own start, <= 150 ms (median).

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

from ..unixboard import DEPS, SUPPORT, Board, ROOT, compile_lib, make_flash, micropython_binary
from .boards import board_bench
from .report import Target, at_most, percentile, print_targets, table

FAKES = ROOT / "tests" / "fakes"
HOSTILE_SCRIPT = ROOT / "tests" / "device" / "scripts" / "hostile_broker.py"
POLLS_PER_S_TARGET = 25
FIRST_BOOT_TARGET_MS = 150


def run(args: argparse.Namespace) -> list[Target]:
    runs = 3 if args.quick else 10
    rows: list[list[object]] = []
    targets = []
    with board_bench("device") as (work, sim):
        # PyPI's unix port runs inside a CPython launcher: its start is not the device's
        idle = Board(make_flash(work / "flash-idle", sim.state))
        start_ms = statistics.median(idle.boot(code="", timeout=60).elapsed * 1000 for _ in range(5))
        for method in ("keys", "csr"):
            first: list[float] = []
            again: list[float] = []
            for i in range(runs):
                flash = work / f"flash-{method}-{i}"
                make_flash(flash, sim.state, {"method": method, "format": "json"}, mpy=True)
                board = Board(flash)
                result = board.boot(timeout=120)
                if result.returncode != 0 or "done" not in result.steps():
                    raise RuntimeError(f"{method} run {i}: the first boot failed:\n{result.text}")
                first.append(result.elapsed * 1000)
                second = board.boot(timeout=60)
                if second.returncode != 0:
                    raise RuntimeError(f"{method} run {i}: the provisioned boot failed:\n{second.text}")
                again.append(second.elapsed * 1000)
                shutil.rmtree(flash, ignore_errors=True)
            device_ms = round(statistics.median(first) - start_ms)
            rows.append([method, runs, f"{statistics.median(first):.0f}", f"{percentile(first, 0.9):.0f}",
                         device_ms, f"{statistics.median(again):.0f}", f"{percentile(again, 0.9):.0f}"])
            targets.append(at_most(f"first boot less interpreter start, {method}", device_ms,
                                   FIRST_BOOT_TARGET_MS, "ms"))

    print("### One device end to end (unix port, compiled library, JSON, iotsim on loopback)\n")
    print(table(["method", "runs", "first boot median ms", "p90", "less interpreter start",
                 "provisioned boot median ms", "p90"], rows))
    print(f"\n(interpreter start: {start_ms:.0f} ms, the median of `micropython -c ''` from PyPI's "
          "package, a CPython launcher around the unix port)")
    return print_targets(targets + waiting(args))


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


def waiting(args: argparse.Namespace) -> list[Target]:
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
    rate = round(calls / (elapsed / 1000), 1)
    rows: list[list[object]] = [
        ["check_msg() calls per second, silent server", rate],
        ["heap allocated per idle poll, bytes (median / max)",
         f"{statistics.median(per_poll):.0f} / {max(per_poll)}" if per_poll else "-"],
        [f"stray-PUBACK flood: whole call, ms ({timeout_ms} ms timeout)", flood["elapsed_ms"]],
        ["stray-PUBACK flood: check_msg() calls", flood["check_msg"]],
    ]
    print(f"\n### Waiting for an answer (unix port, real umqtt.simple, compiled library, {timeout_ms} ms timeout)\n")
    print(table(["measure", "value"], rows))
    print(f"\n(silent server: {calls} polls in {elapsed} ms, subscribe/publish/unsubscribe included)")
    return [
        at_most("check_msg() calls per second while waiting (no busy poll)", rate, POLLS_PER_S_TARGET, "per s"),
        at_most("heap allocated per idle poll", max(per_poll) if per_poll else float("inf"), 0, "bytes"),
        at_most("a wait flooded with stray PUBACKs ends after its deadline by", int(flood["elapsed_ms"]) - timeout_ms,
                100, "ms"),
    ]


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
