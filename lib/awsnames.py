# AWS IoT's rules for the names the device sends and stores, the one
# definition the device has: fleetprov checks a template name before it goes
# into a topic and the names in an answer before they are handed on;
# devconfig checks the config's template name when config.json is read (so a
# bad name stops the board before any certificate is made).
# tools/iotsim holds the host's, from botocore's model.

TEMPLATE_NAME_RULE = "1-36 of [0-9A-Za-z_-]"
THING_NAME_RULE = "1-128 of [a-zA-Z0-9:_-]"
CERTIFICATE_ID_RULE = "64 hex digits"


def _made_of(name, low, high, extra):
    # str of low..high characters, each a letter, a digit or one of extra
    if not isinstance(name, str) or not low <= len(name) <= high:
        return False
    for c in name:
        if not ("0" <= c <= "9" or "A" <= c <= "Z" or "a" <= c <= "z" or c in extra):
            return False
    return True


def template_name_ok(name):
    """True when ``name`` is a str AWS accepts as a provisioning template
    name: 1-36 characters of 0-9 A-Z a-z _ - (nothing that changes a topic)."""
    return _made_of(name, 1, 36, "_-")


def thing_name_ok(name):
    """True when ``name`` is a str AWS accepts as a thing name: 1-128
    characters of a-z A-Z 0-9 : _ - (so it is safe as a client id and in a topic)."""
    return _made_of(name, 1, 128, ":_-")


def certificate_id_ok(cid):
    """True when ``cid`` is a certificate id: the SHA-256 of the certificate, 64 hex digits."""
    if not isinstance(cid, str) or len(cid) != 64:
        return False
    for c in cid:
        if c not in "0123456789abcdefABCDEF":
            return False
    return True
