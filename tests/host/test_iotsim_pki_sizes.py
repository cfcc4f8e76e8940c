"""iotsim's keys and certificates are as large as AWS's, never smaller.

A device's heap during a first boot holds the claim's DER, the CA's DER and
the CreateKeysAndCertificate answer: an EC claim or a short issuer name here
would let a board pass here that runs out of memory against AWS IoT. The
reference is a certificate shaped like the ones AWS IoT issues (RSA-2048,
issuer "OU=Amazon Web Services O=Amazon.com Inc. L=Seattle ST=Washington
C=US", subject "AWS IoT Certificate", SHA256 with RSA).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tools.iotsim import pki

AWS_ISSUER = "Amazon Web Services O=Amazon.com Inc. L=Seattle ST=Washington C=US"


def _aws_shaped_certificate(public_key: rsa.RSAPublicKey) -> x509.Certificate:
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, AWS_ISSUER)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365 * 30))
        .sign(signer, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki")


def test_a_device_certificate_is_no_smaller_than_one_aws_issues(state: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(state)
    device_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # CreateKeysAndCertificate's
    ours = ca.issue(device_key.public_key(), "AWS IoT Certificate")
    theirs = _aws_shaped_certificate(device_key.public_key())
    assert len(ours.public_bytes(serialization.Encoding.PEM)) >= len(theirs.public_bytes(serialization.Encoding.PEM))


def test_the_ca_broker_and_claim_keys_are_rsa_2048_like_aws(state: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(state)
    claim = pki.ensure_client_identity(state, ca, "claim", "iotsim-claim")
    server_cert, _ = pki.ensure_server_identity(state, ca)
    keys = {
        "CA": ca.cert.public_key(),
        "claim": claim.cert.public_key(),
        "broker": x509.load_pem_x509_certificate(server_cert.read_bytes()).public_key(),
    }
    for what, key in keys.items():
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048, what
    claim_key = serialization.load_der_private_key(claim.key_der_path.read_bytes(), None)
    assert isinstance(claim_key, rsa.RSAPrivateKey)
    # Amazon Root CA 1 (RSA-2048) is 837 bytes of DER: the device holds no less here
    assert len((state / "ca.der").read_bytes()) >= 837


def test_an_ec_identity_is_there_for_the_host_side_only(state: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(state)
    service = pki.ensure_client_identity(state, ca, "service", "iotsim-service", key_type="ec")
    assert isinstance(service.cert.public_key(), ec.EllipticCurvePublicKey)
    with pytest.raises(ValueError, match="key_type"):
        pki.new_key("dsa")
