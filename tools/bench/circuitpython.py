"""fleetprov over Adafruit MiniMQTT (circuitpython/lib/mmqttclient.py) against iotsim, on CPython.

No CircuitPython board or interpreter is here, so this measures what the
adapter and MiniMQTT's polling model cost, not a board's radio or TLS:

- per operation (connect with the claim, CreateKeysAndCertificate,
  RegisterThing), median over N runs, for MiniMQTT's default socket timeout
  (1000 ms) and a shorter one (250 ms), JSON and CBOR. MiniMQTT's loop(t)
  always waits t, so each fleetprov operation takes at least two socket
  timeouts (one poll to read off stale messages, one for the answer): the
  table shows that floor against the answer's own latency;
- the size of what goes on CIRCUITPY (sources, and the bundle zip).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .. import cpbundle

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT / "lib", ROOT / "circuitpython" / "lib"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

TEMPLATE = "FleetprovDemo"
SOCKET_TIMEOUTS_MS = (1000, 250)


def _one(sim, poll_ms: int, fmt: str, n: int) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    import fleetprov
    import mmqttclient

    t0 = time.perf_counter()
    link = mmqttclient.connect(
        "bench-{}-{}-{}".format(poll_ms, fmt, n),
        "127.0.0.1",
        sim.port,
        str(sim.claim_cert),
        str(sim.claim_key),
        sim.ca_path.read_text(),
        pool=socket,
        timeout_ms=10000,
        socket_timeout=poll_ms / 1000,
    )
    t1 = time.perf_counter()
    try:
        p = fleetprov.Provisioner(link.client, fmt=fmt, timeout_ms=30000)
        keys = p.create_keys_and_certificate()
        t2 = time.perf_counter()
        p.register_thing(
            TEMPLATE, keys.ownership_token, {"SerialNumber": "bench-{}-{}-{}".format(poll_ms, fmt, n)}
        )
        t3 = time.perf_counter()
        p.close()
    finally:
        link.close()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


def run(args: argparse.Namespace) -> None:
    from ..iotsim.testing import running_iotsim

    runs = 1 if args.quick else 3
    rows = []
    with running_iotsim() as sim:
        for poll_ms in SOCKET_TIMEOUTS_MS:
            for fmt in ("json", "cbor"):
                samples = [_one(sim, poll_ms, fmt, i) for i in range(runs)]
                rows.append((poll_ms, fmt, *(statistics.median(s[k] for s in samples) for k in range(3))))
    print(
        "fleetprov over MiniMQTT 8.1.0 on CPython against iotsim (loopback, median of {} runs)\n".format(runs)
    )
    print(
        "| socket timeout | format | connect (claim, TLS) | CreateKeysAndCertificate | RegisterThing | floor per op |"
    )
    print("|---|---|---|---|---|---|")
    for poll_ms, fmt, c, k, r in rows:
        print(f"| {poll_ms} ms | {fmt} | {c:.0f} ms | {k:.0f} ms | {r:.0f} ms | {2 * poll_ms} ms |")
    files = [(src, rel) for src, rel in cpbundle.board_files() if rel.endswith(".py")]
    source = sum(src.stat().st_size for src, _ in files)
    with tempfile.TemporaryDirectory() as tmp:
        zipped = cpbundle.bundle(Path(tmp) / "b.zip")
        zip_size = zipped.stat().st_size
        with zipfile.ZipFile(zipped) as z:
            count = len(z.namelist())
    print("\n| CIRCUITPY (make circuitpython-bundle) | size |")
    print("|---|---|")
    print(f"| {len(files)} .py files (code.py, boot.py, lib/) | {source / 1024:.1f} KB |")
    print(f"| bundle zip ({count} entries) | {zip_size / 1024:.1f} KB |")
