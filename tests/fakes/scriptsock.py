# A scripted socket: the server's end of an MQTT connection, played by a test
# under the real umqtt.simple. The socket goes straight into the client's
# `sock` attribute, as micropython-lib's own umqtt test does (no CONNECT or
# CONNACK: the tests are about what comes after).
#
# The test decides what the client can read (feed), when the link breaks
# (fail, hang_up), never goes quiet (flood) or stops taking writes (stall);
# everything the client writes is
# recorded and parsed into MQTT packets, and each complete packet goes to a
# server object (scriptaws.AwsServer plays AWS IoT) that answers it. Silence is
# real silence: a read finds nothing and poll() reports nothing, so
# lib/timedsock's deadlines fire as on a dead link, after the test's own
# (small) timeouts and no later.
#
# Runs on CPython and on the MicroPython unix port (no typing, no dataclasses).
# poll() needs the socket to be pollable: MicroPython polls any io.IOBase
# subclass through its ioctl(); CPython's select.poll wants a file descriptor,
# so there the socket keeps a socketpair with one byte in flight exactly while
# the scripted socket is readable, and its other direction full while writes
# are stalled.

import sys

_MICROPYTHON = sys.implementation.name == "micropython"

if _MICROPYTHON:
    from io import IOBase as _Base
else:
    import socket as _socket

    _Base = object

# MicroPython's stream ioctl for poll (MP_STREAM_POLL) and its flags.
_STREAM_POLL = 3
_POLL_RD = 1
_POLL_WR = 4

# MQTT 3.1.1 packet types (first byte & 0xF0).
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x80
SUBACK = 0x90
UNSUBSCRIBE = 0xA0
UNSUBACK = 0xB0
PINGREQ = 0xC0
PINGRESP = b"\xd0\x00"
NAMES = {0x10: "CONNECT", PUBLISH: "PUBLISH", PUBACK: "PUBACK", SUBSCRIBE: "SUBSCRIBE",
         UNSUBSCRIBE: "UNSUBSCRIBE", PINGREQ: "PINGREQ", 0xE0: "DISCONNECT"}

# A stray PUBACK whose packet id bytes (0x01 0x01) are neither PUBLISH nor
# PINGRESP when umqtt reads them as packet types: umqtt reads only the first
# byte of a packet it does not expect, and returns that type from check_msg().
STRAY_PUBACK = b"\x40\x02\x01\x01"


class WouldBlockForever(Exception):
    """A blocking read the script cannot satisfy: a real socket would wait for ever."""


def _length(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _pid(pid):
    return bytes((pid >> 8, pid & 0xFF))


def packet(first, body):
    """One MQTT packet: the first byte, the remaining length, the body."""
    return bytes((first,)) + _length(len(body)) + body


def publish(topic, payload, qos=0, pid=1, retain=False, dup=False):
    """A PUBLISH from the server (pid is sent only for qos > 0)."""
    first = PUBLISH | qos << 1 | (1 if retain else 0) | (8 if dup else 0)
    body = _pid(len(topic)) + topic + (_pid(pid) if qos else b"") + payload
    return packet(first, body)


def suback(pid, code=1):
    """SUBACK: code is the granted QoS, or 0x80 for a refusal."""
    return packet(SUBACK, _pid(pid) + bytes((code,)))


def puback(pid):
    return packet(PUBACK, _pid(pid))


def unsuback(pid):
    return packet(UNSUBACK, _pid(pid))


class Packet:
    """A packet the client wrote. kind: PUBLISH, SUBSCRIBE, ...; flags: the
    low four bits. Then what the kind carries: pid; for PUBLISH topic, qos,
    retain, payload; for SUBSCRIBE topics as [(topic, qos)]; for UNSUBSCRIBE
    topics as [topic]."""

    def __init__(self, first, body):
        self.kind = first & 0xF0
        self.flags = first & 0x0F
        self.pid = None
        self.topic = None
        self.qos = None
        self.retain = None
        self.payload = None
        self.topics = []
        if self.kind == PUBLISH:
            self.qos = self.flags >> 1 & 3
            self.retain = bool(self.flags & 1)
            n = body[0] << 8 | body[1]
            self.topic = bytes(body[2 : 2 + n])
            at = 2 + n
            if self.qos:
                self.pid = body[at] << 8 | body[at + 1]
                at += 2
            self.payload = bytes(body[at:])
        elif self.kind in (PUBACK, SUBSCRIBE, UNSUBSCRIBE):
            self.pid = body[0] << 8 | body[1]
            at = 2
            while at < len(body):
                n = body[at] << 8 | body[at + 1]
                topic = bytes(body[at + 2 : at + 2 + n])
                at += 2 + n
                if self.kind == SUBSCRIBE:
                    self.topics.append((topic, body[at]))
                    at += 1
                else:
                    self.topics.append(topic)

    def __repr__(self):
        name = NAMES.get(self.kind, hex(self.kind))
        if self.kind == PUBLISH:
            return "<{} {!r} qos={} pid={} {} bytes>".format(
                name, self.topic, self.qos, self.pid, len(self.payload))
        return "<{} pid={} {!r}>".format(name, self.pid, self.topics)


class ScriptedSocket(_Base):
    """The socket umqtt.simple reads and writes, with a test on the other end.

    server: an object whose handle(sock, packet) is called with each complete
        packet the client writes (None: nobody answers).
    max_read: at most this many bytes per non-blocking read (0: all that is
        there), as a slow link delivers them.
    max_write: at most this many bytes accepted per write (0: all).

    Records: sent (every byte written), packets (parsed), reads and writes
    (calls), hung (blocking reads the script could not satisfy), blocking (the mode).
    """

    def __init__(self, server=None, max_read=0, max_write=0):
        self.server = server
        self.max_read = max_read
        self.max_write = max_write
        self.inbox = bytearray()  # what the client can read now
        self.sent = bytearray()
        self.packets = []
        self.reads = 0
        self.writes = 0
        self.hung = 0
        self.blocking = True
        self.closed = False
        self._eof = False
        self._error = None
        self._flood = None
        self._stalled = 0  # write calls still to refuse (-1: all)
        self._parsed = 0  # bytes of sent already parsed into packets
        self._wake = None  # CPython: the socketpair poll() watches
        self._signalled = False
        self._filled = False

    # -- the script: what the server does -----------------------------------

    def feed(self, data):
        """Bytes the client can read from now on."""
        self.inbox += data
        self._sync()

    def hang_up(self):
        """The server closes: once the inbox is read, reads return b""."""
        self._eof = True
        self._sync()

    def fail(self, error):
        """The link breaks: every write, and every read once the inbox is
        read, raises OSError(error) for an errno number, or error() for an
        exception class."""
        self._error = error
        self._sync()

    def flood(self, data=STRAY_PUBACK):
        """Once the inbox is read, data again and again: a link never idle."""
        self._flood = data
        self._sync()

    def stall(self, writes=-1):
        """The peer stops reading: the next writes (all, by default) take
        nothing and poll() stops reporting the socket writable."""
        self._stalled = writes
        self._sync()

    def _readable(self):
        return bool(self.inbox) or self._eof or self._error is not None or self._flood is not None

    def _raise(self):
        error = self._error
        if error is not None:
            raise OSError(error) if isinstance(error, int) else error()

    # -- the socket: what umqtt and timedsock call ----------------------------

    def setblocking(self, flag):
        self.blocking = bool(flag)

    def settimeout(self, seconds):
        self.blocking = seconds != 0

    def read(self, n=-1):
        data = self._take(n)
        return None if data is None else bytes(data)

    def readinto(self, buf, n=-1):
        if n < 0 or n > len(buf):
            n = len(buf)
        data = self._take(n)
        if data is None:
            return None
        buf[: len(data)] = data
        return len(data)

    def _take(self, n):
        self.reads += 1
        if not self.inbox:
            self._raise()
        if self._flood is not None:
            while len(self.inbox) < max(n, 1):
                self.inbox += self._flood
        have = len(self.inbox)
        if n < 0:
            n = have
        if self.blocking:
            if have < n and not self._eof:
                self.hung += 1
                raise WouldBlockForever("a blocking read of {} bytes with {} scripted".format(n, have))
        elif not have:
            return b"" if self._eof else None
        elif self.max_read:
            n = min(n, self.max_read)
        data = self.inbox[:n]
        self.inbox = self.inbox[len(data) :]
        self._sync()
        return data

    def write(self, buf, n=None):
        self.writes += 1
        self._raise()
        if self._stalled:
            if self._stalled > 0:
                self._stalled -= 1
                self._sync()
            if self.blocking:
                self.hung += 1
                raise WouldBlockForever("a blocking write to a peer that reads nothing")
            return None
        view = memoryview(buf)
        if n is not None:
            view = view[:n]
        if self.max_write:
            view = view[: self.max_write]
        self.sent += bytes(view)
        self._parse()
        return len(view)

    def close(self):
        self.closed = True
        if self._wake is not None:
            for s in self._wake:
                s.close()
            self._wake = None

    def _parse(self):
        # Complete packets off the front of what the client wrote, to the server.
        sent = self.sent
        while True:
            at = self._parsed
            if len(sent) < at + 2:
                return
            length, shift, i = 0, 0, at + 1
            while True:
                if i >= len(sent):
                    return
                byte = sent[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(sent) < i + length:
                return
            self._parsed = i + length
            pkt = Packet(sent[at], sent[i : i + length])
            self.packets.append(pkt)
            if self.server is not None:
                self.server.handle(self, pkt)

    # -- poll() support --------------------------------------------------------

    def ioctl(self, request, arg):
        # MicroPython's poll() asks a Python stream here.
        if request == _STREAM_POLL:
            writable = 0 if self._stalled else arg & _POLL_WR
            return (arg & _POLL_RD if self._readable() else 0) | writable
        return -1  # no file descriptor, nothing else

    if not _MICROPYTHON:

        def fileno(self):
            if self._wake is None:
                self._wake = _socket.socketpair()
                self._signalled = False
                self._sync()
            return self._wake[0].fileno()

    def _sync(self):
        # CPython: one byte waits in the pair exactly while the script is
        # readable; the other way the pair is full exactly while writes stall.
        wake = self._wake
        if wake is None:
            return
        readable = self._readable()
        if readable and not self._signalled:
            wake[1].send(b"!")
        elif self._signalled and not readable:
            wake[0].recv(1)
        self._signalled = readable
        stalled = bool(self._stalled)
        if stalled != self._filled:
            sock = wake[0] if stalled else wake[1]
            sock.setblocking(False)
            try:
                while True:
                    if stalled:
                        sock.send(b"\0" * 65536)
                    elif not sock.recv(65536):
                        break
            except BlockingIOError:
                pass
            sock.setblocking(True)
            self._filled = stalled
