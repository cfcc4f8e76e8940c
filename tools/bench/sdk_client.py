"""One device's first boot with AWS's Python SDK (awsiotsdk), for `make bench sdk`.

The same job as fleetprov's first boot on the unix port, done the way AWS's
own fleet provisioning sample does it: connect with the claim certificate
(mutual TLS, awscrt), IotIdentityClient CreateKeysAndCertificate and
RegisterThing (subscribe to /accepted and /rejected, then publish), store the
new certificate and key, disconnect, connect as the thing and publish one
QoS 1 message. Run as its own process so the wall time, interpreter start to
exit, compares with the device's:

    python -m tools.bench.sdk_client CONFIG_JSON CERT_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from awscrt import mqtt
from awsiot import iotidentity, mqtt_connection_builder

TIMEOUT_S = 30


def _connect(cfg: dict[str, Any], cert: bytes, key: bytes, ca: bytes, client_id: str) -> mqtt.Connection:
    conn = mqtt_connection_builder.mtls_from_bytes(
        cert_bytes=cert,
        pri_key_bytes=key,
        ca_bytes=ca,
        endpoint=cfg["endpoint"],
        port=cfg["port"],
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=30,
    )
    conn.connect().result(TIMEOUT_S)
    return conn


def _answer(client: iotidentity.IotIdentityClient, subscribe_accepted: Any, subscribe_rejected: Any,
            request: Any) -> Future[Any]:
    """Subscribe to both answers (QoS 1, acknowledged), then return a future for the first."""
    answer: Future[Any] = Future()

    def accepted(response: Any) -> None:
        if not answer.done():
            answer.set_result(response)

    def rejected(error: Any) -> None:
        if not answer.done():
            answer.set_exception(RuntimeError("{} {}: {}".format(error.status_code, error.error_code, error.error_message)))

    for subscribe, callback in ((subscribe_accepted, accepted), (subscribe_rejected, rejected)):
        future, _ = subscribe(request=request, qos=mqtt.QoS.AT_LEAST_ONCE, callback=callback)
        future.result(TIMEOUT_S)
    return answer


def main(argv: list[str]) -> int:
    config, cert_dir, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    cfg = json.loads(config.read_text())
    ca = (cert_dir / "ca.pem").read_bytes()
    claim = _connect(cfg, (cert_dir / "claim.pem").read_bytes(), (cert_dir / "claim.key.pem").read_bytes(), ca,
                     "sdk-" + out.name)
    identity = iotidentity.IotIdentityClient(claim)
    answer = _answer(identity, identity.subscribe_to_create_keys_and_certificate_accepted,
                     identity.subscribe_to_create_keys_and_certificate_rejected,
                     iotidentity.CreateKeysAndCertificateSubscriptionRequest())
    identity.publish_create_keys_and_certificate(
        iotidentity.CreateKeysAndCertificateRequest(), mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT_S)
    keys = answer.result(TIMEOUT_S)
    template = cfg["template"]
    answer = _answer(identity, identity.subscribe_to_register_thing_accepted,
                     identity.subscribe_to_register_thing_rejected,
                     iotidentity.RegisterThingSubscriptionRequest(template_name=template))
    identity.publish_register_thing(
        iotidentity.RegisterThingRequest(
            template_name=template,
            certificate_ownership_token=keys.certificate_ownership_token,
            parameters={"SerialNumber": out.name},
        ),
        mqtt.QoS.AT_LEAST_ONCE,
    ).result(TIMEOUT_S)
    thing = answer.result(TIMEOUT_S)
    claim.disconnect().result(TIMEOUT_S)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device.pem").write_text(keys.certificate_pem)
    (out / "device.key.pem").write_text(keys.private_key)
    name = thing.thing_name or out.name
    conn = _connect(cfg, keys.certificate_pem.encode(), keys.private_key.encode(), ca, name)
    conn.publish("fleetprov/{}/hello".format(name), b'{"event":"provisioned"}', mqtt.QoS.AT_LEAST_ONCE)[0].result(TIMEOUT_S)
    conn.disconnect().result(TIMEOUT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
