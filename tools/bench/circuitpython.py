"""fleetprov over Adafruit MiniMQTT (circuitpython/lib/mmqttclient.py) against iotsim, on CPython.

No CircuitPython board or interpreter is here, so this measures what the
adapter and MiniMQTT's polling cost, not a board's radio or TLS: each
operation (the claim connection, CreateKeysAndCertificate, RegisterThing),
median over a few runs, JSON and CBOR, with MiniMQTT's default settings as a
board runs them (socket timeout 1 s). Target: each provisioning operation
returns within 300 ms, however long the socket timeout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from ..cphost import iotsim_link
from .report import Target, at_most, print_targets, table

TEMPLATE = "FleetprovDemo"
TARGET_MS = 300


def _one(sim: Any, fmt: str, n: int) -> tuple[float, float, float]:
    serial = "bench-{}-{}".format(fmt, n)
    t0 = time.perf_counter()
    link = iotsim_link(sim, serial)
    t1 = time.perf_counter()
    import fleetprov  # lib/, which iotsim_link put on the path

    try:
        p = fleetprov.Provisioner(link.client, fmt=fmt, timeout_ms=30000)
        keys = p.create_keys_and_certificate()
        t2 = time.perf_counter()
        p.register_thing(TEMPLATE, keys.ownership_token, {"SerialNumber": serial})
        t3 = time.perf_counter()
        p.close()
    finally:
        link.close()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


def run(args: argparse.Namespace) -> list[Target]:
    from ..iotsim.testing import running_iotsim

    runs = 1 if args.quick else 5  # CreateKeysAndCertificate varies with iotsim's RSA key generation
    rows: list[list[object]] = []
    targets = []
    with running_iotsim() as sim:
        for fmt in ("json", "cbor"):
            samples = [_one(sim, fmt, i) for i in range(runs)]
            connect, keys, register = (round(statistics.median(s[k] for s in samples)) for k in range(3))
            rows.append([fmt, connect, keys, register])
            targets += [at_most(f"{op}, {fmt}, MiniMQTT defaults", ms, TARGET_MS, "ms")
                        for op, ms in (("CreateKeysAndCertificate", keys), ("RegisterThing", register))]
    print("### fleetprov over MiniMQTT on CPython against iotsim, MiniMQTT's default settings "
          "(socket timeout 1 s), median of {} runs, ms\n".format(runs))
    print(table(["format", "connect (claim, TLS)", "CreateKeysAndCertificate", "RegisterThing"], rows))
    return print_targets(targets)
