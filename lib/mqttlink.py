# One MQTT-over-mutual-TLS connection with umqtt.simple, bounded in time.
#
# umqtt's connect() makes its own socket and neither it nor MicroPython's TLS
# socket offers a timeout (the TLS socket has no settimeout()): a dead link
# would hang the TCP connect, the TLS handshake or the wait for CONNACK for
# ever. So for the duration of connect() the umqtt module's `socket` global is
# replaced by a small factory whose sockets get a timeout before umqtt uses
# them; TLS reads and writes go through that same socket, so the handshake
# and CONNACK are bounded too. The name is restored before connect() returns.
# (Connecting the socket ourselves would mean re-implementing connect() for
# three umqtt versions.) Name resolution (getaddrinfo) has no timeout in
# MicroPython; lwIP's resolver gives up on its own.
#
# TLS: umqtt 1.3.4 (firmware <= 1.22) and 1.6+ (>= 1.25) take
# ssl=True, ssl_params={...}; 1.4/1.5 (1.23-1.24) take only ssl=<SSLContext>
# and raise TypeError on ssl_params, so we fall back to a context. Either way
# the server is verified (CERT_REQUIRED, CA, server_hostname).

try:
    import ssl
except ImportError:  # firmware <= 1.22 calls it ussl
    import ussl as ssl

import errno
import sys

import timedsock


class ConnectError(Exception):
    """The connection could not be made.

    ``refused``: the server answered and turned our certificate down (CONNACK
    with a non-zero code, or the connection closed before CONNACK).
    ``code``: the CONNACK return code, or None.
    ``handshake``: the server hung up on the TLS handshake: most likely it
    refused the certificate, which retrying does not change."""

    def __init__(self, msg, refused=False, code=None, handshake=False):
        super().__init__(msg)
        self.refused = refused
        self.code = code
        self.handshake = handshake


class _Unresolved(Exception):
    # getaddrinfo() failed: raised through umqtt's connect() to connect()
    pass


# Failures of the network itself while connecting: nothing listening, no
# route, no answer in time, out of buffers. Any other OSError after the name
# resolved means the server hung up during the TLS handshake or right after it
# (a refused client certificate: EPIPE on the next write, ECONNRESET, an
# mbedTLS alert; MicroPython's errno has no EPIPE to name).
_NETWORK = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EAGAIN,
            errno.ENOMEM, errno.ENOBUFS, errno.EINPROGRESS, errno.EALREADY)


_CONNACK = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class _SocketFactory:
    # Stands in for the umqtt module's `socket` global during connect().
    def __init__(self, mod, timeout_s):
        self._mod = mod
        self._t = timeout_s
        self.resolved = False

    def socket(self, *args):
        s = self._mod.socket(*args)
        s.settimeout(self._t)
        nodelay(s, self._mod)
        return s

    def getaddrinfo(self, *args):
        # umqtt resolves through its module's socket global: this tells an
        # unresolvable name from a refused handshake.
        try:
            out = self._mod.getaddrinfo(*args)
        except Exception as ex:
            raise _Unresolved(ex)
        self.resolved = True
        return out

    def __getattr__(self, name):
        return getattr(self._mod, name)


def nodelay(sock, mod=None):
    """Turn Nagle's algorithm off on ``sock`` (of socket module ``mod``) where the port allows; True if done.

    umqtt writes each packet in several small pieces (TLS makes each its own
    record): with Nagle and the peer's delayed ACK every request then waits
    ~40 ms. The ESP32 port's socket module has IPPROTO_TCP and TCP_NODELAY
    (lwIP); the unix port has neither name but passes the option to Linux,
    whose numbers are 6 (the IP protocol number) and 1. Elsewhere: skipped.
    ``mod``: the socket module ``sock`` came from; None imports ``socket``,
    a probe, since CircuitPython has no such module (socketpool instead)."""
    if mod is None:
        try:
            import socket as mod
        except ImportError:
            return False
    level = getattr(mod, "IPPROTO_TCP", None)
    opt = getattr(mod, "TCP_NODELAY", None)
    if (level is None or opt is None) and sys.platform == "linux":
        level, opt = 6, 1
    if level is None or opt is None:
        return False
    try:
        sock.setsockopt(level, opt, 1)
        return True
    except (OSError, AttributeError, TypeError):
        return False


class _Context:
    # An SSLContext whose wrap_socket() always names our server_hostname:
    # umqtt 1.4/1.5 pass their `server` (the endpoint) instead.
    def __init__(self, ctx, hostname):
        self._ctx = ctx
        self._hostname = hostname

    def wrap_socket(self, sock, server_hostname=None, **kw):
        return self._ctx.wrap_socket(sock, server_hostname=self._hostname, **kw)


def _context(cert, key, ca, hostname):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # SSLContext() starts with CERT_NONE
    ctx.load_verify_locations(cadata=ca)
    ctx.load_cert_chain(cert, key)  # bytes = the data itself, str = a file name
    return _Context(ctx, hostname)


def _umqtt():
    from umqtt import simple

    return simple


class Link:
    """A connected umqtt.simple client (``.client``). Not for client.connect()
    again: the TLS parameters are dropped once connected (see connect())."""

    def __init__(self, client):
        self.client = client

    def close(self):
        """Send DISCONNECT and close; errors are ignored (the link may be dead)."""
        c = self.client
        if c is None:
            return
        self.client = None
        try:
            c.disconnect()
        except Exception:
            try:
                c.sock.close()
            except Exception:
                pass


def connect(client_id, host, port, cert, key, ca, server_hostname=None, timeout_ms=10000,
            mqtt=None, keepalive=0):
    """Connect to ``host``:``port`` with mutual TLS and return a Link.

    client_id: str or bytes. cert, key, ca: DER bytes (key never printed).
    server_hostname: name checked against the server certificate (default
    ``host``). timeout_ms bounds TCP connect, TLS handshake and CONNACK.
    mqtt: the umqtt.simple module (default: imported). Raises ConnectError."""
    if mqtt is None:
        mqtt = _umqtt()
    if server_hostname is None:
        server_hostname = host
    if isinstance(client_id, str):
        client_id = client_id.encode()
    params = {
        "key": key,
        "cert": cert,
        "cadata": ca,
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": server_hostname,
    }
    try:
        client = mqtt.MQTTClient(client_id, host, port=port, keepalive=keepalive, ssl=True,
                                 ssl_params=params)
    except TypeError:
        client = mqtt.MQTTClient(client_id, host, port=port, keepalive=keepalive,
                                 ssl=_context(cert, key, ca, server_hostname))
    where = "{}:{}".format(host, port)
    orig = getattr(mqtt, "socket", None)
    factory = None
    if orig is not None:
        factory = _SocketFactory(orig, timeout_ms / 1000)
        mqtt.socket = factory
    try:
        client.connect()
    except mqtt.MQTTException as ex:
        code = ex.args[0] if ex.args else None
        _close(client)
        raise ConnectError(
            "{} refused the connection: CONNACK {} ({})".format(
                where, code, _CONNACK.get(code, "unknown code")),
            refused=True, code=code)
    except (IndexError, AssertionError):
        # umqtt indexes an empty read when the server closes after CONNECT
        # without a CONNACK: how AWS turns away a revoked certificate.
        _close(client)
        raise ConnectError("{} closed the connection before CONNACK".format(where), refused=True)
    except _Unresolved as ex:
        _close(client)
        raise ConnectError("cannot resolve {} ({}): check `endpoint` in config.json (the "
                           "account's -ats endpoint) and the network".format(
                               host, timedsock.describe(ex.args[0])))
    except (OSError, ValueError) as ex:
        # OSError: TCP/TLS failure or timeout. ValueError: the unix port's TLS
        # reports a failed certificate check (wrong CA, name, clock) this way.
        _close(client)
        n = ex.args[0] if ex.args else None
        if (factory is not None and factory.resolved and isinstance(ex, OSError)
                and isinstance(n, int) and n not in _NETWORK):
            raise ConnectError(
                "{} closed the TLS handshake ({}): it refused this device's certificate. Likely: "
                "the certificate has expired or is not yet valid{}; it was issued by a CA the "
                "endpoint does not trust (a claim certificate not registered in this account); "
                "or it belongs to another endpoint (account or region). The server's log names "
                "the cause".format(where, timedsock.describe(ex), _clock_hint()), handshake=True)
        # (mbedTLS messages span lines: keep the report on one.)
        raise ConnectError("cannot connect to {}: {}: {}{}".format(
            where, type(ex).__name__, " ".join(str(ex).split()), _clock_hint()))
    finally:
        if factory is not None:
            mqtt.socket = orig
    # TLS holds its own parsed copy of the certificate and key now; umqtt's
    # ssl_params (1.3.4, 1.6+) is this dict and would keep their DER and the
    # CA's (about 3 KB with RSA-2048) for as long as the link lives. (A Link is
    # never reconnected: a new connection is a new connect().)
    params.clear()
    return Link(client)


def _clock_hint():
    # A board whose clock was never set reads 2000-01-01 (epoch 1970 on some
    # ports): every certificate is "not yet valid" and TLS fails for that.
    import time

    year = time.gmtime()[0]
    if year < 2024:
        return " (the clock reads {}: TLS cannot check certificate dates; set it with ntptime, as boot.py does)".format(year)
    return ""


def _close(client):
    s = getattr(client, "sock", None)
    if s is not None:
        try:
            s.close()
        except Exception:
            pass


def publish(link, topic, payload, timeout_ms, qos=1):
    """Publish on ``link`` and, for QoS 1, wait for the PUBACK at most
    ``timeout_ms`` (OSError(ETIMEDOUT) after that). topic, payload: bytes."""
    c = link.client
    sock = timedsock.attach(c, timeout_ms)  # umqtt waits for PUBACK with no limit
    try:
        c.publish(topic, payload, False, qos)
    finally:
        timedsock.detach(c, sock)
