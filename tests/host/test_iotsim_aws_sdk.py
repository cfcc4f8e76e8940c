"""AWS's own Python SDK (awsiotsdk, the AWS Common Runtime) provisions against iotsim.

The SDK's IotIdentityClient does CreateKeysAndCertificate and RegisterThing
with the claim, then the new certificate connects as its thing, as the demo
template's policy requires: what works against iotsim here works against AWS.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from awscrt import exceptions, mqtt
from awsiot import iotidentity, mqtt_connection_builder

from tools.iotsim.testing import RunningIotSim

TIMEOUT = 15.0
TEMPLATE = "FleetprovDemo"


def connect(iotsim: RunningIotSim, client_id: str, cert: Path, key: Path) -> mqtt.Connection:
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost",  # the iotsim server certificate names localhost and 127.0.0.1
        port=iotsim.port,
        cert_filepath=str(cert),
        pri_key_filepath=str(key),
        ca_filepath=str(iotsim.ca_path),
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=30,
    )
    connection.connect().result(TIMEOUT)
    return connection


def call(subscribe_accepted: Any, subscribe_rejected: Any, request: Any, publish: Any) -> Any:
    """Subscribe to both answers, publish, return the first answer (an accepted or an ErrorResponse)."""
    answer: Future[Any] = Future()

    def on_answer(response: Any) -> None:
        if not answer.done():
            answer.set_result(response)

    subscribe_accepted(request, mqtt.QoS.AT_LEAST_ONCE, on_answer)[0].result(TIMEOUT)
    subscribe_rejected(request, mqtt.QoS.AT_LEAST_ONCE, on_answer)[0].result(TIMEOUT)
    publish().result(TIMEOUT)
    return answer.result(TIMEOUT)


def create_keys(identity: iotidentity.IotIdentityClient) -> Any:
    return call(
        identity.subscribe_to_create_keys_and_certificate_accepted,
        identity.subscribe_to_create_keys_and_certificate_rejected,
        iotidentity.CreateKeysAndCertificateSubscriptionRequest(),
        lambda: identity.publish_create_keys_and_certificate(
            iotidentity.CreateKeysAndCertificateRequest(), mqtt.QoS.AT_LEAST_ONCE
        ),
    )


def register(identity: iotidentity.IotIdentityClient, token: str) -> Any:
    return call(
        identity.subscribe_to_register_thing_accepted,
        identity.subscribe_to_register_thing_rejected,
        iotidentity.RegisterThingSubscriptionRequest(template_name=TEMPLATE),
        lambda: identity.publish_register_thing(
            iotidentity.RegisterThingRequest(
                template_name=TEMPLATE, certificate_ownership_token=token, parameters={"SerialNumber": "sdk1"}
            ),
            mqtt.QoS.AT_LEAST_ONCE,
        ),
    )


def test_aws_sdk_provisions_and_the_device_connects_as_its_thing(
    iotsim: RunningIotSim, tmp_path: Path
) -> None:
    claim = connect(iotsim, "sdk-claim", iotsim.claim_cert, iotsim.claim_key)
    try:
        identity = iotidentity.IotIdentityClient(claim)
        keys = create_keys(identity)
        assert isinstance(keys, iotidentity.CreateKeysAndCertificateResponse), keys
        registered = register(identity, keys.certificate_ownership_token)
        assert isinstance(registered, iotidentity.RegisterThingResponse), registered
        assert registered.thing_name == "fleetprov-sdk1"
        again = register(identity, "")
        assert isinstance(again, iotidentity.ErrorResponse)
        assert (again.status_code, again.error_code) == (400, "InvalidCertificateOwnershipToken")
    finally:
        claim.disconnect().result(TIMEOUT)

    cert, key = tmp_path / "sdk.pem", tmp_path / "sdk.key"
    cert.write_text(keys.certificate_pem)
    key.write_text(keys.private_key)
    with pytest.raises(exceptions.AwsCrtError):  # the demo policy: connect only as the thing
        connect(iotsim, "not-the-thing", cert, key).disconnect().result(TIMEOUT)
    device = connect(iotsim, registered.thing_name, cert, key)
    try:
        publish, _ = device.publish("fleetprov/fleetprov-sdk1/hello", b"hello", mqtt.QoS.AT_LEAST_ONCE)
        publish.result(TIMEOUT)  # PUBACK: the policy allows it
    finally:
        device.disconnect().result(TIMEOUT)
