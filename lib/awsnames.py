# AWS IoT's rule for a provisioning template name, the one definition the
# device has: fleetprov checks a name before it goes into a topic,
# devconfig when config.json is read (so a bad name stops the board before
# any certificate is made). tools/iotsim/templates.py holds the host's.

TEMPLATE_NAME_RULE = "1-36 of [0-9A-Za-z_-]"


def template_name_ok(name):
    """True when ``name`` is a str AWS accepts as a provisioning template
    name: 1-36 characters of 0-9 A-Z a-z _ - (nothing that changes a topic)."""
    if not isinstance(name, str) or not 0 < len(name) <= 36:
        return False
    for c in name:
        if not ("0" <= c <= "9" or "A" <= c <= "Z" or "a" <= c <= "z" or c == "_" or c == "-"):
            return False
    return True
