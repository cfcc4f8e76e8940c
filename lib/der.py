# Minimal DER reading: enough to take the public key out of an X.509
# certificate and out of a private key, so the credential store can check that
# the two belong together before it commits them. No crypto library: the
# comparison is on the key bytes (RSA modulus and exponent, EC public point).
#
# Only definite lengths (DER) are accepted; every length is checked against
# the end of its enclosing element before it is used, so a truncated or
# hostile input raises ValueError and never reads past the buffer.

from runtime import const

_SEQUENCE = const(0x30)
_INTEGER = const(0x02)
_BIT_STRING = const(0x03)
_OCTET_STRING = const(0x04)
_OID = const(0x06)

# Object identifiers, content bytes only.
_RSA = b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"  # 1.2.840.113549.1.1.1 rsaEncryption
_EC = b"\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1 id-ecPublicKey


def tlv(buf, pos, end):
    """Read one element of ``buf`` at ``pos`` (bounded by ``end``).

    Returns ``(tag, start, stop)``: the content is ``buf[start:stop]`` and the
    next element starts at ``stop``. Raises ValueError on a truncated or
    malformed header."""
    if pos + 2 > end:
        raise ValueError("DER: truncated element at offset {}".format(pos))
    tag = buf[pos]
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        # Four length bytes cover anything a device will see; 0x80 alone is
        # BER's indefinite length, which DER forbids.
        if k == 0 or k > 4 or pos + k > end:
            raise ValueError("DER: bad length at offset {}".format(pos - 1))
        n = 0
        for i in range(k):
            n = (n << 8) | buf[pos + i]
        pos += k
    if pos + n > end:
        raise ValueError(
            "DER: element at offset {} claims {} bytes, only {} left".format(pos, n, end - pos)
        )
    return tag, pos, pos + n


def _expect(buf, pos, end, tag, what):
    t, s, e = tlv(buf, pos, end)
    if t != tag:
        raise ValueError("DER: expected {} (tag 0x{:02x}), found tag 0x{:02x}".format(what, tag, t))
    return s, e


def check_sequence(der):
    """Raise ValueError unless ``der`` is exactly one DER SEQUENCE."""
    if len(der) < 2 or der[0] != _SEQUENCE:
        raise ValueError("DER: not a SEQUENCE")
    _, _, e = tlv(der, 0, len(der))
    if e != len(der):
        raise ValueError("DER: {} trailing or missing bytes".format(len(der) - e))


def _uint(buf, s, e):
    # INTEGER content without its sign-padding zero bytes.
    while s < e - 1 and buf[s] == 0:
        s += 1
    return bytes(buf[s:e])


def _rsa_public(buf, s, e):
    # RSAPublicKey ::= SEQUENCE { modulus, publicExponent }
    s, e = _expect(buf, s, e, _SEQUENCE, "RSAPublicKey")
    ns, ne = _expect(buf, s, e, _INTEGER, "modulus")
    es, ee = _expect(buf, ne, e, _INTEGER, "publicExponent")
    return ("rsa", _uint(buf, ns, ne), _uint(buf, es, ee))


def _bit_string(buf, s, e):
    # The first content byte counts unused bits; keys always use whole bytes.
    if s >= e or buf[s] != 0:
        raise ValueError("DER: BIT STRING with unused bits")
    return s + 1, e


def _spki(buf, s, e):
    # SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
    s, e = _expect(buf, s, e, _SEQUENCE, "SubjectPublicKeyInfo")
    as_, ae = _expect(buf, s, e, _SEQUENCE, "AlgorithmIdentifier")
    os_, oe = _expect(buf, as_, ae, _OID, "algorithm OID")
    oid = bytes(buf[os_:oe])
    bs, be = _expect(buf, ae, e, _BIT_STRING, "subjectPublicKey")
    bs, be = _bit_string(buf, bs, be)
    if oid == _RSA:
        return _rsa_public(buf, bs, be)
    if oid == _EC:
        return ("ec", bytes(buf[bs:be]))
    raise ValueError("DER: unsupported public key algorithm")


def _tbs(cert):
    # (memoryview, start, end) of the TBSCertificate's fields after version
    mv = memoryview(cert)
    s, e = _expect(mv, 0, len(cert), _SEQUENCE, "Certificate")
    s, e = _expect(mv, s, e, _SEQUENCE, "TBSCertificate")
    t, _, nxt = tlv(mv, s, e)
    if t == 0xA0:  # [0] EXPLICIT version, absent in v1 certificates
        s = nxt
    return mv, s, e


def not_after(cert):
    """When an X.509 certificate (DER bytes) expires: seconds since this
    port's epoch (time.time()'s). Raises ValueError when it cannot be read."""
    mv, s, e = _tbs(cert)
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, s = tlv(mv, s, e)
    s, e = _expect(mv, s, e, _SEQUENCE, "Validity")
    _, _, s = tlv(mv, s, e)  # notBefore
    t, ts, te = tlv(mv, s, e)
    text = bytes(mv[ts:te])
    # UTCTime YYMMDDHHMMSSZ (years 1950-2049) or GeneralizedTime YYYYMMDDHHMMSSZ
    if t == 0x17 and len(text) == 13:
        y = int(text[:2])
        y += 1900 if y >= 50 else 2000
        text = text[2:]
    elif t == 0x18 and len(text) == 15:
        y = int(text[:4])
        text = text[4:]
    else:
        raise ValueError("DER: notAfter is neither UTCTime nor GeneralizedTime")
    if text[-1:] != b"Z":
        raise ValueError("DER: notAfter is not in UTC")
    mo, d, hh, mi, ss = (int(text[i:i + 2]) for i in range(0, 10, 2))
    # days from 1970-01-01 to the date (Howard Hinnant's days_from_civil)
    y -= mo <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    epoch = _epoch_days()
    return (days - epoch) * 86400 + hh * 3600 + mi * 60 + ss


def _epoch_days():
    """Days from 1970-01-01 to this port's epoch (10957 where it is 2000-01-01)."""
    import time

    return 0 if time.localtime(0)[0] < 2000 else 10957  # (1969 or 1970, by the time zone)


def cert_public_key(cert):
    """Public key of an X.509 certificate (DER bytes).

    Returns ``("rsa", modulus, exponent)`` or ``("ec", point)`` (all bytes).
    Raises ValueError when the certificate cannot be parsed."""
    mv, s, e = _tbs(cert)
    # serialNumber, signature, issuer, validity, subject: skipped whole.
    for _ in range(5):
        _, _, s = tlv(mv, s, e)
    return _spki(mv, s, e)


def _ec_private(buf, s, e):
    # ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING,
    #   [0] parameters OPTIONAL, [1] publicKey BIT STRING OPTIONAL }
    s, e = _expect(buf, s, e, _SEQUENCE, "ECPrivateKey")
    _, _, s = _expect_int(buf, s, e)
    ds, de = _expect(buf, s, e, _OCTET_STRING, "privateKey")
    s = de
    while s < e:
        t, cs, ce = tlv(buf, s, e)
        if t == 0xA1:
            bs, be = _expect(buf, cs, ce, _BIT_STRING, "publicKey")
            bs, be = _bit_string(buf, bs, be)
            return ("ec", bytes(buf[bs:be]))
        s = ce
    # No public key stored: derive it from the scalar. Imported only here so a
    # device that never meets such a key does not load the curve code.
    try:
        import p256
    except ImportError:
        raise ValueError("EC key without its public key, and no p256 module to derive it")
    x, y = p256.public_key(int.from_bytes(bytes(buf[ds:de]), "big"))
    return ("ec", b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big"))


def _expect_int(buf, s, e):
    t, cs, ce = tlv(buf, s, e)
    if t != _INTEGER:
        raise ValueError("DER: expected INTEGER version, found tag 0x{:02x}".format(t))
    return cs, ce, ce


def _rsa_private(buf, s, e):
    # RSAPrivateKey ::= SEQUENCE { version, modulus, publicExponent, ... }
    s, e = _expect(buf, s, e, _SEQUENCE, "RSAPrivateKey")
    _, _, s = _expect_int(buf, s, e)
    ns, ne = _expect(buf, s, e, _INTEGER, "modulus")
    es, ee = _expect(buf, ne, e, _INTEGER, "publicExponent")
    return ("rsa", _uint(buf, ns, ne), _uint(buf, es, ee))


def key_public_key(key):
    """Public key of a private key (DER bytes: PKCS#1 RSA, SEC1 EC or PKCS#8).

    Same return shape as ``cert_public_key``. The private key's secret parts
    are never copied out. Raises ValueError when the key cannot be parsed."""
    mv = memoryview(key)
    end = len(key)
    s, e = _expect(mv, 0, end, _SEQUENCE, "private key")
    _, _, p = _expect_int(mv, s, e)
    t, as_, ae = tlv(mv, p, e)
    if t == _SEQUENCE:
        # PKCS#8 PrivateKeyInfo: version, AlgorithmIdentifier, OCTET STRING
        os_, oe = _expect(mv, as_, ae, _OID, "algorithm OID")
        oid = bytes(mv[os_:oe])
        ks, ke = _expect(mv, ae, e, _OCTET_STRING, "privateKey")
        if oid == _RSA:
            return _rsa_private(mv, ks, ke)
        if oid == _EC:
            return _ec_private(mv, ks, ke)
        raise ValueError("DER: unsupported private key algorithm")
    if t == _INTEGER:
        return _rsa_private(mv, 0, end)
    if t == _OCTET_STRING:
        return _ec_private(mv, 0, end)
    raise ValueError("DER: unrecognised private key structure")


def _same_point(a, b):
    # An uncompressed point (04 || X || Y) equals a compressed one (02/03 || X)
    # when X matches and the parity of Y is the one the prefix names.
    if a == b:
        return True
    if len(a) > len(b):
        a, b = b, a
    if len(b) != 2 * len(a) - 1 or b[0] != 4 or a[0] not in (2, 3):
        return False
    return a[1:] == b[1 : len(a)] and (b[-1] & 1) == (a[0] & 1)


def same_key(cert, key):
    """True when the certificate (DER) certifies the public half of ``key`` (DER).

    Raises ValueError when either cannot be parsed."""
    c = cert_public_key(cert)
    k = key_public_key(key)
    if c[0] != k[0]:
        return False
    if c[0] == "rsa":
        return c[1] == k[1] and c[2] == k[2]
    return _same_point(c[1], k[1])
