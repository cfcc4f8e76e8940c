"""Core benchmark: code size, bytes on the wire and peak MicroPython heap of fleetprov.

- .mpy size of fleetprov and the CBOR codec (mpy-cross, as `make mpy` builds them).
- Bytes on the wire per operation and format: the request and response
  payloads, and the whole MQTT exchange (SUBSCRIBE x2, PUBLISH, the answer,
  UNSUBSCRIBE x2) as umqtt.simple frames it.
- Peak heap on the unix port for CreateKeysAndCertificate + RegisterThing
  against the fake client with a realistic keys response (RSA-2048 key and
  certificate PEM, 700-character token), .mpy build, rx_size=6144: the
  smallest `-X heapsize` that completes, minus the same script without the
  fleetprov calls.
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

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MICROPYTHON = VENV_BIN / "micropython"
FAKES = ROOT / "tests" / "fakes"

TARGETS = {"fleetprov.mpy": 6 * 1024, "cbor.mpy": 2560, "heap": 12 * 1024}
# Import one module (or none: "-"), collect, print the heap it keeps.
IMPORT_SCRIPT = """import gc, sys
gc.collect()
before = gc.mem_alloc()
if sys.argv[1] != "-":
    __import__(sys.argv[1])
gc.collect()
print(gc.mem_alloc() - before)
print("done")
"""
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


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(value: int, target: int) -> str:
    return "ok" if value <= target else "OVER by {}".format(value - target)


def import_costs(tmpdir: Path, mpy_dir: Path, modules: list[str]) -> None:
    """Heap each compiled lib module costs to import first into an empty
    interpreter (with what it imports): the worst case, as the module also
    pays for the interpreter's name pools, which grow by doubling and which
    every later module shares. Section ports measures each module where a
    first boot imports it, and judges the target there."""
    from ..unixboard import compile_umqtt, current_target

    print("\n### Import cost of every lib module imported first, alone with its own imports (unix port, .mpy)\n")
    umqtt_dir = tmpdir / "umqtt-mpy"
    compile_umqtt(umqtt_dir)
    path = os.pathsep.join([".frozen", str(mpy_dir), str(umqtt_dir), *current_target().umqtt_path()])
    script = tmpdir / "import_cost.py"
    script.write_text(IMPORT_SCRIPT)

    def kept(module: str) -> int:
        proc = subprocess.run([str(MICROPYTHON), str(script), module], env=dict(os.environ, MICROPYPATH=path),
                              capture_output=True, text=True, timeout=60)
        return int(proc.stdout.split()[0])

    base = smallest_heap(script, ["-"], path, low=1024)
    rows = []
    for module in [*modules, "umqtt.simple"]:
        need = smallest_heap(script, [module], path, low=1024) - base
        rows.append([module, kept(module), need])
    print(table(["module", "heap kept after import", "smallest heap above baseline"], rows))
    print(f"\n(baseline: {base} bytes; \"kept\": gc.mem_alloc() after gc.collect(); \"smallest heap\": "
          "-X heapsize that completes, 64-byte resolution, includes the loader's transient peak; "
          "umqtt.simple is frozen into real firmware and costs no heap there; a module imported first also pays for "
          "the name pools later modules share: section ports shows what each adds where a first boot imports it, "
          "and judges fleetprov's import target there)")


def run(args: argparse.Namespace) -> None:
    responses = realistic_responses()
    with tempfile.TemporaryDirectory(prefix="fleetprov-bench-") as tmp:
        tmpdir = Path(tmp)
        mpy_dir = tmpdir / "mpy"
        mpy_dir.mkdir()
        sizes = compile_lib(mpy_dir)

        print("### Code size (mpy-cross {}, default options)\n".format(
            subprocess.run([str(mpy_cross_binary()), "--version"], capture_output=True, text=True).stdout.split(";")[0].strip()))
        rows = [[name, size, TARGETS.get(name, ""), verdict(size, TARGETS[name]) if name in TARGETS else ""]
                for name, size in sizes.items()]
        # fleetprov always imports timedsock (its socket time limits, shared with mqttlink)
        # and awsnames (the template-name rule, shared with devconfig), and its
        # failure texts on failure: the flash budget has to count all three.
        modules = ("fleetprov", "fleetprov_texts", "timedsock", "awsnames")
        rows.append([" + ".join(modules), sum(sizes[m + ".mpy"] for m in modules), "", ""])
        print(table(["module", ".mpy bytes", "target", ""], rows))

        import_costs(tmpdir, mpy_dir, sorted(n[:-4] for n in sizes))

        print("\n### Bytes on the wire per operation (realistic payloads)\n")
        wire = wire_table(responses)
        print(table(["format", "operation", "request payload", "response payload", "whole MQTT exchange"],
                    [list(r) for r in wire]))

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
            rows.append([fmt, keys_file.stat().st_size, base, full, full - base, TARGETS["heap"],
                         verdict(full - base, TARGETS["heap"])])
        print(table(["format", "keys response bytes", "baseline heap", "with fleetprov", "above baseline",
                     "target", ""], rows))
        print("\n(smallest -X heapsize that completes, 64-byte resolution)")


if __name__ == "__main__":
    run(argparse.Namespace(quick=False))
