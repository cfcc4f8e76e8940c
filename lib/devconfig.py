# config.json: read, check every field, fill in the defaults.
# The schema is documented in docs/configuration.md; keep the two in step.
# One bad field stops the device with one line that names it, so a user
# editing the file by hand sees exactly what to fix. An unknown field is a
# bad field too (a misspelt "rx_sise" would otherwise leave rx_size at its
# default without a word), named with the known field it most likely meant.
# `make deploy` (tools/deploy.py) runs this same file on the host first.

import json

import awsnames


class ConfigError(Exception):
    """config.json is missing, not JSON, or has a bad field."""


# name: (type, default, hint). A default of _REQUIRED means the field must be
# present. int fields must be positive unless listed in _ZERO_OK.
_REQUIRED = object()
_FIELDS = (
    ("endpoint", str, _REQUIRED, 'the MQTT endpoint host, e.g. "xxxx-ats.iot.eu-west-1.amazonaws.com"'),
    ("port", int, 8883, "the MQTT-over-TLS port, usually 8883"),
    ("server_hostname", str, None, "the name the server certificate carries"),
    ("client_id", str, None, "the MQTT client id"),
    ("thing_name", str, None, 'the thing name the template gives, e.g. "fleetprov-{uid}"'),
    ("template", str, _REQUIRED, 'the provisioning template name, e.g. "FleetprovDemo"'),
    ("parameters", dict, None, 'an object of strings, e.g. {"SerialNumber": "{uid}"}'),
    ("format", str, "json", '"json" or "cbor"'),
    ("method", str, "keys", '"keys" or "csr"'),
    ("cert_dir", str, "certs", "the certificate folder on flash"),
    ("ca", str, "ca.der", "the CA certificate file (DER) in cert_dir"),
    ("claim_cert", str, "claim.der", "the claim certificate file (DER) in cert_dir"),
    ("claim_key", str, "claim.key.der", "the claim private key file (DER) in cert_dir"),
    ("csr", str, "csr.pem", "a CSR file (PEM) in cert_dir"),
    ("csr_key", str, "csr.key.der", "the CSR's private key file (DER) in cert_dir"),
    ("app_topic", str, "fleetprov/{thing_name}/hello", "the topic the application publishes to"),
    ("wifi", dict, None, '{"ssid": "...", "password": "..."}'),
    ("ntp_host", str, "pool.ntp.org", "an NTP server name"),
    ("connect_timeout_ms", int, 10000, "milliseconds"),
    ("mqtt_timeout_ms", int, 5000, "milliseconds"),
    ("response_timeout_ms", int, 10000, "milliseconds"),
    ("rx_size", int, 6144, "bytes, at least 1024"),
    ("retry_attempts", int, 5, "a count, at least 1"),
    ("retry_base_ms", int, 1000, "milliseconds"),
    ("retry_max_ms", int, 30000, "milliseconds"),
    ("rotation_template", str, None, 'the template that registers a new certificate, e.g. "FleetprovRotation"'),
    ("rotate_days", int, 30, "days before the certificate expires when the boot rotates it; 0: never by itself"),
    ("retire_topic", str, "fleetprov/{thing_name}/retire", "the topic that retires a rotated-out certificate"),
)
# The field names in documentation order (CircuitPython settings.toml keys derive from them).
FIELD_NAMES = tuple(f[0] for f in _FIELDS)
_ZERO_OK = ("retry_base_ms", "retry_max_ms", "rotate_days")
_CHOICES = {"format": ("json", "cbor"), "method": ("keys", "csr")}
_WIFI_FIELDS = ("ssid", "password")


def _fail(name, msg, hint):
    raise ConfigError("config.json: field '{}' {} ({})".format(name, msg, hint))


def _typename(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    return type(v).__name__


def _check(name, v, typ, hint):
    # bool is an int subclass in Python: refuse true/false for a number.
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        if typ is int:
            want = "an integer"
        elif typ is dict:
            want = "an object"
        else:
            want = "a string"
        _fail(name, "must be {}, got {} {}".format(want, _typename(v), json.dumps(v)), hint)
    if typ is str and not v:
        _fail(name, "must not be empty", hint)
    if typ is int:
        low = 0 if name in _ZERO_OK else 1
        if name == "rx_size":
            low = 1024
        if v < low or (name == "port" and v > 65535):
            _fail(name, "is out of range: {}".format(v), hint)
    if name in _CHOICES and v not in _CHOICES[name]:
        _fail(name, "must be one of {}, got {}".format(" or ".join(_CHOICES[name]), json.dumps(v)), hint)


def _refuse_unknown(raw, known, prefix=""):
    # Sorted: MicroPython's dict order is not CPython's, and the board and
    # `make deploy` must name the same field first.
    for name in sorted(raw):
        if name in known:
            continue
        # Did you mean: the known name with the fewest edits (Levenshtein
        # distance, one row at a time), if at most a third of the letters
        # (at least one) must change; a tie goes to the earlier field. One
        # function, no tables: this module is in RAM while config.json loads.
        # A name whose length alone is too far off is skipped, so a hostile
        # long key costs no quadratic search.
        a = str(name).lower()
        best, most = None, max(1, len(a) // 3) + 1
        for b in known:
            if abs(len(a) - len(b)) >= most:
                continue
            row = list(range(len(b) + 1))
            for i in range(len(a)):
                prev, row[0] = row[0], i + 1
                for j in range(len(b)):
                    prev, row[j + 1] = row[j + 1], min(row[j + 1] + 1, row[j] + 1, prev + (a[i] != b[j]))
            if row[-1] < most:
                best, most = b, row[-1]
        if best is None:
            _fail(prefix + str(name), "is unknown", "remove it; docs/configuration.md lists the fields")
        _fail(prefix + str(name), "is unknown", "did you mean '{}'?".format(best))


def validate(raw):
    """Check a decoded config (dict) and return a new dict with every field,
    defaults filled in. Raises ConfigError naming the first bad field; a
    field this library does not know is one (with a did-you-mean)."""
    if not isinstance(raw, dict):
        raise ConfigError("config.json: must hold a JSON object, got {}".format(_typename(raw)))
    _refuse_unknown(raw, FIELD_NAMES)
    cfg = {}
    for name, typ, default, hint in _FIELDS:
        v = raw.get(name)
        if v is None:
            if default is _REQUIRED:
                _fail(name, "is missing", hint)
            cfg[name] = default
            continue
        _check(name, v, typ, hint)
        cfg[name] = v
    for name in ("template", "rotation_template"):
        t = cfg[name]
        if t is not None and not awsnames.template_name_ok(t):
            _fail(name, "must be {}, got {}".format(awsnames.TEMPLATE_NAME_RULE, json.dumps(t)),
                  "the template name as AWS shows it")
    params = cfg["parameters"] or {}
    for k in params:
        if not isinstance(params[k], str):
            _fail("parameters." + k, "must be a string, got {} {}".format(
                _typename(params[k]), json.dumps(params[k])), "RegisterThing parameters are strings")
    cfg["parameters"] = params
    wifi = cfg["wifi"]
    if wifi is not None:
        _refuse_unknown(wifi, _WIFI_FIELDS, "wifi.")
        for k in _WIFI_FIELDS:
            v = wifi.get(k)
            if v is None:
                _fail("wifi." + k, "is missing", "the Wi-Fi network's " + k)
            if not isinstance(v, str):
                # Never echo the value: it may be the Wi-Fi password.
                _fail("wifi." + k, "must be a string, got {}".format(_typename(v)),
                      "the Wi-Fi network's " + k)
    if cfg["server_hostname"] is None:
        cfg["server_hostname"] = cfg["endpoint"]
    return cfg


def load(path="config.json"):
    """Read and validate ``path``; see validate()."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as ex:
        raise ConfigError("cannot read {} ({}); copy it to the board".format(path, ex))
    try:
        raw = json.loads(text)
    except ValueError as ex:
        raise ConfigError("{} is not valid JSON ({})".format(path, ex))
    return validate(raw)
