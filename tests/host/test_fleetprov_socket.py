"""fleetprov with the real umqtt.simple over a real socket to a server that stops answering.

umqtt waits for SUBACK and PUBACK with no limit of its own; fleetprov must turn
a silent or half-open connection into MQTT_ERROR, never a hang.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import fleetprov
from tools.umqtt_host import MQTTClient


class SilentBroker:
    """Accepts one MQTT connection, answers CONNECT, then answers only what it is told to."""

    def __init__(self, answer_subscribe: bool) -> None:
        self.answer_subscribe = answer_subscribe
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
                    # PUBLISH is read and never acknowledged

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
