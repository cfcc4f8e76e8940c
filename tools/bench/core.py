"""Core benchmark: code size, bytes on the wire and peak MicroPython heap of fleetprov.

- .mpy size of every device module (mpy-cross, as `make mpy` builds them);
  targets: fleetprov.mpy <= 6 KB, cbor.mpy <= 2.5 KB.
- Bytes on the wire per operation and format: the request and response
  payloads, and the whole MQTT exchange (SUBSCRIBE x2, PUBLISH, the answer,
  UNSUBSCRIBE x2) as umqtt.simple frames it; target: the largest realistic
  response fits fleetprov's default receive buffer (rx_size, 6144 bytes).
- Peak heap on the unix port for CreateKeysAndCertificate + RegisterThing
  against the fake client with a realistic keys response (RSA-2048 key and
  certificate PEM, 700-character token), .mpy build, rx_size=6144: the
  smallest `-X heapsize` that completes, minus the same script without the
  fleetprov calls; target <= 12 KB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cbor2

from ..unixboard import compile_lib, mpy_cross_binary
from .report import Target, at_most, print_targets, table

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MICROPYTHON = VENV_BIN / "micropython"
FAKES = ROOT / "tests" / "fakes"

SIZE_TARGETS = {"fleetprov.mpy": 6 * 1024, "cbor.mpy": 2560}
HEAP_TARGET = 12 * 1024
RX_SIZE = 6144  # fleetprov.Provisioner's default receive buffer
TOKEN = "eyJ" + "T" * 697  # 700 characters, like AWS's
TEMPLATE = "FleetprovDemo"
PARAMETERS = {"SerialNumber": "24:0a:c4:12:34:56"}


def realistic_responses() -> dict[str, dict]:
    """A keys response of the real size: RSA-2048 key and certificate as AWS returns them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Amazon Web Services O=Amazon.com Inc. L=Seattle ST=Washington C=US")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365 * 30))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    import hashlib

    cert_id = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return {
        "keys": {
            "certificateId": cert_id,
            "certificatePem": cert_pem,
            "privateKey": key_pem,
            "certificateOwnershipToken": TOKEN,
        },
        "csr": {"certificateId": cert_id, "certificatePem": cert_pem, "certificateOwnershipToken": TOKEN},
        "register": {
            "deviceConfiguration": {"FallbackUrl": "https://www.example.com/test-site", "LocationUrl": "https://example.aws"},
            "thingName": "fleetprov-240ac4123456",
        },
    }


def encode(fmt: str, obj: object) -> bytes:
    return json.dumps(obj).encode() if fmt == "json" else cbor2.dumps(obj)


def mqtt_len(n: int) -> int:
    """Bytes of MQTT's variable-length 'remaining length' field."""
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def publish_frame(topic: bytes, payload: bytes, qos: int) -> int:
    rest = 2 + len(topic) + (2 if qos else 0) + len(payload)
    return 1 + mqtt_len(rest) + rest


def subscribe_frame(topic: bytes) -> int:
    rest = 2 + 2 + len(topic) + 1
    return 1 + mqtt_len(rest) + rest


def unsubscribe_frame(topic: bytes) -> int:
    rest = 2 + 2 + len(topic)
    return 1 + mqtt_len(rest) + rest


def wire_table(responses: dict[str, dict]) -> list[tuple[str, str, int, int, int]]:
    csr_pem = "-----BEGIN CERTIFICATE REQUEST-----\n" + "M" * 580 + "\n-----END CERTIFICATE REQUEST-----\n"
    rows = []
    for fmt in ("json", "cbor"):
        f = fmt.encode()
        ops = {
            "CreateKeysAndCertificate": (b"$aws/certificates/create/" + f, b"{}" if fmt == "json" else b"\xa0", "keys"),
            "CreateCertificateFromCsr": (
                b"$aws/certificates/create-from-csr/" + f,
                encode(fmt, {"certificateSigningRequest": csr_pem}),
                "csr",
            ),
            "RegisterThing": (
                b"$aws/provisioning-templates/" + TEMPLATE.encode() + b"/provision/" + f,
                encode(fmt, {"certificateOwnershipToken": TOKEN, "parameters": PARAMETERS}),
                "register",
            ),
        }
        for name, (topic, request, key) in ops.items():
            response = encode(fmt, responses[key])
            accepted = topic + b"/accepted"
            exchange = (
                subscribe_frame(accepted) + 5 + subscribe_frame(topic + b"/rejected") + 5  # + SUBACKs
                + publish_frame(topic, request, 1) + 4  # + PUBACK
                + publish_frame(accepted, response, 1) + 4  # + our PUBACK
                + unsubscribe_frame(accepted) + 4 + unsubscribe_frame(topic + b"/rejected") + 4
            )
            rows.append((fmt, name, len(request), len(response), exchange))
    return rows


HEAP_SCRIPT = """
import sys, gc
mode, fmt, keys_file, reg_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
import fakemqtt
import fleetprov
if fmt == "cbor":
    import cbor
with open(keys_file, "rb") as f:
    keys_payload = f.read()
with open(reg_file, "rb") as f:
    reg_payload = f.read()

def responder(client, topic, msg):
    body = keys_payload if topic.startswith(b"$aws/certificates/") else reg_payload
    # umqtt reads each message into a fresh bytes object: so does this fake
    client.queue(topic + b"/accepted", bytes(memoryview(body)))

client = fakemqtt.FakeClient(responder, with_unsubscribe=False)
client.set_callback(lambda t, m: None)
gc.collect()
if mode == "run":
    p = fleetprov.Provisioner(client, fmt, rx_size=6144)
    keys = p.create_keys_and_certificate()
    reg = p.register_thing("%s", keys.ownership_token, {"SerialNumber": "24:0a:c4:12:34:56"})
    p.close()
    assert reg.thing_name and len(keys.private_key) > 1600
print("done")
""" % TEMPLATE


def completes(script: Path, heap: int, args: list[str], path: str) -> bool:
    proc = subprocess.run(
        [str(MICROPYTHON), "-X", f"heapsize={heap}", str(script), *args],
        env=dict(os.environ, MICROPYPATH=path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode == 0 and proc.stdout.strip().endswith("done")


def smallest_heap(script: Path, args: list[str], path: str, low: int = 2048, high: int = 256 * 1024) -> int:
    if not completes(script, high, args, path):
        raise RuntimeError(f"{script.name} {args} does not complete even with a {high}-byte heap")
    step = 64
    while high - low > step:
        mid = (low + high) // 2 // step * step
        if completes(script, mid, args, path):
            high = mid
        else:
            low = mid
    return high


def run(args: argparse.Namespace) -> list[Target]:
    responses = realistic_responses()
    targets = []
    with tempfile.TemporaryDirectory(prefix="fleetprov-bench-") as tmp:
        tmpdir = Path(tmp)
        mpy_dir = tmpdir / "mpy"
        mpy_dir.mkdir()
        sizes = compile_lib(mpy_dir)

        version = subprocess.run([str(mpy_cross_binary()), "--version"], capture_output=True, text=True).stdout
        print("### Code size (mpy-cross {}, default options)\n".format(version.split(";")[0].strip()))
        print(table(["module", ".mpy bytes"], [[name, size] for name, size in sizes.items()]))
        targets += [at_most(name, sizes[name], limit, "bytes") for name, limit in SIZE_TARGETS.items()]

        print("\n### Bytes on the wire per operation (realistic payloads)\n")
        wire = wire_table(responses)
        print(table(["format", "operation", "request payload", "response payload", "whole MQTT exchange"],
                    [list(r) for r in wire]))
        targets.append(at_most("largest response payload, fits the default rx_size", max(r[3] for r in wire),
                               RX_SIZE, "bytes"))

        print("\n### Peak MicroPython heap: CreateKeysAndCertificate + RegisterThing (unix port, .mpy, rx_size=6144)\n")
        script = tmpdir / "heap.py"
        script.write_text(HEAP_SCRIPT)
        path = os.pathsep.join([str(mpy_dir), str(FAKES)])
        rows = []
        for fmt in ("json", "cbor"):
            keys_file = tmpdir / f"keys.{fmt}"
            reg_file = tmpdir / f"reg.{fmt}"
            keys_file.write_bytes(encode(fmt, responses["keys"]))
            reg_file.write_bytes(encode(fmt, responses["register"]))
            files = [str(keys_file), str(reg_file)]
            base = smallest_heap(script, ["base", fmt, *files], path)
            full = smallest_heap(script, ["run", fmt, *files], path)
            rows.append([fmt, keys_file.stat().st_size, base, full, full - base])
            targets.append(at_most(f"fleetprov's heap above baseline, {fmt}", full - base, HEAP_TARGET, "bytes"))
        print(table(["format", "keys response bytes", "baseline heap", "with fleetprov", "above baseline"], rows))
        print("\n(smallest -X heapsize that completes, 64-byte resolution)")
    return print_targets(targets)


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
