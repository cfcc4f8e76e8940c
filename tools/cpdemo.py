"""``make demo BOARD=circuitpython``: the CircuitPython board provisions itself against iotsim, on CPython.

There is no CircuitPython interpreter here, and the demo says so. It runs the
board's own files (circuitpython/code.py, boot.py, lib/) unchanged on CPython
with the real Adafruit MiniMQTT over real mutual TLS; only the modules a board
has (wifi, socketpool, storage, microcontroller, rtc, supervisor, ...) are
stand-ins (tools/cphost.py). The steps are tools/demo.py's, on a drive
``build/demo-circuitpython/CIRCUITPY`` filled as a user fills it: the bundle's
files, settings.toml, certs/ with the CA and claim PEM files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import cpbundle
from .demo import DemoBoard, Rows
from .unixboard import ROOT, BootResult


class CircuitPythonBoard(DemoBoard):
    """A CIRCUITPY folder booted by tools/cphost.py (boot.py, then code.py) in a fresh process."""

    DEMO_DIR = ROOT / "build" / "demo-circuitpython"
    label = "board"
    drive = "drive"
    claim_files = tuple(cpbundle.CLAIM_FILES.values())

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.folder = self.args.dir / "CIRCUITPY"

    def intro(self) -> list[str]:
        return [
            "== CircuitPython demo. No CircuitPython interpreter is installed here: the board's own",
            "   code.py, boot.py and lib/ run unchanged on CPython {} with the real Adafruit MiniMQTT;".format(
                sys.version.split()[0]
            ),
            "   wifi, socketpool, storage, microcontroller, rtc, supervisor are stand-ins (tools/cphost.py).",
        ]

    def check(self) -> None:
        pass  # CPython and the pinned packages are all it needs

    def fill(self, state: Path) -> None:
        settings: dict[str, str | int] = {"FLEETPROV_METHOD": self.args.method, "FLEETPROV_FORMAT": self.args.format}
        cpbundle.make_folder(self.folder, state, settings)

    def describe(self) -> list[str]:
        return ["settings.toml: FLEETPROV_METHOD={} FLEETPROV_FORMAT={}".format(self.args.method, self.args.format)]

    def boot(self, timeout: float) -> BootResult:
        t0 = time.monotonic()
        lines: list[str] = []
        with subprocess.Popen(
            [sys.executable, "-m", __package__ + ".cphost", str(self.folder)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                print(f"  {self.label} | {lines[-1]}", flush=True)
                if time.monotonic() - t0 > timeout:
                    proc.kill()
                    break
            rc = proc.wait(timeout=10)
        return BootResult(lines, rc, elapsed=time.monotonic() - t0)

    def certificate_der(self, stored: bytes) -> bytes:
        # CircuitPython's ssl loads PEM, so the drive keeps PEM
        return x509.load_pem_x509_certificate(stored).public_bytes(serialization.Encoding.DER)

    def head_rows(self) -> Rows:
        return [("board", "CPython standing in for CircuitPython")]

    def rows(self, first: BootResult, second: BootResult) -> Rows:
        return [
            ("identity on the drive", "certs/ (PEM, as CircuitPython's ssl loads it)"),
            ("first boot", f"{first.elapsed * 1000:.0f} ms including the CPython start-up"),
            ("second boot", f"{second.elapsed * 1000:.0f} ms"),
        ]
