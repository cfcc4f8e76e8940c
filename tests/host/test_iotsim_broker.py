"""mosquitto + the iotsim plugin, without the provisioning service.

The test plays the service itself: a paho client with the SERVICE identity
subscribed to iotsim/req/#, answering on iotsim/reply/<hex id>/<connection>/<topic>.
It also plays the registry: it writes the principal files (status and compiled
policy) itself. ACTIVE test devices get a policy that allows every MQTT action
on every resource, CLAIM the claim policy of docs/aws-setup.md. Every client
connects over mutual TLS to a Broker the fixture starts on a free port.
Synchronisation is by queues with timeouts; a "nothing arrived" assertion is
made against a marker message that the broker must deliver after the one that
must not arrive (MQTT keeps the order of messages to one client).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization

from tools.iotsim import pki
from tools.iotsim.broker import AWS_QUOTAS, Broker, BrokerError, MqttQuotas, free_port
from tools.iotsim.policy import Policy, claim_policy_document, parse_policy, render_principal
from tools.iotsim.registry import principal_path

ALLOW_ALL = parse_policy('{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}')
CLAIM_POLICY = parse_policy(claim_policy_document())

TIMEOUT = 10.0
CREATE_JSON = "$aws/certificates/create/json"
ACCEPTED = CREATE_JSON + "/accepted"
_ids = itertools.count(1)


class Refused(Exception):
    """The broker did not accept the connection (CONNACK failure or TLS error)."""


class Peer:
    """A paho MQTT 3.1.1 client over mutual TLS that records what happens to it."""

    def __init__(self, broker: Broker, cert: Path, key: Path, client_id: str | None = None,
                 *, ca: Path | None = None) -> None:
        self.client_id = client_id or "peer-{}".format(next(_ids))
        self.messages: queue.Queue[tuple[str, bytes, int]] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.connack: queue.Queue[Any] = queue.Queue()
        self.disconnected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
            protocol=mqtt.MQTTv311, reconnect_on_failure=False,
        )
        self.client.tls_set(
            ca_certs=str(ca or broker.state / "ca.pem"), certfile=str(cert), keyfile=str(key)
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.broker = broker

    # paho callbacks (network thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        # paho reports MQTT 3.1.1 return code 5 as reason code 135 "Not authorized".
        self.connack.put(rc)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack.put("disconnected before CONNACK")  # wakes a waiting connect()
        self.disconnected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, msg.payload, msg.qos))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self.subacks.put([int(rc.value) for rc in rcs])

    def connect(self) -> Peer:
        """Connect and wait for CONNACK; raise Refused unless it is a success."""
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise Refused("TLS/socket: {}".format(exc)) from exc
        self.client.loop_start()
        try:
            code = self.connack.get(timeout=TIMEOUT)
        except queue.Empty:
            self.close()
            raise AssertionError("no CONNACK within {} s".format(TIMEOUT)) from None
        if code != 0:  # a ReasonCode compares equal to its value
            self.close()
            raise Refused("CONNACK {}".format(code))
        return self

    def subscribe(self, topic: str, qos: int = 1) -> int:
        """Subscribe and return the SUBACK code (0-2 granted, 0x80 failure)."""
        self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=TIMEOUT)[0]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published(), "no PUBACK for {} within {} s".format(topic, TIMEOUT)

    def next_message(self) -> tuple[str, bytes, int]:
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError("{} received nothing within {} s".format(self.client_id, TIMEOUT)) from None

    def wait_disconnected(self) -> bool:
        return self.disconnected.wait(TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Setup:
    """A running broker, its identities, and helpers to write principal files."""

    def __init__(self, state: Path, broker: Broker, ca: pki.CertificateAuthority) -> None:
        self.state = state
        self.broker = broker
        self.ca = ca
        self.statuses: dict[str, str] = {}
        self.peers: list[Peer] = []
        self.service_id = self.identity("service", "iotsim-service", "SERVICE")
        self.claim_id = self.identity("claim", "iotsim-claim", "CLAIM")

    def identity(
        self, name: str, cn: str, status: str | None, policies: list[Policy] | None = None
    ) -> pki.ClientIdentity:
        ident = pki.ensure_client_identity(self.state, self.ca, name, cn)
        if status:
            self.set_status(ident, status, policies)
        return ident

    def set_status(
        self, ident: pki.ClientIdentity, status: str, policies: list[Policy] | None = None
    ) -> None:
        """Rewrite the certificate's principal file atomically, as the service's registry does."""
        self.statuses[ident.certificate_id] = status
        if policies is None:
            policies = {"ACTIVE": [ALLOW_ALL], "CLAIM": [CLAIM_POLICY]}.get(status, [])
        path = principal_path(self.state, ident.certificate_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        pki.write_atomic(path, render_principal(status, policies, []))

    def connection(self, peer: Peer, svc: Peer) -> int:
        """The plugin's serial number of peer's connection (learnt from a request it sends)."""
        peer.publish(CREATE_JSON, b"probe")
        topic, payload, _ = svc.next_message()
        assert payload == b"probe", topic
        client_hex, serial, _, _ = topic[len("iotsim/req/"):].split("/", 3)
        assert bytes.fromhex(client_hex).decode() == peer.client_id
        return int(serial)

    def peer(self, ident: pki.ClientIdentity, client_id: str | None = None) -> Peer:
        p = Peer(self.broker, ident.cert_path, ident.key_path, client_id)
        self.peers.append(p)
        return p

    def service(self) -> Peer:
        svc = self.peer(self.service_id, "iotsim-service").connect()
        assert svc.subscribe("iotsim/req/#") == 1
        return svc

    def claim(self, client_id: str | None = None) -> Peer:
        return self.peer(self.claim_id, client_id).connect()


@contextlib.contextmanager
def running_setup(tmp_path: Path, quotas: MqttQuotas = AWS_QUOTAS) -> Iterator[Setup]:
    state = tmp_path / "state"
    ca = pki.CertificateAuthority.load_or_create(state)
    broker = Broker(state, free_port(), quotas=quotas)
    s = Setup(state, broker, ca)
    broker.start()
    try:
        yield s
    finally:
        for p in s.peers:
            p.close()
        broker.stop()
    log_text = broker.log_path.read_bytes()
    assert b"iotsim: plugin ready" in log_text
    # Every line the plugin writes is readable text (no uninitialised buffers).
    assert all(32 <= c < 127 or c in (9, 10) for c in log_text), log_text


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with running_setup(tmp_path) as s:
        yield s


@pytest.fixture
def takeover_setup(tmp_path: Path) -> Iterator[Setup]:
    """A broker without the CONNECT-rate quota, for tests of what a takeover does: a
    takeover is a second CONNECT with one client id, here within the same second,
    which the quota (tested on its own below) would close before CONNACK."""
    with running_setup(tmp_path, MqttQuotas(connect_interval_ms=0)) as s:
        yield s


def reply_topic(client_id: str, connection: int, topic: str) -> str:
    return "iotsim/reply/{}/{}/{}".format(client_id.encode().hex(), connection, topic)


def kick_topic(client_id: str, connection: int) -> str:
    return "iotsim/kick/{}/{}".format(client_id.encode().hex(), connection)


def request_topic(client_id: str, cert_id: str, topic: str) -> str:
    """The request topic without its connection number (see strip_connection)."""
    return "iotsim/req/{}/{}/{}".format(client_id.encode().hex(), cert_id, topic)


def strip_connection(topic: str) -> str:
    client_hex, serial, rest = topic[len("iotsim/req/"):].split("/", 2)
    assert serial.isdigit(), topic
    return "iotsim/req/{}/{}".format(client_hex, rest)


# --- connecting ------------------------------------------------------------


@pytest.mark.parametrize("status", ["ACTIVE", "CLAIM", "SERVICE"])
def test_allowed_statuses_connect(setup: Setup, status: str) -> None:
    ident = setup.identity("dev", "dev", status)
    setup.peer(ident).connect()


@pytest.mark.parametrize("status", ["PENDING_ACTIVATION", "INACTIVE", "REVOKED"])
def test_other_statuses_are_refused_with_connack_not_authorised(setup: Setup, status: str) -> None:
    ident = setup.identity("dev", "dev", status)
    with pytest.raises(Refused, match="CONNACK Not authorized"):
        setup.peer(ident).connect()


def test_unknown_certificate_is_refused(setup: Setup) -> None:
    ident = setup.identity("stranger", "stranger", None)
    with pytest.raises(Refused, match="CONNACK Not authorized"):
        setup.peer(ident).connect()


def test_certificate_from_another_ca_is_refused_even_if_listed_active(setup: Setup, tmp_path: Path) -> None:
    other_ca = pki.CertificateAuthority.load_or_create(tmp_path / "other")
    ident = pki.ensure_client_identity(tmp_path / "other", other_ca, "dev", "dev")
    setup.set_status(ident, "ACTIVE")
    peer = setup.peer(ident)
    with pytest.raises(Refused):
        peer.connect()


@pytest.mark.parametrize("content", [
    b"",
    b"status ACTIVE\ndefault\nallow 15 *\n",  # no header
    b"iotsim-principal 2\ndefault\nallow 15 *\n",  # no status
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\nallow x *\n",  # bad mask
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\nallow 32 *\n",  # mask beyond every action
    b"iotsim-principal 2\nstatus ACTIVE\nwhat is this\n",
    b"iotsim-principal 1\nstatus ACTIVE\ndefault\nallow 15 *\n",  # the old format
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\nallow 15 *",  # last record unterminated
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\nallow 15 * extra\n",  # a field too many
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\nallow 15 a\tb\n",  # a raw control byte
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\nallow 15 %2a\n",  # escapes are upper-case hex
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\nallow 15 *%00\n",  # a NUL cannot be a value
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\nallow 15 *%\n",  # a cut escape
    b"iotsim-principal 2\nstatus ACTIVE\ndefault\x00\nallow 15 *\n",  # a NUL byte in the file
    b"iotsim-principal 2\nstatus ACTIVE\nstatus SERVICE\ndefault\n",  # a second status
    b"iotsim-principal 2\nstatus SERVICE%0A\ndefault\nallow 15 *\n",  # no such status
])
def test_malformed_principal_file_grants_nothing(setup: Setup, content: bytes) -> None:
    dev = setup.identity("dev", "dev", None)
    path = principal_path(setup.state, dev.certificate_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    pki.write_atomic(path, content)
    with pytest.raises(Refused, match="CONNACK Not authorized"):
        setup.peer(dev).connect()
    setup.set_status(dev, "ACTIVE")
    setup.peer(dev).connect()


def test_status_change_applies_to_the_next_connection_without_restart(setup: Setup) -> None:
    dev = setup.identity("dev", "dev", "PENDING_ACTIVATION")
    with pytest.raises(Refused):
        setup.peer(dev).connect()
    setup.set_status(dev, "ACTIVE")
    setup.peer(dev).connect()
    setup.set_status(dev, "INACTIVE")
    with pytest.raises(Refused):
        setup.peer(dev).connect()


def test_missing_principal_file_refuses_until_it_appears(setup: Setup) -> None:
    principal_path(setup.state, setup.service_id.certificate_id).unlink()
    with pytest.raises(Refused):
        setup.peer(setup.service_id).connect()
    setup.set_status(setup.service_id, "SERVICE")
    setup.peer(setup.service_id).connect()


# --- per-connection delivery ------------------------------------------------


def test_simultaneous_claim_requests_each_get_only_their_own_reply(setup: Setup) -> None:
    svc = setup.service()
    a, b, c = setup.claim("device-a"), setup.claim("device/b+#"), setup.claim("device-c")
    for p in (a, b, c):
        assert p.subscribe(ACCEPTED) == 1
    start = threading.Barrier(2)

    def send(p: Peer) -> None:
        start.wait(TIMEOUT)
        p.publish(CREATE_JSON, b"{}")

    threads = [threading.Thread(target=send, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    requests = [svc.next_message(), svc.next_message()]
    assert {(strip_connection(t), m, q) for t, m, q in requests} == {
        (request_topic(p.client_id, setup.claim_id.certificate_id, CREATE_JSON), b"{}", 1)
        for p in (a, b)
    }
    serial = {}
    for t, _, _ in requests:
        client_hex, conn = t[len("iotsim/req/"):].split("/")[:2]
        serial[bytes.fromhex(client_hex).decode()] = int(conn)
    for p in (a, b):
        svc.publish(reply_topic(p.client_id, serial[p.client_id], ACCEPTED), "for {}".format(p.client_id).encode())
    for p in (a, b):
        assert p.next_message() == (ACCEPTED, "for {}".format(p.client_id).encode(), 1)
    # c is subscribed to the same topic: its first message must be its own marker.
    svc.publish(reply_topic(c.client_id, setup.connection(c, svc), ACCEPTED), b"marker")
    assert c.next_message() == (ACCEPTED, b"marker", 1)
    for p in (a, b):
        svc.publish(reply_topic(p.client_id, serial[p.client_id], ACCEPTED), b"marker")
        assert p.next_message() == (ACCEPTED, b"marker", 1)


def test_reply_reaches_only_a_subscribed_client_at_the_subscription_qos(setup: Setup) -> None:
    svc = setup.service()
    dev = setup.claim()
    conn = setup.connection(dev, svc)
    svc.publish(reply_topic(dev.client_id, conn, ACCEPTED), b"before subscribe")
    rejected = CREATE_JSON + "/rejected"
    assert dev.subscribe(rejected, qos=0) == 0
    svc.publish(reply_topic(dev.client_id, conn, ACCEPTED), b"not subscribed")
    svc.publish(reply_topic(dev.client_id, conn, rejected), b"qos0")
    assert dev.next_message() == (rejected, b"qos0", 0)
    dev.client.unsubscribe(rejected)
    assert dev.subscribe(ACCEPTED) == 1
    svc.publish(reply_topic(dev.client_id, conn, rejected), b"unsubscribed")
    svc.publish(reply_topic(dev.client_id, conn, ACCEPTED), b"marker")
    assert dev.next_message() == (ACCEPTED, b"marker", 1)


def test_device_request_is_rewritten_with_its_certificate_and_retain_cleared(setup: Setup) -> None:
    svc = setup.service()
    dev_id = setup.identity("dev", "dev", "ACTIVE")
    dev = setup.peer(dev_id).connect()
    topic = "$aws/certificates/create-from-csr/cbor"
    dev.publish(topic, b"\xa0\x00binary", retain=True)
    got, payload, qos = svc.next_message()
    assert (strip_connection(got), payload, qos) == (
        request_topic(dev.client_id, dev_id.certificate_id, topic), b"\xa0\x00binary", 1
    )
    # Not retained: a fresh subscription of the service gets nothing replayed.
    svc2 = setup.peer(setup.service_id, "svc2").connect()
    assert svc2.subscribe("iotsim/req/#") == 1
    svc2.subscribe("marker/#")
    svc.publish("marker/x", b"m")
    assert svc2.next_message() == ("marker/x", b"m", 1)


def test_client_id_longer_than_aws_allows_is_refused(setup: Setup) -> None:
    svc = setup.service()
    with pytest.raises(Refused):  # AWS allows 128 bytes
        setup.peer(setup.claim_id, "x" * 129).connect()
    with pytest.raises(Refused):  # hex would double it beyond MQTT's 65535-byte topics
        setup.peer(setup.claim_id, "x" * 33000).connect()
    normal = setup.claim("normal")
    normal.publish(CREATE_JSON, b"marker")
    topic, payload, _ = svc.next_message()
    assert (strip_connection(topic), payload) == (
        request_topic("normal", setup.claim_id.certificate_id, CREATE_JSON), b"marker"
    )


def test_persistent_session_keeps_its_subscription_for_replies_after_reconnect(takeover_setup: Setup) -> None:
    setup = takeover_setup
    svc = setup.service()
    first = setup.peer(setup.claim_id, "persistent")
    first.client = _persistent(first)
    first.connect()
    assert first.subscribe(ACCEPTED) == 1
    first.close()
    second = setup.peer(setup.claim_id, "persistent")
    second.client = _persistent(second)
    second.connect()
    svc.publish(reply_topic("persistent", setup.connection(second, svc), ACCEPTED), b"after reconnect")
    assert second.next_message() == (ACCEPTED, b"after reconnect", 1)


def _persistent(peer: Peer) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=peer.client_id, protocol=mqtt.MQTTv311,
        clean_session=False, reconnect_on_failure=False,
    )
    client.tls_set(ca_certs=str(peer.broker.state / "ca.pem"),
                   certfile=str(peer.broker.state / "claim.pem"),
                   keyfile=str(peer.broker.state / "claim.key.pem"))
    client.on_connect = peer._on_connect
    client.on_disconnect = peer._on_disconnect
    client.on_message = peer._on_message
    client.on_subscribe = peer._on_subscribe
    return client


def test_clean_session_takeover_forgets_the_old_connections_subscriptions(takeover_setup: Setup) -> None:
    setup = takeover_setup
    svc = setup.service()
    old = setup.claim("same-id")
    assert old.subscribe(ACCEPTED) == 1
    old_conn = setup.connection(old, svc)
    new = setup.claim("same-id")
    assert old.wait_disconnected()  # MQTT: the newer connection takes over
    rejected = CREATE_JSON + "/rejected"
    assert new.subscribe(rejected) == 1
    new_conn = setup.connection(new, svc)
    svc.publish(reply_topic("same-id", new_conn, ACCEPTED), b"old subscription")
    svc.publish(reply_topic("same-id", old_conn, rejected), b"old connection")
    svc.publish(reply_topic("same-id", new_conn, rejected), b"new subscription")
    assert new.next_message() == (rejected, b"new subscription", 1)


def test_will_of_a_connection_closed_by_a_takeover_is_checked_against_its_own_grant(takeover_setup: Setup) -> None:
    setup = takeover_setup
    svc = setup.service()
    assert svc.subscribe("status/#") == 1
    ident = setup.identity("dev", "dev", "ACTIVE")
    old = setup.peer(ident, "taken")
    old.client.will_set("status/taken", b"offline", qos=1)
    old.connect()
    setup.peer(ident, "taken").connect()  # takes the client id over
    assert old.wait_disconnected()
    assert svc.next_message() == ("status/taken", b"offline", 1)


def test_service_reply_and_kick_messages_are_acknowledged_and_never_routed(setup: Setup) -> None:
    svc = setup.service()
    dev = setup.claim()
    assert dev.subscribe(ACCEPTED) == 1
    conn = setup.connection(dev, svc)
    spy = setup.peer(setup.service_id, "spy").connect()
    assert spy.subscribe("iotsim/#") == 1
    svc.publish(reply_topic(dev.client_id, conn, ACCEPTED), b"r")  # QoS 1: waits for PUBACK
    svc.publish(kick_topic("absent", 1), b"")
    assert dev.next_message() == (ACCEPTED, b"r", 1)
    svc.publish("iotsim/marker", b"m")
    assert spy.next_message() == ("iotsim/marker", b"m", 1)
    assert svc.client.is_connected()


@pytest.mark.parametrize("topic", [
    "iotsim/reply/",
    "iotsim/reply/zz/{conn}/" + ACCEPTED,  # not hex
    "iotsim/reply/ABCD/{conn}/" + ACCEPTED,  # upper-case hex
    "iotsim/reply/abc/{conn}/" + ACCEPTED,  # odd length
    "iotsim/reply/0061/{conn}/" + ACCEPTED,  # NUL byte in the client id
    "iotsim/reply/{victim}/" + ACCEPTED,  # no connection number
    "iotsim/reply/{victim}/x{conn}/" + ACCEPTED,  # connection number not decimal
    "iotsim/reply/{victim}/99999999999999999999999/" + ACCEPTED,  # out of range
    "iotsim/reply/{victim}",  # no response topic
    "iotsim/reply/{victim}/{conn}",  # no response topic
    "iotsim/reply/{victim}/{conn}/",  # empty response topic
    "iotsim/kick/",
    "iotsim/kick/zz/{conn}",
    "iotsim/kick/{victim}",
    "iotsim/kick/{victim}/{conn}/extra",
    "iotsim/kick/{victim}/-{conn}",
])
def test_malformed_internal_topics_from_the_service_are_dropped(setup: Setup, topic: str) -> None:
    svc = setup.service()
    victim = setup.claim("victim")
    assert victim.subscribe(ACCEPTED) == 1
    conn = setup.connection(victim, svc)
    svc.publish(topic.format(victim="victim".encode().hex(), conn=conn), b"bad")
    svc.publish(reply_topic("victim", conn, ACCEPTED), b"marker")
    assert victim.next_message() == (ACCEPTED, b"marker", 1)
    assert not victim.disconnected.is_set()
    assert svc.client.is_connected()


# --- policy -------------------------------------------------------------------


@pytest.mark.parametrize("role", ["CLAIM", "ACTIVE"])
def test_devices_cannot_subscribe_to_internal_topics(setup: Setup, role: str) -> None:
    ident = setup.identity("dev", "dev", role)
    dev = setup.peer(ident).connect()
    for topic in ("iotsim/#", "iotsim/req/#", "iotsim", "$share/g/iotsim/#"):
        assert dev.subscribe(topic) == 0x80, topic


def test_device_wildcard_subscription_never_receives_internal_traffic(setup: Setup) -> None:
    svc = setup.service()
    ident = setup.identity("dev", "dev", "ACTIVE")
    dev = setup.peer(ident).connect()
    assert dev.subscribe("#") == 1
    assert dev.subscribe("+/req/#") == 1
    claim = setup.claim()
    claim.publish(CREATE_JSON, b"secret")
    assert svc.next_message()[1] == b"secret"
    svc.publish("iotsim/other", b"internal")
    svc.publish("public/marker", b"m")
    assert dev.next_message() == ("public/marker", b"m", 1)


@pytest.mark.parametrize("role", ["CLAIM", "ACTIVE"])
def test_forged_reply_from_a_device_never_reaches_the_victim(setup: Setup, role: str) -> None:
    svc = setup.service()
    victim = setup.claim("victim")
    assert victim.subscribe(ACCEPTED) == 1
    conn = setup.connection(victim, svc)
    attacker = setup.peer(setup.identity("attacker", "attacker", role)).connect()
    attacker.client.publish(reply_topic("victim", conn, ACCEPTED), b"forged", qos=1)
    assert attacker.wait_disconnected()  # internal topic: denied, and a denied publish disconnects
    attacker = setup.peer(setup.identity("attacker", "attacker", role)).connect()
    # A direct publish to the response topic is refused (reserved to AWS).
    attacker.client.publish(ACCEPTED, b"forged too", qos=1)
    assert attacker.wait_disconnected()
    svc.publish(reply_topic("victim", conn, ACCEPTED), b"marker")
    assert victim.next_message() == (ACCEPTED, b"marker", 1)


def test_device_will_on_a_response_topic_never_reaches_a_claim_client(setup: Setup) -> None:
    svc = setup.service()
    victim = setup.claim("victim")
    assert victim.subscribe(ACCEPTED) == 1
    conn = setup.connection(victim, svc)
    attacker = setup.peer(setup.identity("attacker", "attacker", "ACTIVE"))
    attacker.client.will_set(ACCEPTED, b"forged will", qos=1)
    attacker.connect()
    attacker.client.socket().close()  # unexpected loss: the broker sends the will
    # The plugin refuses the will's publish to a reserved topic.
    svc.publish(reply_topic("victim", conn, ACCEPTED), b"marker")
    assert victim.next_message() == (ACCEPTED, b"marker", 1)


def test_device_will_on_an_ordinary_topic_is_delivered(setup: Setup) -> None:
    svc = setup.service()
    assert svc.subscribe("status/#") == 1
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE"))
    dev.client.will_set("status/dev", b"offline", qos=1)
    dev.connect()
    dev.client.socket().close()
    assert svc.next_message() == ("status/dev", b"offline", 1)


@pytest.mark.parametrize("topic", [
    "foo/bar",
    "#",
    "$aws/certificates/create",  # the claim policy names create/*
    "$aws/certificates/create-from-csr",
    "$aws/provisioning-templates/demo/provision",
    "$aws/things/thing/shadow/update",
])
def test_claim_subscription_outside_its_policy_gets_suback_failure(setup: Setup, topic: str) -> None:
    claim = setup.claim()
    assert claim.subscribe(topic) == 0x80
    assert not claim.disconnected.is_set()


@pytest.mark.parametrize("topic", [
    "$aws/certificates/create/json/accepted",
    "$aws/certificates/create/cbor/rejected",
    "$aws/certificates/create-from-csr/json/rejected",
    "$aws/certificates/create-from-csr/cbor/accepted",
    "$aws/provisioning-templates/{}/provision/json/accepted".format("t" * 36),
    "$aws/provisioning-templates/My_Template-1/provision/cbor/rejected",
    # As on AWS, the claim policy's create/* also covers filters like these:
    "$aws/certificates/create/+/accepted",
    "$aws/certificates/create/#",
])
def test_claim_may_subscribe_to_every_provisioning_response_topic(setup: Setup, topic: str) -> None:
    assert setup.claim().subscribe(topic) == 1


REQUESTS = (CREATE_JSON, "$aws/certificates/create/cbor", "$aws/certificates/create-from-csr/json",
            "$aws/provisioning-templates/demo/provision/cbor")


@pytest.mark.parametrize("topic", REQUESTS)
def test_claim_may_publish_provisioning_requests(setup: Setup, topic: str) -> None:
    svc = setup.service()
    claim = setup.claim()
    claim.publish(topic, b"{}")
    assert strip_connection(svc.next_message()[0]) == request_topic(
        claim.client_id, setup.claim_id.certificate_id, topic
    )


@pytest.mark.parametrize("topic", [
    "foo/bar",
    "$aws/certificates/create/json/accepted",  # reserved to AWS, whatever the policy says
    "$aws/things/thing/shadow/update",
    "iotsim/req/x",
])
def test_claim_publish_outside_request_topics_disconnects_it(setup: Setup, topic: str) -> None:
    svc = setup.service()
    assert svc.subscribe("#") == 1
    claim = setup.claim()
    claim.client.publish(topic, b"nope", qos=1)
    assert claim.wait_disconnected()
    svc.publish("marker", b"m")
    assert svc.next_message() == ("marker", b"m", 1)


def test_service_kick_disconnects_the_named_client_only(setup: Setup) -> None:
    svc = setup.service()
    a, b = setup.claim("kick-me"), setup.claim("keep-me")
    assert b.subscribe(ACCEPTED) == 1
    conn_b = setup.connection(b, svc)
    svc.publish(kick_topic("kick-me", setup.connection(a, svc)), b"")
    assert a.wait_disconnected()
    svc.publish(reply_topic("keep-me", conn_b, ACCEPTED), b"still here")
    assert b.next_message() == (ACCEPTED, b"still here", 1)
    assert not b.disconnected.is_set()


def test_kicked_device_does_not_send_its_will(setup: Setup) -> None:
    svc = setup.service()
    assert svc.subscribe("status/#") == 1
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE"), "willing")
    dev.client.will_set("status/willing", b"offline", qos=1)
    dev.connect()
    svc.publish(kick_topic("willing", setup.connection(dev, svc)), b"")
    assert dev.wait_disconnected()
    svc.publish("status/marker", b"m")
    assert svc.next_message() == ("status/marker", b"m", 1)


def test_device_revoked_while_connected_is_kicked_at_its_next_acl_check(setup: Setup) -> None:
    svc = setup.service()
    assert svc.subscribe("telemetry/#") == 1
    ident = setup.identity("dev", "dev", "ACTIVE")
    dev = setup.peer(ident).connect()
    dev.publish("telemetry/1", b"ok")
    assert svc.next_message() == ("telemetry/1", b"ok", 1)
    setup.set_status(ident, "REVOKED")
    dev.client.publish("telemetry/1", b"after revoke", qos=1)
    assert dev.wait_disconnected()
    svc.publish("telemetry/marker", b"m")
    assert svc.next_message() == ("telemetry/marker", b"m", 1)
    with pytest.raises(Refused):
        setup.peer(ident).connect()


def test_subscriber_revoked_while_connected_receives_nothing_and_is_kicked(setup: Setup) -> None:
    svc = setup.service()
    ident = setup.identity("dev", "dev", "ACTIVE")
    dev = setup.peer(ident).connect()
    assert dev.subscribe("news") == 1
    setup.set_status(ident, "INACTIVE")
    svc.publish("news", b"for active devices only")
    assert dev.wait_disconnected()
    assert dev.messages.empty()


# --- the Broker runner ---------------------------------------------------------


# --- AWS's MQTT rules: retained messages, QoS, rates -------------------------


PUBLISH_ONLY = parse_policy(
    '{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": '
    '["iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive"], "Resource": "*"}}'
)


def test_retained_publish_without_iot_retain_publish_disconnects_and_is_not_kept(setup: Setup) -> None:
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE", [PUBLISH_ONLY])).connect()
    dev.client.publish("cfg/x", b"kept?", qos=1, retain=True)
    assert dev.wait_disconnected()
    listener = setup.peer(setup.identity("lis", "lis", "ACTIVE")).connect()
    assert listener.subscribe("cfg/#") == 1
    setup.peer(setup.identity("pub", "pub", "ACTIVE")).connect().publish("cfg/marker", b"m")
    assert listener.next_message() == ("cfg/marker", b"m", 1)  # nothing retained came first


def test_retained_publish_with_iot_retain_publish_reaches_a_later_subscriber(setup: Setup) -> None:
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE")).connect()  # iot:* includes RetainPublish
    dev.publish("cfg/x", b"kept", retain=True)
    listener = setup.peer(setup.identity("lis", "lis", "ACTIVE")).connect()
    assert listener.subscribe("cfg/#") == 1
    topic, payload, _ = listener.next_message()
    assert (topic, payload) == ("cfg/x", b"kept")
    assert not dev.disconnected.is_set()


@pytest.mark.parametrize("policies, delivered", [([ALLOW_ALL], True), ([PUBLISH_ONLY], False)])
def test_retained_will_needs_iot_retain_publish(
    setup: Setup, policies: list[Policy], delivered: bool
) -> None:
    svc = setup.service()
    assert svc.subscribe("status/#") == 1
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE", policies))
    dev.client.will_set("status/dev", b"offline", qos=1, retain=True)
    dev.connect()
    dev.client.socket().close()  # an unexpected loss: the broker sends the will
    if not delivered:
        svc.publish("status/marker", b"m")
    assert svc.next_message()[:2] == (("status/dev", b"offline") if delivered else ("status/marker", b"m"))


def test_qos_2_publish_closes_the_connection_unacknowledged_and_is_not_routed(setup: Setup) -> None:
    svc = setup.service()
    assert svc.subscribe("data/#") == 1
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE")).connect()
    info = dev.client.publish("data/x", b"q2", qos=2)
    assert dev.wait_disconnected()
    assert not info.is_published()  # no PUBREC ever came
    svc.publish("data/marker", b"m")
    assert svc.next_message()[:2] == ("data/marker", b"m")


def test_qos_2_subscription_closes_the_connection_without_a_suback(setup: Setup) -> None:
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE")).connect()
    dev.client.subscribe("data/#", qos=2)
    assert dev.wait_disconnected()
    assert dev.subacks.empty()


def test_subscribe_with_eight_filters_is_granted_and_with_nine_closes_the_connection(setup: Setup) -> None:
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE")).connect()
    dev.client.subscribe([("f/{}".format(i), 1) for i in range(8)])
    assert dev.subacks.get(timeout=TIMEOUT) == [1] * 8
    dev.client.subscribe([("g/{}".format(i), 1) for i in range(9)])
    assert dev.wait_disconnected()
    assert dev.subacks.empty()


def test_second_connect_with_one_client_id_within_a_second_is_closed_and_the_first_stays(
    setup: Setup,
) -> None:
    svc = setup.service()
    first = setup.claim("rated")
    with pytest.raises(Refused, match="disconnected before CONNACK"):
        setup.peer(setup.claim_id, "rated").connect()
    first.publish(CREATE_JSON, b"still here")
    assert svc.next_message()[1] == b"still here"
    assert not first.disconnected.is_set()
    setup.claim("another-id")  # the quota is per client id


def test_client_that_backs_off_gets_in_once_a_second_has_passed(setup: Setup) -> None:
    setup.claim("backs-off").close()
    refused, deadline = 0, time.monotonic() + TIMEOUT
    while True:  # a device's retry: refused attempts do not restart the second
        try:
            setup.peer(setup.claim_id, "backs-off").connect()
            break
        except Refused:
            refused += 1
            assert time.monotonic() < deadline, "still refused after {} s".format(TIMEOUT)
            threading.Event().wait(0.2)  # the back-off between attempts
    assert refused >= 1


def _burst(dev: Peer, topic: str, count: int) -> float:
    """Publish count QoS 1 messages at once; the seconds until every PUBACK came."""
    started = time.monotonic()
    infos = [dev.client.publish(topic, b"%d" % i, qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published()
    return time.monotonic() - started


def _received_before(peer: Peer, marker: bytes) -> int:
    """How many messages peer receives before ``marker``."""
    count = 0
    while peer.next_message()[1] != marker:
        count += 1
    return count


def test_publishes_beyond_100_a_second_from_one_connection_are_discarded(setup: Setup) -> None:
    svc = setup.service()
    assert svc.subscribe("burst/#") == 1
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE")).connect()
    elapsed = _burst(dev, "burst/in", 300)  # each is acknowledged, the excess discarded
    svc.publish("burst/end", b"end")  # the service has no quota
    assert 100 <= _received_before(svc, b"end") <= 100 + math.ceil(100 * elapsed) + 1
    assert not dev.disconnected.is_set()


def test_deliveries_beyond_100_a_second_to_one_connection_are_discarded(setup: Setup) -> None:
    svc = setup.service()
    dev = setup.peer(setup.identity("dev", "dev", "ACTIVE")).connect()
    assert dev.subscribe("burst/#") == 1
    elapsed = _burst(svc, "burst/out", 300)
    count = 0
    for _ in range(int(TIMEOUT / 0.1)):  # the marker gets through once the bucket refills
        svc.publish("burst/end", b"end")
        with contextlib.suppress(queue.Empty):
            while (msg := dev.messages.get(timeout=0.1))[1] != b"end":
                count += 1
            break
    else:
        raise AssertionError("the marker never reached the device")
    assert 100 <= count <= 100 + math.ceil(100 * elapsed) + 1, msg


def test_client_id_starting_with_a_dollar_is_refused(setup: Setup) -> None:
    with pytest.raises(Refused, match="Not authorized"):
        setup.peer(setup.claim_id, "$reserved").connect()


def test_broker_refuses_a_quota_option_that_is_not_a_whole_number(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="plugin_opt_publish_rate must be a whole number"):
        Broker(tmp_path / "state", free_port(), quotas=MqttQuotas(publish_rate=-1)).start()


def test_broker_start_failure_names_the_cause_from_the_log(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        broker = Broker(tmp_path / "state", holder.getsockname()[1])
        with pytest.raises(BrokerError, match="Address already in use"):
            broker.start()
    assert not broker.running


def test_broker_context_manager_stops_mosquitto(tmp_path: Path) -> None:
    with Broker(tmp_path / "state", free_port()) as broker:
        assert broker.running
        pid = broker.pid
    assert not broker.running
    assert pid is not None
    assert not Path("/proc/{}/cmdline".format(pid)).exists() or \
        Path("/proc/{}/stat".format(pid)).read_text().split()[2] == "Z"
    conf = (tmp_path / "state" / "mosquitto.conf").read_text()
    assert "use_identity_as_username false" in conf
    assert "allow_anonymous false" in conf
    assert "plugin_opt_principals_dir {}".format(tmp_path / "state" / "principals") in conf


def test_broker_refuses_a_state_path_mosquitto_conf_cannot_express(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="whitespace"):
        Broker(tmp_path / "with space", free_port()).start()


def test_pki_is_idempotent_and_keys_are_private(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(tmp_path)
    first = pki.ensure_client_identity(tmp_path, ca, "claim", "iotsim-claim")
    again = pki.ensure_client_identity(tmp_path, pki.CertificateAuthority.load_or_create(tmp_path),
                                       "claim", "iotsim-claim")
    assert again.certificate_id == first.certificate_id
    assert (first.key_path.stat().st_mode & 0o777) == 0o600
    der_key = serialization.load_der_private_key(first.key_der_path.read_bytes(), None)
    assert der_key.public_key() == first.cert.public_key()
    # A new CA invalidates identities issued by the old one.
    for name in ("ca.pem", "ca.key.pem", "ca.der"):
        (tmp_path / name).unlink()
    new_ca = pki.CertificateAuthority.load_or_create(tmp_path)
    renewed = pki.ensure_client_identity(tmp_path, new_ca, "claim", "iotsim-claim")
    assert renewed.certificate_id != first.certificate_id
    server_cert, _ = pki.ensure_server_identity(tmp_path, new_ca)
    assert b"BEGIN CERTIFICATE" in server_cert.read_bytes()
