"""mmqttclient over the real MiniMQTT on the path a board takes: socketpool.

On CPython, MiniMQTT reads through `socket` (a pool with a `timeout` class);
on a board its pool has none, and a read that times out is an
OSError(ETIMEDOUT). test_circuitpython_minimqtt.py runs the first against
iotsim; this runs the second over a scripted socket that behaves as
socketpool's does and records the timeout each read was given, so what
check_msg() waits for is counted, not timed.
"""

from __future__ import annotations

import errno
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest
from adafruit_minimqtt.adafruit_minimqtt import MQTT, MMQTTException
from scriptsock import PINGREQ, PINGRESP, publish, suback

ROOT = Path(__file__).resolve().parents[2]
CP_LIB = ROOT / "circuitpython" / "lib"
if str(CP_LIB) not in sys.path:
    sys.path.insert(0, str(CP_LIB))

import mmqttclient  # noqa: E402

SOCKET_TIMEOUT_S = 1  # MiniMQTT's default
CONNACK = b"\x20\x02\x00\x00"
TOPIC = b"$aws/certificates/create/json/accepted"


class BoardSocket:
    """A socketpool socket (and the TLS socket over it) as MiniMQTT uses it.
    What the broker sends is queued in ``inbox``; a read with nothing queued
    raises OSError(ETIMEDOUT), as a board's does once its timeout passed;
    ``closed``: the broker hung up (reads return 0)."""

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.sent = bytearray()
        self.timeout: float | None = None
        self.reads: list[float | None] = []  # the timeout each read was given
        self.options: list[tuple[int, int, int]] = []
        self.closed = False

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options.append((level, option, value))

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def connect(self, address: tuple[str, int]) -> None:
        self.inbox += CONNACK

    def send(self, data: bytes) -> int:
        self.sent += data
        if bytes(data) == bytes((PINGREQ, 0)):
            self.inbox += PINGRESP
        return len(data)

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        self.reads.append(self.timeout)
        if self.closed:
            return 0
        if not self.inbox:
            raise OSError(errno.ETIMEDOUT, "timed out")
        n = min(nbytes or len(buf), len(self.inbox))
        buf[:n] = self.inbox[:n]
        del self.inbox[:n]
        return n

    def close(self) -> None:
        self.closed = True


class BoardPool:
    """socketpool.SocketPool's surface: constants, getaddrinfo, socket; no `timeout`."""

    AF_INET = 2
    SOCK_STREAM = 1
    IPPROTO_TCP = 6
    TCP_NODELAY = 1

    def __init__(self) -> None:
        self.sock = BoardSocket()

    def getaddrinfo(self, host: str, port: int, family: int = 0, type: int = 0) -> list[Any]:
        return [(self.AF_INET, self.SOCK_STREAM, 0, "", (host, port))]

    def socket(self, family: int, type: int) -> BoardSocket:
        return self.sock


class BoardTLS:
    def wrap_socket(self, sock: BoardSocket, server_hostname: str | None = None) -> BoardSocket:
        return sock


@pytest.fixture
def board() -> tuple[mmqttclient.Client, BoardSocket]:
    pool = BoardPool()
    ctx = mmqttclient._Context(BoardTLS(), None, pool)
    mqtt = MQTT(broker="board.example", port=8883, client_id="board", is_ssl=True, socket_pool=pool,
                ssl_context=ctx, use_binary_mode=True, socket_timeout=SOCKET_TIMEOUT_S, recv_timeout=5,
                connect_retries=1, keep_alive=60)
    mqtt.connect()
    pool.sock.reads.clear()
    return mmqttclient.Client(mqtt, ctx, 5000), pool.sock


def test_minimqtt_still_has_the_one_packet_read_that_check_msg_is_built_on() -> None:
    # mmqttclient.Client.check_msg() calls MiniMQTT's internal _wait_for_msg()
    # (8.x): one packet read and handled, None when its first read times out.
    # A MiniMQTT that renames or reshapes it fails here and in the tests below.
    params = inspect.signature(MQTT._wait_for_msg).parameters
    assert list(params) == ["self", "timeout"] and params["timeout"].default is None
    assert not hasattr(BoardPool, "timeout")  # so MiniMQTT takes its socketpool path here


def test_check_msg_with_nothing_waiting_returns_none_after_one_short_read(board: Any) -> None:
    client, sock = board
    assert client.check_msg() is None
    assert sock.reads == [mmqttclient._PEEK_S]  # not the socket timeout
    assert sock.timeout == SOCKET_TIMEOUT_S  # given back for MiniMQTT's own waits


def test_a_message_that_is_in_is_delivered_by_the_next_check_msg_read_whole(board: Any) -> None:
    client, sock = board
    seen: list[tuple[bytes, bytes]] = []
    client.set_callback(lambda topic, msg: seen.append((topic, bytes(msg))))
    sock.inbox += publish(TOPIC, b'{"certificateId":"x"}')
    assert client.check_msg() == 0x30
    assert seen == [(TOPIC, b'{"certificateId":"x"}')]
    # only the first byte was a peek: the rest of the packet had the socket timeout
    assert sock.reads[0] == mmqttclient._PEEK_S and set(sock.reads[1:]) == {SOCKET_TIMEOUT_S}
    assert client.check_msg() is None


def test_a_broker_that_hung_up_is_an_error_at_once_not_reads_until_the_timeout(board: Any) -> None:
    client, sock = board
    sock.closed = True
    with pytest.raises(MMQTTException) as err:
        client.check_msg()
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ECONNRESET
    assert len(sock.reads) == 1


def test_a_subscription_waits_for_its_suback_with_the_socket_timeout(board: Any) -> None:
    client, sock = board
    sock.inbox += suback(1)
    client.subscribe(TOPIC, 1)
    assert set(sock.reads) == {SOCKET_TIMEOUT_S}


def test_nagle_is_off_on_the_boards_tcp_socket(board: Any) -> None:
    _, sock = board
    assert (BoardPool.IPPROTO_TCP, BoardPool.TCP_NODELAY, 1) in sock.options


def test_check_msg_pings_once_keep_alive_has_passed_since_the_last_send(
    board: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, sock = board
    assert client.check_msg() is None and PINGREQ not in sock.sent  # just connected
    now = mmqttclient.ticks_ms()
    monkeypatch.setattr(mmqttclient, "ticks_ms", lambda: now + 60_000)
    sock.sent.clear()
    client.check_msg()
    assert bytes(sock.sent) == bytes((PINGREQ, 0)) and not sock.inbox  # PINGRESP read
    client.check_msg()
    assert bytes(sock.sent) == bytes((PINGREQ, 0))  # not again until keep_alive passes anew
