"""fleetprov against AWS's Python SDK: the same first boot, the same iotsim, the same run.

Each round runs one factory-fresh device both ways, alternating so that a
busy machine slows both alike:

- fleetprov: the real main.py on the MicroPython unix port (compiled library,
  keys method, JSON), as `bench device` runs it;
- the SDK: tools/bench/sdk_client.py on CPython with awsiotsdk's
  IotIdentityClient over awscrt, as AWS's fleet provisioning sample does it.

Both connect with the claim, CreateKeysAndCertificate, RegisterThing, store
the identity, reconnect as the thing and publish one QoS 1 message. The time
is the whole process, start to exit (what a device's boot costs), median of
the rounds. Target: fleetprov at most 0.5x the SDK's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..unixboard import ROOT, Board, make_flash
from .report import Target, at_most, print_targets, table

RATIO_TARGET = 0.5


def _sdk_boot(state: Path, out: Path) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", __package__ + ".sdk_client", str(state / "config.json"), str(state), str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError("the SDK's first boot failed:\n" + proc.stdout[-2000:] + proc.stderr[-3000:])
    return elapsed * 1000


def _fleetprov_boot(state: Path, flash: Path) -> float:
    make_flash(flash, state, {"method": "keys", "format": "json"}, mpy=True)
    result = Board(flash).boot(timeout=120)
    if result.returncode != 0 or "done" not in result.steps():
        raise RuntimeError("fleetprov's first boot failed:\n" + result.text)
    return result.elapsed * 1000


def run(args: argparse.Namespace) -> list[Target]:
    from ..iotsim.broker import free_port
    from ..iotsim.stack import IotSim

    rounds = 3 if args.quick else 10
    ours: list[float] = []
    sdk: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fleetprov-bench-sdk-") as tmp:
        work = Path(tmp)
        sim = IotSim(work / "iotsim", free_port()).start()
        try:
            for i in range(rounds):
                ours.append(_fleetprov_boot(sim.state, work / f"flash-{i}"))
                sdk.append(_sdk_boot(sim.state, work / f"sdk-{i}"))
        finally:
            sim.stop()
    mine, theirs = statistics.median(ours), statistics.median(sdk)
    ratio = mine / theirs
    print("### First boot, whole process: fleetprov (unix port) vs AWS's Python SDK (awsiotsdk), same iotsim\n")
    print(table(
        ["client", "rounds", "median ms", "min", "max"],
        [["fleetprov, MicroPython unix port", rounds, f"{mine:.0f}", f"{min(ours):.0f}", f"{max(ours):.0f}"],
         ["awsiotsdk IotIdentityClient, CPython", rounds, f"{theirs:.0f}", f"{min(sdk):.0f}", f"{max(sdk):.0f}"]],
    ))
    print("\n(both: claim connect, CreateKeysAndCertificate, RegisterThing, store, reconnect as the thing, "
          "one QoS 1 publish; process start to exit)")
    return print_targets([at_most("fleetprov's first boot / the SDK's, median", round(ratio, 2), RATIO_TARGET, "x")])


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
