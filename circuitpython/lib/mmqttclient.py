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
#   - check_msg() returns at once when nothing has come, as umqtt's does.
#     MiniMQTT's loop(t) cannot: it reads until t has passed, answer or not,
#     and refuses a t below the socket timeout. So check_msg() reads one
#     packet with _wait_for_msg(), the step loop() repeats (an internal of
#     MiniMQTT 8.x, pinned by tests/host/test_circuitpython_socketpool.py), and
#     the socket MiniMQTT reads through (_Socket, made by our SSL context)
#     waits only _PEEK_S for a packet's first byte, then the socket timeout
#     for the rest of it;
#   - every call that waits for the broker ends within timeout_ms (MiniMQTT's
#     recv_timeout): MiniMQTT bounds SUBACK and PUBACK itself but not UNSUBACK
#     (its timer restarts at every socket timeout), so _Socket holds a
#     deadline around each call; a link the broker closed is an error at
#     once, not reads of nothing until the timeout;
#   - no `sock` attribute: fleetprov's timedsock is for umqtt's socket; with
#     none, fleetprov rests between its polls for an answer;
#   - a refused subscription (SUBACK 0x80) is raised as SubscribeRefused with
#     args[0] == 0x80, as umqtt does, so fleetprov names the claim policy.
# TLS on CircuitPython: ssl.create_default_context(); load_verify_locations
# takes one CA as PEM text; load_cert_chain takes the paths of PEM files.

import errno
import ssl
import time

from adafruit_minimqtt.adafruit_minimqtt import MQTT, MMQTTException
from mqttlink import ConnectError, Link, nodelay
from runtime import ticks_add, ticks_diff, ticks_ms

_REFUSED = "SUBACK Failure"  # MiniMQTT's message for a SUBACK return code >= 0x80
_KEEPALIVE_S = 60  # check_msg() pings when this has passed since the last send
_PEEK_S = 0.001  # check_msg()'s wait for a packet to begin: a timeout both MiniMQTT paths read as "nothing"


class SubscribeRefused(Exception):
    """The broker refused a subscription: args are (return code, message)."""


def _str(topic):
    return topic.decode() if isinstance(topic, (bytes, bytearray)) else topic


class _Socket:
    # The TLS socket as MiniMQTT sees it (see the top of this module). While
    # a Client call runs, `deadline` (ticks_ms) ends it; `peek` makes the next
    # read, a packet's first byte, wait _PEEK_S instead of the socket timeout.

    def __init__(self, sock):
        self._sock = sock
        self._timeout = None
        self._ms = 0
        self.deadline = None
        self.peek = False

    def arm(self, ms, peek=False):
        """Bound reads to ms from now (None: no bound) until the next arm()."""
        self._ms = ms
        self.deadline = None if ms is None else ticks_add(ticks_ms(), ms)
        self.peek = peek

    def settimeout(self, t):
        self._timeout = t
        self._sock.settimeout(t)

    def connect(self, address):
        self._sock.connect(address)

    def send(self, buf):
        return self._sock.send(buf)

    def recv_into(self, buf, nbytes=0):
        sock = self._sock
        if self.deadline is not None and ticks_diff(self.deadline, ticks_ms()) <= 0:
            # not an OSError: MiniMQTT reads a timeout as "nothing yet" and would read again
            raise MMQTTException("no reply from the broker within {} ms".format(self._ms))
        if self.peek:
            self.peek = False
            sock.settimeout(_PEEK_S)
            try:
                n = sock.recv_into(buf, nbytes)
            finally:
                sock.settimeout(self._timeout)
        else:
            n = sock.recv_into(buf, nbytes)
        if not n:
            # MiniMQTT would read the empty socket again until recv_timeout
            raise OSError(errno.ECONNRESET, "the broker closed the connection")
        return n

    def close(self):
        self._sock.close()


class Client:
    """A connected MiniMQTT client with umqtt.simple's surface.

    mqtt: an adafruit_minimqtt MQTT made with use_binary_mode=True whose
    ssl_context is ``tls`` (a _Context). timeout_ms: the bound on each call
    that waits for the broker (MiniMQTT's recv_timeout). Messages reach
    cb(topic, msg) with topic bytes and msg a bytearray.
    """

    def __init__(self, mqtt, tls, timeout_ms):
        self.mqtt = mqtt
        self.cb = None
        self._tls = tls
        self._ms = timeout_ms
        self._sent = ticks_ms()
        mqtt.on_message = self._deliver

    def _deliver(self, client, topic, message):
        if self.cb is not None:
            self.cb(topic.encode(), message)

    def _call(self, peek, fn, *args):
        # fn(*args) within timeout_ms; peek: it may find nothing waiting
        sock = self._tls.sock  # (MiniMQTT's reconnect() makes a new one)
        sock.arm(self._ms, peek)
        try:
            return fn(*args)
        finally:
            sock.arm(None)

    def _send(self, fn, *args):
        out = self._call(False, fn, *args)
        self._sent = ticks_ms()
        return out

    def set_callback(self, f):
        """Call f(topic, msg) for each message (None: drop them)."""
        self.cb = f

    def subscribe(self, topic, qos=0):
        """Subscribe and wait for the SUBACK (at most timeout_ms)."""
        try:
            self._send(self.mqtt.subscribe, _str(topic), qos)
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
        """Publish; with qos=1 wait for the PUBACK (at most timeout_ms)."""
        if not isinstance(msg, bytes):
            msg = bytes(msg)  # MiniMQTT refuses bytearray and memoryview
        self._send(self.mqtt.publish, _str(topic), msg, retain, qos)

    def unsubscribe(self, topic):
        """Unsubscribe and wait for the UNSUBACK (at most timeout_ms)."""
        self._send(self.mqtt.unsubscribe, _str(topic))

    def check_msg(self):
        """Handle one packet if one has come and return its type (0x30: a
        message, given to cb); None at once if nothing has. When keep_alive
        seconds have passed since the last send, ping the broker first."""
        keep = self.mqtt.keep_alive
        if keep and ticks_diff(ticks_ms(), self._sent) >= keep * 1000:
            self._send(self.mqtt.ping)
        # MiniMQTT 8.x internal: read and handle one packet, None on a read timeout
        return self._call(True, self.mqtt._wait_for_msg)

    def disconnect(self):
        """Send DISCONNECT and close the socket (MiniMQTT ignores a dead link here)."""
        self.mqtt.disconnect()


class _Context:
    # The SSL context MiniMQTT's connection manager wraps its TCP socket with:
    # it turns Nagle off (MiniMQTT writes a packet in pieces, each its own TLS
    # record, which Nagle and the broker's delayed ACK would hold ~40 ms),
    # names our server_hostname (the manager passes the host it connects to)
    # and hands MiniMQTT a _Socket, kept in .sock for the Client.
    def __init__(self, ctx, hostname, pool):
        self._ctx = ctx
        self._hostname = hostname
        self._pool = pool
        self.sock = None

    def wrap_socket(self, sock, server_hostname=None, **kw):
        nodelay(sock, self._pool)
        tls = self._ctx.wrap_socket(sock, server_hostname=self._hostname or server_hostname, **kw)
        self.sock = _Socket(tls)
        return self.sock


def tls_context(cert_path, key_path, ca_pem):
    """An SSL context for mutual TLS: CA as PEM text (str), certificate and
    key as paths of PEM files. The server is always verified."""
    if isinstance(ca_pem, (bytes, bytearray)):
        ca_pem = ca_pem.decode()
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ca_pem)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def connect(client_id, host, port, cert, key, ca, server_hostname=None, timeout_ms=5000,
            pool=None, socket_timeout=1):
    """Connect to host:port with mutual TLS over MiniMQTT and return a
    mqttlink.Link whose .client is a Client.

    client_id: str or bytes. cert, key: paths of PEM files; ca: the CA as
    PEM (str or bytes). server_hostname: the name the server certificate
    must carry (default host). timeout_ms: MiniMQTT's recv_timeout, the bound
    on every wait for the broker: CONNACK, SUBACK, PUBACK, UNSUBACK, a
    message's bytes. pool: the socket pool (socketpool.SocketPool(wifi.radio)
    on a board, the `socket` module on CPython). socket_timeout: MiniMQTT's
    socket timeout in seconds, the longest single socket wait (TCP connect, a
    step of the TLS handshake, a read); check_msg() does not wait for it.
    MiniMQTT requires timeout_ms to exceed it. Raises ConnectError
    (``refused`` for a CONNACK refusal) or ValueError for timeouts MiniMQTT
    refuses."""
    if timeout_ms <= socket_timeout * 1000:
        raise ValueError("timeout_ms={} must exceed the socket timeout ({} s), as MiniMQTT "
                         "requires of its recv_timeout".format(timeout_ms, socket_timeout))
    if isinstance(client_id, (bytes, bytearray)):
        client_id = client_id.decode()
    where = "{}:{}".format(host, port)
    try:
        ctx = _Context(tls_context(cert, key, ca), server_hostname, pool)
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
    return Link(Client(mqtt, ctx, timeout_ms))


def _clock_hint():
    # TLS checks certificate dates: a board whose clock was never set reads 2000.
    year = time.localtime()[0]
    if year < 2024:
        return " (the clock reads {}: set it (boot.py uses NTP) or TLS cannot check certificate dates)".format(year)
    return ""


def _shown(f):
    # A file's path as an error may name it; never the bytes of a key.
    return f if isinstance(f, str) else "<{} bytes, not a path>".format(len(f))
