"""iotsim's provisioning service end to end: paho clients over mutual TLS against mosquitto + plugin."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tools.iotsim import pki
from tools.iotsim.registry import ACTIVE, CLAIM, CLAIM_POLICY, INACTIVE, PENDING_ACTIVATION, REVOKED
from tools.iotsim.service import AWS_TPS
from tools.iotsim.untrusted import MAX_DEPTH
from tools.iotsim.testing import (
    ConnectRefused,
    MqttTestClient,
    RunningIotSim,
    make_csr,
    running_iotsim,
    write_identity,
)

pytestmark = pytest.mark.timeout(120)

TEMPLATE = "FleetprovDemo"
FORMATS = ("json", "cbor")


def keys_topic(fmt: str) -> str:
    return "$aws/certificates/create/{}".format(fmt)


def csr_topic(fmt: str) -> str:
    return "$aws/certificates/create-from-csr/{}".format(fmt)


def register_topic(fmt: str, template: str = TEMPLATE) -> str:
    return "$aws/provisioning-templates/{}/provision/{}".format(template, fmt)


def spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


_EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def claim(iotsim: RunningIotSim) -> MqttTestClient:
    c = iotsim.client()
    yield c
    c.close()


def provision_csr(client: MqttTestClient, fmt: str = "json", key: Any = _EC_KEY) -> dict[str, Any]:
    outcome, body = client.request(csr_topic(fmt), {"certificateSigningRequest": make_csr(key)})
    assert outcome == "accepted", body
    return body


def register(
    client: MqttTestClient,
    token: Any,
    fmt: str = "json",
    params: Any = None,
    template: str = TEMPLATE,
    **extra: Any,
) -> tuple[str, Any]:
    payload: dict[str, Any] = {"certificateOwnershipToken": token}
    if params is not None:
        payload["parameters"] = params
    payload.update(extra)
    return client.request(register_topic(fmt, template), payload)


def assert_rejected(result: tuple[str, Any], status: int, code: str, text: str = "") -> None:
    outcome, body = result
    assert outcome == "rejected", body
    assert body["statusCode"] == status and body["errorCode"] == code, body
    assert text in body["errorMessage"]


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within {} s".format(timeout))
        time.sleep(0.01)


# -- CreateKeysAndCertificate -------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_create_keys_returns_an_rsa_2048_key_and_its_certificate(
    iotsim: RunningIotSim, claim: MqttTestClient, fmt: str
) -> None:
    outcome, body = claim.request(keys_topic(fmt), b"")
    assert outcome == "accepted"
    assert set(body) == {"certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"}
    assert all(isinstance(v, str) for v in body.values())
    assert body["privateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    key = serialization.load_pem_private_key(body["privateKey"].encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    cert = x509.load_pem_x509_certificate(body["certificatePem"].encode())
    assert spki(cert.public_key()) == spki(key.public_key())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(iotsim.ca_path.read_bytes()))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert body["certificateId"] == hashlib.sha256(der).hexdigest()
    assert iotsim.registry.status(body["certificateId"]) == PENDING_ACTIVATION


@pytest.mark.parametrize(
    "fmt,payload,accepted",
    [
        ("json", b"", True),
        ("json", b"{}", True),
        ("cbor", b"", True),
        ("cbor", b"\xa0", True),
        ("json", b"not json", False),
        ("json", b"[1, 2]", False),
        ("cbor", b"\xff\x00", False),
        ("cbor", b"\x82\x01\x02", False),
    ],
    ids=["json-empty", "json-{}", "cbor-empty", "cbor-A0", "json-garbage", "json-array", "cbor-garbage", "cbor-array"],
)
def test_create_keys_accepts_an_empty_payload_or_map_and_rejects_anything_else_with_400(
    claim: MqttTestClient, fmt: str, payload: bytes, accepted: bool
) -> None:
    result = claim.request(keys_topic(fmt), payload)
    if accepted:
        assert result[0] == "accepted" and result[1]["certificateId"]
    else:
        assert_rejected(result, 400, "InvalidPayload")


@pytest.mark.parametrize(
    "fmt,payload",
    [
        ("json", b"[" * 100000),
        ("json", b"\xff\xfe\x00garbage"),
        ("cbor", b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff"),
        ("cbor", b"\x81" * 100000),
        ("cbor", b"\xbf\x61a\x01"),
    ],
    ids=["json-deep-nesting", "json-not-utf8", "cbor-huge-length", "cbor-deep-nesting", "cbor-truncated-map"],
)
def test_hostile_payloads_are_rejected_with_400_and_the_service_keeps_serving(
    claim: MqttTestClient, fmt: str, payload: bytes
) -> None:
    assert_rejected(claim.request(csr_topic(fmt), payload), 400, "InvalidPayload")
    provision_csr(claim, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_payload_nested_past_the_bound_is_refused_and_one_within_it_is_read(claim: MqttTestClient, fmt: str) -> None:
    def nested(levels: int) -> bytes:
        value: Any = "x"
        for _ in range(levels - 1):  # the payload's own map is the first level
            value = [value]
        body = {"certificateSigningRequest": value}
        return cbor2.dumps(body) if fmt == "cbor" else json.dumps(body).encode()

    assert_rejected(claim.request(csr_topic(fmt), nested(MAX_DEPTH + 1)), 400, "InvalidPayload", str(MAX_DEPTH))
    assert_rejected(claim.request(csr_topic(fmt), nested(MAX_DEPTH)), 400, "InvalidCsr")  # read, then judged


def test_self_described_cbor_map_is_accepted(claim: MqttTestClient) -> None:
    assert claim.request(keys_topic("cbor"), b"\xd9\xd9\xf7\xa0")[0] == "accepted"


# -- CreateCertificateFromCsr ----------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["ec-p256", "rsa-2048"])
def test_csr_is_certified_with_its_own_public_key(
    iotsim: RunningIotSim, claim: MqttTestClient, fmt: str, kind: str
) -> None:
    key = _EC_KEY if kind == "ec-p256" else rsa.generate_private_key(65537, 2048)
    body = provision_csr(claim, fmt, key)
    assert set(body) == {"certificateId", "certificatePem", "certificateOwnershipToken"}
    cert = x509.load_pem_x509_certificate(body["certificatePem"].encode())
    assert spki(cert.public_key()) == spki(key.public_key())
    assert body["certificateId"] == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert iotsim.registry.status(body["certificateId"]) == PENDING_ACTIVATION


def _tampered_csr() -> str:
    # Re-sign nothing: flip a bit inside the signature of a valid CSR.
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(_EC_KEY).encode()).public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def _other_key_csr() -> str:
    # A CSR whose public key is not the key that signed it.
    good = x509.load_pem_x509_csr(make_csr(_EC_KEY).encode())
    other = ec.generate_private_key(ec.SECP256R1())
    forged = x509.CertificateSigningRequestBuilder().subject_name(good.subject).sign(other, hashes.SHA256())
    der = forged.public_bytes(serialization.Encoding.DER)
    return (
        x509.load_der_x509_csr(der.replace(spki(other.public_key()), spki(_EC_KEY.public_key())))
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "payload,text",
    [
        ({"certificateSigningRequest": "__TAMPERED__"}, "signature"),
        ({"certificateSigningRequest": "__OTHER_KEY__"}, "signature"),
        (
            {
                "certificateSigningRequest": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            },
            "PEM CSR",
        ),
        ({"certificateSigningRequest": "hello"}, "PEM CSR"),
        ({"certificateSigningRequest": ""}, "missing"),
        ({"certificateSigningRequest": 42}, "missing"),
        ({}, "missing"),
        ({"certificateSigningRequest": "__RSA1024__"}, "1024 bits"),
    ],
    ids=[
        "tampered-signature",
        "signed-by-another-key",
        "truncated-der",
        "not-pem",
        "empty",
        "number",
        "absent",
        "rsa-1024",
    ],
)
def test_bad_csr_is_rejected_with_400(claim: MqttTestClient, fmt: str, payload: dict, text: str) -> None:
    value = payload.get("certificateSigningRequest")
    if value == "__TAMPERED__":
        payload = {"certificateSigningRequest": _tampered_csr()}
    elif value == "__OTHER_KEY__":
        payload = {"certificateSigningRequest": _other_key_csr()}
    elif value == "__RSA1024__":
        payload = {"certificateSigningRequest": make_csr(rsa.generate_private_key(65537, 1024))}
    assert_rejected(claim.request(csr_topic(fmt), payload), 400, "InvalidCsr", text)


def test_csr_request_that_is_not_a_map_is_rejected_with_400(claim: MqttTestClient) -> None:
    assert_rejected(claim.request(csr_topic("json"), b'"just a string"'), 400, "InvalidPayload")


# -- RegisterThing ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_thing_activates_the_certificate_and_returns_the_configuration(
    iotsim: RunningIotSim, claim: MqttTestClient, fmt: str
) -> None:
    body = provision_csr(claim, fmt)
    serial = "sn-{}".format(fmt)
    outcome, reg = register(claim, body["certificateOwnershipToken"], fmt, {"SerialNumber": serial})
    assert outcome == "accepted", reg
    assert reg["thingName"] == "fleetprov-" + serial
    assert reg["deviceConfiguration"] == {
        "ThingName": "fleetprov-" + serial,
        "TelemetryInterval": "10",
        "Region": "local",
        "HelloTopic": "fleetprov/fleetprov-{}/hello".format(serial),
    }
    assert iotsim.registry.status(body["certificateId"]) == ACTIVE
    thing = iotsim.registry.thing("fleetprov-" + serial)
    assert thing is not None and body["certificateId"] in thing.certificates
    assert thing.attributes == {"serial": serial, "location": "lab"}
    assert [name for name, _ in iotsim.registry.policies_of(body["certificateId"])] == ["FleetprovThingPolicy"]


def test_register_thing_without_a_thing_resource_omits_thing_name(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    iotsim.templates.put("NoThing", {"DeviceConfiguration": {"k": "v"}})
    body = provision_csr(claim)
    outcome, reg = register(claim, body["certificateOwnershipToken"], template="NoThing")
    assert outcome == "accepted" and reg == {"deviceConfiguration": {"k": "v"}}


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_with_unknown_template_is_rejected_with_404(claim: MqttTestClient, fmt: str) -> None:
    body = provision_csr(claim, fmt)
    assert_rejected(
        register(claim, body["certificateOwnershipToken"], fmt, template="NoSuchTemplate"),
        404,
        "ResourceNotFound",
        "NoSuchTemplate",
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_without_a_required_parameter_is_rejected_with_400_naming_it(
    claim: MqttTestClient, fmt: str
) -> None:
    body = provision_csr(claim, fmt)
    assert_rejected(
        register(claim, body["certificateOwnershipToken"], fmt, {}), 400, "InvalidParameters", "SerialNumber"
    )


@pytest.mark.parametrize(
    "params", [["a"], {"SerialNumber": 5}, "SerialNumber=1"], ids=["list", "int-value", "string"]
)
def test_register_with_parameters_that_are_not_a_string_map_is_rejected_with_400(
    claim: MqttTestClient, params: Any
) -> None:
    body = provision_csr(claim)
    assert_rejected(
        register(claim, body["certificateOwnershipToken"], "json", params), 400, "InvalidParameters"
    )


@pytest.mark.parametrize("payload", [b"", b"{bad", b"[]"], ids=["empty", "garbage", "array"])
def test_register_with_a_malformed_payload_is_rejected_with_400(
    claim: MqttTestClient, payload: bytes
) -> None:
    assert_rejected(claim.request(register_topic("json"), payload), 400, "InvalidPayload")


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_with_a_missing_or_empty_token_is_rejected_as_aws_does(
    claim: MqttTestClient, fmt: str
) -> None:
    params = {"SerialNumber": "1"}
    assert_rejected(
        claim.request(register_topic(fmt), {"parameters": params}),
        400,
        "InvalidCertificateOwnershipToken",
        "Certificate ownership token cannot be empty.",
    )
    assert_rejected(
        register(claim, "", fmt, params), 400, "InvalidCertificateOwnershipToken", "cannot be empty"
    )
    assert_rejected(
        register(claim, 12, fmt, params), 400, "InvalidCertificateOwnershipToken", "cannot be empty"
    )


def test_register_with_an_unknown_token_is_rejected_with_400(claim: MqttTestClient) -> None:
    assert_rejected(
        register(claim, "QUJD" * 100, "json", {"SerialNumber": "1"}),
        400,
        "InvalidCertificateOwnershipToken",
        "invalid",
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_token_works_only_once(claim: MqttTestClient, fmt: str) -> None:
    token = provision_csr(claim, fmt)["certificateOwnershipToken"]
    assert register(claim, token, fmt, {"SerialNumber": "once"})[0] == "accepted"
    assert_rejected(
        register(claim, token, fmt, {"SerialNumber": "once"}),
        400,
        "InvalidCertificateOwnershipToken",
        "already been used",
    )


def test_an_expired_token_is_rejected_and_its_certificate_deleted(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    body = provision_csr(claim)
    iotsim.clock.advance(3600)
    assert_rejected(
        register(claim, body["certificateOwnershipToken"], "json", {"SerialNumber": "late"}),
        400,
        "InvalidCertificateOwnershipToken",
        "expired",
    )
    assert body["certificateId"] in iotsim.registry.expire_pending()
    assert iotsim.registry.status(body["certificateId"]) is None


def test_a_token_is_bound_to_the_identity_that_asked_for_the_certificate(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    assert iotsim.sim.ca is not None
    other = pki.ensure_client_identity(iotsim.state, iotsim.sim.ca, "claim2", "second claim")
    iotsim.registry.add_certificate(other.certificate_id, other.cert_path.read_text(), CLAIM)
    iotsim.registry.attach_policy(CLAIM_POLICY, other.certificate_id)
    token = provision_csr(claim)["certificateOwnershipToken"]
    with iotsim.client("thief", other.cert_path, other.key_path) as thief:
        assert_rejected(
            register(thief, token, "json", {"SerialNumber": "x"}),
            400,
            "InvalidCertificateOwnershipToken",
            "not issued to this client",
        )
    assert register(claim, token, "json", {"SerialNumber": "x"})[0] == "accepted"


def test_template_status_inactive_leaves_the_certificate_unable_to_connect(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    iotsim.templates.put(
        "Inactive",
        {
            "Resources": {
                "certificate": {
                    "Type": "AWS::IoT::Certificate",
                    "Properties": {
                        "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                        "Status": "INACTIVE",
                    },
                }
            }
        },
    )
    body = provision_csr(claim)
    assert register(claim, body["certificateOwnershipToken"], template="Inactive")[0] == "accepted"
    assert iotsim.registry.status(body["certificateId"]) == INACTIVE
    cert, key = write_identity(tmp_path, "inactive", body["certificatePem"], _EC_KEY)
    with pytest.raises(ConnectRefused):
        iotsim.client("inactive", cert, key)


# -- lifecycle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["keys", "csr"])
def test_new_certificate_connects_only_after_register_thing_and_never_after_revoke(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path, method: str
) -> None:
    if method == "keys":
        outcome, body = claim.request(keys_topic("json"), b"{}")
        assert outcome == "accepted"
        key = serialization.load_pem_private_key(body["privateKey"].encode(), None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        body = provision_csr(claim, "json", key)
    cert, key_path = write_identity(tmp_path, "device", body["certificatePem"], key)
    with pytest.raises(ConnectRefused):
        iotsim.client("device-" + method, cert, key_path)
    assert (
        register(claim, body["certificateOwnershipToken"], "json", {"SerialNumber": method})[0] == "accepted"
    )
    # The demo policy allows iot:Connect only with the thing's name as client id.
    with pytest.raises(ConnectRefused):
        iotsim.client("device-" + method, cert, key_path)
    with iotsim.client("fleetprov-" + method, cert, key_path) as device:
        assert device.connected
    iotsim.registry.revoke(body["certificateId"])
    assert iotsim.registry.status(body["certificateId"]) == REVOKED
    with pytest.raises(ConnectRefused):
        iotsim.client("fleetprov-" + method, cert, key_path)


def test_registry_and_certificates_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = ec.generate_private_key(ec.SECP256R1())
    with running_iotsim(state) as first:
        with first.client("dev") as c:
            body = provision_csr(c, "json", key)
            assert (
                register(c, body["certificateOwnershipToken"], "json", {"SerialNumber": "persist"})[0]
                == "accepted"
            )
        pending = None
        with first.client("dev2") as c:
            pending = provision_csr(c, "cbor")
    cert, key_path = write_identity(tmp_path, "dev", body["certificatePem"], key)
    with running_iotsim(state) as second:
        assert second.registry.thing("fleetprov-persist") is not None
        with second.client("fleetprov-persist", cert, key_path) as device:
            assert device.connected
        with second.client("dev2") as c:
            result = register(c, pending["certificateOwnershipToken"], "cbor", {"SerialNumber": "later"})
            assert result[0] == "accepted", result


# -- pre-provisioning hook ---------------------------------------------------------------------


def test_hook_gets_aws_input_and_its_overrides_win(iotsim: RunningIotSim, claim: MqttTestClient) -> None:
    seen: list[dict[str, Any]] = []

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(event)
        return {
            "allowProvisioning": True,
            "parameterOverrides": {"SerialNumber": "hooked", "Location": "field"},
        }

    iotsim.set_hook(hook)
    body = provision_csr(claim)
    outcome, reg = register(claim, body["certificateOwnershipToken"], "json", {"SerialNumber": "asked"})
    assert outcome == "accepted", reg
    assert reg["thingName"] == "fleetprov-hooked"
    assert reg["deviceConfiguration"]["TelemetryInterval"] == "300"
    (event,) = seen
    assert event == {
        "claimCertificateId": iotsim.claim_id,
        "certificateId": body["certificateId"],
        "certificatePem": body["certificatePem"],
        "templateArn": "arn:aws:iot:local:000000000000:provisioningtemplate/FleetprovDemo",
        "clientId": claim.client_id,
        "parameters": {"SerialNumber": "asked"},
    }


def test_hook_given_as_module_function_with_a_lambda_signature_is_called(
    iotsim: RunningIotSim, claim: MqttTestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTSIM_ALLOWED_SERIALS", "8, 9")
    iotsim.set_hook("tools.iotsim.hooks:allowlist")
    token = provision_csr(claim)["certificateOwnershipToken"]
    assert_rejected(register(claim, token, "json", {"SerialNumber": "7"}), 403, "AccessDenied", "denied")
    outcome, reg = register(claim, token, "json", {"SerialNumber": "8"})
    assert outcome == "accepted" and reg["deviceConfiguration"]["TelemetryInterval"] == "300"


def test_hook_that_cannot_be_imported_is_refused_by_name(iotsim: RunningIotSim) -> None:
    with pytest.raises(ValueError, match="module:function"):
        iotsim.set_hook("no_colon_here")
    with pytest.raises(AttributeError):
        iotsim.set_hook("tools.iotsim.hooks:nope")


@pytest.mark.parametrize(
    "answer",
    [{"allowProvisioning": False}, {}, None, "yes", {"allowProvisioning": "true"}],
    ids=["false", "absent", "none", "string", "string-true"],
)
def test_hook_that_does_not_allow_provisioning_gets_403(
    iotsim: RunningIotSim, claim: MqttTestClient, answer: Any
) -> None:
    iotsim.set_hook(lambda event: answer)
    body = provision_csr(claim)
    assert_rejected(
        register(claim, body["certificateOwnershipToken"], "json", {"SerialNumber": "1"}), 403, "AccessDenied"
    )
    assert iotsim.registry.status(body["certificateId"]) == PENDING_ACTIVATION


def test_hook_that_raises_gets_403_and_the_token_stays_usable(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    def hook(event: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("database down")

    iotsim.set_hook(hook)
    token = provision_csr(claim)["certificateOwnershipToken"]
    assert_rejected(
        register(claim, token, "json", {"SerialNumber": "1"}), 403, "AccessDenied", "RuntimeError"
    )
    iotsim.set_hook(None)
    assert register(claim, token, "json", {"SerialNumber": "1"})[0] == "accepted"


def test_hook_that_does_not_answer_in_time_gets_403(iotsim: RunningIotSim, claim: MqttTestClient) -> None:
    release = threading.Event()
    iotsim.service.hook_timeout = 0.3
    try:
        iotsim.set_hook(lambda event: release.wait(30) and {"allowProvisioning": True})
        token = provision_csr(claim)["certificateOwnershipToken"]
        assert_rejected(
            register(claim, token, "json", {"SerialNumber": "1"}), 403, "AccessDenied", "did not answer"
        )
    finally:
        release.set()
        iotsim.service.hook_timeout = 5.0


def test_hook_with_bad_overrides_gets_403(iotsim: RunningIotSim, claim: MqttTestClient) -> None:
    iotsim.set_hook(lambda event: {"allowProvisioning": True, "parameterOverrides": {"SerialNumber": 5}})
    token = provision_csr(claim)["certificateOwnershipToken"]
    assert_rejected(
        register(claim, token, "json", {"SerialNumber": "1"}), 403, "AccessDenied", "parameterOverrides"
    )


# -- throttling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_throttled_operation_is_rejected_with_429_and_others_are_not(
    iotsim: RunningIotSim, claim: MqttTestClient, fmt: str
) -> None:
    iotsim.set_throttle(0.001, op="CreateCertificateFromCsr", burst=1)
    provision_csr(claim, fmt)
    assert_rejected(
        claim.request(csr_topic(fmt), {"certificateSigningRequest": make_csr(_EC_KEY)}),
        429,
        "ThrottlingException",
        "CreateCertificateFromCsr",
    )
    assert claim.request(keys_topic(fmt), b"")[0] == "accepted"


def test_provisioning_is_throttled_to_aws_rates_by_default(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    assert iotsim.service.throttle_rates() == AWS_TPS  # 10, 15, 10 per second
    topic = register_topic("json")
    claim.subscribe(topic + "/accepted", topic + "/rejected")
    started = time.monotonic()
    for _ in range(40):  # bogus tokens: each is answered, and each counts
        claim.publish(topic, json.dumps({"certificateOwnershipToken": "x"}), wait=False)
    codes = [json.loads(claim.expect()[1])["statusCode"] for _ in range(40)]
    elapsed = time.monotonic() - started
    assert set(codes) <= {400, 429}
    assert codes.count(429) >= 40 - 10 - math.ceil(10 * elapsed) - 1  # a burst of 10, then 10 a second


# -- fault injection -----------------------------------------------------------------------------


def test_fault_drop_sends_no_reply_and_applies_only_as_often_as_asked(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    iotsim.set_fault("CreateCertificateFromCsr", "drop", times=1)
    claim.subscribe(csr_topic("json") + "/accepted", csr_topic("json") + "/rejected")
    claim.publish(csr_topic("json"), json.dumps({"certificateSigningRequest": make_csr(_EC_KEY)}))
    wait_for(lambda: iotsim.service.stats["fault.drop"] >= 1)
    with pytest.raises(TimeoutError):
        claim.expect(timeout=0.5)
    provision_csr(claim)  # the next request is served again


def test_fault_delay_holds_the_reply_back(iotsim: RunningIotSim, claim: MqttTestClient) -> None:
    iotsim.set_fault("RegisterThing", "delay", delay_ms=1500)
    token = provision_csr(claim)["certificateOwnershipToken"]
    topic = register_topic("json")
    claim.subscribe(topic + "/accepted", topic + "/rejected")
    claim.publish(
        topic, json.dumps({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "slow"}})
    )
    with pytest.raises(TimeoutError):
        claim.expect(timeout=0.3)
    got, body = claim.expect(timeout=10)
    assert got == topic + "/accepted" and json.loads(body)["thingName"] == "fleetprov-slow"


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_reject_sends_the_given_status_code_and_message(
    iotsim: RunningIotSim, claim: MqttTestClient, fmt: str
) -> None:
    iotsim.set_fault(
        "keys", "reject", status_code=503, error_code="ServiceUnavailable", error_message="try later"
    )
    outcome, body = claim.request(keys_topic(fmt), b"")
    assert outcome == "rejected"
    assert body == {"statusCode": 503, "errorCode": "ServiceUnavailable", "errorMessage": "try later"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_malformed_sends_an_unparseable_accepted_payload(
    iotsim: RunningIotSim, claim: MqttTestClient, fmt: str
) -> None:
    iotsim.set_fault("csr", "malformed")
    claim.subscribe(csr_topic(fmt) + "/accepted")
    claim.publish(csr_topic(fmt), cbor2.dumps({}) if fmt == "cbor" else b"{}")
    topic, payload = claim.expect()
    assert topic == csr_topic(fmt) + "/accepted"
    with pytest.raises(Exception):
        json.loads(payload) if fmt == "json" else cbor2.loads(payload)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_oversized_sends_a_payload_of_the_given_size(
    iotsim: RunningIotSim, claim: MqttTestClient, fmt: str
) -> None:
    iotsim.set_fault("keys", "oversized", size=20000)
    claim.subscribe(keys_topic(fmt) + "/accepted")
    claim.publish(keys_topic(fmt), b"")
    topic, payload = claim.expect()
    assert topic == keys_topic(fmt) + "/accepted" and len(payload) == 20000
    body = json.loads(payload) if fmt == "json" else cbor2.loads(payload)
    assert set(body) == {"certificateId"}


def test_fault_duplicate_sends_the_same_reply_twice(iotsim: RunningIotSim, claim: MqttTestClient) -> None:
    iotsim.set_fault("csr", "duplicate")
    outcome, body = claim.request(csr_topic("json"), {"certificateSigningRequest": make_csr(_EC_KEY)})
    assert outcome == "accepted"
    topic, again = claim.expect()
    assert topic == csr_topic("json") + "/accepted" and json.loads(again) == body


def test_fault_disconnect_drops_the_connection_instead_of_replying(
    iotsim: RunningIotSim, claim: MqttTestClient
) -> None:
    iotsim.set_fault("register", "disconnect")
    claim.subscribe(register_topic("json") + "/accepted", register_topic("json") + "/rejected")
    claim.publish(register_topic("json"), b"{}", wait=False)
    assert claim.wait_disconnected(10)
    assert claim.messages.empty()


def test_faults_apply_to_one_operation_only_and_clear(iotsim: RunningIotSim, claim: MqttTestClient) -> None:
    iotsim.set_fault("keys", "reject")
    provision_csr(claim)
    iotsim.clear_faults()
    assert claim.request(keys_topic("json"), b"")[0] == "accepted"


def test_unknown_fault_kind_and_operation_are_refused_by_name(iotsim: RunningIotSim) -> None:
    with pytest.raises(ValueError, match="explode"):
        iotsim.set_fault("keys", "explode")
    with pytest.raises(ValueError, match="DeleteThing"):
        iotsim.set_fault("DeleteThing", "drop")


# -- topics, secrecy -----------------------------------------------------------------------------


def test_requests_on_other_aws_topics_reach_the_service_and_get_no_reply(
    iotsim: RunningIotSim, claim: MqttTestClient, tmp_path: Path
) -> None:
    # A device whose policy allows $aws topics may publish to them: the plugin
    # forwards them, the service answers only the provisioning API.
    key = ec.generate_private_key(ec.SECP256R1())
    body = provision_csr(claim, "json", key)
    assert (
        register(claim, body["certificateOwnershipToken"], "json", {"SerialNumber": "topics"})[0]
        == "accepted"
    )
    iotsim.registry.create_policy(
        "AwsTopics",
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/$aws/*"},
                    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/$aws/*"},
                ],
            }
        ),
    )
    iotsim.registry.attach_policy("AwsTopics", body["certificateId"])
    cert, key_path = write_identity(tmp_path, "topics", body["certificatePem"], key)
    with iotsim.client("fleetprov-topics", cert, key_path) as device:
        topics = [
            "$aws/certificates/create/xml",
            "$aws/things/fleetprov-topics/shadow/get",
            "$aws/provisioning-templates/bad name/provision/json",
        ]
        device.subscribe(*[t + "/accepted" for t in topics], *[t + "/rejected" for t in topics])
        before = iotsim.service.stats["ignored"]
        for topic in topics:
            device.publish(topic, b"{}")
        wait_for(lambda: iotsim.service.stats["ignored"] >= before + len(topics))
        assert device.connected and device.messages.empty()


def test_private_keys_and_tokens_never_reach_the_logs(
    iotsim: RunningIotSim, claim: MqttTestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outcome, body = claim.request(keys_topic("json"), b"")
    token, key = body["certificateOwnershipToken"], body["privateKey"]
    register(claim, token, "json", {"SerialNumber": "secret"})
    register(claim, token, "json", {"SerialNumber": "secret"})  # the refusal must not echo it either
    key_line = key.splitlines()[1]
    logs = caplog.text + (iotsim.state / "mosquitto.log").read_text()
    assert token[:32] not in logs and key_line not in logs


@pytest.mark.parametrize("fmt", FORMATS)
def test_devices_asking_at_the_same_moment_each_get_only_their_own_certificate(
    iotsim: RunningIotSim, fmt: str
) -> None:
    n = 8
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(n)]
    clients = [iotsim.client("same-moment-{}-{}".format(fmt, i)) for i in range(n)]
    try:
        topic = csr_topic(fmt)
        for c in clients:
            c.subscribe(topic + "/accepted", topic + "/rejected")
        barrier = threading.Barrier(n)

        def ask(i: int) -> None:
            payload = {"certificateSigningRequest": make_csr(keys[i], "same-{}".format(i))}
            barrier.wait(30)
            clients[i].publish(topic, cbor2.dumps(payload) if fmt == "cbor" else json.dumps(payload), wait=False)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        ids = set()
        for i, c in enumerate(clients):
            got, payload = c.expect()
            assert got == topic + "/accepted"
            body = cbor2.loads(payload) if fmt == "cbor" else json.loads(payload)
            cert = x509.load_pem_x509_certificate(body["certificatePem"].encode())
            assert spki(cert.public_key()) == spki(keys[i].public_key()), "client {} got another's certificate".format(i)
            ids.add(body["certificateId"])
        assert len(ids) == n
        for c in clients:  # and nobody got a second answer
            with pytest.raises(TimeoutError):
                c.expect(timeout=0.2)
    finally:
        for c in clients:
            c.close()
