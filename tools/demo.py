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

``--method csr`` (``make demo CSR=1``): the key pair and CSR are made on the
device, so the private key never leaves it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import sys
from pathlib import Path

from . import unixboard
from .unixboard import ROOT, Board, BootResult, make_flash

log = logging.getLogger("demo")

DEMO_DIR = ROOT / "build" / "demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--method",
        choices=("keys", "csr"),
        default="keys",
        help="keys: CreateKeysAndCertificate; csr: key and CSR made on the device",
    )
    p.add_argument("--format", choices=("json", "cbor"), default="json", help="provisioning payload format")
    p.add_argument("--source", action="store_true", help="copy lib/*.py instead of compiled .mpy")
    p.add_argument(
        "--heapsize", type=int, default=None, help="MicroPython heap in bytes (default: the unix port's own)"
    )
    p.add_argument(
        "--min-heap",
        action="store_true",
        help="also find the smallest MicroPython heap a first boot needs (bisection, TRIALS fresh boards per size)",
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


def _show(prefix: str) -> callable:  # type: ignore[valid-type]
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


def _fail(msg: str, result: BootResult | None = None) -> int:
    print(f"\ndemo FAILED: {msg}", file=sys.stderr)
    if result is not None and result.returncode not in (0, None):
        print(f"(the device exited with status {result.returncode})", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from .iotsim.broker import free_port
    from .iotsim.stack import IotSim

    try:
        unixboard.current_target().check()
    except RuntimeError as exc:  # TargetUnavailable, or the venv's micropython missing
        return _fail(str(exc))
    work: Path = args.dir
    shutil.rmtree(work, ignore_errors=True)
    state, flash = work / "iotsim", work / "flash"

    print("== starting iotsim (mosquitto + plugin + provisioning service)")
    sim = None
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between probe and bind
        candidate = IotSim(state, free_port())
        try:
            sim = candidate.start()
            break
        except RuntimeError as exc:
            last = exc
    if sim is None:
        return _fail(f"iotsim did not start: {last}")
    try:
        print(f"   endpoint 127.0.0.1:{sim.port}, state in {state}")
        make_flash(flash, state, {"method": args.method, "format": args.format}, mpy=not args.source)
        config = json.loads((flash / "config.json").read_text())
        print(f"== the board's flash: {flash}")
        for p in sorted(flash.rglob("*")):
            if p.is_file() and p.parent.name != "lib":
                print(f"   {p.relative_to(flash)}")
        print("   lib/: {}".format(" ".join(sorted(p.name for p in (flash / "lib").iterdir()))))
        print("   config: method={method} format={format} template={template}".format(**config))
        claim_before = {n: (flash / "certs" / n).read_bytes() for n in ("claim.der", "claim.key.der")}

        pristine = work / "pristine"
        shutil.copytree(flash, pristine)
        board = Board(flash, heapsize=args.heapsize)
        print("\n== first boot: a factory-fresh device")
        first = board.boot(on_line=_show("device"), timeout=120)
        if first.returncode != 0 or "done" not in first.steps():
            return _fail("the first boot did not end provisioned", first)
        print("\n== second boot: already provisioned, straight to the application")
        second = board.boot(on_line=_show("device"), timeout=60)
        if second.returncode != 0 or "provisioned" not in second.steps() or "connect-claim" in second.steps():
            return _fail("the second boot did not start as the provisioned thing", second)

        record = json.loads((flash / "certs" / "provisioned.json").read_text())
        cert_der = (flash / "certs" / record["files"]["cert"]).read_bytes()
        cert_id = hashlib.sha256(cert_der).hexdigest()
        thing_name = record["thing_name"]
        assert sim.registry is not None
        thing = sim.registry.thing(thing_name)
        status = sim.registry.status(cert_id)
        if thing is None or cert_id not in thing.certificates or status != "ACTIVE":
            return _fail(
                f"iotsim's registry does not show {thing_name} with certificate {cert_id} ACTIVE (status {status})"
            )
        if cert_id != record["certificate_id"]:
            return _fail("the stored certificate's SHA-256 is not its certificateId")
        claim_after = {n: (flash / "certs" / n).read_bytes() for n in claim_before}
        if claim_after != claim_before:
            return _fail("the claim files changed")

        heap = _heap(first)
        min_heap = min_heap_provisioned = None
        if args.min_heap:
            print("\n== smallest heap for a first boot (each probe is a new factory-fresh device)")
            min_heap = smallest_heap(pristine, work, args.trials, args.step)
            print("\n== smallest heap for a provisioned boot (each probe is a copy of the provisioned device)")
            provisioned = work / "pristine-provisioned"
            shutil.copytree(flash, provisioned)
            min_heap_provisioned = smallest_heap(provisioned, work, args.trials, args.step)
        print("\n== summary")
        rows = [
            ("unix port", unixboard.current_target().id),
            ("thing name", thing_name),
            ("certificate id", cert_id),
            ("method / format", f"{args.method} / {args.format}"),
            (
                "private key",
                "made on the device, never sent"
                if args.method == "csr"
                else "made by the endpoint (CreateKeysAndCertificate)",
            ),
            ("first boot", f"{first.elapsed * 1000:.0f} ms (provision, commit, reconnect as the thing)"),
            ("second boot", f"{second.elapsed * 1000:.0f} ms (provisioned: straight to the application)"),
            ("heap peak", f"{heap} bytes (MicroPython heap, sampled at each step)" if heap else "n/a"),
            *(
                [
                    ("smallest heap", f"{min_heap} KB for a first boot, {min_heap_provisioned} KB provisioned "
                     f"({args.trials}/{args.trials} boards pass, -X heapsize, {args.step} KB steps)"
                     if min_heap and min_heap_provisioned else "over 256 KB"),
                ]
                if args.min_heap
                else []
            ),
            ("iotsim registry", f"thing {thing_name} holds certificate {cert_id[:16]}… ({status})"),
            ("claim files", "unchanged"),
            ("flash folder", str(flash)),
        ]
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
        from . import cpdemo

        args.dir = args.dir or cpdemo.DEMO_DIR
        return cpdemo.run(args)
    args.dir = args.dir or DEMO_DIR
    with unixboard.use_target(unixboard.port_target(args.port)):
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
