# PEM <-> DER for certificates and private keys. AWS sends PEM; the unix and
# ESP32 ports' TLS loads DER, CircuitPython's loads PEM. The credential store
# loads this only while it stages a new identity, so a provisioned boot never
# holds it. Every failure is a ValueError whose text starts "PEM:".

import binascii

import der


def pem_to_der(pem, label=None):
    """Convert one PEM block (str or bytes) to DER bytes.

    ``label`` (e.g. "CERTIFICATE") restricts the accepted block type; any
    label ending in it matches, so "PRIVATE KEY" accepts "RSA PRIVATE KEY"
    and "EC PRIVATE KEY". Handles \\r\\n line ends. Raises ValueError on
    anything that is not exactly one well-formed PEM block holding DER."""
    if isinstance(pem, (bytes, bytearray)):
        pem = pem.decode()
    b = pem.find("-----BEGIN ")
    if b < 0:
        raise ValueError("PEM: no '-----BEGIN' line; expected a PEM block")
    h = pem.find("-----", b + 11)
    if h < 0:
        raise ValueError("PEM: unterminated BEGIN line")
    got = pem[b + 11 : h]
    if label is not None and not (got == label or got.endswith(" " + label)):
        raise ValueError("PEM: expected a {} block, found {}".format(label, got))
    end_line = "-----END " + got + "-----"
    e = pem.find(end_line, h + 5)
    if e < 0:
        raise ValueError("PEM: no matching '{}' line".format(end_line))
    body = pem[h + 5 : e]
    # a2b_base64 skips characters outside the alphabet silently (MicroPython
    # and CPython alike), so count what should decode and compare.
    chars = len(body)
    for ws in ("\n", "\r", " ", "\t"):
        chars -= body.count(ws)
    try:
        out = binascii.a2b_base64(body)
    except ValueError as ex:
        raise ValueError("PEM: {} block is not valid base64 ({})".format(got, ex))
    del body
    if chars % 4 or len(out) != chars // 4 * 3 - _padding(pem, e):
        raise ValueError("PEM: {} block holds characters that are not base64".format(got))
    try:
        der.check_sequence(out)
    except ValueError as ex:
        raise ValueError("PEM: {} block is not valid DER ({})".format(got, ex))
    return out


def _padding(pem, e):
    # Number of '=' at the end of the base64 body that ends at index e.
    n = 0
    i = e - 1
    while i >= 0 and pem[i] in "\r\n \t=":
        if pem[i] == "=":
            n += 1
        i -= 1
    return n


def der_to_pem(data, label):
    """PEM text (str) of one DER block ``data`` under ``label``, 64 characters a line."""
    b64 = binascii.b2a_base64(data).strip()
    lines = ["-----BEGIN " + label + "-----"]
    for i in range(0, len(b64), 64):
        lines.append(b64[i : i + 64].decode())
    lines.append("-----END " + label + "-----\n")
    return "\n".join(lines)


def key_label(key):
    """The PEM label a private key's DER calls for: "PRIVATE KEY" (PKCS#8),
    "RSA PRIVATE KEY" (PKCS#1) or "EC PRIVATE KEY" (SEC1)."""
    # After the version INTEGER, PKCS#8 holds an AlgorithmIdentifier
    # SEQUENCE, PKCS#1 RSA an INTEGER, SEC1 EC an OCTET STRING.
    _, s, e = der.tlv(key, 0, len(key))
    _, _, after = der.tlv(key, s, e)  # the version INTEGER
    tag = der.tlv(key, after, e)[0]
    if tag == 0x30:
        return "PRIVATE KEY"
    return "RSA PRIVATE KEY" if tag == 0x02 else "EC PRIVATE KEY"
