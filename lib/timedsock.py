# timedsock: give an umqtt.simple client's socket a time limit.
#
# umqtt waits for SUBACK, PUBACK and CONNACK with no limit of its own, and
# after every byte it polls it puts the socket back into blocking mode (which
# drops any timeout); MicroPython's TLS socket has no settimeout() at all. So
# for the duration of MQTT operations the client's socket is replaced by a
# TimedSocket: the real socket stays non-blocking, and every "blocking" read or
# write polls it until done or until the operation's deadline (timeout_ms after
# attach() or the last arm()) has passed, then raises OSError(errno.ETIMEDOUT).
# The deadline covers the whole operation, not each read: umqtt loops reading
# packets until its ACK comes, so a flood of stray packets cannot stretch it.
# A dead, half-open or flooding link becomes an error, not a hang.
#
# umqtt also writes each packet in several small pieces (header, topic
# length, topic, packet id, payload); over TLS each would be a record and a
# TCP segment of its own, which Nagle's algorithm and the peer's delayed ACK
# hold back. A TimedSocket gathers the pieces and sends each MQTT packet in
# one write, so any umqtt client is fast without TCP_NODELAY.
#
#   sock = timedsock.attach(client, 5000)
#   try:
#       client.subscribe(topic, 1)
#       client.sock.arm()  # a fresh timeout_ms for the next operation
#       client.publish(topic, msg, False, 1)
#   finally:
#       timedsock.detach(client, sock)

import errno

try:
    import select
except ImportError:  # CircuitPython builds without it: TimedSocket is umqtt's only
    select = None

from runtime import ticks_add, ticks_diff, ticks_ms

_SLICE_MS = 20  # longest single poll: TLS may hold decrypted bytes poll cannot see
_PACKET_ROOM = 64  # the packet buffer's first size: a SUBSCRIBE or PUBACK fits


class TimedSocket:
    """A stream socket whose blocking reads and writes end at a deadline.

    sock: a socket (plain or TLS) with read, write, setblocking and poll
        support; it is switched to non-blocking mode.
    timeout_ms: the time each operation gets (see arm()).
    """

    def __init__(self, sock, timeout_ms):
        self._sock = sock
        self._ms = timeout_ms
        self._blocking = True
        self._poll = p = select.poll()
        p.register(sock, select.POLLIN)
        # MicroPython's ipoll() reuses one result tuple, made by its first
        # call (here, not in the first wait): no allocation per wait
        self._ipoll = getattr(p, "ipoll", p.poll)
        self._ipoll(0)
        self._events = (select.POLLIN, select.POLLOUT)
        self._out = bytearray(_PACKET_ROOM)  # the packet being gathered, grown for a larger one
        self._have = 0
        sock.setblocking(False)
        self.arm()

    def arm(self, ms=None):
        """Start an operation: blocking reads and writes from now on end
        ms (default timeout_ms) from now. Allocates nothing."""
        self._deadline = ticks_add(ticks_ms(), self._ms if ms is None else ms)

    def setblocking(self, flag):
        # umqtt's "blocking" becomes "blocking until the deadline"
        self._blocking = flag

    def _left(self):
        left = ticks_diff(self._deadline, ticks_ms())
        if left <= 0:
            # by name: ESP32 firmware says 116 (newlib), Linux 110
            raise OSError(errno.ETIMEDOUT)
        return left

    def _idle(self, writing):
        left = self._left()
        self._poll.modify(self._sock, self._events[writing])
        self._ipoll(min(left, _SLICE_MS))

    def wait_readable(self, ms):
        """Sleep until the socket has data (or its peer closed) or ms pass,
        without allocating. Only after a read found nothing: data already
        decrypted by TLS is not seen by poll."""
        self._poll.modify(self._sock, select.POLLIN)
        self._ipoll(ms)

    def read(self, n=-1):
        """n bytes; in non-blocking mode what is there, or None. A blocking
        read reaches its n bytes or raises: a link closed part-way through a
        packet raises OSError(ECONNRESET), never a short read that umqtt
        would hand on as a whole message."""
        if self._have:
            self.flush()  # an answer cannot come to a request not sent
        if not self._blocking:
            return self._sock.read(n)
        self._left()  # data flowing does not extend the operation
        data = b""
        while len(data) < n:
            chunk = self._sock.read(n - len(data))
            if chunk is None:
                self._idle(0)
            elif not chunk:
                _closed()
            else:
                data = data + chunk if data else chunk
        return data

    def fill(self, view):
        """Fill the memoryview ``view`` from the socket within the deadline
        (OSError(ECONNRESET) if the link closes first)."""
        self._left()
        readinto = getattr(self._sock, "readinto", None)
        n = len(view)
        done = 0
        while done < n:
            if readinto is not None:
                k = readinto(view[done:])
            else:
                chunk = self._sock.read(n - done)
                k = None if chunk is None else len(chunk)
                if k:
                    view[done:done + k] = chunk
            if k is None:
                self._idle(0)
            elif not k:
                _closed()
            else:
                done += k

    def write(self, buf, n=None):
        """Take the first n bytes of buf (all of it by default) into the
        packet being gathered; a complete MQTT packet goes out in one write.
        Returns the count taken."""
        view = memoryview(buf)[: len(buf) if n is None else n]
        end = self._have + len(view)
        if end > len(self._out):
            self._out.extend(bytes(end - len(self._out)))
        memoryview(self._out)[self._have:end] = view
        self._have = end
        size = _packet_size(self._out, end)
        if size is not None and end >= size:
            self.flush()
        return len(view)

    def flush(self):
        """Send what has been gathered, within the deadline."""
        view = memoryview(self._out)[: self._have]
        done = 0
        while done < len(view):
            sent = self._sock.write(view[done:])
            if sent:
                done += sent
            else:
                self._idle(1)
        self._have = 0

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _packet_size(buf, have):
    # An MQTT packet's size once its fixed header is in: the type byte, the
    # remaining length (1-4 bytes of 7 bits, low first) and what that counts.
    size = shift = 0
    i = 1
    while i < have and i < 5:
        b = buf[i]
        size |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return i + size
        shift += 7
    return None


def _closed():
    # The peer closed the link inside a packet: what came is not a message.
    raise OSError(errno.ECONNRESET)


def describe(exc):
    """One line for an exception: an OSError named from this port's errno
    table ("OSError ENOTCONN (128)"; ESP32 and Linux number errors apart)."""
    n = exc.args[0] if exc.args else None
    name = getattr(errno, "errorcode", {}).get(n) if isinstance(n, int) else None
    if name is not None:
        return "{} {} ({})".format(type(exc).__name__, name, n)
    return "{}: {}".format(type(exc).__name__, exc)


def attach(client, timeout_ms, kind=TimedSocket):
    """Bound client's socket I/O to timeout_ms per operation (armed now; see
    TimedSocket.arm); returns the original socket for detach() (None when the
    client has no socket). ``kind``: TimedSocket or a subclass."""
    sock = getattr(client, "sock", None)
    if sock is not None:
        client.sock = kind(sock, timeout_ms)
    return sock


def detach(client, sock):
    """Give client back its original socket, in blocking mode as umqtt expects."""
    if sock is not None:
        timed = client.sock
        if isinstance(timed, TimedSocket) and timed._have:
            try:
                timed.flush()  # a packet still being gathered is sent, not lost
            except Exception:
                pass  # a broken link shows on the next call
        client.sock = sock
        try:
            sock.setblocking(True)
        except Exception:
            pass  # a broken link shows on the next call
