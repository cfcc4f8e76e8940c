"""pytest fixtures for iotsim (a pytest plugin: ``pytest_plugins = ["tools.iotsim.testing"]``).

Fixtures:

- ``iotsim``: a running iotsim (broker + service) on a free port with its state
  in a temporary folder. One instance serves a whole test module; before each
  test its faults, throttling and hook are cleared and its clock reset, so
  tests do not see each other's settings. Attributes: ``port``, ``state``,
  ``ca_path``/``ca_der``, ``claim_cert``/``claim_key`` (PEM paths),
  ``claim_cert_der``/``claim_key_der``, ``registry``, ``service``,
  ``templates``, ``clock``; helpers ``set_fault(op, kind, **kw)``,
  ``clear_faults()``, ``set_throttle(tps, op=None)``, ``set_hook(hook)``,
  ``client(...)`` (a connected paho test client) and ``request(...)``;
  ``api_url`` (the AWS IoT control plane), ``controlplane`` and
  ``iot_client()`` (a boto3 client on it).
- ``iotsim_factory``: starts extra, independent instances
  (``iotsim_factory(state=None, **IotSim kwargs)``), stopped at teardown.

Also usable without pytest: :class:`MqttTestClient`, :func:`running_iotsim`, and for
tests that provision by hand :func:`make_csr`, :func:`write_identity`,
:func:`provision_csr`, :func:`register` and :class:`Device` (a provisioned demo device), and for a
rotation :func:`new_certificate`, :func:`register_rotation` and :func:`retire`.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import cbor2
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .broker import free_port
from .service import HOOK_TIMEOUT
from .stack import IotSim
from .templates import DEMO_TEMPLATE_NAME, ROTATION_TEMPLATE_NAME

DEFAULT_TIMEOUT = 15.0
CONNECT_RETRY_S = 0.25  # the pause before connecting again after a close before CONNACK


def make_csr(key: Any, cn: str = "device-1") -> str:
    """A PEM certificate signing request for ``key`` (a cryptography private key)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def write_identity(folder: Path, name: str, cert_pem: str, key: Any) -> tuple[Path, Path]:
    """``<name>.pem`` and ``<name>.key.pem`` (PKCS#8) in folder: a device identity for a client."""
    cert_path, key_path = folder / "{}.pem".format(name), folder / "{}.key.pem".format(name)
    cert_path.write_text(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def register_topic(template: str = DEMO_TEMPLATE_NAME) -> str:
    return "$aws/provisioning-templates/{}/provision/json".format(template)


def provision_csr(client: MqttTestClient, key: Any) -> dict[str, Any]:
    """CreateCertificateFromCsr over ``client`` for ``key``: the accepted answer."""
    outcome, body = client.request(
        "$aws/certificates/create-from-csr/json", {"certificateSigningRequest": make_csr(key, "device")}
    )
    assert outcome == "accepted", body
    return body


def register(
    client: MqttTestClient, token: str, params: dict[str, str] | None = None, template: str = DEMO_TEMPLATE_NAME
) -> tuple[str, Any]:
    """RegisterThing over ``client``: (accepted|rejected, answer)."""
    payload: dict[str, Any] = {"certificateOwnershipToken": token}
    if params is not None:
        payload["parameters"] = params
    return client.request(register_topic(template), payload)


class Identity(NamedTuple):
    """A certificate made over MQTT, its files, and its ownership token."""

    certificate_id: str
    cert: Path
    key: Path
    token: str


def new_certificate(client: MqttTestClient, folder: Path, name: str) -> Identity:
    """CreateCertificateFromCsr over ``client``: a new P-256 key and certificate, still pending."""
    key = ec.generate_private_key(ec.SECP256R1())
    body = provision_csr(client, key)
    cert, key_path = write_identity(folder, name, body["certificatePem"], key)
    return Identity(body["certificateId"], cert, key_path, body["certificateOwnershipToken"])


def register_rotation(client: MqttTestClient, token: str, thing: str, template: str = ROTATION_TEMPLATE_NAME
                      ) -> tuple[str, Any]:
    """RegisterThing with the rotation template: the new certificate on ``thing`` (docs/rotation.md)."""
    return register(client, token, {"ThingName": thing}, template=template)


def retire(client: MqttTestClient, thing: str, certificate_id: Any) -> tuple[str, Any]:
    """The retire request a rotated device makes: (accepted|rejected, answer)."""
    return client.request("fleetprov/{}/retire".format(thing), {"certificateId": certificate_id})


class Clock:
    """Wall clock plus an adjustable offset: ``advance(s)`` moves tokens towards expiry."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def reset(self) -> None:
        self.offset = 0.0


class ConnectRefused(Exception):
    """The broker refused the connection (CONNACK failure or TLS/socket error)."""


class MqttTestClient:
    """A paho-mqtt client for tests: blocking connect/subscribe/publish and a message queue.

    Every wait is bounded by ``timeout`` seconds.
    """

    def __init__(
        self,
        port: int,
        ca_path: Path,
        cert_path: Path,
        key_path: Path,
        client_id: str = "",
        *,
        host: str = "127.0.0.1",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.port = port
        self.host = host
        self.timeout = timeout
        self.client_id = client_id or "test-{}".format(id(self))
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._connect_reason: Any = None
        self._acks: dict[int, threading.Event] = {}
        self._suback: dict[int, list[Any]] = {}
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        c.tls_set(ca_certs=str(ca_path), certfile=str(cert_path), keyfile=str(key_path))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        self.paho = c

    # -- callbacks ----------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, ud: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connect_reason = reason
        if reason.is_failure:
            self._disconnected.set()
        else:
            self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, ud: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        self._disconnected.set()

    def _on_message(self, client: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, bytes(msg.payload)))

    def _ack(self, mid: int) -> threading.Event:
        with self._lock:
            return self._acks.setdefault(mid, threading.Event())

    def _on_subscribe(self, client: mqtt.Client, ud: Any, mid: int, reasons: Any, props: Any) -> None:
        self._suback[mid] = list(reasons)
        self._ack(mid).set()

    def _on_publish(self, client: mqtt.Client, ud: Any, mid: int, reason: Any, props: Any) -> None:
        self._ack(mid).set()

    # -- operations -------------------------------------------------------------------

    def connect(self, *, retry_closed: bool = True) -> MqttTestClient:
        """Connect; raises ConnectRefused when the broker refuses (e.g. an inactive certificate).

        A connection closed before CONNACK is tried again until ``timeout`` (unless
        ``retry_closed`` is false), as a device backs off and retries: that is how
        AWS's one CONNECT per second per client id turns a quick reconnect away
        (docs/iotsim.md, quotas)."""
        deadline = time.monotonic() + self.timeout
        while not self._connect_once(deadline):
            if not retry_closed or time.monotonic() >= deadline:
                raise ConnectRefused("closed before CONNACK until the {} s time limit".format(self.timeout))
            self._disconnected.wait(CONNECT_RETRY_S)  # cleared by _connect_once: a plain pause
        return self

    def _connect_once(self, deadline: float) -> bool:
        """One attempt: True when connected, False when closed before CONNACK."""
        self._disconnected.clear()
        self._connect_reason = None
        try:
            self.paho.connect(self.host, self.port, keepalive=60)
        except OSError as exc:
            raise ConnectRefused("TLS/socket error: {}".format(exc)) from exc
        # No automatic reconnect: a test must see a refused or kicked connection.
        self.paho.reconnect_delay_set(3600, 3600)
        self.paho.loop_start()
        while time.monotonic() < deadline:
            if self._connected.wait(0.05):
                return True
            if self._disconnected.is_set():
                self.paho.loop_stop()
                if self._connect_reason is None:
                    self._disconnected.clear()
                    return False
                raise ConnectRefused("broker refused the connection: {}".format(self._connect_reason))
        self.paho.loop_stop()
        raise ConnectRefused("no CONNACK within {} s".format(self.timeout))

    def subscribe(self, *topics: str, qos: int = 1) -> list[int]:
        """Subscribe and wait for the SUBACK; returns the granted QoS per topic (128 = refused)."""
        result, mid = self.paho.subscribe([(t, qos) for t in topics])
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError("subscribe failed: {}".format(result))
        if not self._ack(mid).wait(self.timeout):
            raise TimeoutError("no SUBACK for {} within {} s".format(topics, self.timeout))
        return [r.value for r in self._suback[mid]]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, wait: bool = True) -> None:
        info = self.paho.publish(topic, payload, qos=qos)
        if wait and qos > 0 and not self._ack(info.mid).wait(self.timeout):
            raise TimeoutError("no PUBACK for {} within {} s".format(topic, self.timeout))

    def expect(self, timeout: float | None = None) -> tuple[str, bytes]:
        """The next message (topic, payload); TimeoutError when none arrives in time."""
        try:
            return self.messages.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise TimeoutError("no message within {} s".format(timeout or self.timeout)) from None

    def wait_disconnected(self, timeout: float | None = None) -> bool:
        return self._disconnected.wait(self.timeout if timeout is None else timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def request(
        self, topic: str, payload: Any = b"", fmt: str | None = None, timeout: float | None = None
    ) -> tuple[str, Any]:
        """Subscribe to ``topic``'s accepted/rejected, publish, return (outcome, decoded body)."""
        fmt = fmt or topic.rsplit("/", 1)[-1]
        self.subscribe(topic + "/accepted", topic + "/rejected")
        if not isinstance(payload, (bytes, str)):
            payload = cbor2.dumps(payload) if fmt == "cbor" else json.dumps(payload).encode()
        self.publish(topic, payload)
        got_topic, body = self.expect(timeout)
        outcome = got_topic.rsplit("/", 1)[-1]
        if got_topic != "{}/{}".format(topic, outcome):
            raise AssertionError("reply on unexpected topic {!r} for request {!r}".format(got_topic, topic))
        return outcome, (cbor2.loads(body) if fmt == "cbor" else json.loads(body))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.paho.disconnect()
        self.paho.loop_stop()

    def __enter__(self) -> MqttTestClient:
        return self if self.connected else self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunningIotSim:
    """What the ``iotsim`` fixture yields: a started :class:`IotSim` plus helpers."""

    def __init__(self, sim: IotSim, clock: Clock) -> None:
        self.sim = sim
        self.clock = clock

    # What the fixture passes through from the IotSim (read when asked, so a restarted
    # service or control plane is seen): attribute -> (object, attribute) under sim.
    _PASSED: dict[str, tuple[str | None, str]] = {
        "port": (None, "port"),
        "state": (None, "state"),
        "ca_path": (None, "ca_path"),
        "ca_der": (None, "ca_der"),
        "registry": (None, "registry"),
        "service": (None, "service"),
        "templates": (None, "templates"),
        "controlplane": (None, "controlplane"),
        "api_url": (None, "api_url"),  # the control plane's endpoint URL (boto3 endpoint_url=)
        "claim_cert": ("claim", "cert_path"),  # the claim identity, PEM and DER
        "claim_key": ("claim", "key_path"),
        "claim_cert_der": ("claim", "cert_der_path"),
        "claim_key_der": ("claim", "key_der_path"),
        "claim_id": ("claim", "certificate_id"),
    }

    def __getattr__(self, name: str) -> Any:
        try:
            owner, attr = self._PASSED[name]
        except KeyError:
            raise AttributeError(name) from None
        holder = self.sim if owner is None else getattr(self.sim, owner)
        assert holder is not None, "iotsim has no {} yet".format(owner)
        return getattr(holder, attr)

    def iot_client(self, *, validate: bool = True, service: str = "iot") -> Any:
        """A boto3 client (``iot``, or ``iam``) on this iotsim's control plane, signed with its key.

        ``validate=False`` turns off botocore's own parameter checks, so that bad
        input reaches iotsim as it would from a client that does not check.
        """
        import boto3  # only the control-plane tests need it
        from botocore.config import Config

        assert self.sim.credentials is not None
        return boto3.client(
            service,
            endpoint_url=self.api_url,
            region_name=self.sim.region,
            aws_access_key_id=self.sim.credentials.access_key,
            aws_secret_access_key=self.sim.credentials.secret_key,
            config=Config(parameter_validation=validate, retries={"max_attempts": 1}),
        )

    def set_fault(self, op: str, kind: str, **options: Any) -> Any:
        return self.sim.service.set_fault(op, kind, **options)  # type: ignore[union-attr]

    def clear_faults(self, op: str | None = None) -> None:
        self.sim.service.clear_faults(op)  # type: ignore[union-attr]

    def set_throttle(self, tps: float | None, op: str | None = None, burst: float | None = None) -> None:
        self.sim.service.set_throttle(tps, op, burst)  # type: ignore[union-attr]

    def set_hook(self, hook: Callable[..., Any] | str | None) -> None:
        self.sim.service.set_hook(hook)  # type: ignore[union-attr]

    def reset(self) -> None:
        """Clear faults and the hook (and its time limit), throttling back to AWS's rates
        (or the instance's ``tps``); reset the clock."""
        if self.sim.service is not None:
            self.clear_faults()
            self.sim.service.restore_throttle()
            self.set_hook(None)
            self.sim.service.hook_timeout = HOOK_TIMEOUT
        if self.sim.controlplane is not None:
            # Lambda functions a test mapped: back to what the instance was started with.
            self.sim.controlplane.lambdas = dict(self.sim.lambdas)
        self.clock.reset()

    def client(
        self,
        client_id: str = "",
        cert: Path | None = None,
        key: Path | None = None,
        *,
        connect: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> MqttTestClient:
        """A paho client (the claim identity unless ``cert``/``key`` are given), connected."""
        c = MqttTestClient(
            self.port,
            self.ca_path,
            cert or self.claim_cert,
            key or self.claim_key,
            client_id,
            timeout=timeout,
        )
        return c.connect() if connect else c


class Device:
    """A device provisioned with the demo template by CSR over ``claim``: thing fleetprov-<serial>,
    its certificate and key files in ``folder``."""

    def __init__(self, iotsim: RunningIotSim, claim: MqttTestClient, folder: Path, serial: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        body = provision_csr(claim, key)
        outcome, reg = register(claim, body["certificateOwnershipToken"], {"SerialNumber": serial})
        assert outcome == "accepted", reg
        self.iotsim = iotsim
        self.thing = reg["thingName"]
        self.certificate_id = body["certificateId"]
        self.cert, self.key = write_identity(folder, serial, body["certificatePem"], key)

    def client(self, client_id: str | None = None) -> MqttTestClient:
        return self.iotsim.client(client_id or self.thing, self.cert, self.key)

    def rotate(self, folder: Path, name: str) -> Identity:
        """A whole rotation at the MQTT level (docs/rotation.md): a new certificate registered
        over the thing's connection, then the old one retired over the new one's. The new identity."""
        with self.client() as old:
            new = new_certificate(old, folder, name)
            outcome, body = register_rotation(old, new.token, self.thing)
            assert outcome == "accepted", body
        with self.iotsim.client(self.thing, new.cert, new.key) as current:
            outcome, body = retire(current, self.thing, self.certificate_id)
            assert outcome == "accepted", body
        return new


@contextlib.contextmanager
def running_iotsim(state: Path | None = None, **kwargs: Any) -> Iterator[RunningIotSim]:
    """Start iotsim on a free port (state in a new temporary folder unless given); stop it after."""
    owned = state is None
    folder = Path(tempfile.mkdtemp(prefix="iotsim-")) if state is None else Path(state)
    clock = kwargs.pop("clock", None) or Clock()
    sim: IotSim | None = None
    try:
        last: Exception | None = None
        for _ in range(3):  # a free port can be taken between probe and bind
            sim = IotSim(folder, kwargs.pop("port", None) or free_port(), clock=clock, **kwargs)
            try:
                sim.start()
                break
            except RuntimeError as exc:
                last = exc
                sim = None
        if sim is None:
            raise RuntimeError("iotsim did not start: {}".format(last))
        yield RunningIotSim(sim, clock)
    finally:
        if sim is not None:
            sim.stop()
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def iotsim_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIotSim]:
    """One iotsim per test module (use ``iotsim``, which also resets it per test)."""
    with running_iotsim(tmp_path_factory.mktemp("iotsim")) as sim:
        yield sim


@pytest.fixture
def iotsim(iotsim_module: RunningIotSim) -> Iterator[RunningIotSim]:
    """A running iotsim with no faults, no throttling, no hook and a real clock."""
    iotsim_module.reset()
    yield iotsim_module
    iotsim_module.reset()


@pytest.fixture
def iotsim_factory(tmp_path: Path) -> Iterator[Callable[..., RunningIotSim]]:
    """Start independent iotsim instances: ``iotsim_factory(state=None, **IotSim kwargs)``."""
    stack = contextlib.ExitStack()
    count = 0

    def start(state: Path | None = None, **kwargs: Any) -> RunningIotSim:
        nonlocal count
        count += 1
        return stack.enter_context(running_iotsim(state or tmp_path / "iotsim{}".format(count), **kwargs))

    with stack:
        yield start
