"""iotsim enforces what AWS IoT Core enforces, on the real stack (mosquitto + plugin + service).

Per-connection replies under a client-id takeover, the policy engine (demo
device policy, Deny over Allow, Receive), AWS's message-broker limits and
RegisterThing against resources that must exist. Every rule: one allowed and
one refused case.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tools.iotsim.policy import THING_POLICY
from tools.iotsim.registry import THING_GROUP
from tools.iotsim.testing import (
    ConnectRefused,
    Device,
    MqttTestClient,
    RunningIotSim,
    provision_csr,
    register,
    register_topic,
    write_identity,
)

KEYS_JSON = "$aws/certificates/create/json"
TEMPLATE = "FleetprovDemo"


@pytest.fixture
def claim(iotsim: RunningIotSim) -> Iterator[MqttTestClient]:
    with iotsim.client("claim-client") as c:
        yield c


@pytest.fixture
def device(iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path) -> Device:
    return Device(iotsim, claim, tmp_path, "alpha")


def no_message(client: MqttTestClient, timeout: float = 0.5) -> bool:
    try:
        client.messages.get(timeout=timeout)
    except queue.Empty:
        return True
    return False


# -- per-connection replies ---------------------------------------------------------------------


def test_takeover_while_create_keys_is_in_flight_never_delivers_the_old_answer(iotsim: RunningIotSim) -> None:
    # The service holds each reply back 2 s; an attacker with the claim
    # certificate takes the victim's client id over meanwhile (once AWS's one
    # CONNECT per second per client id lets it in) and subscribes to the same
    # response topics.
    for attempt in range(2):
        iotsim.set_fault("keys", "delay", delay_ms=2000, times=1)
        victim = iotsim.client("takeover-{}".format(attempt))
        assert victim.subscribe(KEYS_JSON + "/accepted", KEYS_JSON + "/rejected") == [1, 1]
        victim.publish(KEYS_JSON, b"{}")
        with iotsim.client(victim.client_id) as attacker:
            assert victim.wait_disconnected(), "the old connection must be closed by the takeover"
            assert attacker.subscribe(KEYS_JSON + "/accepted", KEYS_JSON + "/rejected") == [1, 1]
            assert no_message(attacker, 1.0), "the newcomer received the old connection's answer"
            # The newcomer's own request is answered, to it.
            topic, body = attacker.request(KEYS_JSON, b"{}")
            assert topic == "accepted" and "privateKey" in body
        victim.close()


def test_an_answer_reaches_the_connection_that_asked(claim: MqttTestClient) -> None:
    outcome, body = claim.request(KEYS_JSON, b"{}")
    assert outcome == "accepted" and body["certificateId"]


# -- policies: the demo device policy -------------------------------------------------------------


def test_device_may_use_its_own_topics(device: Device) -> None:
    with device.client() as c:
        topic = "fleetprov/{}/hello".format(device.thing)
        assert c.subscribe(topic) == [1]
        c.publish(topic, b"hi")
        assert c.expect() == (topic, b"hi")


def test_device_may_connect_only_as_its_thing(device: Device) -> None:
    with pytest.raises(ConnectRefused, match="Not authorized"):
        device.client("someone-else")


def test_device_may_not_subscribe_outside_its_policy(
    iotsim: RunningIotSim, claim: MqttTestClient, device: Device, tmp_path: Path
) -> None:
    other = Device(iotsim, claim, tmp_path, "beta")
    with device.client() as c:
        assert c.subscribe("#", "fleetprov/{}/hello".format(other.thing), "fleetprov/+/hello") == [
            128,
            128,
            128,
        ]
        assert c.connected
    with pytest.raises(ConnectRefused):
        device.client(other.thing)  # another thing's client id: cannot knock it off


def test_device_publishing_outside_its_policy_is_disconnected(
    iotsim: RunningIotSim, claim: MqttTestClient, device: Device, tmp_path: Path
) -> None:
    other = Device(iotsim, claim, tmp_path, "gamma")
    with other.client() as victim:
        assert victim.subscribe("fleetprov/{}/inbox".format(other.thing)) == [1]
        with device.client() as c:
            c.publish("fleetprov/{}/inbox".format(other.thing), b"forged", wait=False)
            assert c.wait_disconnected()
        assert no_message(victim)


def test_device_may_not_call_the_provisioning_api(device: Device) -> None:
    # A second ACTIVE certificate for another thing is exactly what the claim is for.
    with device.client() as c:
        assert c.subscribe(KEYS_JSON + "/accepted") == [128]
        c.publish(KEYS_JSON, b"{}", wait=False)
        assert c.wait_disconnected()


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def test_explicit_deny_wins_over_allow(iotsim: RunningIotSim, device: Device) -> None:
    iotsim.registry.create_policy(
        "DenySecret",
        _policy(
            {
                "Effect": "Deny",
                "Action": "iot:Publish",
                "Resource": "arn:aws:iot:*:*:topic/fleetprov/*/secret",
            }
        ),
    )
    iotsim.registry.attach_policy("DenySecret", device.certificate_id)
    with device.client() as c:
        c.publish("fleetprov/{}/open".format(device.thing), b"ok")
        assert c.connected
        c.publish("fleetprov/{}/secret".format(device.thing), b"no", wait=False)
        assert c.wait_disconnected()


def test_receive_is_checked_per_delivery(
    iotsim: RunningIotSim, claim: MqttTestClient, device: Device
) -> None:
    iotsim.registry.create_policy(
        "Shared",
        _policy(
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": "arn:aws:iot:*:*:topicfilter/shared/*",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": "arn:aws:iot:*:*:topic/shared/${iot:ClientId}",
            },
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/shared/*"},
        ),
    )
    iotsim.registry.attach_policy("Shared", device.certificate_id)
    with device.client() as c:
        assert c.subscribe("shared/#") == [1]
        c.publish("shared/other", b"not for me")
        c.publish("shared/" + device.thing, b"mine")
        assert c.expect() == ("shared/" + device.thing, b"mine")
        assert no_message(c)


def test_revoked_policy_attachment_applies_to_a_connected_device(
    iotsim: RunningIotSim, device: Device
) -> None:
    with device.client() as c:
        assert c.subscribe("fleetprov/{}/a".format(device.thing)) == [1]
        iotsim.registry.detach_policy(THING_POLICY, device.certificate_id)
        assert c.subscribe("fleetprov/{}/b".format(device.thing)) == [128]


def test_claim_is_held_to_its_policy(iotsim: RunningIotSim, claim: MqttTestClient) -> None:
    assert claim.subscribe("fleetprov/#") == [128]
    claim.publish("fleetprov/anything", b"x", wait=False)
    assert claim.wait_disconnected()


# -- AWS's limits -----------------------------------------------------------------------------------


def test_payload_of_128_kb_passes_and_129_kb_disconnects(device: Device) -> None:
    topic = "fleetprov/{}/blob".format(device.thing)
    with device.client() as c:
        assert c.subscribe(topic) == [1]
        c.publish(topic, b"x" * 131072)
        assert c.expect() == (topic, b"x" * 131072)
        c.publish(topic, b"x" * (129 * 1024), wait=False)
        assert c.wait_disconnected()
        assert no_message(c)


def test_huge_publish_is_refused_without_reading_it(device: Device) -> None:
    with device.client() as c:
        c.publish("fleetprov/{}/huge".format(device.thing), b"x" * (4 * 1024 * 1024), wait=False)
        assert c.wait_disconnected()


def test_topic_of_seven_slashes_passes_and_eight_disconnect(device: Device) -> None:
    base = "fleetprov/{}".format(device.thing)  # 1 slash
    with device.client() as c:
        seven = base + "/a/b/c/d/e/f"
        assert c.subscribe(seven, base + "/a/b/c/d/e/f/g") == [1, 128]
        c.publish(seven, b"ok")
        assert c.expect() == (seven, b"ok")
        c.publish(seven + "/g", b"too deep", wait=False)
        assert c.wait_disconnected()


def test_topic_of_256_bytes_passes_and_257_disconnect(device: Device) -> None:
    base = "fleetprov/{}/".format(device.thing)
    with device.client() as c:
        ok = base + "x" * (256 - len(base))
        c.publish(ok, b"ok")
        assert c.connected
        c.publish(ok + "x", b"long", wait=False)
        assert c.wait_disconnected()


def test_client_id_of_128_bytes_connects_and_129_is_refused(iotsim: RunningIotSim) -> None:
    with iotsim.client("c" * 128) as c:
        assert c.connected
    with pytest.raises(ConnectRefused):
        iotsim.client("c" * 129)


def test_fifty_subscriptions_per_connection(device: Device) -> None:
    base = "fleetprov/{}/s".format(device.thing)
    with device.client() as c:
        for start in range(0, 50, 8):  # AWS: at most 8 filters per SUBSCRIBE
            assert c.subscribe(*[base + str(i) for i in range(start, min(start + 8, 50))]) == [1] * min(
                8, 50 - start
            )
        assert c.subscribe(base + "50") == [128]
        assert c.subscribe(base + "0") == [1]  # renewing one it holds is fine
        c.paho.unsubscribe(base + "1")
        assert c.subscribe(base + "50") == [1]


# -- resources that must exist --------------------------------------------------------------------


def _template(policy: dict[str, Any] | None = None, **thing_properties: Any) -> dict[str, Any]:
    """A template with a thing "grouped" (and these properties), its certificate and, given
    its Properties, a policy resource."""
    resources = {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "grouped", **thing_properties}},
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"},
        },
    }
    if policy is not None:
        resources["policy"] = {"Type": "AWS::IoT::Policy", "Properties": policy}
    return {"Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}}, "Resources": resources}


@pytest.mark.parametrize(
    "properties, kind, name",
    [
        ({"ThingGroups": ["missing-group"]}, THING_GROUP, "missing-group"),
        ({"ThingTypeName": "missing-type"}, "thing-type", "missing-type"),
        ({"BillingGroup": "missing-billing"}, "billing-group", "missing-billing"),
    ],
)
def test_template_naming_a_missing_resource_fails_until_it_exists(
    iotsim: RunningIotSim, claim: MqttTestClient, properties: dict[str, Any], kind: str, name: str
) -> None:
    template = "Needs" + kind.replace("-", "").title()
    iotsim.templates.put(template, _template(**properties))
    token = provision_csr(claim, ec.generate_private_key(ec.SECP256R1()))["certificateOwnershipToken"]
    outcome, body = register(claim, token, template=template)
    assert outcome == "rejected"
    assert body["statusCode"] == 400 and body["errorCode"] == "ResourceRegistrationFailure"
    assert name in body["errorMessage"] and "does not exist" in body["errorMessage"]
    iotsim.registry.create_resource(kind, name)
    assert register(claim, token, template=template)[0] == "accepted"


def test_template_naming_a_missing_policy_fails_until_it_exists(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    iotsim.templates.put("NamedPolicy", _template({"PolicyName": "NamedDevicePolicy"}))
    token = provision_csr(claim, ec.generate_private_key(ec.SECP256R1()))["certificateOwnershipToken"]
    outcome, body = register(claim, token, template="NamedPolicy")
    assert outcome == "rejected" and "NamedDevicePolicy does not exist" in body["errorMessage"]
    iotsim.registry.create_policy(
        "NamedDevicePolicy", _policy({"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"})
    )
    assert register(claim, token, template="NamedPolicy")[0] == "accepted"


def test_template_with_a_malformed_inline_policy_fails_and_registers_nothing(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    perhaps = {"Statement": [{"Effect": "Perhaps", "Action": "iot:*", "Resource": "*"}]}
    iotsim.templates.put("BadInline", _template({"PolicyDocument": json.dumps(perhaps)}))
    body = provision_csr(claim, ec.generate_private_key(ec.SECP256R1()))
    outcome, answer = register(claim, body["certificateOwnershipToken"], template="BadInline")
    assert outcome == "rejected" and "MalformedPolicyException" in answer["errorMessage"]
    assert iotsim.registry.status(body["certificateId"]) == "PENDING_ACTIVATION"


# -- iotsim's choices where AWS documents nothing: switches on `up` --------------------------------


def test_token_reuse_is_refused_by_default_and_allowed_with_the_switch(iotsim_factory: Any) -> None:
    for reuse in (False, True):
        sim = iotsim_factory(single_use_tokens=not reuse)
        with sim.client("reuse") as c:
            token = provision_csr(c, ec.generate_private_key(ec.SECP256R1()))["certificateOwnershipToken"]
            assert register(c, token, {"SerialNumber": "r1"})[0] == "accepted"
            outcome, body = register(c, token, {"SerialNumber": "r1"})
            assert outcome == ("accepted" if reuse else "rejected"), body


def test_token_bound_to_the_claim_by_default_and_unbound_with_the_switch(iotsim_factory: Any) -> None:
    from tools.iotsim import pki
    from tools.iotsim.registry import CLAIM, CLAIM_POLICY

    for unbound in (False, True):
        sim = iotsim_factory(tokens_bound_to_requester=not unbound)
        other = pki.ensure_client_identity(sim.state, sim.sim.ca, "claim2", "second claim")
        sim.registry.add_certificate(other.certificate_id, other.cert_path.read_text(), CLAIM)
        sim.registry.attach_policy(CLAIM_POLICY, other.certificate_id)
        with sim.client("asker") as asker, sim.client("user", other.cert_path, other.key_path) as user:
            token = provision_csr(asker, ec.generate_private_key(ec.SECP256R1()))["certificateOwnershipToken"]
            outcome, body = register(user, token, {"SerialNumber": "b1"})
            assert outcome == ("accepted" if unbound else "rejected"), body


def test_policies_are_evaluated_against_the_region_and_account_of_up(
    iotsim_factory: Any, tmp_path: Path
) -> None:
    sim = iotsim_factory(region="eu-west-1", account="123456789012")
    with sim.client("region-claim") as claim:
        device = Device(sim, claim, tmp_path, "arn")
    for account in ("123456789012", "000000000000"):
        name = "Acct" + account
        sim.registry.create_policy(
            name,
            _policy(
                {
                    "Effect": "Allow",
                    "Action": "iot:Publish",
                    "Resource": "arn:aws:iot:eu-west-1:{}:topic/acct/*".format(account),
                }
            ),
        )
        sim.registry.attach_policy(name, device.certificate_id)
    with device.client() as c:
        c.publish("acct/x", b"ours")  # allowed by the policy naming this region and account
        assert c.connected
    sim.registry.detach_policy("Acct123456789012", device.certificate_id)
    with device.client() as c:
        c.publish("acct/x", b"another account's ARN", wait=False)
        assert c.wait_disconnected()
