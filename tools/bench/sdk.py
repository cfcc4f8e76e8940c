"""A user's own client against AWS's Python SDK: the same job, the same iotsim, the same run.

Each round provisions factory-fresh devices every way below, in a random
order per round so that a busy machine slows them all alike:

- the user client: examples/provision.py as written, on the MicroPython unix
  port (compiled library, umqtt.simple from ../shared/vendor on MICROPYPATH),
  with every umqtt.simple release the firmware freezes, keys and CSR;
- the same client connecting with umqtt.simple's own connect() instead of
  mqttlink.connect (tools/bench/plainconnect/ first on MICROPYPATH): what a
  user pays when the connection is not fleetprov's. For information;
- fleetprov's own first boot: the real main.py, as `bench device` runs it;
- the SDK: tools/bench/sdk_client.py on CPython with awsiotsdk's
  IotIdentityClient over awscrt, as AWS's fleet provisioning sample does it.

Every one connects with the claim, makes its certificate (keys: AWS makes the
key; csr: the key is made in the process), RegisterThing, saves the identity,
reconnects as the thing and publishes one QoS 1 message. The time is the whole
process, start to exit, median of the rounds. Target: the user client at most
0.5x the SDK's, for each method and each umqtt.simple release.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ..fetch_deps import UMQTT_VERSIONS
from ..unixboard import CLAIM_FILES, NEWEST_PORT, ROOT, Board, Target, compile_lib, make_flash
from .report import Target as Judged
from .report import at_most, print_targets, table

RATIO_TARGET = 0.5
METHODS = ("keys", "csr")
EXAMPLE = ROOT / "examples" / "provision.py"
PLAIN_CONNECT = Path(__file__).resolve().parent / "plainconnect"
SDK_RUNS_PER_ROUND = 2  # the SDK is every ratio's denominator: twice the samples


@dataclass(frozen=True)
class Job:
    """One process to time: ``kind`` is "example", "plain", "firstboot" or "sdk"."""

    kind: str
    method: str
    umqtt: str = ""


def jobs_of_a_round() -> list[Job]:
    jobs = []
    for method in METHODS:
        jobs += [Job("sdk", method)] * SDK_RUNS_PER_ROUND + [Job("firstboot", method)]
        jobs += [Job(kind, method, v) for v in UMQTT_VERSIONS for kind in ("example", "plain")]
    return jobs


class Runs:
    """Runs jobs against one iotsim, each device with a serial number of its own
    (AWS accepts one CONNECT a second per client id)."""

    def __init__(self, sim: Any, work: Path) -> None:
        self.sim = sim
        self.work = work
        self.count = 0
        self.mpy = work / "mpy"
        compile_lib(self.mpy)  # as `make mpy` builds it
        self.flashes = {}
        for method in METHODS:  # made once, copied for every boot: the compiling is not timed
            flash = work / ("pristine-" + method)
            self.flashes[method] = make_flash(flash, sim.state, {"method": method, "format": "json"},
                                              mpy=True)

    def run(self, job: Job) -> float:
        """The job's wall time in ms; raises RuntimeError when the device did not get there."""
        self.count += 1
        serial = "{}-{}-{}".format(job.kind, job.method, self.count)
        folder = self.work / serial
        if job.kind == "firstboot":
            shutil.copytree(self.flashes[job.method], folder)
            result = Board(folder).boot(timeout=120)
            if result.returncode != 0 or "done" not in result.steps():
                raise RuntimeError("fleetprov's first boot failed:\n" + result.text)
            return result.elapsed * 1000
        if job.kind == "sdk":
            cmd = [sys.executable, "-m", f"{__package__}.sdk_client", str(self.sim.state / "config.json"),
                   str(self.sim.state), str(folder), job.method]
            return _timed(cmd, ROOT, None, None)  # it checks every answer itself: exit 0 is success
        (folder / "certs").mkdir(parents=True)
        for name in CLAIM_FILES:
            shutil.copyfile(self.sim.state / "certs" / name, folder / "certs" / name)
        target = Target(NEWEST_PORT, job.umqtt)
        path = [".frozen", *([str(PLAIN_CONNECT)] if job.kind == "plain" else []), str(self.mpy),
                *target.umqtt_path()]
        cmd = [str(target.micropython()), str(EXAMPLE), "127.0.0.1", str(self.sim.port), job.method, serial]
        env = dict(os.environ, MICROPYPATH=os.pathsep.join(path))
        return _timed(cmd, folder, env, "connected as fleetprov-{} and published".format(serial))


def _timed(cmd: list[str], cwd: Path, env: dict[str, str] | None, expect: str | None) -> float:
    """Wall time of ``cmd`` in ms, start to exit; it must exit 0 and print ``expect`` (if given)."""
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    if proc.returncode != 0 or (expect is not None and expect not in proc.stdout):
        raise RuntimeError("{} failed (exit {}):\n{}{}".format(
            " ".join(cmd[1:3]), proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:]))
    return elapsed * 1000


def spread(samples: list[float]) -> str:
    return "{:.0f}-{:.0f}".format(min(samples), max(samples))


def measure(rounds: int) -> dict[Job, list[float]]:
    """Every job of a round, ``rounds`` times, against one iotsim: wall times in ms."""
    from ..iotsim.broker import free_port
    from ..iotsim.stack import IotSim

    times: dict[Job, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fleetprov-bench-sdk-") as tmp:
        work = Path(tmp)
        sim = IotSim(work / "iotsim", free_port()).start()
        try:
            runs = Runs(sim, work)
            for n in range(rounds):
                jobs = jobs_of_a_round()
                random.Random(n).shuffle(jobs)
                for job in jobs:
                    times.setdefault(job, []).append(runs.run(job))
        finally:
            sim.stop()
    return times


def run(args: argparse.Namespace) -> list[Judged]:
    rounds = 3 if args.quick else 5
    times = measure(rounds)
    median = {job: statistics.median(samples) for job, samples in times.items()}
    targets: list[Judged] = []
    reference: list[list[object]] = []
    user: list[list[object]] = []
    for method in METHODS:
        sdk, first = Job("sdk", method), Job("firstboot", method)
        ratio = {job: median[job] / median[sdk] for job in median if job.method == method}
        targets.append(at_most(f"fleetprov's first boot / the SDK's, {method}", round(ratio[first], 2),
                               RATIO_TARGET, "x"))
        reference.append([method, f"{median[sdk]:.0f}", spread(times[sdk]), f"{median[first]:.0f}",
                          f"{ratio[first]:.2f} x"])
        for version in UMQTT_VERSIONS:
            ours, plain = Job("example", method, version), Job("plain", method, version)
            targets.append(at_most(f"examples/provision.py / the SDK's, {method}, umqtt {version}",
                                   round(ratio[ours], 2), RATIO_TARGET, "x"))
            user.append([method, version, f"{median[ours]:.0f}", spread(times[ours]), f"{ratio[ours]:.2f} x",
                         targets[-1].outcome, f"{median[plain]:.0f}", f"{ratio[plain]:.2f} x"])
    print("### Provision and reconnect, whole process: a user's client, fleetprov's first boot and "
          "AWS's Python SDK, same iotsim\n")
    print("Each: claim connect, certificate (keys or csr), RegisterThing, save, reconnect as the thing, "
          "one QoS 1 publish; process start to exit, median of {} rounds ({} for the SDK), every run a new "
          "device, runs shuffled in each round.\n".format(rounds, rounds * SDK_RUNS_PER_ROUND))
    sdk_name = "awsiotsdk {} IotIdentityClient, CPython, ms".format(metadata.version("awsiotsdk"))
    print(table(["method", sdk_name, "min-max", "fleetprov first boot, main.py, ms", "/ SDK"], reference))
    print("\nexamples/provision.py on the MicroPython unix port (compiled library) with each umqtt.simple "
          "release; the last two columns, for information, are the same client connecting with umqtt's own "
          "connect() (no mqttlink): Nagle's algorithm then holds the TLS handshake, CONNECT, the request "
          "that follows umqtt's PUBACK of an answer and the application's publish, about 40 ms each.\n")
    print(table(["method", "umqtt.simple", "provision.py, ms", "min-max", "/ SDK", "<= 0.5 x",
                 "umqtt's own connect(), ms", "/ SDK"], user))
    return print_targets(targets)


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
