"""fleetprov with the real umqtt.simple over a real socket to a server that stops answering.

umqtt waits for SUBACK and PUBACK with no limit of its own; fleetprov must turn
a silent or half-open connection into MQTT_ERROR, never a hang.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fleetprov
from tools.umqtt_host import MQTTClient


class SilentBroker:
    """Accepts one MQTT connection, answers CONNECT, then answers only what it is told to."""

    def __init__(self, answer_subscribe: bool) -> None:
        self.answer_subscribe = answer_subscribe
        # on a PUBLISH (its body): bytes to send back, or None to stay silent
        self.on_publish: Callable[[bytes], bytes | None] = lambda body: None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        conn, _ = self.listener.accept()
        conn.settimeout(0.05)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                self.received += data
                for kind, body in self._packets():
                    if kind == 0x10:
                        conn.sendall(b"\x20\x02\x00\x00")  # CONNACK accepted
                        self.connected.set()
                    elif kind == 0x80 and self.answer_subscribe:
                        conn.sendall(b"\x90\x03" + body[:2] + b"\x01")  # SUBACK QoS 1
                    elif kind == 0xA0:
                        conn.sendall(b"\xb0\x02" + body[:2])  # UNSUBACK (umqtt 1.7+ waits for it)
                    elif kind == 0x30:
                        reply = self.on_publish(body)  # by default never acknowledged
                        if reply:
                            conn.sendall(reply)

    def _packets(self) -> Iterator[tuple[int, bytes]]:
        """Complete MQTT packets off the front of the buffer: (type, body)."""
        while len(self.received) >= 2:
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(self.received):
                    return
                byte = self.received[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(self.received) < i + length:
                return
            kind = self.received[0] & 0xF0
            body = bytes(self.received[i : i + length])
            del self.received[: i + length]
            yield kind, body

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def broker_factory() -> Iterator[type[SilentBroker]]:
    made: list[SilentBroker] = []

    def make(answer_subscribe: bool) -> SilentBroker:
        broker = SilentBroker(answer_subscribe)
        made.append(broker)
        return broker

    yield make  # type: ignore[misc]
    for broker in made:
        broker.close()


def connected_client(port: int) -> MQTTClient:
    client = MQTTClient(b"silent-test", "127.0.0.1", port)
    client.connect()
    client.sock.settimeout(None)  # as on a device: blocking, no timeout
    return client


@pytest.mark.timeout(30)
def test_a_server_that_never_answers_subscribe_ends_in_mqtt_error(broker_factory) -> None:
    broker = broker_factory(answer_subscribe=False)
    client = connected_client(broker.port)
    p = fleetprov.Provisioner(client, mqtt_timeout_ms=300)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.create_keys_and_certificate()
    assert info.value.status == fleetprov.MQTT_ERROR
    assert "subscribe" in str(info.value) and "ETIMEDOUT" in str(info.value)


@pytest.mark.timeout(30)
def test_a_server_that_never_sends_puback_ends_in_mqtt_error(broker_factory) -> None:
    broker = broker_factory(answer_subscribe=True)
    client = connected_client(broker.port)
    p = fleetprov.Provisioner(client, mqtt_timeout_ms=300)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.register_thing("demo", "tok")
    assert info.value.status == fleetprov.MQTT_ERROR
    assert "publish" in str(info.value)


@pytest.mark.timeout(30)
def test_the_socket_is_handed_back_unwrapped_and_blocking(broker_factory) -> None:
    broker = broker_factory(answer_subscribe=True)
    client = connected_client(broker.port)
    sock = client.sock
    p = fleetprov.Provisioner(client, timeout_ms=50, mqtt_timeout_ms=300)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.create_certificate_from_csr("csr", qos=0)  # QoS 0: no PUBACK needed, so the wait times out
    assert info.value.status == fleetprov.TIMEOUT
    assert client.sock is sock
    assert sock.raw.gettimeout() is None


@pytest.mark.timeout(20)
def test_a_flood_of_stray_pubacks_ends_in_timeout_with_the_real_umqtt_on_cpython() -> None:
    # (the unix-port test measures the bound: tests/device/test_fleetprov_device.py)
    from rawbroker import RawBroker

    broker = RawBroker(publish="flood")
    try:
        client = connected_client(broker.port)
        p = fleetprov.Provisioner(client, timeout_ms=300, mqtt_timeout_ms=300)
        with pytest.raises(fleetprov.ProvisioningError) as info:
            p.create_keys_and_certificate()
        assert info.value.status == fleetprov.TIMEOUT
        assert broker.flooded > 0
    finally:
        broker.close()


@pytest.mark.timeout(20)
def test_a_subscription_refused_by_the_real_umqtt_on_cpython_names_the_claim_policy() -> None:
    from rawbroker import RawBroker

    broker = RawBroker(subscribe="refuse")
    try:
        client = connected_client(broker.port)
        with pytest.raises(fleetprov.ProvisioningError) as info:
            fleetprov.Provisioner(client).create_keys_and_certificate()
        assert info.value.status == fleetprov.MQTT_ERROR and "SUBACK 0x80" in str(info.value)
    finally:
        broker.close()


def publish_frame(topic: bytes, payload: bytes, qos: int = 0, pid: int = 7) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"") + payload
    n, length = len(body), bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x30 | qos << 1]) + bytes(length) + body


def answer_after_an_app_message(answer: bytes) -> Callable[[bytes], bytes | None]:
    """The reply to the CreateKeysAndCertificate request (QoS 1): its PUBACK,
    an application message, then the answer at QoS 1."""

    def reply(body: bytes) -> bytes | None:
        topic_len = int.from_bytes(body[:2], "big")
        if body[2 : 2 + topic_len] != b"$aws/certificates/create/json":
            return None
        pid = body[2 + topic_len : 4 + topic_len]
        return (
            b"\x40\x02" + pid
            + publish_frame(b"app/news", b"N" * 300)
            + publish_frame(b"$aws/certificates/create/json/accepted", answer, qos=1)
        )

    return reply


def spy_on_reads(client: MQTTClient) -> list[int]:
    """Sizes of every read() that allocates on the client's socket (readinto not counted)."""
    sizes: list[int] = []
    real = client.sock.read

    def read(n: int = -1) -> bytes | None:
        sizes.append(n)
        return real(n)

    client.sock.read = read  # type: ignore[method-assign]
    return sizes


KEYS_ANSWER = (
    b'{"certificateId":"' + b"c" * 64 + b'","certificatePem":"' + b"P" * 1500
    + b'","privateKey":"' + b"K" * 1700 + b'","certificateOwnershipToken":"' + b"T" * 700 + b'"}'
)


def provisioner_with_an_app_message_waiting(
    broker_factory: Any, rx_size: int
) -> tuple[fleetprov.Provisioner, list[tuple[bytes, bytes]], list[int]]:
    """A Provisioner on a real umqtt client whose server sends an app message,
    then KEYS_ANSWER; with the messages the app got and the sizes umqtt read."""
    broker = broker_factory(answer_subscribe=True)
    broker.on_publish = answer_after_an_app_message(KEYS_ANSWER)
    client = connected_client(broker.port)
    app: list[tuple[bytes, bytes]] = []
    client.set_callback(lambda topic, msg: app.append((topic, msg)))
    reads = spy_on_reads(client)
    return fleetprov.Provisioner(client, timeout_ms=5000, rx_size=rx_size, mqtt_timeout_ms=3000), app, reads


@pytest.mark.timeout(30)
def test_the_answer_is_read_into_the_receive_buffer_and_an_app_message_reaches_the_app_intact(
    broker_factory,
) -> None:
    p, app, reads = provisioner_with_an_app_message_waiting(broker_factory, rx_size=6144)
    keys = p.create_keys_and_certificate()
    assert keys.certificate_id == "c" * 64 and keys.private_key == "K" * 1700
    assert keys.ownership_token == "T" * 700 and len(keys.certificate_pem) == 1500
    assert app == [(b"app/news", b"N" * 300)] and isinstance(app[0][1], bytes)
    # the answer's payload never went through an allocating read: it landed in the buffer
    assert len(KEYS_ANSWER) not in reads and 300 in reads
    assert bytes(p._rx[: len(KEYS_ANSWER)]) == KEYS_ANSWER


@pytest.mark.timeout(30)
def test_an_answer_larger_than_rx_size_is_read_through_the_buffer_and_refused_naming_both_sizes(
    broker_factory,
) -> None:
    p, app, reads = provisioner_with_an_app_message_waiting(broker_factory, rx_size=1024)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.create_keys_and_certificate()
    assert info.value.status == fleetprov.NO_MEMORY
    assert f"the {len(KEYS_ANSWER)}-byte response does not fit the 1024-byte receive buffer" in str(info.value)
    assert len(KEYS_ANSWER) not in reads
    assert app == [(b"app/news", b"N" * 300)]
