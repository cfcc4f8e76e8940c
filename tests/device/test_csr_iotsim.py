"""End to end with iotsim: a key made on the MicroPython unix port, a certificate iotsim
issued from the device's CSR (CreateCertificateFromCsr, then RegisterThing with the
claim identity), and a mutual-TLS MQTT session of the device as its new thing with
umqtt.simple, using the device-made key. The private key is read only by MicroPython.

The ``iotsim`` fixture comes from tools/iotsim/testing.py (a pytest plugin named in
tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def device_made_identity(micropython, iotsim, folder: Path, serial: str) -> tuple[str, x509.Certificate, Any]:
    """The device makes its key and CSR (in ``folder``), iotsim issues and registers the
    certificate; cert.der and ca.der are put beside the key. (thing name, certificate, RegisterThing's answer)."""
    thing = "fleetprov-" + serial
    micropython.run(script=MAKE_KEY, args=(thing,), cwd=folder)
    created, registered = provision_from_csr(iotsim, (folder / "req.pem").read_text(), serial)
    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    (folder / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (folder / "ca.der").write_bytes(Path(iotsim.ca_der).read_bytes())
    return thing, cert, registered


def test_device_made_key_holds_an_mqtt_session_with_iotsim_using_the_certificate_iotsim_issued_from_its_csr(
    micropython,
    iotsim,
    tmp_path: Path,
) -> None:
    thing, cert, registered = device_made_identity(micropython, iotsim, tmp_path, "csr-device-1")
    assert registered["thingName"] == thing
    request = x509.load_pem_x509_csr((tmp_path / "req.pem").read_bytes())
    # iotsim certified the device's own public key, taken from its CSR.
    assert cert.public_key().public_numbers() == request.public_key().public_numbers()  # type: ignore[union-attr]
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == thing

    proc = micropython.run(
        SESSION % {"thing": thing, "port": iotsim.port}, cwd=tmp_path, timeout=MQTT_DEADLINE_S
    )
    assert proc.stdout.strip().splitlines()[-1] == "received: hello from a key that never left the device"


def test_an_iotsim_certificate_is_useless_with_any_key_but_the_device_made_one(
    micropython,
    iotsim,
    tmp_path: Path,
) -> None:
    thing, _, _ = device_made_identity(micropython, iotsim, tmp_path, "csr-device-2")
    micropython.run(script=MAKE_KEY, args=(thing,), cwd=tmp_path)  # replaces key.der with a new key
    proc = micropython.run(
        SESSION % {"thing": thing, "port": iotsim.port}, cwd=tmp_path, timeout=MQTT_DEADLINE_S, check=False
    )
    assert proc.returncode != 0
    assert "received:" not in proc.stdout
    # It fails in the TLS handshake (the broker refuses the CertificateVerify), not later.
    output = proc.stdout + proc.stderr
    # mqttlink words a handshake the server closed as a refused certificate (a refusal after
    # the handshake would read "refused the connection" / "before CONNACK"); the broker's
    # log names the cause: the signature made with the wrong key does not verify.
    where = "127.0.0.1:{}".format(iotsim.port)
    assert "ConnectError: {} closed the TLS handshake (OSError".format(where) in output, output
    assert "refused this device's certificate" in output and "CONNACK" not in output, output
    # mosquitto logs the OpenSSL error before it closes the socket the device saw closed.
    assert "SSL routines::bad signature" in (iotsim.state / "mosquitto.log").read_text()
