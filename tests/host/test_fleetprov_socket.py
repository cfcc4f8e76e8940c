"""fleetprov with the real umqtt.simple over a real socket to a server that stops answering.

umqtt waits for SUBACK and PUBACK with no limit of its own; fleetprov must turn
a silent or half-open connection into MQTT_ERROR, never a hang.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fleetprov
from rawbroker import RawBroker
from tools.umqtt_host import MQTTClient


@pytest.fixture
def broker_factory() -> Iterator[Callable[..., RawBroker]]:
    """Scripted servers (tests/fakes/rawbroker.py), closed when the test ends."""
    made: list[RawBroker] = []

    def make(**behaviour: Any) -> RawBroker:
        broker = RawBroker(**behaviour)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def connected_client(port: int) -> MQTTClient:
    client = MQTTClient(b"silent-test", "127.0.0.1", port)
    client.connect()
    client.sock.settimeout(None)  # as on a device: blocking, no timeout
    return client


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("behaviour", "operation", "named"),
    [
        ({"subscribe": "none"}, lambda p: p.create_keys_and_certificate(), ("subscribe", "ETIMEDOUT")),
        ({"publish": "none"}, lambda p: p.register_thing("demo", "tok"), ("publish",)),
    ],
    ids=["never-answers-subscribe", "never-sends-puback"],
)
def test_a_server_that_never_acknowledges_ends_in_mqtt_error_naming_the_step(
    broker_factory,
    behaviour: dict[str, str],
    operation: Callable[[fleetprov.Provisioner], object],
    named: tuple[str, ...],
) -> None:
    client = connected_client(broker_factory(**behaviour).port)
    p = fleetprov.Provisioner(client, mqtt_timeout_ms=300)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        operation(p)
    assert info.value.status == fleetprov.MQTT_ERROR
    assert all(word in str(info.value) for word in named)


@pytest.mark.timeout(30)
def test_the_socket_is_handed_back_unwrapped_and_blocking(broker_factory) -> None:
    client = connected_client(broker_factory(publish="none").port)
    sock = client.sock
    p = fleetprov.Provisioner(client, timeout_ms=50, mqtt_timeout_ms=300)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.create_certificate_from_csr("csr", qos=0)  # QoS 0: no PUBACK needed, so the wait times out
    assert info.value.status == fleetprov.TIMEOUT
    assert client.sock is sock
    assert sock.raw.gettimeout() is None


@pytest.mark.timeout(20)
def test_a_flood_of_stray_pubacks_ends_in_timeout_with_the_real_umqtt_on_cpython(broker_factory) -> None:
    # (the unix-port test measures the bound: tests/device/test_fleetprov_device.py)
    broker = broker_factory(publish="flood")
    p = fleetprov.Provisioner(connected_client(broker.port), timeout_ms=300, mqtt_timeout_ms=300)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.create_keys_and_certificate()
    assert info.value.status == fleetprov.TIMEOUT
    assert broker.flooded > 0


@pytest.mark.timeout(20)
def test_a_subscription_refused_by_the_real_umqtt_on_cpython_names_the_claim_policy(broker_factory) -> None:
    client = connected_client(broker_factory(subscribe="refuse").port)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        fleetprov.Provisioner(client).create_keys_and_certificate()
    assert info.value.status == fleetprov.MQTT_ERROR and "SUBACK 0x80" in str(info.value)


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
    broker = broker_factory(on_publish=answer_after_an_app_message(KEYS_ANSWER))
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
