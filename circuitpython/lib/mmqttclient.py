# mmqttclient: Adafruit MiniMQTT behind the umqtt.simple surface that
# fleetprov and firstboot use, and the mutual-TLS connection that makes one.
# CircuitPython (and CPython, where MiniMQTT runs on `socket` and `ssl`).
#
# fleetprov drives any client with set_callback/subscribe/publish/check_msg/
# cb/unsubscribe and bytes topics. MiniMQTT differs, and this module bridges:
#   - topics are str in MiniMQTT: encoded and decoded here;
#   - on_message(client, topic, message) becomes cb(topic, msg); the client
#     is made with use_binary_mode=True, so msg is the bytearray MiniMQTT
#     read (CBOR is not UTF-8, and no str copy is made);
#   - check_msg() is loop(socket_timeout): loop() refuses a timeout shorter
#     than the socket timeout and always waits the whole timeout, so one
#     poll lasts between socket_timeout and twice that;
#   - no `sock` attribute: MiniMQTT bounds its own waits for CONNACK, SUBACK,
#     PUBACK and UNSUBACK by recv_timeout (here mqtt_timeout_ms), so
#     fleetprov's timedsock has nothing to wrap and must not touch its socket;
#   - a refused subscription (SUBACK 0x80) is raised as SubscribeRefused with
#     args[0] == 0x80, as umqtt does, so fleetprov names the claim policy.
# TLS on CircuitPython: ssl.create_default_context(); load_verify_locations
# takes one CA as PEM text; load_cert_chain takes the paths of PEM files.

import ssl
import time

from adafruit_minimqtt.adafruit_minimqtt import MQTT, MMQTTException
from mqttlink import ConnectError, Link

_REFUSED = "SUBACK Failure"  # MiniMQTT's message for a SUBACK return code >= 0x80
_KEEPALIVE_S = 60  # MiniMQTT pings when this has passed since the last send; 0 would ping every poll


class SubscribeRefused(Exception):
    """The broker refused a subscription: args are (return code, message)."""


def _str(topic):
    return topic.decode() if isinstance(topic, (bytes, bytearray)) else topic


class Client:
    """A connected MiniMQTT client with umqtt.simple's surface.

    mqtt: an adafruit_minimqtt MQTT made with use_binary_mode=True.
    socket_timeout: its socket timeout in seconds (each check_msg() polls
    for that long). Messages reach cb(topic, msg) with topic bytes and msg a
    bytearray.
    """

    def __init__(self, mqtt, socket_timeout):
        self.mqtt = mqtt
        self.cb = None
        self._poll_s = socket_timeout
        mqtt.on_message = self._deliver

    def _deliver(self, client, topic, message):
        if self.cb is not None:
            self.cb(topic.encode(), message)

    def set_callback(self, f):
        """Call f(topic, msg) for each message (None: drop them)."""
        self.cb = f

    def subscribe(self, topic, qos=0):
        """Subscribe and wait for the SUBACK (at most recv_timeout)."""
        try:
            self.mqtt.subscribe(_str(topic), qos)
        except MMQTTException as ex:
            text = str(ex.args[0]) if ex.args else ""
            if text.startswith(_REFUSED):
                code = 0x80
                try:
                    code = int(text.rsplit(" ", 1)[-1], 16)
                except ValueError:
                    pass
                raise SubscribeRefused(code, text)
            raise

    def publish(self, topic, msg, retain=False, qos=0):
        """Publish; with qos=1 wait for the PUBACK (at most recv_timeout)."""
        if not isinstance(msg, bytes):
            msg = bytes(msg)  # MiniMQTT refuses bytearray and memoryview
        self.mqtt.publish(_str(topic), msg, retain, qos)

    def unsubscribe(self, topic):
        """Unsubscribe and wait for the UNSUBACK (at most recv_timeout)."""
        self.mqtt.unsubscribe(_str(topic))

    def check_msg(self):
        """Handle what arrives within one socket timeout; returns None."""
        self.mqtt.loop(self._poll_s)

    def disconnect(self):
        """Send DISCONNECT and close the socket (MiniMQTT ignores a dead link here)."""
        self.mqtt.disconnect()


class _Context:
    # An SSLContext whose wrap_socket() names our server_hostname: MiniMQTT's
    # connection manager passes the host it connects to.
    def __init__(self, ctx, hostname):
        self._ctx = ctx
        self._hostname = hostname

    def wrap_socket(self, sock, server_hostname=None, **kw):
        return self._ctx.wrap_socket(sock, server_hostname=self._hostname, **kw)


def tls_context(cert_path, key_path, ca_pem, server_hostname=None, host=None):
    """An SSL context for mutual TLS: CA as PEM text (str), certificate and
    key as paths of PEM files. The server is always verified."""
    if isinstance(ca_pem, (bytes, bytearray)):
        ca_pem = ca_pem.decode()
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ca_pem)
    ctx.load_cert_chain(cert_path, key_path)
    if server_hostname is not None and server_hostname != host:
        return _Context(ctx, server_hostname)
    return ctx


def connect(client_id, host, port, cert, key, ca, server_hostname=None, timeout_ms=5000,
            pool=None, socket_timeout=1):
    """Connect to host:port with mutual TLS over MiniMQTT and return a
    mqttlink.Link whose .client is a Client.

    client_id: str or bytes. cert, key: paths of PEM files; ca: the CA as
    PEM (str or bytes). server_hostname: the name the server certificate
    must carry (default host). timeout_ms: MiniMQTT's recv_timeout, its one
    bound on every wait for the broker: CONNACK, SUBACK, PUBACK, UNSUBACK.
    pool: the socket pool (socketpool.SocketPool(wifi.radio) on a board,
    the `socket` module on CPython). socket_timeout: MiniMQTT's socket
    timeout in seconds: each blocking socket call (TCP connect and TLS
    handshake included) and each poll for messages lasts at most that;
    timeout_ms must exceed it. Raises ConnectError (``refused`` for a
    CONNACK refusal) or ValueError for timeouts MiniMQTT cannot honour."""
    if timeout_ms <= socket_timeout * 1000:
        raise ValueError("timeout_ms={} must exceed the socket timeout ({} s): MiniMQTT waits "
                         "in steps of it".format(timeout_ms, socket_timeout))
    if isinstance(client_id, (bytes, bytearray)):
        client_id = client_id.decode()
    where = "{}:{}".format(host, port)
    try:
        ctx = tls_context(cert, key, ca, server_hostname, host)
    except (OSError, ValueError) as ex:
        raise ConnectError("cannot load the TLS files {} / {}: {}: {}".format(
            _shown(cert), _shown(key), type(ex).__name__, ex))
    mqtt = MQTT(broker=host, port=port, client_id=client_id, is_ssl=True, keep_alive=_KEEPALIVE_S,
                recv_timeout=timeout_ms / 1000, socket_pool=pool, ssl_context=ctx,
                use_binary_mode=True, socket_timeout=socket_timeout, connect_retries=1)
    try:
        # session_id keys MiniMQTT's socket cache: the claim and the thing
        # connections never share an entry. (A failed connect closes its socket.)
        mqtt.connect(session_id=client_id)
    except MMQTTException as ex:
        # With connect_retries=1 a CONNACK refusal of 4 or 5 comes as is; the
        # others wrapped in "Connect failure" (the cause is lost on CircuitPython).
        cause = getattr(ex, "__cause__", None)
        if ex.code is None and isinstance(cause, MMQTTException):
            ex = cause
        if ex.code:
            raise ConnectError("{} refused the connection: CONNACK {} ({})".format(
                where, ex.code, ex.args[0]), refused=True, code=ex.code)
        detail = " ".join(str(cause if cause is not None else ex.args[0]).split())
        raise ConnectError("cannot connect to {}: {}{}".format(where, detail, _clock_hint()))
    except (OSError, RuntimeError) as ex:
        raise ConnectError("cannot connect to {}: {}: {}{}".format(
            where, type(ex).__name__, ex, _clock_hint()))
    return Link(Client(mqtt, socket_timeout))


def _clock_hint():
    # TLS checks certificate dates: a board whose clock was never set reads 2000.
    year = time.localtime()[0]
    if year < 2024:
        return " (the clock reads {}: set it (boot.py uses NTP) or TLS cannot check certificate dates)".format(year)
    return ""


def _shown(f):
    # A file's path as an error may name it; never the bytes of a key.
    return f if isinstance(f, str) else "<{} bytes, not a path>".format(len(f))
