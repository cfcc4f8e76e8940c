# timedsock: give an umqtt.simple client's socket a time limit.
#
# umqtt waits for SUBACK, PUBACK and CONNACK with no limit of its own, and
# after every byte it polls it puts the socket back into blocking mode (which
# drops any timeout); MicroPython's TLS socket has no settimeout() at all. So
# for the duration of an MQTT operation the client's socket is replaced by a
# TimedSocket: the real socket stays non-blocking and every "blocking" read or
# write polls it until done or until timeout_ms has passed, then raises
# OSError(ETIMEDOUT). A dead or half-open link becomes an error, not a hang.
#
#   sock = timedsock.attach(client, 5000)
#   try:
#       client.subscribe(topic, 1)
#   finally:
#       timedsock.detach(client, sock)

try:
    import select
except ImportError:  # CircuitPython builds without it: TimedSocket is umqtt's only
    select = None

# MicroPython's millisecond clock; on CPython and CircuitPython a fallback with
# the same contract (fleetprov takes these from here too, so there is one
# fallback). monotonic_ns, not monotonic: CircuitPython's float monotonic()
# loses millisecond resolution after about an hour of uptime.
try:
    from time import ticks_ms, ticks_add, ticks_diff, sleep_ms
except ImportError:  # CPython, CircuitPython: ints do not wrap, so plain arithmetic will do
    from time import monotonic_ns, sleep

    def ticks_ms():
        return monotonic_ns() // 1000000

    def ticks_add(t, delta):
        return t + delta

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        sleep(ms / 1000)


ETIMEDOUT = 110  # errno on MicroPython and Linux
_SLICE_MS = 20  # longest single poll: TLS may hold decrypted bytes poll cannot see


class TimedSocket:
    """A stream socket whose blocking reads and writes end after timeout_ms.

    sock: a socket (plain or TLS) with read, write, setblocking and poll
        support; it is switched to non-blocking mode.
    timeout_ms: the limit for each read(n) or write(buf) call, in ms.
    """

    def __init__(self, sock, timeout_ms):
        self._sock = sock
        self._ms = timeout_ms
        self._blocking = True
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._events = (select.POLLIN, select.POLLOUT)
        sock.setblocking(False)

    def setblocking(self, flag):
        # umqtt's "blocking" becomes "blocking for at most timeout_ms"
        self._blocking = flag

    def _idle(self, deadline, writing):
        left = ticks_diff(deadline, ticks_ms())
        if left <= 0:
            raise OSError(ETIMEDOUT)
        self._poll.modify(self._sock, self._events[writing])
        self._poll.poll(min(left, _SLICE_MS))

    def read(self, n=-1):
        """n bytes (fewer only at end of stream); in non-blocking mode what is there, or None."""
        if not self._blocking:
            return self._sock.read(n)
        deadline = ticks_add(ticks_ms(), self._ms)
        data = b""
        while len(data) < n:
            chunk = self._sock.read(n - len(data))
            if chunk is None:
                self._idle(deadline, 0)
            elif not chunk:
                break  # end of stream: umqtt sees the short read
            else:
                data = data + chunk if data else chunk
        return data

    def write(self, buf, n=None):
        """Write the first n bytes of buf (all of it by default); returns the count."""
        view = memoryview(buf)[: len(buf) if n is None else n]
        done = 0
        deadline = ticks_add(ticks_ms(), self._ms)
        while done < len(view):
            sent = self._sock.write(view[done:])
            if sent:
                done += sent
            else:
                self._idle(deadline, 1)
        return done

    def __getattr__(self, name):
        return getattr(self._sock, name)


def attach(client, timeout_ms):
    """Bound client's socket I/O to timeout_ms per call; returns the original
    socket for detach() (None when the client has no socket)."""
    sock = getattr(client, "sock", None)
    if sock is not None:
        client.sock = TimedSocket(sock, timeout_ms)
    return sock


def detach(client, sock):
    """Give client back its original socket, in blocking mode as umqtt expects."""
    if sock is not None:
        client.sock = sock
        try:
            sock.setblocking(True)
        except Exception:
            pass  # a broken link shows on the next call
