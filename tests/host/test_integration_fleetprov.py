"""fleetprov on CPython through the real umqtt.simple (tools/umqtt_host) against iotsim over mutual TLS.

The device library, the device's MQTT client and the AWS stand-in together:
every operation in both formats, the reconnect with the new identity, and each
rejection and fault reaching the device as the documented ProvisioningError.
"""

from __future__ import annotations

import itertools
from typing import Any

import fleetprov
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tools import umqtt_host
from tools.iotsim.testing import RunningIotSim

pytestmark = pytest.mark.timeout(120)

TEMPLATE = "FleetprovDemo"
_serials = itertools.count(1)


def serial() -> str:
    return "int{}".format(next(_serials))


def connect(
    iotsim: RunningIotSim, client_id: str, cert_der: bytes | None = None, key_der: bytes | None = None
) -> Any:
    return umqtt_host.connect(
        client_id,
        iotsim.port,
        iotsim.ca_der.read_bytes(),
        cert_der or iotsim.claim_cert_der.read_bytes(),
        key_der or iotsim.claim_key_der.read_bytes(),
    )


def der_of(cert_pem: str, key: Any) -> tuple[bytes, bytes]:
    cert = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    return cert, key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(key: Any, cn: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class Device:
    """A claim connection with a Provisioner on it; closed by the test's fixture."""

    def __init__(
        self, iotsim: RunningIotSim, fmt: str = "json", timeout_ms: int = 10000, rx_size: int = 6144
    ) -> None:
        self.client_id = "dev-" + serial()
        self.client = connect(iotsim, self.client_id)
        self.p = fleetprov.Provisioner(self.client, fmt=fmt, timeout_ms=timeout_ms, rx_size=rx_size)

    def close(self) -> None:
        self.p.close()
        try:
            self.client.disconnect()
        except OSError:
            pass  # the server may have dropped the connection (the disconnect fault)


@pytest.fixture
def devices(iotsim: RunningIotSim) -> Any:
    made: list[Device] = []

    def make(**kw: Any) -> Device:
        d = Device(iotsim, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def assert_connects_as_itself(iotsim: RunningIotSim, thing: str, cert_der: bytes, key_der: bytes) -> None:
    client = connect(iotsim, thing, cert_der, key_der)
    try:
        client.publish("fleetprov/{}/hello".format(thing).encode(), b"hello", qos=1)
    finally:
        client.disconnect()


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_keys_then_register_then_reconnect_with_the_new_certificate(
    iotsim: RunningIotSim, devices: Any, fmt: str
) -> None:
    d = devices(fmt=fmt)
    keys = d.p.create_keys_and_certificate()
    assert keys.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    sn = serial()
    reg = d.p.register_thing(TEMPLATE, keys.ownership_token, {"SerialNumber": sn})
    assert reg.thing_name == "fleetprov-" + sn
    assert reg.device_configuration["HelloTopic"] == "fleetprov/fleetprov-{}/hello".format(sn)
    assert iotsim.registry.status(keys.certificate_id) == "ACTIVE"
    key = serialization.load_pem_private_key(keys.private_key.encode(), None)
    assert_connects_as_itself(iotsim, reg.thing_name, *der_of(keys.certificate_pem, key))


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize("kind", ["ec-p256", "rsa-2048"])
def test_csr_then_register_then_reconnect_with_the_new_certificate(
    iotsim: RunningIotSim, devices: Any, fmt: str, kind: str
) -> None:
    d = devices(fmt=fmt)
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec-p256"
        else rsa.generate_private_key(65537, 2048)
    )
    cert = d.p.create_certificate_from_csr(csr_pem(key, d.client_id))
    assert cert.private_key is None
    sn = serial()
    reg = d.p.register_thing(TEMPLATE, cert.ownership_token, {"SerialNumber": sn})
    assert reg.thing_name == "fleetprov-" + sn
    assert_connects_as_itself(iotsim, reg.thing_name, *der_of(cert.certificate_pem, key))


def refused(call: Any, *args: Any) -> fleetprov.ProvisioningError:
    with pytest.raises(fleetprov.ProvisioningError) as err:
        call(*args)
    return err.value


def test_unknown_template_reaches_the_device_as_404(devices: Any) -> None:
    d = devices()
    token = d.p.create_keys_and_certificate().ownership_token
    err = refused(d.p.register_thing, "NoSuchTemplate", token, {"SerialNumber": "x"})
    assert (err.status, err.status_code, err.error_code) == (
        fleetprov.SERVER_REFUSED,
        404,
        "ResourceNotFound",
    )


def test_missing_parameter_reaches_the_device_as_400(devices: Any) -> None:
    d = devices(fmt="cbor")
    token = d.p.create_keys_and_certificate().ownership_token
    err = refused(d.p.register_thing, TEMPLATE, token, {})
    assert (err.status, err.status_code, err.error_code) == (
        fleetprov.SERVER_REFUSED,
        400,
        "InvalidParameters",
    )
    assert "SerialNumber" in err.error_message


def test_reused_token_reaches_the_device_as_400_invalid_token(devices: Any) -> None:
    d = devices()
    token = d.p.create_keys_and_certificate().ownership_token
    d.p.register_thing(TEMPLATE, token, {"SerialNumber": serial()})
    err = refused(d.p.register_thing, TEMPLATE, token, {"SerialNumber": serial()})
    assert (err.status_code, err.error_code) == (400, "InvalidCertificateOwnershipToken")
    assert token not in str(err)


def test_expired_token_reaches_the_device_as_400(iotsim: RunningIotSim, devices: Any) -> None:
    d = devices()
    token = d.p.create_certificate_from_csr(
        csr_pem(ec.generate_private_key(ec.SECP256R1()), "exp")
    ).ownership_token
    iotsim.clock.advance(3601)
    err = refused(d.p.register_thing, TEMPLATE, token, {"SerialNumber": serial()})
    assert (err.status_code, err.error_code) == (400, "InvalidCertificateOwnershipToken")
    assert "expired" in err.error_message


def test_bad_csr_reaches_the_device_as_400(devices: Any) -> None:
    d = devices(fmt="cbor")
    err = refused(
        d.p.create_certificate_from_csr,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    assert (err.status, err.status_code, err.error_code) == (fleetprov.SERVER_REFUSED, 400, "InvalidCsr")


def test_hook_refusal_reaches_the_device_as_403(iotsim: RunningIotSim, devices: Any) -> None:
    iotsim.set_hook(lambda event: {"allowProvisioning": False})
    d = devices()
    token = d.p.create_keys_and_certificate().ownership_token
    err = refused(d.p.register_thing, TEMPLATE, token, {"SerialNumber": serial()})
    assert (err.status_code, err.error_code) == (403, "AccessDenied")


def test_throttling_reaches_the_device_as_429(iotsim: RunningIotSim, devices: Any) -> None:
    iotsim.set_throttle(0.001, "RegisterThing", burst=1)
    d = devices()
    d.p.register_thing(
        TEMPLATE, d.p.create_keys_and_certificate().ownership_token, {"SerialNumber": serial()}
    )
    err = refused(
        d.p.register_thing,
        TEMPLATE,
        d.p.create_keys_and_certificate().ownership_token,
        {"SerialNumber": serial()},
    )
    assert (err.status_code, err.error_code) == (429, "ThrottlingException")


@pytest.mark.parametrize(
    "op,kind,options,status",
    [
        ("CreateKeysAndCertificate", "drop", {}, fleetprov.TIMEOUT),
        ("CreateCertificateFromCsr", "drop", {}, fleetprov.TIMEOUT),
        ("RegisterThing", "drop", {}, fleetprov.TIMEOUT),
        ("CreateKeysAndCertificate", "delay", {"delay_ms": 5000}, fleetprov.TIMEOUT),
        (
            "RegisterThing",
            "reject",
            {"status_code": 500, "error_code": "InternalFailure"},
            fleetprov.SERVER_REFUSED,
        ),
        (
            "CreateCertificateFromCsr",
            "reject",
            {"status_code": 503, "error_code": "ServiceUnavailable"},
            fleetprov.SERVER_REFUSED,
        ),
        ("CreateKeysAndCertificate", "malformed", {}, fleetprov.BAD_RESPONSE),
        ("RegisterThing", "malformed", {"topic": "rejected"}, fleetprov.BAD_RESPONSE),
        ("CreateKeysAndCertificate", "oversized", {"size": 9000}, fleetprov.NO_MEMORY),
        ("RegisterThing", "disconnect", {}, fleetprov.MQTT_ERROR),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_each_fault_reaches_the_device_as_the_documented_status(
    iotsim: RunningIotSim, devices: Any, fmt: str, op: str, kind: str, options: dict[str, Any], status: int
) -> None:
    d = devices(fmt=fmt, timeout_ms=1500)
    token = None
    if op == "RegisterThing":
        # the step before the fault gets all the time a loaded machine needs
        token = d.p.create_keys_and_certificate(timeout_ms=30000).ownership_token
    iotsim.set_fault(op, kind, **options)
    if op == "CreateKeysAndCertificate":
        err = refused(d.p.create_keys_and_certificate)
    elif op == "CreateCertificateFromCsr":
        err = refused(d.p.create_certificate_from_csr, csr_pem(ec.generate_private_key(ec.SECP256R1()), "f"))
    else:
        err = refused(d.p.register_thing, TEMPLATE, token, {"SerialNumber": serial()})
    assert err.status == status, str(err)
    if kind == "reject":
        assert (err.status_code, err.error_code) == (options["status_code"], options["error_code"])
    if kind == "oversized":
        assert "9000" in str(err) and "6144" in str(err)


def test_a_delay_within_the_timeout_still_succeeds(iotsim: RunningIotSim, devices: Any) -> None:
    iotsim.set_fault("RegisterThing", "delay", delay_ms=300)
    d = devices(timeout_ms=10000)
    token = d.p.create_keys_and_certificate().ownership_token
    assert d.p.register_thing(TEMPLATE, token, {"SerialNumber": serial()}).thing_name


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_a_duplicated_reply_is_used_once_and_the_next_call_is_not_confused(
    iotsim: RunningIotSim, devices: Any, fmt: str
) -> None:
    iotsim.set_fault("CreateKeysAndCertificate", "duplicate", times=1)
    d = devices(fmt=fmt)
    first = d.p.create_keys_and_certificate()
    second = d.p.create_keys_and_certificate()
    assert first.certificate_id != second.certificate_id
    reg = d.p.register_thing(TEMPLATE, second.ownership_token, {"SerialNumber": serial()})
    assert reg.thing_name and iotsim.registry.status(second.certificate_id) == "ACTIVE"
