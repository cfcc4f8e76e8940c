"""Fuzz: random and mutated JSON and CBOR responses into all three operations.

Whatever arrives on the response topics, fleetprov either returns a result of
the documented shape or raises ProvisioningError — never anything else. The
answers reach fleetprov as real MQTT packets, through the real umqtt.simple
(1.3.4) reading a scripted socket (tests/fakes/scriptsock.py).
"""

from __future__ import annotations

import json
import random
from typing import Any

import cbor2
import pytest

import fleetprov
from fleetprov_cases import Harness
from scriptaws import AwsServer
from tools.umqtt_host import MQTTClient

CASES = 24_000
OPS = ("keys", "csr", "register")
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
CODECS = {"json": (lambda obj: json.dumps(obj).encode(), json.loads), "cbor": (cbor2.dumps, cbor2.loads)}


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, 400])
    if kind == 1:
        return "".join(rng.choice("aZ09-_\n\"\\é€😀") for _ in range(rng.randrange(12)))
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.random() * 1e6
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    if kind == 5:
        return rng.choice(["certificateId", "statusCode", "thingName", ""])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["certificateId", "certificatePem", "privateKey", "certificateOwnershipToken", "thingName",
            "deviceConfiguration", "statusCode", "errorCode", "errorMessage", "x"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def valid_body(rng: random.Random, op: str, rejected: bool) -> dict[str, Any]:
    if rejected:
        return {"statusCode": rng.choice([400, 403, 404, 429, 500]), "errorCode": "E", "errorMessage": "m"}
    server = AwsServer()
    server.key_size = rng.randrange(10, 200)
    return server.accepted(op)


def structural_mutation(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    for _ in range(rng.randrange(1, 3)):
        choice = rng.randrange(3)
        if choice == 0 and body:
            del body[rng.choice(list(body))]
        elif choice == 1 and body:
            body[rng.choice(list(body))] = random_value(rng)
        else:
            body[str(random_value(rng))] = random_value(rng)
    return body


def byte_mutation(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        choice = rng.randrange(5)
        if choice == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice == 2:
            del out[rng.randrange(len(out) + 1):]
        elif choice == 3:
            at = rng.randrange(len(out) + 1)
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        else:  # hostile CBOR heads: huge lengths, deep nesting, reserved values
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.choice([b"\x7b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x9b" + b"\xff" * 8,
                                     b"\x81" * 300, b"\xbf" * 40, b"\x1c", b"\xff", b"\x5f\x01"])
    return bytes(out)


def make_payload(rng: random.Random, fmt: str, op: str, rejected: bool) -> bytes:
    if fmt == "json":  # JSON has no byte strings: send them as hex text

        def dumps(obj: Any) -> bytes:
            return json.dumps(obj, default=lambda o: o.hex()).encode()

    else:
        dumps = cbor2.dumps
    mode = rng.randrange(4)
    if mode == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    body = valid_body(rng, op, rejected)
    if mode == 1:
        return dumps(structural_mutation(rng, body))
    if mode == 2:
        return byte_mutation(rng, dumps(body))
    return dumps(random_value(rng))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_fuzzed_responses_give_a_result_or_provisioning_error_only(fmt: str) -> None:
    rng = random.Random(0xF1EE7 + len(fmt))
    outcomes: dict[int, int] = {}
    for case in range(CASES // 2):
        op = OPS[case % 3]
        rejected = rng.random() < 0.3
        payload = make_payload(rng, fmt, op, rejected)
        h = Harness(MQTTClient, CODECS)
        p, _, server = h.make(fmt, rx_size=2048, timeout_ms=1000)
        server.answers[op] = (b"/rejected" if rejected else b"/accepted", payload)
        try:
            if op == "keys":
                out = p.create_keys_and_certificate()
                assert all(isinstance(v, str) for v in (out.certificate_id, out.certificate_pem,
                                                        out.private_key, out.ownership_token))
            elif op == "csr":
                out = p.create_certificate_from_csr(CSR)
                assert out.private_key is None and isinstance(out.ownership_token, str)
            else:
                reg = p.register_thing("demo", "tok")
                assert reg.thing_name is None or isinstance(reg.thing_name, str)
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in reg.device_configuration.items())
            status = fleetprov.SUCCESS
        except fleetprov.ProvisioningError as exc:
            assert exc.status in (fleetprov.BAD_RESPONSE, fleetprov.SERVER_REFUSED, fleetprov.NO_MEMORY), str(exc)
            status = exc.status
        finally:
            problems = h.close()
        assert not problems, problems
        outcomes[status] = outcomes.get(status, 0) + 1
    # the corpus reached every outcome, so the fuzzer is not stuck on one path
    assert set(outcomes) == {fleetprov.SUCCESS, fleetprov.BAD_RESPONSE, fleetprov.SERVER_REFUSED, fleetprov.NO_MEMORY}
