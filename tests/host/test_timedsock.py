"""timedsock: reads and writes on a real socket pair never wait past the limit; fleetprov's rare paths."""

from __future__ import annotations

import errno
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import esp32errno
import fleetprov
import timedsock
from fakemqtt import AwsResponder, FakeClient
from tools.umqtt_host import HostSocket


@pytest.fixture
def pair() -> Iterator[tuple[HostSocket, socket.socket]]:
    a, b = socket.socketpair()
    yield HostSocket(a), b
    a.close()
    b.close()


def bounded(sock: HostSocket, ms: int = 200) -> Any:
    return timedsock.TimedSocket(sock, ms)


def test_a_blocking_read_returns_exactly_n_bytes_across_chunks(pair) -> None:
    ours, peer = pair
    b = bounded(ours)
    peer.sendall(b"ab")
    feeder = threading.Timer(0.01, lambda: peer.sendall(b"cdef"))
    feeder.start()
    assert b.read(5) == b"abcde"
    feeder.join()
    assert b.read(1) == b"f"


def test_a_blocking_read_with_nothing_arriving_raises_etimedout(pair) -> None:
    ours, _ = pair
    with pytest.raises(OSError) as info:
        bounded(ours, 50).read(1)
    assert info.value.args[0] == errno.ETIMEDOUT


@pytest.mark.parametrize("how", ["read", "fill"])
def test_a_read_cut_short_by_the_peer_closing_is_econnreset_not_short_data(pair, how: str) -> None:
    # umqtt would hand a short payload on as a whole message
    ours, peer = pair
    peer.sendall(b"xy")
    peer.shutdown(socket.SHUT_WR)
    b = bounded(ours)
    with pytest.raises(OSError) as info:
        b.read(4) if how == "read" else b.fill(memoryview(bytearray(4)))
    assert info.value.args[0] == errno.ECONNRESET


def test_fill_reads_exactly_the_view(pair) -> None:
    ours, peer = pair
    peer.sendall(b"abcdef")
    buf = bytearray(8)
    bounded(ours).fill(memoryview(buf)[:4])
    assert buf == b"abcd\0\0\0\0"


def test_non_blocking_mode_reads_what_is_there_or_none(pair) -> None:
    ours, peer = pair
    b = bounded(ours)
    b.setblocking(False)
    assert b.read(1) is None
    peer.sendall(b"z")
    b.setblocking(True)
    assert b.read(1) == b"z"


def test_a_large_write_completes_while_the_peer_drains_slowly(pair) -> None:
    ours, peer = pair
    payload = bytes(range(256)) * 8192  # 2 MB: more than the socket buffers hold
    received = bytearray()

    def drain() -> None:
        peer.settimeout(5)
        while len(received) < len(payload):
            chunk = peer.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    assert bounded(ours, 5000).write(payload) == len(payload)
    reader.join(10)
    assert bytes(received) == payload


def test_a_write_to_a_peer_that_never_reads_raises_etimedout(pair) -> None:
    ours, _ = pair
    with pytest.raises(OSError) as info:
        bounded(ours, 100).write(b"x" * (8 << 20))
    assert info.value.args[0] == errno.ETIMEDOUT


def test_the_deadline_covers_the_operation_however_much_data_flows(pair) -> None:
    # umqtt reads packet after packet until its ACK: a flood must not extend the wait
    ours, peer = pair
    peer.sendall(b"abc")
    b = bounded(ours)
    assert b.read(1) == b"a"
    b.arm(0)  # the operation's time is up
    with pytest.raises(OSError) as info:
        b.read(1)  # though "b" is waiting
    assert info.value.args[0] == errno.ETIMEDOUT
    b.arm()  # the next operation: a fresh timeout_ms
    assert b.read(2) == b"bc"


def test_on_esp32_numbering_a_timeout_raises_newlibs_etimedout(pair, monkeypatch) -> None:
    monkeypatch.setattr(timedsock, "errno", esp32errno)
    ours, _ = pair
    with pytest.raises(OSError) as info:
        bounded(ours, 30).read(1)
    assert info.value.args[0] == 116
    assert timedsock.describe(info.value) == "OSError ETIMEDOUT (116)"


def test_describe_names_the_error_from_the_ports_table_or_falls_back_to_str() -> None:
    assert timedsock.describe(OSError(errno.ECONNRESET)) == "OSError ECONNRESET ({})".format(errno.ECONNRESET)
    assert timedsock.describe(OSError(-1)) == "OSError: -1"  # umqtt's "connection closed"
    assert timedsock.describe(OSError("no route")) == "OSError: no route"
    assert timedsock.describe(ValueError()) == "ValueError: "


@pytest.mark.timeout(10)
def test_wait_readable_returns_at_once_for_waiting_data_and_after_the_slice_otherwise(pair) -> None:
    ours, peer = pair
    b = bounded(ours)
    b.wait_readable(10)  # nothing to read: back after the slice
    peer.sendall(b"q")
    b.wait_readable(600_000)  # data waiting: back at once (a hang trips the timeout)
    b.setblocking(False)
    assert b.read(1) == b"q"


def test_write_honours_the_length_argument_as_umqtt_passes_it(pair) -> None:
    ours, peer = pair
    b = bounded(ours)
    assert b.write(bytearray(b"\x30\x05\x00\x00"), 2) == 2  # the header of a 7-byte PUBLISH
    assert b.write(b"\x00\x01t") == 3 and b.write(b"xy") == 2
    peer.settimeout(1)
    assert peer.recv(20) == b"\x30\x05\x00\x01txy"


class CountingSocket(HostSocket):
    """A HostSocket that records each write it is given."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.writes: list[bytes] = []

    def write(self, buf: Any, n: int | None = None) -> int | None:
        sent = super().write(buf)
        if sent:
            self.writes.append(bytes(memoryview(buf)[:sent]))
        return sent


@pytest.mark.parametrize("umqtt", ["1.3.4", "1.8.0"])
def test_each_mqtt_packet_umqtt_writes_in_pieces_leaves_in_one_write(umqtt: str) -> None:
    # Over TLS each write is a record and a segment; Nagle holds the small ones.
    from tools import umqtt_host

    a, b = socket.socketpair()
    try:
        sock = CountingSocket(a)
        client = umqtt_host.client_class(umqtt)(b"cid", "127.0.0.1")
        client.sock = sock
        timedsock.attach(client, 500)
        client.publish(b"fleetprov/topic", b"x" * 300, False, 0)
        client.sock.write(b"\xa2\x0b\x00\x02\x00\x07a/b/c/d")  # an UNSUBSCRIBE, whole
        timedsock.detach(client, sock)
        assert [w[:1] for w in sock.writes] == [b"\x30", b"\xa2"]
        assert len(sock.writes[0]) == 2 + 2 + len(b"fleetprov/topic") + 300 + 1  # two length bytes
    finally:
        a.close()
        b.close()


def test_a_read_sends_a_packet_still_being_gathered_first(pair) -> None:
    # an answer cannot come to a request that was never sent
    ours, peer = pair
    b = bounded(ours)
    b.write(b"\x30\x09\x00\x01t")  # 5 of 11 bytes
    peer.sendall(b"\x40")
    assert b.read(1) == b"\x40"
    peer.settimeout(1)
    assert peer.recv(20) == b"\x30\x09\x00\x01t"


def test_detach_sends_a_packet_still_being_gathered(pair) -> None:
    ours, peer = pair
    client = FakeClient()
    client.sock = ours
    timedsock.attach(client, 200)
    client.sock.write(b"\xe0")  # half a DISCONNECT
    timedsock.detach(client, ours)
    peer.settimeout(1)
    assert peer.recv(4) == b"\xe0" and client.sock is ours


@pytest.mark.parametrize("size", [0, 127, 128, 16383, 16384, 70000])
def test_a_packet_of_any_remaining_length_leaves_whole_and_only_when_complete(pair, size: int) -> None:
    ours, peer = pair
    b = bounded(ours, 2000)
    n, head = size, bytearray(b"\x30")
    while True:
        head.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(recv_all(peer, len(head) + size)))
    reader.start()
    b.write(head)
    b.write(body[: size // 2])
    assert b._have == len(head) + size // 2 or size == 0  # gathered, not sent
    if size:
        b.write(body[size // 2 :])
    reader.join(5)
    assert bytes(received) == bytes(head) + body


def recv_all(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(5)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_other_socket_methods_pass_through(pair) -> None:
    ours, _ = pair
    b = bounded(ours)
    assert b.fileno() == ours.fileno()


# -- the rest of fleetprov's rarely taken paths ---------------------------------------


def test_cbor_without_the_codec_on_the_device_is_init_failed(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cbor", None)  # import cbor -> ImportError
    with pytest.raises(fleetprov.ProvisioningError) as info:
        fleetprov.Provisioner(FakeClient(), fmt="cbor")
    assert info.value.status == fleetprov.INIT_FAILED and "cbor.py" in str(info.value)


def test_a_receive_buffer_too_large_for_the_heap_is_no_memory() -> None:
    with pytest.raises(fleetprov.ProvisioningError) as info:
        fleetprov.Provisioner(FakeClient(), rx_size=1 << 60)
    assert info.value.status == fleetprov.NO_MEMORY and "rx_size" in str(info.value)


def test_foreign_messages_without_an_application_callback_are_dropped() -> None:
    responder = AwsResponder()
    client = FakeClient(responder)
    p = fleetprov.Provisioner(client)
    client.queue(b"app/x", b"1")
    assert p.create_keys_and_certificate().certificate_id == "c" * 64
    assert client.inbox == []


def test_a_flood_of_pending_messages_does_not_stall_the_request() -> None:
    responder = AwsResponder()
    client = FakeClient(responder)
    seen: list[bytes] = []
    client.set_callback(lambda t, m: seen.append(m))
    p = fleetprov.Provisioner(client)
    for i in range(40):  # more than the drain reads before publishing
        client.inbox.append((b"app/flood", str(i).encode()))
    client.subscribe = lambda topic, qos=0: client.subscribed.append((topic, qos))  # type: ignore[method-assign]
    assert p.register_thing("demo", "tok").thing_name == "thing-0001"
    assert seen == [str(i).encode() for i in range(40)]


def test_a_socket_that_cannot_be_made_blocking_again_is_still_handed_back() -> None:
    class BrokenSocket(HostSocket):
        calls = 0

        def setblocking(self, flag: bool) -> None:
            BrokenSocket.calls += 1
            if flag:
                raise OSError(9)
            super().setblocking(flag)

    a, b = socket.socketpair()
    try:
        responder = AwsResponder()
        client = FakeClient(responder)
        client.sock = sock = BrokenSocket(a)
        p = fleetprov.Provisioner(client)
        assert p.create_keys_and_certificate().certificate_id == "c" * 64
        assert client.sock is sock and BrokenSocket.calls >= 2
    finally:
        a.close()
        b.close()


def test_a_request_that_cannot_be_encoded_is_internal_failure() -> None:
    p = fleetprov.Provisioner(FakeClient(AwsResponder()))

    def broken(obj: Any) -> str:
        raise ValueError("encoder bug")

    p._dumps = broken
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.register_thing("demo", "tok")
    assert info.value.status == fleetprov.INTERNAL_FAILURE


def test_no_memory_while_encoding_is_no_memory() -> None:
    p = fleetprov.Provisioner(FakeClient(AwsResponder()))

    def broken(obj: Any) -> str:
        raise MemoryError

    p._dumps = broken
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.create_certificate_from_csr("csr")
    assert info.value.status == fleetprov.NO_MEMORY


def test_attach_and_detach_swap_the_clients_socket_and_restore_blocking(pair) -> None:
    ours, _ = pair

    class Client:
        sock: Any = ours

    client = Client()
    original = timedsock.attach(client, 100)
    assert original is ours and isinstance(client.sock, timedsock.TimedSocket)
    assert ours.raw.gettimeout() == 0.0  # the real socket is non-blocking meanwhile
    timedsock.detach(client, original)
    assert client.sock is ours and ours.raw.gettimeout() is None


def test_attach_to_a_client_without_a_socket_is_a_no_op() -> None:
    class Client:
        pass

    client = Client()
    assert timedsock.attach(client, 100) is None
    timedsock.detach(client, None)
    assert not hasattr(client, "sock")
