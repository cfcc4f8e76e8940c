# cpboard: the CircuitPython board around lib/firstboot.py.
#
# firstboot does the flow (claim connection, fleetprov, credential store,
# reconnection as the thing) exactly as on MicroPython; this module gives it
# what a CircuitPython board has instead of config.json, machine and umqtt:
#   - the configuration from settings.toml (os.getenv), FLEETPROV_<FIELD> for
#     each config.json field of docs/configuration.md, checked by devconfig;
#   - Wi-Fi (wifi.radio, CIRCUITPY_WIFI_SSID/PASSWORD), a socketpool, the
#     clock from NTP (adafruit_ntp into rtc), the id from microcontroller.cpu.uid;
#   - MiniMQTT connections (mmqttclient) instead of umqtt ones (mqttlink);
#   - a credential store in PEM (CircuitPython's TLS loads PEM files by path),
#     with credstore's commit protocol and checks unchanged;
#   - CIRCUITPY's write access: code may write only when boot.py remounted the
#     drive for it, so a device that still has to provision checks first and
#     says how to hand the drive over, instead of failing after the cloud has
#     issued a certificate.

import binascii
import json
import os
import time

import credstore
import devconfig
import bootflow
from device import Board
from runtime import ticks_ms

# config.json fields whose settings.toml value is JSON text or a number
_JSON_FIELDS = ("parameters",)
_INT_FIELDS = ("port", "connect_timeout_ms", "mqtt_timeout_ms", "response_timeout_ms", "rx_size",
               "retry_attempts", "retry_base_ms", "retry_max_ms")
# CircuitPython defaults where config.json's differ: PEM claim files
_DEFAULTS = {"ca": "ca.pem", "claim_cert": "claim.pem", "claim_key": "claim.key.pem"}
SOCKET_TIMEOUT_MS = 1000  # MiniMQTT's default socket timeout: the longest single socket wait
WRITE_MARKER = "usb-write"  # boot.py leaves the drive to the computer while this file exists


class BoardError(Exception):
    """The board cannot start first boot (settings, Wi-Fi, read-only drive).
    ``retryable``: a later boot may succeed without the user doing anything."""

    def __init__(self, msg, retryable=False):
        super().__init__(msg)
        self.retryable = retryable


def setting_name(field):
    """The settings.toml key of a config.json field: FLEETPROV_<FIELD>."""
    return "FLEETPROV_" + field.upper()


def load_settings(getenv=os.getenv):
    """Read every FLEETPROV_* setting and return a validated config (see
    devconfig.validate). Raises BoardError naming the settings.toml key."""
    raw = dict(_DEFAULTS)
    for field in devconfig.FIELD_NAMES:
        if field == "wifi":
            continue  # CircuitPython's own CIRCUITPY_WIFI_SSID / CIRCUITPY_WIFI_PASSWORD
        v = getenv(setting_name(field))
        if v is None:
            continue
        if field in _JSON_FIELDS and isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                raise BoardError("settings.toml: {} is not JSON text: {}".format(setting_name(field), v))
        elif field in _INT_FIELDS and isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                pass  # devconfig names the field and the value
        raw[field] = v
    try:
        cfg = devconfig.validate(raw)
    except devconfig.ConfigError as ex:
        raise BoardError(_settings_message(str(ex)))
    # MiniMQTT's socket timeout: TCP connect, each TLS handshake step, each
    # read. A slow link may need more (a float is fine for socketpool's
    # settimeout; settings.toml has whole numbers only, hence milliseconds).
    wait = getenv("FLEETPROV_SOCKET_TIMEOUT_MS")
    wait = SOCKET_TIMEOUT_MS if wait is None else wait
    if isinstance(wait, str) and wait.isdigit():
        wait = int(wait)
    if not isinstance(wait, int) or isinstance(wait, bool) or wait < 1:
        raise BoardError("settings.toml: FLEETPROV_SOCKET_TIMEOUT_MS must be a positive whole number "
                         "of milliseconds, got {}".format(wait))
    cfg["socket_timeout_ms"] = wait
    if cfg["mqtt_timeout_ms"] <= wait:  # MiniMQTT's rule for its recv_timeout
        raise BoardError("settings.toml: FLEETPROV_MQTT_TIMEOUT_MS = {} must exceed MiniMQTT's socket "
                         "timeout, FLEETPROV_SOCKET_TIMEOUT_MS = {}".format(cfg["mqtt_timeout_ms"], wait))
    return cfg


def _settings_message(msg):
    # devconfig speaks of config.json fields; the user edits settings.toml keys.
    head = "config.json: field '"
    if msg.startswith(head):
        end = msg.index("'", len(head))
        name = msg[len(head):end].split(".")[0]
        return "settings.toml: " + setting_name(name) + msg[end + 1:]
    return msg


class Store(credstore.Store):
    """credstore.Store in PEM mode whose claim() and identity() return file
    paths: CircuitPython's ssl loads the certificate and key by path
    (load_cert_chain(certfile, keyfile)) and the CA as PEM text."""

    def __init__(self, cfg):
        super().__init__(cfg["cert_dir"], cfg["claim_cert"], cfg["claim_key"], cfg["ca"], pem=True)

    def _existing(self, name):
        p = self.path(name)
        try:
            os.stat(p)
        except OSError as ex:
            raise credstore.StoreError("cannot read {} ({}); copy it to CIRCUITPY".format(p, ex))
        return p

    def claim(self):
        """Paths of the claim certificate and key (PEM)."""
        return self._existing(self.claim_cert), self._existing(self.claim_key)

    def identity(self):
        """Paths of the provisioned certificate and key (PEM)."""
        if self.record is None:
            raise credstore.StoreError("not provisioned: no verified identity to connect with")
        return self.files(self.record)

    def files(self, rec):
        """Paths of the certificate and key (PEM) ``rec`` names: the record,
        or a staged identity (in PEM mode every staged file is PEM)."""
        f = rec["files"]
        return self._existing(f["cert"]), self._existing(f["key"])

    def ca_der(self):
        """The CA certificate as PEM text (the name is the store's interface)."""
        return self.read(self.ca).decode()


def writable():
    """True when code may write CIRCUITPY (boot.py remounted it for code)."""
    import storage

    return not storage.getmount("/").readonly


def join_wifi(printer=print):
    """Connect wifi.radio with CIRCUITPY_WIFI_SSID/PASSWORD unless it already is
    (CircuitPython joins on its own when they are set). Returns a socket pool."""
    import socketpool
    import wifi

    if not wifi.radio.connected:
        ssid = os.getenv("CIRCUITPY_WIFI_SSID")
        if not ssid:
            raise BoardError("settings.toml: CIRCUITPY_WIFI_SSID is not set")
        printer("fleetprov: joining Wi-Fi {}".format(ssid))
        try:
            wifi.radio.connect(ssid, os.getenv("CIRCUITPY_WIFI_PASSWORD") or "", timeout=20)
        except (ConnectionError, OSError) as ex:
            raise BoardError("Wi-Fi {} did not connect: {}".format(ssid, ex), retryable=True)
    printer("fleetprov: Wi-Fi up, address {}".format(wifi.radio.ipv4_address))
    return socketpool.SocketPool(wifi.radio)


def set_clock(pool, host, printer=print):
    """Set the RTC from NTP: TLS checks certificate dates. Failures are printed
    (the connection then says what the clock reads)."""
    try:
        import adafruit_ntp
        import rtc

        rtc.RTC().datetime = adafruit_ntp.NTP(pool, server=host, tz_offset=0).datetime
        printer("fleetprov: clock set from {}".format(host))
    except (ImportError, OSError, ValueError) as ex:
        printer("fleetprov: clock NOT set from {} ({}): TLS may fail".format(host, ex))


class CircuitPythonBoard(Board):
    """The board's seams for the flows: the id from microcontroller.cpu.uid,
    the PEM store, and MiniMQTT connections on ``pool``."""

    def __init__(self, cfg, store, pool, printer=print):
        super().__init__(printer)
        self._cfg = cfg
        self._store = store
        self._pool = pool

    def tls_identity(self, store, pending):
        return store.files(pending)  # CircuitPython's TLS loads PEM files by path

    def uid(self):
        import microcontroller

        return binascii.hexlify(microcontroller.cpu.uid).decode()

    def store(self, cfg):
        return self._store

    def connect(self, client_id, host, port, cert, key, ca, server_hostname, timeout_ms):
        # MiniMQTT has one bound for every wait on the broker, CONNACK
        # included: mqtt_timeout_ms. (connect_timeout_ms has no MiniMQTT
        # counterpart; TCP and TLS are bounded by the socket timeout.)
        import mmqttclient

        cfg = self._cfg
        return mmqttclient.connect(client_id, host, port, cert, key, ca, server_hostname,
                                   cfg["mqtt_timeout_ms"], pool=self._pool,
                                   socket_timeout=cfg["socket_timeout_ms"] / 1000)


def read_only_message(store):
    return ("CIRCUITPY is read-only to code (the computer has it), so the new identity cannot "
            "be stored in {}. Delete {} from the drive (or release the write pin) and reset: "
            "boot.py then gives the drive to code. Nothing was sent to the endpoint.".format(
                store.folder, WRITE_MARKER))


def run(app=None, printer=print):
    """Make sure the board is provisioned, connect as its thing and call
    app(firstboot, link). Returns "ok", "retry" or "fatal" (as firstboot.run)."""
    t0 = ticks_ms()
    try:
        cfg = load_settings()
        store = Store(cfg)
        provisioned = store.load() is not None
        if not provisioned and not writable():
            raise BoardError(read_only_message(store))
        pool = join_wifi(printer)
    except BoardError as ex:
        printer("fleetprov: " + str(ex))
        return "retry" if ex.retryable else "fatal"
    set_clock(pool, cfg["ntp_host"], printer)
    return bootflow.boot(cfg, CircuitPythonBoard(cfg, store, pool, printer), app, t0, "settings.toml")


def retry_later(seconds=60, printer=print):
    """Reload code.py after a pause (Ctrl-C in the serial console stops it)."""
    import supervisor

    printer("fleetprov: retrying in {} s (Ctrl-C for the REPL)".format(seconds))
    time.sleep(seconds)
    supervisor.reload()
