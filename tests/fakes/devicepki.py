"""Certificates and keys for first-boot tests, made with `cryptography` (host only)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import credwrite

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


@cache
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(public_key, cn: str = "device", days: float = 30) -> x509.Certificate:
    """A certificate for ``public_key`` from the test CA, valid from an hour ago for ``days``."""
    ca_key, ca_cert = ca()
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Identity:
    cert: x509.Certificate
    key: object

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(DER)

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(PEM).decode()

    @property
    def certificate_id(self) -> str:
        return hashlib.sha256(self.cert_der).hexdigest()

    def key_der(self, fmt: str = "pkcs8") -> bytes:
        return self.key.private_bytes(DER, _formats[fmt], serialization.NoEncryption())  # type: ignore[attr-defined]

    def key_pem(self, fmt: str = "pkcs8") -> str:
        return self.key.private_bytes(PEM, _formats[fmt], serialization.NoEncryption()).decode()  # type: ignore[attr-defined]


_formats = {
    "pkcs8": serialization.PrivateFormat.PKCS8,
    "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
    "sec1": serialization.PrivateFormat.TraditionalOpenSSL,
}

_RSA_KEYS: list[rsa.RSAPrivateKey] = []
_next = [0]


def rsa_identity(cn: str = "device") -> Identity:
    """An RSA-2048 identity as CreateKeysAndCertificate returns.

    Keys come from a pool of four (keygen is slow), in turn, so two calls in a
    row never share a key."""
    if len(_RSA_KEYS) < 4:
        _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        key = _RSA_KEYS[-1]
    else:
        key = _RSA_KEYS[_next[0] % 4]
        _next[0] += 1
    return Identity(issue(key.public_key(), cn), key)


def ec_identity(cn: str = "device") -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    return Identity(issue(key.public_key(), cn), key)


def ca_der() -> bytes:
    return ca()[1].public_bytes(DER)


def commit(
    store: Any,
    certificate_id: str,
    cert: str | bytes,
    key: str | bytes,
    thing_name: str | None = None,
    device_configuration: dict[str, str] | None = None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """Store a whole identity in ``store`` (a credstore.Store) as a first boot
    does: stage() (the ownership token is the test's), then commit_pending()."""
    pending = credwrite.stage(store, certificate_id, cert, key, "token-from-the-test", 0)
    return credwrite.commit(store, pending, thing_name, device_configuration, endpoint)



def factory_flash(flash: Path, claim: Identity | None = None) -> Identity:
    """Put what a device leaves the factory with into ``flash``/certs: a claim
    certificate and key, and the CA (DER). Returns the claim identity."""
    claim = claim or ec_identity("claim")
    certs = flash / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "claim.der").write_bytes(claim.cert_der)
    (certs / "claim.key.der").write_bytes(claim.key_der())
    (certs / "ca.der").write_bytes(ca_der())
    return claim


def host_says_provisioned(flash: Path) -> bool:
    """An independent reading of the flash: a complete record whose files match
    their digests and whose certificate certifies its key."""
    certs = flash / "certs"
    try:
        rec = json.loads((certs / "provisioned.json").read_text())
        names = rec["files"]
        if any(n.endswith(".tmp") or "/" in n for n in names.values()):
            return False
        blobs = {role: (certs / names[role]).read_bytes() for role in ("cert", "key")}
        if any(hashlib.sha256(blobs[r]).hexdigest() != rec["sha256"][r] for r in blobs):
            return False
        cert = x509.load_der_x509_certificate(blobs["cert"])
        key = serialization.load_der_private_key(blobs["key"], password=None)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
