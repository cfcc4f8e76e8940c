"""PKCS#10 certificate signing request for a P-256 key made on the device.

The key pair is generated here (p256.py), the CSR is signed here, and only the
CSR (public key + name + signature) is sent to AWS's CreateCertificateFromCsr.
The private key never leaves the device.

Public API:
    generate(common_name) -> (key_der, csr_pem)
        new key pair and its CSR in one call. key_der: bytes, the private key
        for ssl.SSLContext.load_cert_chain (store it, never send it);
        csr_pem: str, "-----BEGIN CERTIFICATE REQUEST-----..." for
        fleetprov's create_certificate_from_csr.
    build(d, common_name, pub=None) -> str    CSR PEM for private scalar d
    request_der(d, common_name, pub=None) -> bytes    the same, DER
    private_key_der(d, pub) -> bytes          SEC1 ECPrivateKey DER
    public_key_info(pub) -> bytes             SubjectPublicKeyInfo DER
    pem(der, label) -> str                    PEM armour, 64-column lines

Key format: SEC1 / RFC 5915 ECPrivateKey with the curve OID and the public key
("EC PRIVATE KEY"). MicroPython's ssl (mbedTLS) on the unix port loads both
this and PKCS#8 as DER; SEC1 is chosen because it is smaller (121 bytes) and
carries the public key as the same 65-byte BIT STRING a certificate has, so
the credential store can check a certificate against the key by comparing
bytes, without any crypto library.
"""

import binascii

import p256
from runtime import sha256

# Pre-encoded DER of the fixed parts (tag, length, value).
_OID_EC_PUBLIC_KEY = b"\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1
_OID_PRIME256V1 = b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"  # 1.2.840.10045.3.1.7
_OID_ECDSA_SHA256 = b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"  # 1.2.840.10045.4.3.2
_OID_COMMON_NAME = b"\x06\x03\x55\x04\x03"  # 2.5.4.3

# X.520 ub-common-name: a longer CN is refused by strict CAs.
_CN_MAX = 64


def _tlv(tag, body):
    # DER definite length: short form below 128, else 0x81/0x82 + length.
    n = len(body)
    if n < 0x80:
        head = bytes((tag, n))
    elif n < 0x100:
        head = bytes((tag, 0x81, n))
    else:
        head = bytes((tag, 0x82, n >> 8, n & 0xFF))
    return head + body


def _seq(*parts):
    return _tlv(0x30, b"".join(parts))


def _uint(v):
    # DER INTEGER of a non-negative int: minimal big-endian, a 0x00 in front
    # when the top bit is set (else it would read as negative).
    # (MicroPython ints have no bit_length: strip zero bytes instead.) Used
    # for r and s only (< n < 2**256, public), never for the private key.
    b = v.to_bytes(33, "big")
    i = 0
    while i < 32 and b[i] == 0 and b[i + 1] < 0x80:
        i += 1
    return _tlv(0x02, b[i:])


def _point(pub):
    # Uncompressed SEC1 point: 04 || X || Y.
    return b"\x04" + pub[0].to_bytes(32, "big") + pub[1].to_bytes(32, "big")


def pem(der, label):
    """Return der as PEM text with the given label (e.g. "CERTIFICATE REQUEST")."""
    out = ["-----BEGIN %s-----\n" % label]
    for i in range(0, len(der), 48):
        # 48 bytes -> 64 base64 characters and a newline.
        out.append(binascii.b2a_base64(der[i : i + 48]).decode())
    out.append("-----END %s-----\n" % label)
    return "".join(out)


def public_key_info(pub):
    """Return the SubjectPublicKeyInfo DER (id-ecPublicKey, prime256v1) of pub = (x, y)."""
    return _seq(_seq(_OID_EC_PUBLIC_KEY, _OID_PRIME256V1), _tlv(0x03, b"\x00" + _point(pub)))


def private_key_der(d, pub):
    """Return the SEC1 (RFC 5915) ECPrivateKey DER of private scalar d and its public key pub.

    Structure: SEQUENCE { version 1, OCTET STRING d (32 bytes),
    [0] prime256v1, [1] BIT STRING 04||X||Y }. Loads in MicroPython's
    ssl.SSLContext.load_cert_chain(cert_der, key_der) and in OpenSSL.
    """
    p256.check_scalar(d)
    return _seq(
        b"\x02\x01\x01",
        _tlv(0x04, d.to_bytes(32, "big")),
        _tlv(0xA0, _OID_PRIME256V1),
        _tlv(0xA1, _tlv(0x03, b"\x00" + _point(pub))),
    )


def _check_name(common_name):
    if not isinstance(common_name, str):
        raise TypeError("CSR common name must be a str (the client id), got %s" % type(common_name).__name__)
    if not 1 <= len(common_name) <= _CN_MAX:
        raise ValueError(
            "CSR common name must be 1 to %d characters, got %d: use a shorter client id"
            % (_CN_MAX, len(common_name))
        )
    return common_name.encode()


def request_der(d, common_name, pub=None):
    """Return the DER of a PKCS#10 CSR for private scalar d, subject CN=common_name.

    pub: d's public key (x, y) when the caller already has it, else derived.
    Signed with ECDSA-SHA256, deterministic nonce (RFC 6979).
    """
    cn = _check_name(common_name)
    if pub is None:
        pub = p256.public_key(d)
    subject = _seq(_tlv(0x31, _seq(_OID_COMMON_NAME, _tlv(0x0C, cn))))  # UTF8String
    # version 0, subject, key, attributes [0] (empty set: no extensions asked for).
    info = _seq(b"\x02\x01\x00", subject, public_key_info(pub), b"\xa0\x00")
    r, s = p256.sign(d, sha256(info).digest())
    sig = _seq(_uint(r), _uint(s))
    return _seq(info, _seq(_OID_ECDSA_SHA256), _tlv(0x03, b"\x00" + sig))


def build(d, common_name, pub=None):
    """Return a PEM PKCS#10 CSR (str) for private scalar d, subject CN=common_name."""
    return pem(request_der(d, common_name, pub), "CERTIFICATE REQUEST")


def generate(common_name):
    """Make a new P-256 key pair on the device and a CSR for it.

    common_name: str of 1-64 characters, normally the MQTT client id.
    Returns (key_der, csr_pem): key_der is bytes, the SEC1 private key DER
    to store on flash and load with ssl load_cert_chain (never send it);
    csr_pem is str, the CSR to send to CreateCertificateFromCsr.
    Raises TypeError/ValueError for a bad name, OSError if os.urandom fails.
    """
    _check_name(common_name)  # fail before spending time on a key
    d = p256.generate_key()
    pub = p256.public_key(d)
    return private_key_der(d, pub), build(d, common_name, pub)
