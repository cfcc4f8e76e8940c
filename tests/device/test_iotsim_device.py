"""fleetprov on the real MicroPython unix port with the real umqtt.simple, against iotsim over mutual TLS."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import fleetprov

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "device" / "scripts" / "provision_once.py"
TEMPLATE = "FleetprovDemo"


def flash(iotsim: Any, tmp_path: Path, method: str) -> Path:
    """A certificate folder as the board would hold it."""
    folder = tmp_path / "certs"
    folder.mkdir()
    shutil.copy(iotsim.ca_der, folder / "ca.der")
    shutil.copy(iotsim.claim_cert_der, folder / "claim.der")
    shutil.copy(iotsim.claim_key_der, folder / "claim.key.der")
    if method == "csr":  # host-made CSR; on-device generation is lib/csr.py's own test
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
            .sign(key, hashes.SHA256())
        )
        (folder / "csr.pem").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        (folder / "csr.key.der").write_bytes(
            key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return folder


def provision(micropython: Any, iotsim: Any, folder: Path, fmt: str, method: str, serial: str,
              create_ms: int = 20000, register_ms: int = 20000) -> dict[str, Any]:
    proc = micropython.run(
        script=SCRIPT,
        args=(str(iotsim.port), str(folder), fmt, method, TEMPLATE, serial, str(create_ms), str(register_ms)),
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0][len("RESULT "):])


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize("method", ["keys", "csr"])
def test_device_provisions_registers_and_reconnects_as_its_thing(micropython, iotsim, tmp_path: Path,
                                                                 fmt: str, method: str) -> None:
    folder = flash(iotsim, tmp_path, method)
    claim_before = (folder / "claim.der").read_bytes(), (folder / "claim.key.der").read_bytes()
    serial = "{}-{}-{}".format(method, fmt, tmp_path.name[-6:])
    result = provision(micropython, iotsim, folder, fmt, method, serial)
    assert result["ok"], result
    assert result["thing_name"] == "fleetprov-" + serial
    assert result["device_configuration"]["HelloTopic"] == "fleetprov/fleetprov-{}/hello".format(serial)
    assert result["reconnected"] is True
    # certificateId is the SHA-256 of the certificate DER the device stored
    assert result["certificate_id"] == hashlib.sha256((folder / "device.der").read_bytes()).hexdigest()
    cert = x509.load_der_x509_certificate((folder / "device.der").read_bytes())
    key = serialization.load_der_private_key((folder / "device.key.der").read_bytes(), None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert ((folder / "claim.der").read_bytes(), (folder / "claim.key.der").read_bytes()) == claim_before


@pytest.mark.parametrize(
    "fault,options,status,code",
    [
        ("reject", {"status_code": 403, "error_code": "AccessDenied"}, fleetprov.SERVER_REFUSED, 403),
        ("reject", {"status_code": 500, "error_code": "InternalFailure"}, fleetprov.SERVER_REFUSED, 500),
        ("drop", {}, fleetprov.TIMEOUT, None),
        ("malformed", {}, fleetprov.BAD_RESPONSE, None),
        ("oversized", {"size": 9000}, fleetprov.NO_MEMORY, None),
        ("disconnect", {}, fleetprov.MQTT_ERROR, None),
    ],
    ids=["reject-403", "reject-500", "drop", "malformed", "oversized", "disconnect"],
)
@pytest.mark.parametrize("op", ["CreateKeysAndCertificate", "RegisterThing"])
def test_each_server_fault_reaches_the_device_as_the_documented_error(
    micropython, iotsim, tmp_path: Path, fault: str, options: dict[str, Any], status: int, code: int | None, op: str
) -> None:
    iotsim.set_fault(op, fault, **options)
    # a short wait only where the fault is: the other step may be slow on a loaded machine
    short = {"create_ms": 1500} if op == "CreateKeysAndCertificate" else {"register_ms": 1500}
    result = provision(micropython, iotsim, flash(iotsim, tmp_path, "keys"), "json", "keys",
                       "fault-" + tmp_path.name[-6:], **short)
    assert result["ok"] is False, result
    assert result["status"] == status, result
    assert result["status_code"] == code
    assert op in result["message"]


def test_a_duplicated_answer_is_used_once(micropython, iotsim, tmp_path: Path) -> None:
    iotsim.set_fault("RegisterThing", "duplicate")
    result = provision(micropython, iotsim, flash(iotsim, tmp_path, "keys"), "cbor", "keys", "dup-" + tmp_path.name[-6:])
    assert result["ok"] is True, result


def test_throttling_reaches_the_device_as_429(micropython, iotsim, tmp_path: Path) -> None:
    iotsim.set_throttle(0.001, "CreateKeysAndCertificate", burst=1)
    folder = flash(iotsim, tmp_path, "keys")
    first = provision(micropython, iotsim, folder, "json", "keys", "thr1-" + tmp_path.name[-6:])
    second = provision(micropython, iotsim, folder, "json", "keys", "thr2-" + tmp_path.name[-6:])
    assert first["ok"] is True, first
    assert (second["ok"], second["status"], second["status_code"]) == (False, fleetprov.SERVER_REFUSED, 429), second


def test_an_unknown_template_is_refused_with_404(micropython, iotsim, tmp_path: Path) -> None:
    proc = micropython.run(
        script=SCRIPT,
        args=(str(iotsim.port), str(flash(iotsim, tmp_path, "keys")), "json", "keys", "NoSuchTemplate", "x1"),
    )
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert (result["status"], result["status_code"]) == (fleetprov.SERVER_REFUSED, 404), result
