"""``make demo BOARD=circuitpython``: the CircuitPython board provisions itself against iotsim, on CPython.

There is no CircuitPython interpreter here, and the demo says so. It runs the
board's own files (circuitpython/code.py, boot.py, lib/) unchanged on CPython
with the real Adafruit MiniMQTT over real mutual TLS; only the modules a board
has (wifi, socketpool, storage, microcontroller, rtc, supervisor, ...) are
stand-ins (tools/cphost.py).

1. starts iotsim on a free port, its state in ``build/demo-circuitpython/iotsim``;
2. fills ``build/demo-circuitpython/CIRCUITPY`` as a user fills the drive: the
   bundle's files, settings.toml, certs/ with the CA and claim PEM files;
3. boots it (boot.py, then code.py), streaming the device's progress lines;
4. boots it again: already provisioned, straight to the application;
5. checks iotsim's registry and the claim files, prints a summary, stops iotsim.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import cpbundle

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "build" / "demo-circuitpython"


def boot(folder: Path, timeout: float = 120.0) -> tuple[int, list[str], float]:
    """One boot of the board folder in a fresh process; lines are streamed as they come."""
    t0 = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", __package__ + ".cphost", str(folder)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            print(f"  board | {line}", flush=True)
            if time.monotonic() - t0 > timeout:
                proc.kill()
                break
        rc = proc.wait(timeout=10)
    return rc, lines, time.monotonic() - t0


def _steps(lines: list[str]) -> list[str]:
    return [
        p[3] for p in (line.split() for line in lines) if len(p) >= 4 and p[0] == "fleetprov" and p[2] == "ms"
    ]


def run(args: argparse.Namespace) -> int:
    from .iotsim.broker import free_port
    from .iotsim.stack import IotSim

    work: Path = args.dir
    shutil.rmtree(work, ignore_errors=True)
    print("== CircuitPython demo. No CircuitPython interpreter is installed here: the board's own")
    print(
        "   code.py, boot.py and lib/ run unchanged on CPython {} with the real Adafruit MiniMQTT;".format(
            sys.version.split()[0]
        )
    )
    print("   wifi, socketpool, storage, microcontroller, rtc, supervisor are stand-ins (tools/cphost.py).")
    print("== starting iotsim (mosquitto + plugin + provisioning service)")
    sim = None
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between probe and bind
        try:
            sim = IotSim(work / "iotsim", free_port()).start()
            break
        except RuntimeError as exc:
            last = exc
    if sim is None:
        print(f"demo FAILED: iotsim did not start: {last}", file=sys.stderr)
        return 1
    try:
        folder = cpbundle.make_folder(
            work / "CIRCUITPY", sim.state, {"FLEETPROV_METHOD": args.method, "FLEETPROV_FORMAT": args.format}
        )
        print(f"   endpoint 127.0.0.1:{sim.port}")
        print(f"== the board's drive: {folder}")
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.parent.name != "lib":
                print(f"   {p.relative_to(folder)}")
        print("   lib/: {}".format(" ".join(sorted(p.name for p in (folder / "lib").iterdir()))))
        claim = {n: (folder / "certs" / n).read_bytes() for n in cpbundle.CLAIM_FILES}

        print("\n== first boot: a factory-fresh board")
        rc, first, t_first = boot(folder)
        if rc != 0 or "done" not in _steps(first):
            print("\ndemo FAILED: the first boot did not end provisioned", file=sys.stderr)
            return 1
        print("\n== second boot: already provisioned, straight to the application")
        rc, second, t_second = boot(folder)
        if rc != 0 or "provisioned" not in _steps(second) or "connect-claim" in _steps(second):
            print("\ndemo FAILED: the second boot did not start as the provisioned thing", file=sys.stderr)
            return 1

        record = json.loads((folder / "certs" / "provisioned.json").read_text())
        cert = x509.load_pem_x509_certificate((folder / "certs" / record["files"]["cert"]).read_bytes())
        cert_id = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        assert sim.registry is not None
        thing = sim.registry.thing(record["thing_name"])
        status = sim.registry.status(cert_id)
        if (
            thing is None
            or cert_id not in thing.certificates
            or status != "ACTIVE"
            or cert_id != record["certificate_id"]
        ):
            print(
                f"\ndemo FAILED: the registry does not show {record['thing_name']} with {cert_id} ACTIVE",
                file=sys.stderr,
            )
            return 1
        if {n: (folder / "certs" / n).read_bytes() for n in claim} != claim:
            print("\ndemo FAILED: the claim files changed", file=sys.stderr)
            return 1
        print("\n== summary (CPython standing in for CircuitPython)")
        rows = [
            ("thing name", record["thing_name"]),
            ("certificate id", cert_id),
            ("method / format", f"{args.method} / {args.format}"),
            (
                "identity on the drive",
                "certs/{} + certs/{} (PEM, as CircuitPython's ssl loads them)".format(
                    record["files"]["cert"], record["files"]["key"]
                ),
            ),
            ("first boot", f"{t_first * 1000:.0f} ms including the CPython start-up"),
            ("second boot", f"{t_second * 1000:.0f} ms"),
            ("iotsim registry", f"thing holds certificate {cert_id[:16]}… ({status})"),
            ("claim files", "unchanged"),
            ("drive folder", str(folder)),
        ]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"   {k.ljust(width)}  {v}")
        return 0
    finally:
        print("\n== stopping iotsim")
        sim.stop()
