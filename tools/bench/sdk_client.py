"""One device's provisioning with AWS's Python SDK (awsiotsdk), for `make bench sdk`.

The same job as examples/provision.py and fleetprov's first boot, done the way
AWS's own fleet provisioning sample does it: connect with the claim
certificate (mutual TLS, awscrt), then with IotIdentityClient either
CreateKeysAndCertificate or CreateCertificateFromCsr, then RegisterThing
(each: subscribe to /accepted and /rejected, then publish), store the new
certificate and key, disconnect, connect as the thing and publish one QoS 1
message. For the CSR method AWS's sample reads a CSR made beforehand; here the
P-256 key and its CSR are made in the process, as the device makes them, so
both sides pay for it. Run as its own process so the wall time, interpreter
start to exit, compares with the device's:

    python -m tools.bench.sdk_client CONFIG_JSON CERT_DIR OUT_DIR [keys|csr]

OUT_DIR's name is the device's serial number (client ids and thing name).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
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


def _call(identity: iotidentity.IotIdentityClient, operation: str, subscription: Any, request: Any) -> Any:
    """One provisioning operation as AWS's sample makes it: subscribe to both
    answers (QoS 1, acknowledged), publish the request (QoS 1), wait for the answer.
    ``operation``: the SDK's name for it, e.g. "register_thing"."""
    answer: Future[Any] = Future()

    def accepted(response: Any) -> None:
        if not answer.done():
            answer.set_result(response)

    def rejected(error: Any) -> None:
        if not answer.done():
            why = "{} {}: {}".format(error.status_code, error.error_code, error.error_message)
            answer.set_exception(RuntimeError(why))

    for outcome, callback in (("accepted", accepted), ("rejected", rejected)):
        subscribe: Callable[..., Any] = getattr(identity, "subscribe_to_{}_{}".format(operation, outcome))
        future, _ = subscribe(request=subscription, qos=mqtt.QoS.AT_LEAST_ONCE, callback=callback)
        future.result(TIMEOUT_S)
    getattr(identity, "publish_" + operation)(request, mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT_S)
    return answer.result(TIMEOUT_S)


def _key_and_csr(common_name: str) -> tuple[str, str]:
    """A P-256 key (PEM) and its CSR (PEM), as lib/csr.py makes them on the device."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return key_pem.decode(), csr.public_bytes(serialization.Encoding.PEM).decode()


def main(argv: list[str]) -> int:
    config, cert_dir, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    method = argv[3] if len(argv) > 3 else "keys"
    cfg = json.loads(config.read_text())
    ca = (cert_dir / "ca.pem").read_bytes()
    serial = out.name
    claim_cert, claim_key = (cert_dir / "claim.pem").read_bytes(), (cert_dir / "claim.key.pem").read_bytes()
    claim = _connect(cfg, claim_cert, claim_key, ca, "claim-" + serial)
    identity = iotidentity.IotIdentityClient(claim)
    if method == "csr":
        private_key, csr = _key_and_csr("device-" + serial)
        made = _call(identity, "create_certificate_from_csr",
                     iotidentity.CreateCertificateFromCsrSubscriptionRequest(),
                     iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr))
    else:
        made = _call(identity, "create_keys_and_certificate",
                     iotidentity.CreateKeysAndCertificateSubscriptionRequest(),
                     iotidentity.CreateKeysAndCertificateRequest())
        private_key = made.private_key
    template = cfg["template"]
    register = iotidentity.RegisterThingRequest(
        template_name=template,
        certificate_ownership_token=made.certificate_ownership_token,
        parameters={"SerialNumber": serial},
    )
    subscription = iotidentity.RegisterThingSubscriptionRequest(template_name=template)
    thing = _call(identity, "register_thing", subscription, register)
    claim.disconnect().result(TIMEOUT_S)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device.pem").write_text(made.certificate_pem)
    (out / "device.key.pem").write_text(private_key)
    name = thing.thing_name or serial
    conn = _connect(cfg, made.certificate_pem.encode(), private_key.encode(), ca, name)
    topic = "fleetprov/{}/hello".format(name)
    published, _ = conn.publish(topic, b'{"event":"provisioned"}', mqtt.QoS.AT_LEAST_ONCE)
    published.result(TIMEOUT_S)
    conn.disconnect().result(TIMEOUT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
