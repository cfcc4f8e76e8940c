"""Certificate rotation's cloud side on a running iotsim (docs/rotation.md).

A thing's own certificate makes its next one (CreateCertificateFromCsr), registers it on the
same thing with the rotation template (whose pre-provisioning hook admits only a certificate
attached to that thing), connects with it and retires the old one on fleetprov/<thing>/retire
(the retire rule's Lambda). Nobody rotates or retires what is not theirs: every refusal is
AWS's error, and the registry is as it was. Certificates get the validity `up --cert-days`
gives them, and one past its notAfter cannot connect.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools.iotsim import pki
from tools.iotsim.policy import THING_POLICY
from tools.iotsim.registry import CLAIM_POLICY
from tools.iotsim.testing import (
    ConnectRefused,
    Device,
    Identity,
    MqttTestClient,
    RunningIotSim,
    new_certificate,
    provision_csr,
    register_rotation,
    register_topic,
    retire,
)

ROTATION = "FleetprovRotation"


@pytest.fixture
def claim(iotsim: RunningIotSim) -> Iterator[MqttTestClient]:
    with iotsim.client("rotation-claim") as c:
        yield c


def device(iotsim: RunningIotSim, claim: MqttTestClient, folder: Path) -> Device:
    return Device(iotsim, claim, folder, uuid.uuid4().hex[:12])  # a thing of its own per test


def rotated_device(iotsim: RunningIotSim, claim: MqttTestClient, folder: Path) -> tuple[Device, Identity]:
    """A device that made a new certificate over its own connection and registered it on its thing."""
    dev = device(iotsim, claim, folder)
    with dev.client() as old:
        new = new_certificate(old, folder, "new")
        assert iotsim.registry.status(new.certificate_id) == "PENDING_ACTIVATION"
        outcome, body = register_rotation(old, new.token, dev.thing)
    assert (outcome, body["thingName"]) == ("accepted", dev.thing), body
    return dev, new


def registry_state(iotsim: RunningIotSim) -> tuple[list[Any], list[Any]]:
    reg = iotsim.registry
    return [(c.id, c.status, c.updated) for c in reg.certificates()], [(t.name, t.certificates) for t in reg.things()]


def active_on(iotsim: RunningIotSim, thing: str) -> set[str]:
    found = iotsim.registry.thing(thing)
    assert found is not None
    return {c for c in found.certificates if iotsim.registry.status(c) == "ACTIVE"}


def refused(answer: tuple[str, Any]) -> tuple[str, int, str]:
    outcome, body = answer
    return outcome, body["statusCode"], body["errorCode"]


def test_a_thing_renews_its_certificate_over_its_own_connection_and_retires_the_old_one(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    dev, new = rotated_device(iotsim, claim, tmp_path)
    assert active_on(iotsim, dev.thing) == {dev.certificate_id, new.certificate_id}  # both, until the retire
    assert [n for n, _ in iotsim.registry.policies_of(new.certificate_id)] == [THING_POLICY]

    with iotsim.client(dev.thing, new.cert, new.key) as current:
        assert retire(current, dev.thing, dev.certificate_id) == (
            "accepted", {"certificateId": dev.certificate_id, "status": "INACTIVE"}
        )
        # Asked again (an answer lost to a power cut): no longer on the thing, which the device takes as done.
        assert refused(retire(current, dev.thing, dev.certificate_id)) == ("rejected", 404, "ResourceNotFoundException")

    assert iotsim.registry.status(dev.certificate_id) == "INACTIVE"
    thing = iotsim.registry.thing(dev.thing)
    assert thing is not None and thing.certificates == [new.certificate_id]
    assert active_on(iotsim, dev.thing) == {new.certificate_id}
    with pytest.raises(ConnectRefused, match="refused"):
        iotsim.client(dev.thing, dev.cert, dev.key)  # the retired certificate no longer connects


def test_a_certificate_cannot_register_a_new_certificate_on_another_thing(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    a, b = device(iotsim, claim, tmp_path), device(iotsim, claim, tmp_path)
    with a.client() as conn:
        new = new_certificate(conn, tmp_path, "for-b")
        before = registry_state(iotsim)
        assert refused(register_rotation(conn, new.token, b.thing)) == ("rejected", 403, "AccessDenied")
    assert registry_state(iotsim) == before
    assert iotsim.registry.status(new.certificate_id) == "PENDING_ACTIVATION"  # the token was not spent


def test_the_claims_policy_keeps_it_off_the_rotation_templates_topics(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    dev = device(iotsim, claim, tmp_path)
    topic = register_topic(ROTATION)
    before = registry_state(iotsim)
    assert claim.subscribe(topic + "/accepted", topic + "/rejected") == [128, 128]
    claim.publish(topic, json.dumps({"certificateOwnershipToken": "t", "parameters": {"ThingName": dev.thing}}),
                  wait=False)
    assert claim.wait_disconnected()  # a denied publish, as AWS does
    assert registry_state(iotsim) == before


def test_the_claim_with_a_policy_that_allows_the_topics_is_refused_by_the_hook(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    dev = device(iotsim, claim, tmp_path)
    if iotsim.registry.policy("AnyTemplate") is None:
        iotsim.registry.create_policy("AnyTemplate", json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}))
    iotsim.registry.detach_policy(CLAIM_POLICY, iotsim.claim_id)  # its Deny on the rotation template
    iotsim.registry.attach_policy("AnyTemplate", iotsim.claim_id)
    try:
        with iotsim.client("rotation-claim-2") as open_claim:
            new = new_certificate(open_claim, tmp_path, "claimed")
            before = registry_state(iotsim)
            assert refused(register_rotation(open_claim, new.token, dev.thing)) == ("rejected", 403, "AccessDenied")
    finally:
        iotsim.registry.detach_policy("AnyTemplate", iotsim.claim_id)
        iotsim.registry.attach_policy(CLAIM_POLICY, iotsim.claim_id)
    assert registry_state(iotsim) == before


def test_an_old_certificate_cannot_retire_the_new_one_nor_itself(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    dev, new = rotated_device(iotsim, claim, tmp_path)
    with dev.client() as old:
        before = registry_state(iotsim)
        outcome, body = retire(old, dev.thing, new.certificate_id)
        assert refused((outcome, body)) == ("rejected", 403, "ForbiddenException")
        assert "not newer" in body["errorMessage"]
        assert refused(retire(old, dev.thing, dev.certificate_id)) == ("rejected", 403, "ForbiddenException")
        # A payload key cannot stand in for principal(): claiming to be the new certificate,
        # the old one would retire itself; it is still itself.
        outcome, body = old.request(
            "fleetprov/{}/retire".format(dev.thing),
            {"certificateId": dev.certificate_id, "principal": new.certificate_id},
        )
        assert (outcome, body["statusCode"], body["errorMessage"]) == (
            "rejected", 403, "a certificate cannot retire itself"
        )
    assert registry_state(iotsim) == before


def test_a_certificate_cannot_retire_a_certificate_of_another_thing(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    a, b = device(iotsim, claim, tmp_path), device(iotsim, claim, tmp_path)
    before = registry_state(iotsim)
    with b.client() as conn:
        # On its own topic: the certificate it names is not on its thing.
        assert refused(retire(conn, b.thing, a.certificate_id)) == ("rejected", 404, "ResourceNotFoundException")
        # On the other thing's topic: its policy does not allow it; the connection is closed.
        conn.publish("fleetprov/{}/retire".format(a.thing), json.dumps({"certificateId": a.certificate_id}),
                     wait=False)
        assert conn.wait_disconnected()
    assert registry_state(iotsim) == before


def test_a_certificate_allowed_onto_another_things_topic_is_still_refused_by_the_retire_step(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    a, b = device(iotsim, claim, tmp_path), device(iotsim, claim, tmp_path)
    if iotsim.registry.policy("AllFleetprovTopics") is None:
        iotsim.registry.create_policy("AllFleetprovTopics", json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/fleetprov/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/fleetprov/*"}]}))
    iotsim.registry.attach_policy("AllFleetprovTopics", b.certificate_id)
    before = registry_state(iotsim)
    with b.client() as conn:
        outcome, body = retire(conn, a.thing, a.certificate_id)
    assert refused((outcome, body)) == ("rejected", 403, "ForbiddenException")
    assert body["errorMessage"] == "the request's certificate is not attached to thing " + a.thing
    assert registry_state(iotsim) == before


@pytest.mark.parametrize(
    "payload",
    [b"{}", b'{"certificateId": 12}', b'{"certificateId": "abc"}', json.dumps({"certificateId": "z" * 64}).encode(),
     b'{"certificateId": ["x"]}', json.dumps({"certificateId": "a" * 65}).encode(), b"[1, 2]", b'"certificateId"'],
    ids=["empty", "number", "short", "not-hex", "list", "too-long", "json-array", "json-string"],
)
def test_a_retire_request_without_a_certificate_id_is_refused_with_400(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path, payload: bytes
) -> None:
    dev = device(iotsim, claim, tmp_path)
    before = registry_state(iotsim)
    with dev.client() as conn:
        outcome, body = conn.request("fleetprov/{}/retire".format(dev.thing), payload)
    assert refused((outcome, body)) == ("rejected", 400, "InvalidRequestException")
    assert registry_state(iotsim) == before


@pytest.mark.parametrize("payload", [b"not json", b"", b"\xff\xfe{", b"{" * 60_000])
def test_a_retire_request_that_is_not_json_gets_no_answer_and_the_next_one_does(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path, payload: bytes
) -> None:
    dev = device(iotsim, claim, tmp_path)
    topic = "fleetprov/{}/retire".format(dev.thing)
    before = registry_state(iotsim)
    with dev.client() as conn:
        assert conn.subscribe(topic + "/accepted", topic + "/rejected") == [1, 1]
        conn.publish(topic, payload)  # the rule cannot read it (AWS: a Lambda action takes JSON); nothing runs
        conn.publish(topic, json.dumps({"certificateId": "0" * 64}))
        got, body = conn.expect()  # the first answer is the second request's
    assert (got, json.loads(body)["statusCode"]) == (topic + "/rejected", 404)
    assert registry_state(iotsim) == before


def _certificate(ca: pki.CertificateAuthority, key: Any, ends_in: dt.timedelta) -> x509.Certificate:
    """A client certificate of iotsim's CA for ``key``, valid from two days ago until ``ends_in`` from now."""
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "validity")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + ends_in)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def test_a_certificate_past_its_not_after_cannot_connect_though_the_registry_says_active(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    dev = device(iotsim, claim, tmp_path)
    key = serialization.load_pem_private_key(dev.key.read_bytes(), None)
    assert iotsim.sim.ca is not None
    paths = {}
    for name, ends_in in (("expired", dt.timedelta(days=-1)), ("current", dt.timedelta(days=1))):
        cert = _certificate(iotsim.sim.ca, key, ends_in)  # the same but for notAfter
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        cid = pki.certificate_id(cert)
        iotsim.registry.add_certificate(cid, pem, "ACTIVE")
        iotsim.registry.attach_policy(THING_POLICY, cid)
        iotsim.registry.attach_thing_principal(dev.thing, cid)
        paths[name] = tmp_path / (name + ".pem")
        paths[name].write_text(pem)
    log = iotsim.state / "mosquitto.log"
    failures = log.read_text().count("certificate verify failed")
    with pytest.raises(ConnectRefused):
        iotsim.client(dev.thing, paths["expired"], dev.key, connect=False).connect(retry_closed=False)
    assert log.read_text().count("certificate verify failed") == failures + 1  # refused in the TLS handshake
    with iotsim.client(dev.thing, paths["current"], dev.key) as conn:
        assert conn.connected


def test_up_cert_days_sets_the_validity_of_the_certificates_it_issues(
    iotsim_factory: Any, tmp_path: Path
) -> None:
    sim = iotsim_factory(cert_days=2)
    with sim.client("short-lived") as c:
        body = provision_csr(c, ec.generate_private_key(ec.SECP256R1()))
    cert = x509.load_pem_x509_certificate(body["certificatePem"].encode())
    left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=1) < left <= dt.timedelta(days=2)
