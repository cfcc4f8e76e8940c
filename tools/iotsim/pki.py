"""iotsim's certificate authority and the identities it issues.

Everything lives in one state folder: the CA (ca.pem, ca.key.pem, ca.der), the
broker's server identity (server.pem, server.key.pem) and client identities
(<name>.pem, <name>.key.pem, <name>.der, <name>.key.der).

Keys and names are as large as AWS's, so a device here needs no less memory
than against AWS IoT: the CA, the broker and the claim use RSA-2048 (AWS's
server chain is RSA-2048 under Amazon Root CA 1, and a claim made by
CreateKeysAndCertificate, as tools/awssetup makes it, is RSA-2048), and the
CA's name is as long as the issuer AWS writes into device certificates. The
provisioning service's own identity (host side only) is EC P-256. A state
folder made by an older iotsim keeps its EC CA until it is deleted.
Files are written atomically (temporary file, fsync, rename) and every
``ensure_*``/``load_or_create`` call is idempotent: existing material is reused
while it is valid and issued by the current CA, otherwise it is replaced.
Creation is serialised between processes with a lock file in the state folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .limits import CERT_DAYS

CA_COMMON_NAME = "iotsim CA"
# AWS IoT writes "OU=Amazon Web Services O=Amazon.com Inc. L=Seattle
# ST=Washington C=US" as the issuer of the certificates it makes: the CA's
# name carries as many bytes, so a certificate (and a CreateKeysAndCertificate
# answer) is not smaller here than there.
CA_UNIT = "iotsim, a local stand-in for AWS IoT Core; this name is as long as AWS's"
KEY_TYPES = ("rsa", "ec")
DEFAULT_DAYS = CERT_DAYS
# Certificates are back-dated so a host clock that is slightly behind the
# device's (or vice versa) does not make a fresh certificate "not yet valid".
_BACKDATE = dt.timedelta(hours=1)
# Reissue an identity that would expire within this margin.
_RENEW_MARGIN = dt.timedelta(days=1)


def certificate_id(cert: x509.Certificate) -> str:
    """Return AWS's certificateId: lowercase hex SHA-256 of the certificate DER."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def new_key(key_type: str = "rsa") -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Generate a private key: "rsa" (2048 bits, AWS's size) or "ec" (P-256)."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError("key_type must be one of {}, not {!r}".format(KEY_TYPES, key_type))


def write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (tmp file, fsync, rename).

    ``private`` files (keys) are created with mode 0600.
    """
    tmp = path.with_name(".{}.{}.tmp".format(path.name, secrets.token_hex(4)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def _state_lock(state: Path) -> Iterator[None]:
    """Serialise creation of PKI material between processes sharing ``state``."""
    state.mkdir(parents=True, exist_ok=True)
    with open(state / ".pki.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_der(key: PrivateKeyTypes) -> bytes:
    # PKCS#8 DER: mbedTLS (MicroPython's ssl) and OpenSSL both parse it.
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True)
class CertificateAuthority:
    """The iotsim CA: an RSA-2048 key (EC P-256 in an older state folder) and
    its self-signed certificate."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def load_or_create(cls, state: Path) -> CertificateAuthority:
        """Load ca.pem/ca.key.pem from ``state``, creating them (and ca.der) if absent."""
        state = Path(state)
        with _state_lock(state):
            cert_path, key_path = state / "ca.pem", state / "ca.key.pem"
            if cert_path.exists() and key_path.exists():
                return cls._load(cert_path, key_path, state / "ca.der")
            return cls._create(state)

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path, der_path: Path) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise ValueError(
                "cannot load the iotsim CA from {} / {}: {}; delete both files to "
                "create a new CA".format(cert_path, key_path, exc)
            ) from exc
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) or (
            key.public_key().public_numbers() != cert.public_key().public_numbers()  # type: ignore[union-attr]
        ):
            raise ValueError(
                "{} does not hold the private key of {}; delete both files to create "
                "a new CA".format(key_path, cert_path)
            )
        if not der_path.exists():
            write_atomic(der_path, cert.public_bytes(serialization.Encoding.DER))
        return cls(cert, key)

    @classmethod
    def _create(cls, state: Path) -> CertificateAuthority:
        key = new_key("rsa")
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, CA_UNIT),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
        ])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=DEFAULT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a crash between the two writes leaves no certificate
        # without its key.
        write_atomic(state / "ca.key.pem", _key_pem(key), private=True)
        write_atomic(state / "ca.der", cert.public_bytes(serialization.Encoding.DER))
        write_atomic(state / "ca.pem", _cert_pem(cert))
        return cls(cert, key)

    def issue(
        self,
        public_key: CertificateIssuerPublicKeyTypes,
        common_name: str,
        *,
        days: int = DEFAULT_DAYS,
        server_names: Sequence[str] = (),
        serial: int | None = None,
    ) -> x509.Certificate:
        """Issue a certificate for ``public_key`` (RSA or EC).

        A client certificate (extendedKeyUsage clientAuth) unless ``server_names``
        is given: then a server certificate with those names (IP addresses or DNS
        names) in subjectAltName. ``days`` is the validity; ``serial`` defaults to
        a random 159-bit number.
        """
        if days <= 0:
            raise ValueError("certificate validity must be positive, got days={}".format(days))
        now = _now()
        eku = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in server_names]),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256())

    def issued(self, cert: x509.Certificate) -> bool:
        """True when ``cert`` is signed by this CA and valid for at least another day."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return cert.not_valid_after_utc - _RENEW_MARGIN > _now()


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate and key on disk (PEM and DER) and its certificateId."""

    name: str
    cert_path: Path
    key_path: Path
    cert_der_path: Path
    key_der_path: Path
    cert: x509.Certificate
    certificate_id: str


def _load_reusable(
    ca: CertificateAuthority, paths: Sequence[Path]
) -> x509.Certificate | None:
    """Return the certificate at paths[0] if every file exists, the key matches
    and the certificate is issued by ``ca``; else None (caller recreates)."""
    if not all(p.exists() for p in paths):
        return None
    try:
        cert = x509.load_pem_x509_certificate(paths[0].read_bytes())
        key = serialization.load_pem_private_key(paths[1].read_bytes(), password=None)
    except ValueError:
        return None
    if not ca.issued(cert):
        return None
    if key.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return None
    return cert


def ensure_server_identity(state: Path, ca: CertificateAuthority) -> tuple[Path, Path]:
    """Ensure server.pem/server.key.pem (SAN IP:127.0.0.1, DNS:localhost) exist.

    Returns (cert_path, key_path).
    """
    state = Path(state)
    cert_path, key_path = state / "server.pem", state / "server.key.pem"
    with _state_lock(state):
        if _load_reusable(ca, (cert_path, key_path)) is None:
            key = new_key("rsa")
            cert = ca.issue(
                key.public_key(), "localhost", server_names=("127.0.0.1", "localhost")
            )
            write_atomic(key_path, _key_pem(key), private=True)
            write_atomic(cert_path, _cert_pem(cert))
    return cert_path, key_path


def ensure_client_identity(
    state: Path, ca: CertificateAuthority, name: str, common_name: str, *, renew: bool = False,
    key_type: str = "rsa",
) -> ClientIdentity:
    """Ensure a client identity ``name`` exists in ``state`` and return it.

    Writes <name>.pem, <name>.key.pem, <name>.der and <name>.key.der (PKCS#8),
    reusing them while they are valid and issued by ``ca`` (``renew``: always
    a new key and certificate). ``key_type``: "rsa" (2048 bits) or "ec".
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError("identity name must be a plain file stem, got {!r}".format(name))
    state = Path(state)
    paths = (
        state / "{}.pem".format(name),
        state / "{}.key.pem".format(name),
        state / "{}.der".format(name),
        state / "{}.key.der".format(name),
    )
    with _state_lock(state):
        cert = None if renew else _load_reusable(ca, paths)
        if cert is None:
            key = new_key(key_type)
            cert = ca.issue(key.public_key(), common_name)
            write_atomic(paths[1], _key_pem(key), private=True)
            write_atomic(paths[3], _key_der(key), private=True)
            write_atomic(paths[2], cert.public_bytes(serialization.Encoding.DER))
            write_atomic(paths[0], _cert_pem(cert))
    return ClientIdentity(
        name=name,
        cert_path=paths[0],
        key_path=paths[1],
        cert_der_path=paths[2],
        key_der_path=paths[3],
        cert=cert,
        certificate_id=certificate_id(cert),
    )
