"""``make demo``: a factory-fresh device provisions itself against a local AWS IoT stand-in.

1. starts iotsim (mosquitto + plugin + provisioning service) on a free port,
   its state in ``build/demo/iotsim``;
2. fills a scratch folder, ``build/demo/flash``, as ``make deploy`` fills a
   board: ``lib/`` compiled to .mpy, ``boot.py``, ``main.py``, the
   ``config.json`` iotsim wrote, and ``certs/`` (CA, claim certificate and key);
3. boots the real ``main.py`` on the MicroPython unix port with that folder as
   its flash, streaming the device's progress lines: claim connection,
   certificate, RegisterThing, commit, reconnection as the new thing;
4. boots it a second time: already provisioned, straight to the application;
5. prints a summary (thing, certificate, elapsed time, heap) checked against
   iotsim's registry, and stops iotsim.

``--rotate`` (``make demo ROTATE=1``): iotsim issues certificates that expire
within the device's ``rotate_days``, so the second boot rotates the board's
identity (a new key and certificate made on the device, the old certificate
retired) and the demo shows the registry's word on both certificates.
``--method csr`` (``make demo CSR=1``): the key pair and CSR are made on the
device, so the private key never leaves it. ``--format cbor`` (``make demo
FORMAT=cbor``): the provisioning payloads are CBOR. ``--board circuitpython``
(``make demo BOARD=circuitpython``): the same steps for the CircuitPython board
(tools/cpdemo.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import unixboard
from .unixboard import ROOT, Board, BootResult, make_flash

log = logging.getLogger("demo")

DEMO_DIR = ROOT / "build" / "demo"
# --rotate: the validity iotsim gives certificates, within the default rotate_days (30)
ROTATE_CERT_DAYS = 20
Rows = list[tuple[str, str]]


class DemoBoard:
    """What the demo needs of a board: fill its drive from iotsim, boot it, read its identity.

    This one is the MicroPython unix port booting a flash folder (tools/unixboard.py)."""

    label = "device"  # each of its output lines is shown as "<label> | line"
    drive = "flash"
    claim_files = ("claim.der", "claim.key.der")  # in certs/

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.folder: Path = args.dir / "flash"
        self.pristine: Path = args.dir / "pristine"

    def intro(self) -> list[str]:
        return []

    def check(self) -> None:
        """Raise RuntimeError, saying what to run, when the board cannot boot here."""
        unixboard.current_target().check()

    def fill(self, state: Path) -> None:
        overrides = {"method": self.args.method, "format": self.args.format}
        make_flash(self.folder, state, overrides, mpy=not self.args.source)
        shutil.copytree(self.folder, self.pristine)

    def describe(self) -> list[str]:
        config = json.loads((self.folder / "config.json").read_text())
        return ["config: method={method} format={format} template={template}".format(**config)]

    def boot(self, timeout: float) -> BootResult:
        board = Board(self.folder, heapsize=self.args.heapsize)
        return board.boot(on_line=_show(self.label), timeout=timeout)

    def certificate_der(self, stored: bytes) -> bytes:
        return stored  # the board keeps DER

    def head_rows(self) -> Rows:
        return [("unix port", unixboard.current_target().id)]

    def rows(self, first: BootResult, second: BootResult) -> Rows:
        args = self.args
        key = "made on the device, never sent" if args.method == "csr" or args.rotate else (
            "made by the endpoint (CreateKeysAndCertificate)")
        second_boot = "rotated, then the application" if args.rotate else "straight to the application"
        heap = _heap(first)
        rows = [
            ("private key", key),
            ("first boot", f"{first.elapsed * 1000:.0f} ms (provision, commit, reconnect as the thing)"),
            ("second boot", f"{second.elapsed * 1000:.0f} ms (provisioned: {second_boot})"),
            ("heap peak", f"{heap} bytes (MicroPython heap, sampled at each step)" if heap else "n/a"),
        ]
        if args.min_heap:
            print("\n== smallest heap for a first boot (each probe is a new factory-fresh device)")
            first_kb = smallest_heap(self.pristine, args.dir, args.trials, args.step)
            if first_kb:
                print(f"\n== every size from {first_kb} to {SWEEP_TO_KB} KB, {args.trials} fresh devices each")
                print("   " + sweep(self.pristine, args.dir, first_kb, args.trials, args.step))
            print("\n== smallest heap for a provisioned boot (each probe is a copy of the provisioned device)")
            provisioned = args.dir / "pristine-provisioned"
            shutil.copytree(self.folder, provisioned)
            again_kb = smallest_heap(provisioned, args.dir, args.trials, args.step)
            rows.append((
                "smallest heap",
                f"{first_kb} KB for a first boot, {again_kb} KB provisioned ({args.trials}/{args.trials} boards "
                f"pass, -X heapsize, {args.step} KB steps)" if first_kb and again_kb else "over 256 KB",
            ))
        return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--method",
        choices=("keys", "csr"),
        default="keys",
        help="keys: CreateKeysAndCertificate; csr: key and CSR made on the device",
    )
    p.add_argument("--format", choices=("json", "cbor"), default="json", help="provisioning payload format")
    p.add_argument(
        "--rotate",
        action="store_true",
        help=f"iotsim issues certificates valid for {ROTATE_CERT_DAYS} days, within rotate_days: the second "
        "boot rotates the board's identity",
    )
    p.add_argument("--source", action="store_true", help="copy lib/*.py instead of compiled .mpy")
    p.add_argument(
        "--heapsize", type=int, default=None, help="MicroPython heap in bytes (default: the unix port's own)"
    )
    p.add_argument(
        "--min-heap",
        action="store_true",
        help="also find the smallest MicroPython heap a first boot needs (bisection, TRIALS fresh boards per "
        "size), then boot TRIALS fresh boards at every STEP from there to 128 KB",
    )
    p.add_argument(
        "--trials", type=int, default=10, help="--min-heap: fresh boards per heap size, all must pass (default 10)"
    )
    p.add_argument("--step", type=int, default=2, help="--min-heap: resolution in KB (default 2)")
    p.add_argument(
        "--port",
        choices=unixboard.DEMO_PORTS,
        default=unixboard.NEWEST_PORT,
        help="the unix port that boots the board, with the umqtt.simple its firmware freezes; "
        "1.24.1-32bit has an ESP32's pointer and object sizes (`make ports` builds the older ones)",
    )
    p.add_argument("--dir", type=Path, default=None, help="working folder (default build/demo)")
    p.add_argument(
        "--board",
        choices=("micropython", "circuitpython"),
        default="micropython",
        help="circuitpython: the CircuitPython board files on CPython with the real MiniMQTT (tools/cpdemo.py)",
    )
    return p.parse_args(argv)


def _show(prefix: str) -> Any:
    def show(line: str) -> None:
        print(f"  {prefix} | {line}", flush=True)

    return show


def _heap(result: BootResult) -> int | None:
    for line in result.lines:
        m = re.search(r"heap peak (\d+) bytes", line)
        if m:
            return int(m.group(1))
    return None


def smallest_heap(pristine: Path, work: Path, trials: int, step_kb: int) -> int | None:
    """tools/unixboard.smallest_heap, saying how each size went."""

    def show(kb: int, passed: int, tried: int) -> None:
        verdict = "all provisioned" if passed == tried == trials else f"boot {tried} out of memory or failed"
        print(f"   -X heapsize={kb}k: {passed}/{tried} passed, {verdict}", flush=True)

    return unixboard.smallest_heap(pristine, work, trials=trials, step_kb=step_kb, on_probe=show)


# --min-heap checks every size from the smallest that passed up to this one.
SWEEP_TO_KB = 128


def sweep(pristine: Path, work: Path, from_kb: int, trials: int, step_kb: int) -> str:
    """Whether a first boot passes at every size above the smallest: success is not
    monotonic in the heap size, so the smallest passing size alone does not promise it."""
    failed = unixboard.first_failure_above(pristine, work, from_kb, SWEEP_TO_KB, step_kb, trials)
    if failed is None:
        return f"{trials}/{trials} at every step from {from_kb} to {SWEEP_TO_KB} KB"
    kb, passed = failed
    return f"first failure at {kb} KB: {passed}/{trials} boards passed before one failed"


def stored_certificate_id(board: DemoBoard, certs: Path) -> str:
    """The id (SHA-256 of the DER) of the certificate the board's record names."""
    record = json.loads((certs / "provisioned.json").read_text())
    return hashlib.sha256(board.certificate_der((certs / record["files"]["cert"]).read_bytes())).hexdigest()


def _fail(msg: str, result: BootResult | None = None) -> int:
    print(f"\ndemo FAILED: {msg}", file=sys.stderr)
    if result is not None and result.returncode not in (0, None):
        print(f"(the device exited with status {result.returncode})", file=sys.stderr)
    return 1


def run(board: DemoBoard) -> int:
    """The demo on ``board``: iotsim, two boots, the registry's word, a summary."""
    from .bench.boards import back_to_back
    from .iotsim.broker import free_port
    from .iotsim.stack import IotSim

    args = board.args
    try:
        board.check()
    except RuntimeError as exc:  # a port not built, an interpreter missing
        return _fail(str(exc))
    shutil.rmtree(args.dir, ignore_errors=True)
    for line in board.intro():
        print(line)
    print("== starting iotsim (mosquitto + plugin + provisioning service)")
    sim = None
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between probe and bind
        try:
            settings: dict[str, Any] = {"cert_days": ROTATE_CERT_DAYS} if args.rotate else {}
            if args.min_heap:  # its probes boot copies of one board back to back
                settings.update(back_to_back())
            sim = IotSim(args.dir / "iotsim", free_port(), **settings).start()
            break
        except RuntimeError as exc:
            last = exc
    if sim is None:
        return _fail(f"iotsim did not start: {last}")
    try:
        print(f"   endpoint 127.0.0.1:{sim.port}, state in {sim.state}")
        board.fill(sim.state)
        folder, certs = board.folder, board.folder / "certs"
        print(f"== the board's {board.drive}: {folder}")
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.parent.name != "lib":
                print(f"   {p.relative_to(folder)}")
        print("   lib/: {}".format(" ".join(sorted(p.name for p in (folder / "lib").iterdir()))))
        for line in board.describe():
            print("   " + line)
        claim = {n: (certs / n).read_bytes() for n in board.claim_files}

        print(f"\n== first boot: a factory-fresh {board.label}")
        first = board.boot(timeout=120)
        if first.returncode != 0 or "done" not in first.steps():
            return _fail("the first boot did not end provisioned", first)
        # A board's reset, Wi-Fi and NTP take seconds; the harness's restart
        # none, and AWS IoT refuses a second CONNECT within a second per client id.
        time.sleep(1.0)
        first_id = stored_certificate_id(board, certs)
        if args.rotate:
            print(f"\n== second boot: the certificate expires in {ROTATE_CERT_DAYS} days, within rotate_days: "
                  "the board rotates it")
        else:
            print("\n== second boot: already provisioned, straight to the application")
        second = board.boot(timeout=60)
        if second.returncode != 0 or "provisioned" not in second.steps() or "connect-claim" in second.steps():
            return _fail("the second boot did not start as the provisioned thing", second)

        record = json.loads((certs / "provisioned.json").read_text())
        cert_id = stored_certificate_id(board, certs)
        thing_name = record["thing_name"]
        assert sim.registry is not None
        rotation_rows: Rows = []
        if args.rotate:
            old_status = sim.registry.status(first_id)
            thing = sim.registry.thing(thing_name)
            if "retired" not in second.steps() or old_status != "INACTIVE" or thing is None or (
                    first_id in thing.certificates):
                return _fail(f"the rotation did not retire {first_id} (status {old_status})", second)
            line = f"rotated: {first_id} {old_status} -> {cert_id} {sim.registry.status(cert_id)}"
            print("\n" + line)
            rotation_rows = [("rotation", f"{first_id[:16]}… {old_status} (detached) -> {cert_id[:16]}… "
                                          f"{sim.registry.status(cert_id)}")]
        thing = sim.registry.thing(thing_name)
        status = sim.registry.status(cert_id)
        if thing is None or cert_id not in thing.certificates or status != "ACTIVE":
            return _fail(
                f"iotsim's registry does not show {thing_name} with certificate {cert_id} ACTIVE (status {status})"
            )
        if cert_id != record["certificate_id"]:
            return _fail("the stored certificate's SHA-256 is not its certificateId")
        if {n: (certs / n).read_bytes() for n in claim} != claim:
            return _fail("the claim files changed")

        rows = [
            *board.head_rows(),
            ("thing name", thing_name),
            ("certificate id", cert_id),
            ("method / format", f"{args.method} / {args.format}"),
            *board.rows(first, second),
            *rotation_rows,
            ("iotsim registry", f"thing {thing_name} holds certificate {cert_id[:16]}… ({status})"),
            ("claim files", "unchanged"),
            (f"{board.drive} folder", str(folder)),
        ]
        print("\n== summary")
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"   {k.ljust(width)}  {v}")
        return 0
    finally:
        print("\n== stopping iotsim")
        sim.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = parse_args(argv)
    if args.board == "circuitpython":
        from .cpdemo import CircuitPythonBoard

        args.dir = args.dir or CircuitPythonBoard.DEMO_DIR
        return run(CircuitPythonBoard(args))
    args.dir = args.dir or DEMO_DIR
    with unixboard.use_target(unixboard.port_target(args.port)):
        return run(DemoBoard(args))


if __name__ == "__main__":
    sys.exit(main())
