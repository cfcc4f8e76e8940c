"""The scripted socket the fleetprov cases run on: it must behave as it claims.

(On MicroPython the shared cases exercise it: its poll() support there is the
ioctl path, and a silent server read in a busy loop would fail a case.)
"""

from __future__ import annotations

import errno
import select
from collections.abc import Iterator

import pytest

import timedsock
from scriptsock import PUBLISH, STRAY_PUBACK, Packet, ScriptedSocket, WouldBlockForever, publish
from tools.umqtt_host import MQTTClient


@pytest.fixture
def sock() -> Iterator[ScriptedSocket]:
    s = ScriptedSocket()
    yield s
    s.close()


def readable(sock: ScriptedSocket) -> bool:
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))


def test_poll_sees_the_socket_readable_exactly_while_the_script_has_something(sock: ScriptedSocket) -> None:
    sock.setblocking(False)
    assert not readable(sock)
    sock.feed(b"abc")
    assert readable(sock)
    assert sock.read(2) == b"ab" and readable(sock)
    assert sock.read(5) == b"c" and not readable(sock)
    assert sock.read(1) is None
    sock.hang_up()
    assert readable(sock) and sock.read(1) == b""


def test_silence_makes_a_timed_socket_raise_etimedout_without_a_busy_loop(sock: ScriptedSocket) -> None:
    bounded = timedsock.TimedSocket(sock, 60)
    with pytest.raises(OSError) as info:
        bounded.read(1)
    assert info.value.args[0] == errno.ETIMEDOUT
    assert sock.reads <= 60 // 20 + 2, sock.reads  # it slept in poll between reads


def writable(sock: ScriptedSocket) -> bool:
    poll = select.poll()
    poll.register(sock, select.POLLOUT)
    return bool(poll.poll(0))


def test_a_stalled_peer_makes_a_timed_socket_raise_etimedout_without_a_busy_loop(sock: ScriptedSocket) -> None:
    assert writable(sock)
    sock.stall()
    assert not writable(sock)
    with pytest.raises(OSError) as info:
        timedsock.TimedSocket(sock, 60).write(b"\xc0\x00")  # a whole PINGREQ: it goes out at once
    assert info.value.args[0] == errno.ETIMEDOUT
    assert sock.writes <= 60 // 20 + 2 and sock.sent == b"", sock.writes
    sock.stall(0)
    assert writable(sock)
    assert timedsock.TimedSocket(sock, 60).write(b"\xc0\x00") == 2 and sock.sent == b"\xc0\x00"


def test_non_blocking_reads_deliver_at_most_max_read_bytes() -> None:
    sock = ScriptedSocket(max_read=2)
    sock.setblocking(False)
    sock.feed(b"abcde")
    assert [sock.read(5), sock.read(5), sock.read(5)] == [b"ab", b"cd", b"e"]
    buf = bytearray(4)
    sock.feed(b"xyz")
    assert sock.readinto(buf) == 2 and buf[:2] == b"xy"
    sock.close()


def test_a_blocking_read_the_script_cannot_satisfy_is_counted_not_waited_for(sock: ScriptedSocket) -> None:
    sock.feed(b"a")
    with pytest.raises(WouldBlockForever):
        sock.read(2)
    assert sock.hung == 1


def test_a_broken_link_raises_once_what_arrived_before_is_read(sock: ScriptedSocket) -> None:
    sock.feed(b"ab")
    sock.fail(errno.ECONNRESET)
    assert sock.read(2) == b"ab"
    with pytest.raises(OSError) as info:
        sock.read(1)
    assert info.value.args[0] == errno.ECONNRESET
    with pytest.raises(OSError):
        sock.write(b"x")


def test_a_flood_never_runs_dry(sock: ScriptedSocket) -> None:
    sock.setblocking(False)
    sock.flood()
    assert sock.read(len(STRAY_PUBACK) * 3) == STRAY_PUBACK * 3
    assert readable(sock) and sock.read(1) == STRAY_PUBACK[:1]


def test_the_clients_packets_are_parsed_whatever_their_length_header(sock: ScriptedSocket) -> None:
    client = MQTTClient(b"c", "127.0.0.1")
    client.sock = sock
    client.publish(b"t/1", b"x" * 300, True)  # QoS 0: two bytes of remaining length
    client.publish(b"t/2", b"")
    first, second = sock.packets
    assert (first.kind, first.topic, first.qos, first.retain) == (PUBLISH, b"t/1", 0, True)
    assert first.payload == b"x" * 300
    assert (second.topic, second.payload) == (b"t/2", b"")


@pytest.mark.parametrize("size", [0, 127, 128, 16383, 16384])
def test_a_server_publish_reads_back_as_sent(size: int) -> None:
    data = publish(b"a/b", b"p" * size, qos=1, pid=513)
    i = 1
    while data[i] & 0x80:
        i += 1
    pkt = Packet(data[0], data[i + 1 :])
    assert (pkt.topic, pkt.qos, pkt.pid, len(pkt.payload)) == (b"a/b", 1, 513, size)
