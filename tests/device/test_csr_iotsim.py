"""End to end with iotsim: a key made on the MicroPython unix port, a certificate iotsim
issued from the device's CSR (CreateCertificateFromCsr, then RegisterThing with the
claim identity), and a mutual-TLS MQTT session of the device as its new thing with
umqtt.simple, using the device-made key. The private key is read only by MicroPython.

The ``iotsim`` fixture comes from tools/iotsim/testing.py (a pytest plugin named in
tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tools.iotsim.templates import DEMO_TEMPLATE_NAME

MQTT_DEADLINE_S = 60.0

# Key pair and CSR made on the device, written to key.der and req.pem in cwd.
MAKE_KEY = Path(__file__).resolve().parent / "scripts" / "make_key.py"

# Connect as the thing, subscribe to a topic of its own, publish to it and read the
# message back: a working session with the new identity, not just a handshake.
# Through mqttlink, which connects every umqtt.simple release (TLS form, time limit);
# the rest is bounded by the subprocess timeout (umqtt.simple has no timeouts of its own).
SESSION = """
import mqttlink
def read(name):
    with open(name, "rb") as f:
        return f.read()
got = []
link = mqttlink.connect(%(thing)r, "127.0.0.1", %(port)d, read("cert.der"), read("key.der"), read("ca.der"),
                        server_hostname="localhost", timeout_ms=30000, keepalive=30)
c = link.client
c.set_callback(lambda topic, msg: got.append((topic, msg)))
topic = b"fleetprov/%(thing)s/echo"
c.subscribe(topic, qos=1)
c.publish(topic, b"hello from a key that never left the device", qos=1)
for _ in range(50):
    if got:
        break
    c.wait_msg()
link.close()
print("received:", got[0][1].decode())
"""


def provision_from_csr(sim, csr_pem: str, serial: str) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """CreateCertificateFromCsr then RegisterThing over the claim identity (host side)."""
    with sim.client("claim-" + serial) as claim:
        outcome, created = claim.request(
            "$aws/certificates/create-from-csr/json", {"certificateSigningRequest": csr_pem}
        )
        assert outcome == "accepted", created
        outcome, registered = claim.request(
            "$aws/provisioning-templates/{}/provision/json".format(DEMO_TEMPLATE_NAME),
            {
                "certificateOwnershipToken": created["certificateOwnershipToken"],
                "parameters": {"SerialNumber": serial},
            },
        )
        assert outcome == "accepted", registered
    return created, registered


def test_device_made_key_holds_an_mqtt_session_with_iotsim_using_the_certificate_iotsim_issued_from_its_csr(
    micropython,
    iotsim,
    tmp_path: Path,
) -> None:
    serial = "csr-device-1"
    thing = "fleetprov-" + serial
    micropython.run(script=MAKE_KEY, args=(thing,), cwd=tmp_path)
    csr_pem = (tmp_path / "req.pem").read_text()
    created, registered = provision_from_csr(iotsim, csr_pem, serial)
    assert registered["thingName"] == thing

    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    request = x509.load_pem_x509_csr(csr_pem.encode())
    # iotsim certified the device's own public key, taken from its CSR.
    assert cert.public_key().public_numbers() == request.public_key().public_numbers()  # type: ignore[union-attr]
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == thing
    (tmp_path / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "ca.der").write_bytes(Path(iotsim.ca_der).read_bytes())

    proc = micropython.run(
        SESSION % {"thing": thing, "port": iotsim.port}, cwd=tmp_path, timeout=MQTT_DEADLINE_S
    )
    assert proc.stdout.strip().splitlines()[-1] == "received: hello from a key that never left the device"


def test_an_iotsim_certificate_is_useless_with_any_key_but_the_device_made_one(
    micropython,
    iotsim,
    tmp_path: Path,
) -> None:
    serial = "csr-device-2"
    thing = "fleetprov-" + serial
    micropython.run(script=MAKE_KEY, args=(thing,), cwd=tmp_path)
    created, _ = provision_from_csr(iotsim, (tmp_path / "req.pem").read_text(), serial)
    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    (tmp_path / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "ca.der").write_bytes(Path(iotsim.ca_der).read_bytes())
    micropython.run(script=MAKE_KEY, args=(thing,), cwd=tmp_path)  # replaces key.der with a new key
    proc = micropython.run(
        SESSION % {"thing": thing, "port": iotsim.port}, cwd=tmp_path, timeout=MQTT_DEADLINE_S, check=False
    )
    assert proc.returncode != 0
    assert "received:" not in proc.stdout
    # It fails in the TLS handshake (the broker refuses the CertificateVerify), not later.
    output = proc.stdout + proc.stderr
    # mqttlink reports a server hanging up on the handshake as "closed the TLS handshake
    # (OSError ...): it refused this device's certificate", a refusal after the handshake
    # as "refused the connection" / "closed the connection before CONNACK".
    assert "ConnectError:" in output and "closed the TLS handshake (OSError" in output, output
    assert "CONNACK" not in output, output
