"""Bench section ``controlplane``: iotsim's AWS IoT control-plane API through boto3.

One iotsim in a temporary folder; every call goes through boto3 (request
building, HTTP on loopback, iotsim's model-driven parsing, the registry, the
response parsing), the way a user's script pays for it. Wall-clock per call,
median and p95 over the repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from ..iotsim.testing import running_iotsim


def _measure(fn: Callable[[int], Any], rounds: int) -> tuple[float, float]:
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def run(args: argparse.Namespace) -> None:
    rounds = 10 if args.quick else 40
    slow_rounds = 5 if args.quick else 15  # the ones that make an RSA-2048 key
    with running_iotsim() as sim:
        iot = sim.iot_client()
        cert = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
        doc = iot.get_policy(policyName="iotsim-claim-policy")["policyDocument"]
        rows: list[tuple[str, int, Callable[[int], Any]]] = [
            ("DescribeEndpoint", rounds, lambda i: iot.describe_endpoint(endpointType="iot:Data-ATS")),
            ("DescribeCertificate", rounds, lambda i: iot.describe_certificate(certificateId=cert)),
            ("ListCertificates (first page)", rounds, lambda i: iot.list_certificates(pageSize=250)),
            ("CreatePolicy", rounds, lambda i: iot.create_policy(policyName="bench-{}".format(i), policyDocument=doc)),
            ("DeletePolicy", rounds, lambda i: iot.delete_policy(policyName="bench-{}".format(i))),
            ("CreateThingGroup", rounds, lambda i: iot.create_thing_group(thingGroupName="bench-{}".format(i))),
            (
                "UpdateCertificate (rewrites its principal file)",
                rounds,
                lambda i: iot.update_certificate(
                    certificateId=cert, newStatus="INACTIVE" if i % 2 == 0 else "ACTIVE"
                ),
            ),
            ("CreateKeysAndCertificate (RSA-2048)", slow_rounds, lambda i: iot.create_keys_and_certificate()),
            (
                "CreateProvisioningClaim (RSA-2048)",
                slow_rounds,
                lambda i: iot.create_provisioning_claim(templateName="FleetprovDemo"),
            ),
        ]
        print("AWS IoT control plane through boto3 against iotsim (loopback HTTP), wall clock per call:\n")
        print("| operation | calls | median ms | p95 ms |")
        print("|---|---|---|---|")
        for name, count, fn in rows:
            median, p95 = _measure(fn, count)
            print("| {} | {} | {:.1f} | {:.1f} |".format(name, count, median, p95))
