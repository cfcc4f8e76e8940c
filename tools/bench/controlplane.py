"""Bench section ``controlplane``: iotsim's AWS IoT control-plane API through boto3.

One iotsim in a temporary folder; every call goes through boto3 (request
building and signing, HTTP on loopback, iotsim's SigV4 check and model-driven
parsing and checking, the registry, the response parsing), the way a user's
script pays for it. Wall-clock per call, median and p95 over the repetitions;
then the SigV4 check alone, in-process, the part of every call that signing
adds on iotsim's side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from ..iotsim.sigv4 import verify
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
        iam = sim.iot_client(service="iam")
        iam.create_role(RoleName="bench-role", AssumeRolePolicyDocument="{}")
        cert = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
        doc = iot.get_policy(policyName="iotsim-claim-policy")["policyDocument"]
        rows: list[tuple[str, int, Callable[[int], Any]]] = [
            ("DescribeEndpoint", rounds, lambda i: iot.describe_endpoint(endpointType="iot:Data-ATS")),
            ("DescribeCertificate", rounds, lambda i: iot.describe_certificate(certificateId=cert)),
            ("GetRole (IAM, query protocol, XML)", rounds, lambda i: iam.get_role(RoleName="bench-role")),
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
        median, p95 = _measure(_signed_check(sim), rounds * 25)
        print("\nSigV4 check alone (in-process, a signed DescribeCertificate): median {:.3f} ms, p95 {:.3f} ms".format(
            median, p95))


def _signed_check(sim: Any) -> Callable[[int], Any]:
    """verify() on one request signed as boto3 signs it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    creds = sim.sim.credentials
    path = "/certificates/" + "0" * 64
    request = AWSRequest(method="GET", url=sim.api_url + path, headers={"Host": sim.api_url.split("//")[1]})
    SigV4Auth(Credentials(creds.access_key, creds.secret_key), "iot", sim.sim.region).add_auth(request)
    headers = dict(request.headers.items())
    regions = {"iot": (sim.sim.region,)}
    return lambda i: verify("GET", path, headers, b"", credentials=creds, regions=regions, now=time.time())
