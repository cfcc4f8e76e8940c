# One MQTT-over-mutual-TLS connection with umqtt.simple, bounded in time.
#
# umqtt's connect() makes its own socket and neither it nor MicroPython's TLS
# socket offers a timeout (the TLS socket has no settimeout()): a dead link
# would hang the TCP connect, the TLS handshake or the wait for CONNACK for
# ever, and a timeout per read would let a server that drips its bytes
# stretch them without end. So for the duration of connect() the umqtt
# module's `socket` global is replaced by a small factory whose socket is a
# _Transport: the TCP socket behind a stream that ends every read and write
# at one deadline. TLS reads and writes through it (MicroPython's TLS takes
# any stream), so TCP connect, handshake and CONNACK together end in time.
# The name is restored before connect() returns. (Connecting the socket
# ourselves would mean re-implementing connect() for three umqtt versions.)
# Name resolution (getaddrinfo) has no timeout in MicroPython; lwIP's
# resolver gives up on its own.
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
from runtime import release, ticks_add, ticks_diff, ticks_ms

try:
    from io import IOBase
except ImportError:  # CircuitPython: its connections are mmqttclient's, never a _Transport
    IOBase = object


class ConnectError(Exception):
    """The connection could not be made.

    ``refused``: the server answered and turned our certificate down (CONNACK
    with a non-zero code, or the connection closed before CONNACK).
    ``code``: the CONNACK return code, or None.
    ``handshake``: the server hung up on the TLS handshake: most likely it
    refused the certificate, which retrying does not change.
    ``verify``: the server's certificate failed verification (CA, name,
    dates): a configuration to fix, not a glitch to retry."""

    def __init__(self, msg, refused=False, code=None, handshake=False, verify=False):
        super().__init__(msg)
        self.refused = refused
        self.code = code
        self.handshake = handshake
        self.verify = verify


class _Unresolved(Exception):
    # getaddrinfo() failed: raised through umqtt's connect() to connect()
    pass


class _Transport(IOBase):
    # The TCP socket under TLS (see the top of this module). Until release()
    # the socket is non-blocking and every read and write waits for it at
    # most until the deadline (a blocking read would wait per byte, not in
    # all); after it, reads, writes and polls pass straight through, in
    # whatever mode the TLS socket sets. Failures go back to TLS as negative
    # errno values, which it raises as OSError once its own state is sound.

    def __init__(self, sock, deadline):
        import select

        self._sock = sock
        self._deadline = deadline
        self._bounded = True
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._events = (select.POLLIN, select.POLLOUT)

    def release(self):
        """connect() is over: no deadline, blocking as umqtt expects."""
        self._bounded = False
        self._sock.settimeout(None)

    def connect(self, addr):
        left = ticks_diff(self._deadline, ticks_ms())
        if left <= 0:
            raise OSError(errno.ETIMEDOUT)
        self._sock.settimeout(left / 1000)
        self._sock.connect(addr)
        self._sock.setblocking(False)

    def _io(self, op, buf, writing):
        # op(buf) within the deadline: a count, or a negative errno for TLS
        while True:
            try:
                n = op(buf)
            except OSError as ex:
                n = ex.args[0] if ex.args and isinstance(ex.args[0], int) else errno.EIO
                return -n if n > 0 else -errno.EIO
            if n is not None or not self._bounded:
                return n  # (None: nothing ready, for a TLS socket set non-blocking)
            left = ticks_diff(self._deadline, ticks_ms())
            if left <= 0:
                return -errno.ETIMEDOUT
            self._poll.modify(self._sock, self._events[writing])
            self._poll.poll(left)

    def readinto(self, buf):
        return self._io(self._sock.readinto, buf, 0)

    def write(self, buf):
        return self._io(self._sock.write, buf, 1)

    def ioctl(self, request, arg):
        if request == 3:  # MP_STREAM_POLL: the TCP socket's readiness, asked without waiting
            self._poll.modify(self._sock, arg & 5)  # POLLIN | POLLOUT, as MicroPython numbers them
            for _, events in self._poll.ipoll(0):
                return events
            return 0
        if request == 4:  # MP_STREAM_CLOSE
            self._sock.close()
            return 0
        return -errno.EINVAL

    def setblocking(self, flag):
        self._sock.setblocking(flag)

    def settimeout(self, t):
        pass  # umqtt 1.8 sets its own (None: no limit): the deadline decides

    def close(self):
        self._sock.close()


class _SocketFactory:
    # Stands in for the umqtt module's `socket` global during connect().
    def __init__(self, mod, deadline):
        self._mod = mod
        self._deadline = deadline
        self.resolved = False
        self.transport = None

    def socket(self, *args):
        s = self._mod.socket(*args)
        nodelay(s, self._mod)
        if sys.implementation.name != "micropython":
            # CPython's TLS (the host tests' stand-in) takes only a real socket: a timeout per read
            s.settimeout(max(0, ticks_diff(self._deadline, ticks_ms())) / 1000)
            return s
        self.transport = _Transport(s, self._deadline)
        return self.transport

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
        factory = _SocketFactory(orig, ticks_add(ticks_ms(), timeout_ms))
        mqtt.socket = factory
    try:
        client.connect()
    except Exception as ex:
        _close(client)
        if isinstance(ex, mqtt.MQTTException):
            kind = "connack"
        elif isinstance(ex, (IndexError, AssertionError)):
            kind = "closed"  # umqtt indexes an empty read when the server closes before CONNACK
        elif isinstance(ex, _Unresolved):
            kind, ex = "unresolved", ex.args[0]
        elif isinstance(ex, (OSError, ValueError)):
            kind = None
        else:
            raise
        resolved = factory is not None and factory.resolved
        client = None  # its TLS context and socket are garbage before the words load
        try:
            import linkfail  # the words, loaded only now and let go once said

            msg, flags = linkfail.explain(ex, kind, host, port, server_hostname, resolved)
        except MemoryError:  # retried as a network failure: the next attempt may have the room
            msg, flags = "{} failed ({}; no memory to say more)".format(where, type(ex).__name__), {}
        finally:
            linkfail = None
            release("linkfail")
        raise ConnectError(msg, **flags)
    finally:
        if factory is not None:
            mqtt.socket = orig
    if factory is not None and factory.transport is not None:
        factory.transport.release()
    # TLS holds its own parsed copy of the certificate and key now; umqtt's
    # ssl_params (1.3.4, 1.6+) is this dict and would keep their DER and the
    # CA's for as long as the link lives. (A Link is never reconnected: a new
    # connection is a new connect().)
    params.clear()
    return Link(client)


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
