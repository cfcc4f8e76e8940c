# config.json: read, check every field, fill in the defaults.
# The schema is documented in docs/configuration.md; keep the two in step.
# One bad field stops the device with one line that names it, so a user
# editing the file by hand sees exactly what to fix.

import json

_TEMPLATE_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"


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
)
# The field names in documentation order (CircuitPython settings.toml keys derive from them).
FIELD_NAMES = tuple(f[0] for f in _FIELDS)
_ZERO_OK = ("retry_base_ms", "retry_max_ms")
_CHOICES = {"format": ("json", "cbor"), "method": ("keys", "csr")}


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


def _distance(a, b):
    # Levenshtein distance (a field name is short: a few hundred steps).
    prev = list(range(len(b) + 1))
    for i in range(len(a)):
        cur = [i + 1]
        for j in range(len(b)):
            cur.append(min(prev[j + 1] + 1, cur[j] + 1, prev[j] + (a[i] != b[j])))
        prev = cur
    return prev[-1]


def closest_field(name):
    """The field ``name`` most likely misspells (at most two edits, or a
    shortened or lengthened name), or None."""
    best = None
    best_d = 3
    for f in FIELD_NAMES:
        d = _distance(name, f)
        prefix = (len(name) > 2 and f.startswith(name)) or (len(f) > 3 and name.startswith(f))
        if d < best_d or (best is None and prefix):
            best, best_d = f, min(d, best_d)
    return best


def unknown_field(name):
    """(message, misspelt) for a field config.json does not define; the host
    check prints the same message. ``misspelt``: it is close to a field."""
    guess = closest_field(name)
    if guess is not None:
        return "config.json: unknown field '{}' (did you mean '{}'?)".format(name, guess), True
    return "config.json: unknown field '{}' ignored (the fields are in docs/configuration.md)".format(name), False


def validate(raw, warn=None):
    """Check a decoded config (dict) and return a new dict with every field,
    defaults filled in. Raises ConfigError naming the first bad field. A
    field close to a known one is a misspelling (the setting meant would be
    silently ignored): ConfigError. Any other unknown field is passed to
    ``warn(message)`` (a newer config.json on an older library) and ignored."""
    if not isinstance(raw, dict):
        raise ConfigError("config.json: must hold a JSON object, got {}".format(_typename(raw)))
    for name in raw:
        if name not in FIELD_NAMES:
            msg, misspelt = unknown_field(name)
            if misspelt:
                raise ConfigError(msg)
            if warn is not None:
                warn(msg)
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
    t = cfg["template"]
    if len(t) > 36 or any(c not in _TEMPLATE_CHARS for c in t):
        _fail("template", "must be 1-36 of [0-9A-Za-z_-], got {}".format(json.dumps(t)),
              "the template name as AWS shows it")
    params = cfg["parameters"] or {}
    for k in params:
        if not isinstance(params[k], str):
            _fail("parameters." + k, "must be a string, got {} {}".format(
                _typename(params[k]), json.dumps(params[k])), "RegisterThing parameters are strings")
    cfg["parameters"] = params
    wifi = cfg["wifi"]
    if wifi is not None:
        for k in ("ssid", "password"):
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


def load(path="config.json", warn=print):
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
    return validate(raw, warn)
