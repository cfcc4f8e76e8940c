"""fleetprov over the real Adafruit MiniMQTT (circuitpython/lib/mmqttclient.py) against iotsim.

MiniMQTT 8.x runs on CPython with socket_pool=socket and an ssl context, as on
a CircuitPython board with socketpool and ssl: the same adapter, the same
fleetprov, real mutual TLS, MiniMQTT's default socket timeout unless a test
says otherwise. Every method x format, then each fault reaching the device as
the documented ProvisioningError, then a link that goes silent.
"""

from __future__ import annotations

import itertools
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CP_LIB = ROOT / "circuitpython" / "lib"
if str(CP_LIB) not in sys.path:
    sys.path.insert(0, str(CP_LIB))

import credstore  # noqa: E402
from devicepki import commit  # noqa: E402
import csr  # noqa: E402
import fleetprov  # noqa: E402
import mmqttclient  # noqa: E402
import mqttlink  # noqa: E402
from pem import pem_to_der  # noqa: E402

from tools.cphost import iotsim_link  # noqa: E402
from tools.iotsim.testing import RunningIotSim  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TEMPLATE = "FleetprovDemo"
LONG_SOCKET_TIMEOUT_S = 20  # far above any answer's time: a wait for it shows as a failure
_serials = itertools.count(1)


def serial() -> str:
    return "cp{}".format(next(_serials))


def claim_link(iotsim: RunningIotSim, client_id: str, **kw: Any) -> mqttlink.Link:
    kw.setdefault("timeout_ms", 5000)
    return iotsim_link(iotsim, client_id, **kw)


@pytest.fixture
def links() -> Iterator[Any]:
    made: list[mqttlink.Link] = []

    def make(iotsim: RunningIotSim, client_id: str | None = None, **kw: Any) -> mqttlink.Link:
        link = claim_link(iotsim, client_id or "cp-" + serial(), **kw)
        made.append(link)
        return link

    yield make
    for link in made:
        link.close()


def write_identity(folder: Path, cert_pem: str, key_der: bytes) -> tuple[str, str]:
    """The device's new identity as the PEM files CircuitPython's TLS loads (via credstore)."""
    store = credstore.Store(str(folder), pem=True)
    rec = commit(store, "id", cert_pem, key_der)
    return store.path(rec["files"]["cert"]), store.path(rec["files"]["key"])


def connects_as_itself(iotsim: RunningIotSim, thing: str, cert: str, key: str) -> None:
    link = iotsim_link(iotsim, thing, cert, key)
    try:
        link.client.publish("fleetprov/{}/hello".format(thing).encode(), b"hello", False, 1)
    finally:
        link.close()


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize("method", ["keys", "csr"])
def test_minimqtt_provisions_registers_and_reconnects_as_the_thing(
    iotsim: RunningIotSim, links: Any, tmp_path: Path, method: str, fmt: str
) -> None:
    cid = "cp-" + serial()
    link = links(iotsim, cid)
    p = fleetprov.Provisioner(link.client, fmt=fmt, timeout_ms=15000)
    if method == "keys":
        creds = p.create_keys_and_certificate()
        key_der = pem_to_der(creds.private_key, "PRIVATE KEY")
    else:
        key_der, csr_pem = csr.generate(cid)
        creds = p.create_certificate_from_csr(csr_pem)
        assert creds.private_key is None
    sn = serial()
    reg = p.register_thing(TEMPLATE, creds.ownership_token, {"SerialNumber": sn})
    p.close()
    assert reg.thing_name == "fleetprov-" + sn
    assert reg.device_configuration["HelloTopic"] == "fleetprov/fleetprov-{}/hello".format(sn)
    assert iotsim.registry.status(creds.certificate_id) == "ACTIVE"
    connects_as_itself(iotsim, reg.thing_name, *write_identity(tmp_path, creds.certificate_pem, key_der))


def refused(call: Any, *args: Any) -> fleetprov.ProvisioningError:
    with pytest.raises(fleetprov.ProvisioningError) as err:
        call(*args)
    return err.value


# The adapter does not look at payloads, so most faults run in JSON only; the
# binary paths (a malformed or oversized answer) run in both formats.
FAULTS = [
    ("json", "CreateKeysAndCertificate", "drop", {}, fleetprov.TIMEOUT),
    ("cbor", "RegisterThing", "drop", {}, fleetprov.TIMEOUT),
    (
        "json",
        "RegisterThing",
        "reject",
        {"status_code": 500, "error_code": "InternalFailure", "error_message": "try again"},
        fleetprov.SERVER_REFUSED,
    ),
    (
        "cbor",
        "CreateCertificateFromCsr",
        "reject",
        {"status_code": 503, "error_code": "ServiceUnavailable", "error_message": "later"},
        fleetprov.SERVER_REFUSED,
    ),
    ("json", "CreateKeysAndCertificate", "malformed", {}, fleetprov.BAD_RESPONSE),
    ("cbor", "CreateKeysAndCertificate", "malformed", {}, fleetprov.BAD_RESPONSE),
    ("json", "CreateKeysAndCertificate", "oversized", {"size": 9000}, fleetprov.NO_MEMORY),
    ("cbor", "CreateKeysAndCertificate", "oversized", {"size": 9000}, fleetprov.NO_MEMORY),
    ("json", "RegisterThing", "disconnect", {}, fleetprov.MQTT_ERROR),
]


@pytest.mark.parametrize("fmt,op,kind,options,status", FAULTS, ids=lambda v: v if isinstance(v, str) else "")
def test_each_fault_reaches_the_device_through_minimqtt_as_the_documented_status(
    iotsim: RunningIotSim, links: Any, fmt: str, op: str, kind: str, options: dict[str, Any], status: int
) -> None:
    link = links(iotsim, timeout_ms=2000)
    p = fleetprov.Provisioner(link.client, fmt=fmt, timeout_ms=1500)
    token = None
    if op == "RegisterThing":
        token = p.create_keys_and_certificate(timeout_ms=30000).ownership_token
    iotsim.set_fault(op, kind, **options)
    if op == "CreateKeysAndCertificate":
        err = refused(p.create_keys_and_certificate)
    elif op == "CreateCertificateFromCsr":
        err = refused(p.create_certificate_from_csr, csr.generate("fault")[1])
    else:
        err = refused(p.register_thing, TEMPLATE, token, {"SerialNumber": serial()})
    assert err.status == status, str(err)
    assert str(err).startswith(op + ": ")
    if kind == "reject":
        assert (err.status_code, err.error_code, err.error_message) == (
            options["status_code"],
            options["error_code"],
            options["error_message"],
        )
    if kind == "oversized":
        assert "9000" in str(err) and "6144" in str(err)
    if token is not None:
        assert token not in str(err)


def test_answers_are_taken_as_soon_as_they_are_in_however_long_the_socket_timeout(
    iotsim: RunningIotSim, links: Any
) -> None:
    # MiniMQTT's loop() waits out its timeout, answer or not; check_msg() must
    # not: a single wait for this socket timeout would show in the total.
    client = links(iotsim, socket_timeout=LONG_SOCKET_TIMEOUT_S, timeout_ms=30000).client
    started = time.monotonic()
    assert client.check_msg() is None  # nothing has come
    p = fleetprov.Provisioner(client, timeout_ms=15000)
    creds = p.create_keys_and_certificate()
    reg = p.register_thing(TEMPLATE, creds.ownership_token, {"SerialNumber": serial()})
    assert reg.thing_name and iotsim.registry.status(creds.certificate_id) == "ACTIVE"
    assert time.monotonic() - started < LONG_SOCKET_TIMEOUT_S


def test_a_silent_service_times_out_at_fleetprovs_deadline_not_the_socket_timeout(
    iotsim: RunningIotSim, links: Any
) -> None:
    link = links(iotsim, socket_timeout=LONG_SOCKET_TIMEOUT_S, timeout_ms=30000)
    p = fleetprov.Provisioner(link.client, timeout_ms=1500)
    iotsim.set_fault("CreateKeysAndCertificate", "drop")
    started = time.monotonic()
    assert refused(p.create_keys_and_certificate).status == fleetprov.TIMEOUT
    assert time.monotonic() - started < LONG_SOCKET_TIMEOUT_S


class SilencingRelay:
    """A TCP relay on loopback to iotsim; once ``silent`` is set it drops what
    the broker sends: a link gone half-open, the device's bytes still leaving
    and nothing coming back. One connection; stopped by close()."""

    def __init__(self, upstream_port: int) -> None:
        self.silent = threading.Event()
        self._stop = threading.Event()
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                device, _ = self._listener.accept()
                break
            except TimeoutError:
                continue
        else:
            return
        broker = socket.create_connection(("127.0.0.1", self._upstream))
        with device, broker, selectors.DefaultSelector() as sel:
            sel.register(device, selectors.EVENT_READ, broker)
            sel.register(broker, selectors.EVENT_READ, device)
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if key.fileobj is device or not self.silent.is_set():
                        key.data.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.mark.parametrize(
    "silent_from,status",
    [("the request", fleetprov.MQTT_ERROR), ("its PUBACK", fleetprov.TIMEOUT)],
    ids=["before-puback", "after-puback"],
)
def test_a_link_that_goes_silent_ends_the_operation_within_its_timeouts(
    iotsim: RunningIotSim, silent_from: str, status: int
) -> None:
    # No PUBACK: the publish fails (MQTT_ERROR); PUBACK, then nothing: no
    # answer (TIMEOUT). Either way the unsubscribes that follow end within
    # the MQTT timeout: MiniMQTT alone waits for an UNSUBACK for ever.
    relay = SilencingRelay(iotsim.port)
    link = mmqttclient.connect("cp-" + serial(), "127.0.0.1", relay.port, str(iotsim.claim_cert),
                               str(iotsim.claim_key), iotsim.ca_path.read_text(), pool=socket,
                               socket_timeout=0.25, timeout_ms=500)
    try:
        mqtt = link.client.mqtt
        send = mqtt.publish

        def publish_then_fall_silent(*args: Any) -> None:
            if silent_from == "the request":
                relay.silent.set()
            send(*args)
            relay.silent.set()

        mqtt.publish = publish_then_fall_silent  # type: ignore[method-assign]
        p = fleetprov.Provisioner(link.client, timeout_ms=1000)
        started = time.monotonic()
        err = refused(p.create_keys_and_certificate)
        elapsed = time.monotonic() - started
    finally:
        link.close()
        relay.close()
    assert err.status == status, str(err)
    # about 2 s (the answer's 1 s, then an unsubscribe's 0.5 s + a socket timeout): never unbounded
    assert elapsed < 10, elapsed


def test_a_subscription_the_claim_policy_refuses_is_suback_0x80_as_umqtt_reports_it(
    iotsim: RunningIotSim, links: Any
) -> None:
    client = links(iotsim).client
    with pytest.raises(mmqttclient.SubscribeRefused) as err:
        client.subscribe(b"$aws/things/someone-else/shadow/get/accepted", 1)
    # fleetprov reads args[0] == 0x80 as "the claim policy must allow iot:Subscribe"
    assert err.value.args[0] == 0x80
    p = fleetprov.Provisioner(client, timeout_ms=15000)  # the link is still usable
    assert p.create_keys_and_certificate().certificate_id


def test_the_link_still_provisions_after_an_operation_timed_out(iotsim: RunningIotSim, links: Any) -> None:
    p = fleetprov.Provisioner(links(iotsim).client, fmt="cbor", timeout_ms=1500)
    iotsim.set_fault("CreateKeysAndCertificate", "delay", delay_ms=2500, times=1)
    assert refused(p.create_keys_and_certificate).status == fleetprov.TIMEOUT
    # The late answer reaches this call: before its request (read off and dropped) or after
    # it (taken: the API has no correlation token); either is a valid, unused certificate.
    second = p.create_keys_and_certificate(timeout_ms=15000)
    reg = p.register_thing(TEMPLATE, second.ownership_token, {"SerialNumber": serial()})
    assert reg.thing_name and iotsim.registry.status(second.certificate_id) == "ACTIVE"


def test_a_duplicated_answer_is_used_once_and_the_next_call_gets_a_new_certificate(
    iotsim: RunningIotSim, links: Any
) -> None:
    iotsim.set_fault("CreateKeysAndCertificate", "duplicate", times=1)
    p = fleetprov.Provisioner(links(iotsim).client, timeout_ms=15000)
    first = p.create_keys_and_certificate()
    second = p.create_keys_and_certificate()
    assert first.certificate_id != second.certificate_id
    reg = p.register_thing(TEMPLATE, second.ownership_token, {"SerialNumber": serial()})
    assert reg.thing_name and iotsim.registry.status(second.certificate_id) == "ACTIVE"


def test_messages_on_other_topics_reach_the_applications_callback_as_bytes(
    iotsim: RunningIotSim, links: Any
) -> None:
    seen: list[tuple[Any, Any]] = []
    client = links(iotsim).client
    client.set_callback(lambda topic, msg: seen.append((topic, msg)))
    topic = b"$aws/provisioning-templates/FleetprovDemo/provision/json/accepted"
    client.subscribe(topic, 1)
    p = fleetprov.Provisioner(client, timeout_ms=15000)
    p.create_keys_and_certificate()
    p.close()
    assert client.cb is not None and client.cb is not p._on_message  # the callback is given back
    assert seen == []  # nothing but fleetprov's own answers arrived


def test_timeouts_shorter_than_the_socket_timeout_are_refused_before_connecting(
    iotsim: RunningIotSim,
) -> None:
    with pytest.raises(ValueError, match="socket timeout"):
        claim_link(iotsim, "cp-short", socket_timeout=1, timeout_ms=1000)


def test_a_server_signed_by_another_ca_is_not_trusted(iotsim: RunningIotSim, tmp_path: Path) -> None:
    from tools.iotsim import pki

    pki.CertificateAuthority.load_or_create(tmp_path)  # another CA, in tmp_path/ca.pem
    with pytest.raises(mqttlink.ConnectError) as err:
        mmqttclient.connect(
            "cp-ca",
            "127.0.0.1",
            iotsim.port,
            str(iotsim.claim_cert),
            str(iotsim.claim_key),
            (tmp_path / "ca.pem").read_text(),
            pool=socket,
        )
    assert not err.value.refused and "127.0.0.1:{}".format(iotsim.port) in str(err.value)


def test_a_revoked_certificate_is_refused_with_its_connack_code(
    iotsim: RunningIotSim, links: Any, tmp_path: Path
) -> None:
    p = fleetprov.Provisioner(links(iotsim).client, timeout_ms=15000)
    creds = p.create_keys_and_certificate()
    reg = p.register_thing(TEMPLATE, creds.ownership_token, {"SerialNumber": serial()})
    p.close()
    files = write_identity(tmp_path, creds.certificate_pem, pem_to_der(creds.private_key))
    iotsim.registry.revoke(creds.certificate_id)
    with pytest.raises(mqttlink.ConnectError) as err:
        connects_as_itself(iotsim, reg.thing_name, *files)
    assert err.value.refused and err.value.code in (4, 5), str(err.value)


def test_a_key_given_as_bytes_is_never_quoted_in_the_error() -> None:
    # CircuitPython's ssl loads files by path; bytes handed in by mistake must
    # not put key material into the log the error reaches.
    key = b"-----BEGIN EC PRIVATE KEY-----\nSECRETSECRETSECRET\n-----END EC PRIVATE KEY-----\n"
    with pytest.raises(mqttlink.ConnectError, match="cannot load the TLS files") as got:
        mmqttclient.connect("c", "127.0.0.1", 1, b"not a path", key, "", pool=socket)
    assert "SECRET" not in str(got.value) and "<{} bytes, not a path>".format(len(key)) in str(got.value)
