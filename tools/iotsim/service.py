"""iotsim's provisioning service: AWS IoT fleet provisioning over MQTT.

The broker plugin forwards every device's ``$aws/...`` publish to
``iotsim/req/<hex(client id)>/<connection>/<certificateId>/<original topic>``;
this service (a paho-mqtt client with the SERVICE identity) answers each
request on ``iotsim/reply/<hex(client id)>/<connection>/<original
topic>/accepted|rejected``, which the plugin delivers to that one connection
only — AWS's per-connection delivery. ``<connection>`` is the plugin's serial
number of the connection that asked: a later connection that takes over the
client id never receives the answer.

Operations (``<fmt>`` is ``json`` or ``cbor``):

- ``$aws/certificates/create/<fmt>``: CreateKeysAndCertificate (RSA-2048 key,
  made in a process pool because key generation is CPU-bound and holds the GIL);
- ``$aws/certificates/create-from-csr/<fmt>``: CreateCertificateFromCsr;
- ``$aws/provisioning-templates/<name>/provision/<fmt>``: RegisterThing.

The plugin also forwards a copy of every other message a device publishes
(outside ``$aws/``) on ``iotsim/rule/<hex(client id)>/<connection>/<certificateId>/
<topic>``: the service hands it to the rules engine (``rule_sink``, installed by
the stack: tools/iotsim/rules.py), and ``publish()`` sends what a Lambda function
publishes through iot-data (tools/iotsim/dataplane.py).

Also here: the pre-provisioning hook, per-operation throttling (token bucket)
and fault injection for tests. Payloads, private keys and ownership tokens are
never logged.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import json
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import pki, shapes, untrusted
from .keygen import KeygenPool
from .registry import ConflictError, Registry, ResourceError, TokenError
from .templates import TEMPLATE_NAME, Rejection, TemplateStore

log = logging.getLogger("iotsim.service")

CREATE_KEYS = "CreateKeysAndCertificate"
CREATE_FROM_CSR = "CreateCertificateFromCsr"
REGISTER_THING = "RegisterThing"
OPERATIONS = (CREATE_KEYS, CREATE_FROM_CSR, REGISTER_THING)
_ALIASES = {
    "keys": CREATE_KEYS,
    "create_keys": CREATE_KEYS,
    "createkeysandcertificate": CREATE_KEYS,
    "csr": CREATE_FROM_CSR,
    "create_from_csr": CREATE_FROM_CSR,
    "createcertificatefromcsr": CREATE_FROM_CSR,
    "register": REGISTER_THING,
    "register_thing": REGISTER_THING,
    "registerthing": REGISTER_THING,
}

REQUEST_PREFIX = "iotsim/req/"
RULE_PREFIX = "iotsim/rule/"
REPLY_PREFIX = "iotsim/reply/"
KICK_PREFIX = "iotsim/kick/"

# errorCode strings (AWS documents the rejected payload's fields, and
# InvalidCertificateOwnershipToken is what AWS sends for token problems; the
# other codes are iotsim's choice, listed in docs/iotsim.md).
INVALID_TOKEN = "InvalidCertificateOwnershipToken"
INVALID_PAYLOAD = "InvalidPayload"
INVALID_CSR = "InvalidCsr"
ACCESS_DENIED = "AccessDenied"
THROTTLED = "ThrottlingException"
INTERNAL_FAILURE = "InternalFailure"
INJECTED = "InjectedFault"
RESOURCE_REGISTRATION_FAILURE = "ResourceRegistrationFailure"

# The rates the three operations are throttled to by default, per second (token
# buckets, bursts of as many). AWS's API throttling limits ("AWS IoT Core endpoints
# and quotas", AWS IoT throttling limits) give CreateCertificateFromCsr 15 and
# RegisterThing 10 transactions per second per account; they list a
# CreateKeysAndCertificate quota but no number iotsim could find, so its 10 is
# iotsim's choice. `up --tps N` sets N for all three, `--tps 0` turns them off.
AWS_TPS = {CREATE_KEYS: 10.0, CREATE_FROM_CSR: 15.0, REGISTER_THING: 10.0}

HOOK_TIMEOUT = 5.0
TEMPLATE_ARN = "arn:aws:iot:{region}:{account}:provisioningtemplate/{name}"
# AWS signs device certificates with this subject; the CSR flow keeps the CSR's CN.
DEVICE_COMMON_NAME = "AWS IoT Certificate"
EC_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 2048

FAULT_KINDS = ("drop", "delay", "reject", "malformed", "oversized", "duplicate", "disconnect")


def operation_name(op: str) -> str:
    """Normalise an operation name ("RegisterThing", "register", "csr", ...)."""
    if op in OPERATIONS:
        return op
    found = _ALIASES.get(op.lower().replace("-", "_"))
    if found is None:
        raise ValueError("unknown operation {!r}; use one of {}".format(op, ", ".join(OPERATIONS)))
    return found


@dataclass
class Fault:
    """An injected misbehaviour for one operation.

    kind: drop | delay | reject | malformed | oversized | duplicate | disconnect.
    ``times``: how many requests it applies to (None: until cleared).
    """

    kind: str
    delay_ms: int = 0
    status_code: int = 500
    error_code: str = INJECTED
    error_message: str = "iotsim injected this failure"
    size: int = 65536
    topic: str = "accepted"
    times: int | None = None


class TokenBucket:
    """Token bucket: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("throttle rate must be positive requests per second, got {}".format(rate))
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


@dataclass
class Request:
    client_hex: str
    connection: str  # the plugin's serial number of the requesting connection
    client_id: str
    requester: str  # certificateId of the connection that published
    topic: str  # original $aws/... topic
    operation: str
    fmt: str
    template: str | None
    payload: bytes
    received: float = field(default_factory=time.monotonic)


def parse_request_topic(topic: str, prefix: str = REQUEST_PREFIX) -> tuple[str, str, str, str] | None:
    """Split ``<prefix><hexclient>/<connection>/<certId>/<topic>`` (``iotsim/req/`` or
    ``iotsim/rule/``); None when it is not one."""
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/", 3)
    if len(parts) != 4 or not all(parts) or not parts[1].isdigit():
        return None
    return parts[0], parts[1], parts[2], parts[3]


def classify(topic: str) -> tuple[str, str, str | None] | None:
    """Map a ``$aws`` request topic to (operation, format, template); None if not one."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[:2] == ["$aws", "certificates"] and parts[3] in ("json", "cbor"):
        if parts[2] == "create":
            return CREATE_KEYS, parts[3], None
        if parts[2] == "create-from-csr":
            return CREATE_FROM_CSR, parts[3], None
    if (
        len(parts) == 5
        and parts[:2] == ["$aws", "provisioning-templates"]
        and parts[3] == "provision"
        and parts[4] in ("json", "cbor")
        and TEMPLATE_NAME.match(parts[2])
    ):
        return REGISTER_THING, parts[4], parts[2]
    return None


def load_hook(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (e.g. ``mypkg.hooks:allow_serials``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("hook must be given as module:function, got {!r}".format(spec))
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError("hook {!r} is not callable".format(spec))
    return target


def call_bounded(fn: Callable[[], Any], timeout: float, name: str) -> tuple[bool, Any]:
    """``fn()`` in a daemon thread of its own, waited for at most ``timeout`` seconds: (True, its
    result) or (False, what it raised); TimeoutError when it has not returned by then. A call
    that never returns costs one parked thread, not a worker of the caller's pool."""
    results: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            results.put((True, fn()))
        except BaseException as exc:  # reported to the caller
            results.put((False, exc))

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return results.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(name) from None


def _call_hook(hook: Callable[..., Any], event: dict[str, Any]) -> Any:
    # A Lambda handler takes (event, context); a plain function may take (event).
    try:
        params = inspect.signature(hook).parameters
        positional = [
            p
            for p in params.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        takes_context = len(positional) >= 2
    except (TypeError, ValueError):
        takes_context = False
    return hook(event, None) if takes_context else hook(event)


class ProvisioningService:
    """The provisioning service; connect it to a running iotsim broker with :meth:`start`.

    ``identity``: the SERVICE client identity (pki.ClientIdentity);
    ``ca_path``: the CA that signs the broker's certificate;
    ``hook``: a callable or "module:function" string (pre-provisioning hook);
    ``tps``: throttle every operation to this many requests per second (None: AWS's
    rates, :data:`AWS_TPS`; 0: no throttling).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ca: pki.CertificateAuthority,
        ca_path: Path,
        identity: pki.ClientIdentity,
        registry: Registry,
        templates: TemplateStore,
        hook: Callable[..., Any] | str | None = None,
        hook_timeout: float = HOOK_TIMEOUT,
        tps: float | None = None,
        workers: int = 8,
        keygen_processes: int | None = None,
        client_id: str = "iotsim-service",
        sweep_interval: float = 60.0,
        region: str = "local",
        account: str = "000000000000",
        cert_days: int = pki.DEFAULT_DAYS,
    ) -> None:
        # The broker, and the identity the service connects with (start()).
        self.host, self.port, self.client_id = host, port, client_id
        self.ca, self.ca_path, self.identity = ca, Path(ca_path), identity
        self.registry, self.templates = registry, templates
        self.hook_timeout, self.sweep_interval = hook_timeout, sweep_interval
        self.region, self.account = region, account  # of the template ARN a hook sees
        self.cert_days = cert_days  # the validity of the certificates it issues
        self._hook: Callable[..., Any] | None = None
        self.set_hook(hook)
        self._faults: dict[str, Fault] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        self._default_tps = dict(AWS_TPS) if tps is None else {op: tps for op in OPERATIONS}
        self.restore_throttle()
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._workers = workers
        self._keygen_processes = keygen_processes or os.cpu_count() or 1
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._keys_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._keygen: KeygenPool | None = None
        self._client: mqtt.Client | None = None
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._timers: set[threading.Timer] = set()
        self._sub_mid: int | None = None
        # template name -> (enabled, hook or None); the control plane installs it.
        self.template_settings: Callable[[str], tuple[bool, Callable[..., Any] | None]] | None = None
        # (topic, payload, certificateId, client id) of a device's message -> the rules engine.
        self.rule_sink: Callable[[str, bytes, str, str], Any] | None = None

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    # -- configuration at runtime (tests) -------------------------------------------

    def set_hook(self, hook: Callable[..., Any] | str | None) -> None:
        """Install (or with None remove) the pre-provisioning hook."""
        self._hook = load_hook(hook) if isinstance(hook, str) else hook

    def set_fault(self, op: str, kind: str, **options: Any) -> Fault:
        """Inject a fault into operation ``op`` (see :class:`Fault` for the options)."""
        if kind not in FAULT_KINDS:
            raise ValueError("unknown fault kind {!r}; use one of {}".format(kind, ", ".join(FAULT_KINDS)))
        fault = Fault(kind=kind, **options)
        if fault.topic not in ("accepted", "rejected"):
            raise ValueError("fault topic must be 'accepted' or 'rejected', got {!r}".format(fault.topic))
        with self._lock:
            self._faults[operation_name(op)] = fault
        return fault

    def clear_faults(self, op: str | None = None) -> None:
        with self._lock:
            if op is None:
                self._faults.clear()
            else:
                self._faults.pop(operation_name(op), None)

    def set_throttle(self, tps: float | None, op: str | None = None, burst: float | None = None) -> None:
        """Throttle ``op`` (or every operation) to ``tps`` requests/s; None turns it off."""
        ops = OPERATIONS if op is None else (operation_name(op),)
        with self._lock:
            for name in ops:
                if tps:
                    self._buckets[name] = TokenBucket(tps, burst)
                else:
                    self._buckets.pop(name, None)

    def throttle_rates(self) -> dict[str, float]:
        """Each throttled operation's rate, requests per second."""
        with self._lock:
            return {op: bucket.rate for op, bucket in self._buckets.items()}

    def restore_throttle(self) -> None:
        """Back to the rates the service was started with (AWS's unless ``tps`` said otherwise)."""
        for op, tps in self._default_tps.items():
            self.set_throttle(tps or None, op)

    def _take_fault(self, op: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(op)
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[op]
            return fault

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Connect to the broker and subscribe; returns once requests can be served."""
        self._stopping.clear()
        self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="iotsim-req")
        # CreateKeysAndCertificate requests mostly wait for a key: they get
        # their own threads, so a burst of them never delays RegisterThing.
        self._keys_pool = concurrent.futures.ThreadPoolExecutor(
            2 * self._keygen_processes, thread_name_prefix="iotsim-keys"
        )
        self._keygen = KeygenPool(self._keygen_processes)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.tls_set(
            ca_certs=str(self.ca_path),
            certfile=str(self.identity.cert_path),
            keyfile=str(self.identity.key_path),
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(0.05, 1.0)
        self._client = client
        self._subscribed.clear()
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(
                "the provisioning service could not connect and subscribe to the broker at {}:{} "
                "within {:.0f} s; check that mosquitto runs and that principals/{} says "
                "status SERVICE".format(
                    self.host, self.port, timeout, self.identity.certificate_id
                )
            )
        self._sweeper = threading.Thread(target=self._sweep, name="iotsim-sweep", daemon=True)
        self._sweeper.start()
        log.info("provisioning service connected to %s:%d", self.host, self.port)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            timers = list(self._timers)
            self._timers.clear()
        for t in timers:
            t.cancel()
        for pool in (self._pool, self._keys_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._keys_pool = None
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        keygen, self._keygen = self._keygen, None
        if keygen is not None:
            keygen.close()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.join(timeout=5)

    def __enter__(self) -> ProvisioningService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sweep(self) -> None:
        while not self._stopping.wait(self.sweep_interval):
            try:
                gone = self.registry.expire_pending()
                if gone:
                    log.info("deleted %d certificates whose ownership token expired", len(gone))
            except Exception:  # the sweep must never kill the service
                log.exception("expiring pending certificates failed")

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the service connection: %s", reason)
            return
        # A request's PUBACK and its reply are two small writes in a row: with
        # Nagle's algorithm the second waits for the broker's delayed ACK (40 ms).
        sock = client.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        result, mid = client.subscribe([(REQUEST_PREFIX + "#", 1), (RULE_PREFIX + "#", 1)])
        self._sub_mid = mid

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid == self._sub_mid and reasons and not any(r.is_failure for r in reasons):
            self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._subscribed.clear()
        if not self._stopping.is_set():
            log.warning("service lost its broker connection (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        rule = msg.topic.startswith(RULE_PREFIX)
        parsed = parse_request_topic(msg.topic, RULE_PREFIX if rule else REQUEST_PREFIX)
        if parsed is None:
            return
        client_hex, connection, requester, topic = parsed
        try:
            client_id = bytes.fromhex(client_hex).decode("utf-8", "replace")
        except ValueError:
            log.warning("ignoring a request with a malformed client id field %r", client_hex[:80])
            return
        if rule:
            self._to_rules(topic, bytes(msg.payload), requester, client_id)
            return
        kind = classify(topic)
        if kind is None:
            # Another $aws API (shadow, jobs...) or a malformed provisioning topic:
            # AWS answers neither on the provisioning response topics.
            self._count("ignored")
            log.debug("ignoring %s from %s", topic, client_id)
            return
        op, fmt, template = kind
        req = Request(client_hex, connection, client_id, requester, topic, op, fmt, template, bytes(msg.payload))
        self._count("requests")
        self._count("requests." + op)
        pool = self._pool
        if pool is None:
            return
        fault = self._take_fault(op)
        if fault is not None and fault.kind == "delay":
            self._later(fault.delay_ms / 1000.0, lambda: self._submit(req, None))
            return
        self._submit(req, fault)

    def _to_rules(self, topic: str, payload: bytes, principal: str, client_id: str) -> None:
        sink, pool = self.rule_sink, self._pool
        if sink is None or pool is None or self._stopping.is_set():
            return
        self._count("rule messages")
        try:
            pool.submit(sink, topic, payload, principal, client_id)
        except RuntimeError:  # shutting down
            pass

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish as AWS IoT itself (iot-data Publish): to every subscriber the broker lets receive it."""
        client = self._client
        if client is None or client.publish(topic, payload, qos=qos, retain=retain).rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError("the service is not connected to the broker")

    def _submit(self, req: Request, fault: Fault | None) -> None:
        pool = self._keys_pool if req.operation == CREATE_KEYS else self._pool
        if pool is None or self._stopping.is_set():
            return
        try:
            pool.submit(self._handle, req, fault)
        except RuntimeError:  # shutting down
            pass

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            with self._lock:
                self._timers.discard(timer)
            fn()

        timer = threading.Timer(delay, run)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    # -- request handling (worker threads) ---------------------------------------------

    def _handle(self, req: Request, fault: Fault | None) -> None:
        try:
            if fault is not None and self._apply_fault(req, fault):
                return
            bucket = self._buckets.get(req.operation)
            if bucket is not None and not bucket.take():
                raise Rejection(
                    429,
                    THROTTLED,
                    "Rate exceeded for {}: iotsim allows {:g} requests per second; retry later "
                    "with backoff".format(req.operation, bucket.rate),
                )
            if req.operation == CREATE_KEYS:
                body = self._create_keys(req)
            elif req.operation == CREATE_FROM_CSR:
                body = self._create_from_csr(req)
            else:
                body = self._register_thing(req)
            self._reply(req, "accepted", self._encode(req.fmt, body))
            if fault is not None and fault.kind == "duplicate":
                self._reply(req, "accepted", self._encode(req.fmt, body))
            self._count("accepted." + req.operation)
            log.info("%s accepted for client %s", req.operation, req.client_id)
        except Rejection as rej:
            self._reject(req, rej.status_code, rej.error_code, rej.message)
            if fault is not None and fault.kind == "duplicate":
                self._reject(req, rej.status_code, rej.error_code, rej.message)
        except Exception:
            log.exception("%s from client %s failed inside iotsim", req.operation, req.client_id)
            self._reject(
                req, 500, INTERNAL_FAILURE, "iotsim failed to process the request; see the service log"
            )

    def _apply_fault(self, req: Request, fault: Fault) -> bool:
        """Carry out a fault that replaces the reply; False for duplicate (handled later)."""
        kind = fault.kind
        self._count("fault." + kind)
        log.info("injecting fault %s into %s for client %s", kind, req.operation, req.client_id)
        if kind == "drop":
            return True
        if kind == "reject":
            self._reject(req, fault.status_code, fault.error_code, fault.error_message)
            return True
        if kind == "malformed":
            bad = b'{"certificateId": "trunc' if req.fmt == "json" else b"\xa2\x6dcertificateId\x78\x40abc"
            self._reply(req, fault.topic, bad)
            return True
        if kind == "oversized":
            self._reply(req, fault.topic, self._oversized(req.fmt, fault.size))
            return True
        if kind == "disconnect":
            client = self._client
            if client is not None:
                client.publish("{}{}/{}".format(KICK_PREFIX, req.client_hex, req.connection), b"", qos=1)
            return True
        return False

    @staticmethod
    def _oversized(fmt: str, size: int) -> bytes:
        """A well-formed response of exactly ``size`` bytes (when size allows)."""
        if fmt == "json":
            head, tail = b'{"certificateId": "', b'"}'
            return head + b"x" * max(0, size - len(head) - len(tail)) + tail
        body = cbor2.dumps({"certificateId": "x" * max(0, size)})
        overshoot = len(body) - size
        if overshoot > 0:
            body = cbor2.dumps({"certificateId": "x" * max(0, size - overshoot)})
        return body

    def _reply(self, req: Request, outcome: str, payload: bytes) -> None:
        client = self._client
        if client is None:
            return
        topic = "{}{}/{}/{}/{}".format(REPLY_PREFIX, req.client_hex, req.connection, req.topic, outcome)
        # QoS 0 to the broker on loopback: the plugin delivers to the device at QoS 1.
        client.publish(topic, payload, qos=0)

    def _reject(self, req: Request, status_code: int, error_code: str, message: str) -> None:
        self._count("rejected.{}.{}".format(req.operation, status_code))
        log.info("%s rejected for client %s: %d %s", req.operation, req.client_id, status_code, error_code)
        body = {"statusCode": status_code, "errorCode": error_code, "errorMessage": message}
        self._reply(req, "rejected", self._encode(req.fmt, body))

    @staticmethod
    def _encode(fmt: str, body: Mapping[str, Any]) -> bytes:
        if fmt == "cbor":
            return cbor2.dumps(dict(body))
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def _decode(req: Request, *, empty_ok: bool = False) -> dict[str, Any]:
        data = req.payload
        if not data:
            if empty_ok:
                return {}
            raise Rejection(400, INVALID_PAYLOAD, "{} request payload is empty".format(req.operation))
        try:
            if req.fmt == "cbor":
                value = cbor2.loads(data, max_depth=untrusted.MAX_DEPTH)  # one bound for both formats
            else:
                value = untrusted.loads(data.decode("utf-8"))
        except Exception as exc:  # cbor2 raises several types on bad input
            raise Rejection(
                400,
                INVALID_PAYLOAD,
                "{} request payload is not valid {}: {}".format(req.operation, req.fmt.upper(), exc),
            ) from None
        if isinstance(value, Mapping) and not isinstance(value, dict):
            value = dict(value)  # cbor2 decodes a tagged map (e.g. self-described CBOR) immutable
        if not isinstance(value, dict):
            raise Rejection(
                400,
                INVALID_PAYLOAD,
                "{} request payload must be a {} map, got {}".format(
                    req.operation, req.fmt.upper(), type(value).__name__
                ),
            )
        return value

    # -- the three operations -----------------------------------------------------------------

    def _new_certificate(self, req: Request, public_key: Any, common_name: str) -> tuple[str, str, str]:
        cert = self.ca.issue(public_key, common_name, days=self.cert_days)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        cid = pki.certificate_id(cert)
        token = self.registry.issue_certificate(cid, pem, owner=req.requester)
        return cid, pem, token

    def _create_keys(self, req: Request) -> dict[str, str]:
        # AWS documents an empty payload; SDKs send {} or CBOR A0. All work.
        self._decode(req, empty_ok=True)
        keygen = self._keygen
        if keygen is None:
            raise Rejection(503, "ServiceUnavailable", "iotsim is shutting down")
        key_pem, spki = keygen.generate()
        public_key = serialization.load_der_public_key(spki)
        cid, pem, token = self._new_certificate(req, public_key, DEVICE_COMMON_NAME)
        return {
            "certificateId": cid,
            "certificatePem": pem,
            "privateKey": key_pem.decode("ascii"),
            "certificateOwnershipToken": token,
        }

    def _create_from_csr(self, req: Request) -> dict[str, str]:
        body = self._decode(req)
        csr_pem = body.get("certificateSigningRequest")
        if not isinstance(csr_pem, str) or not csr_pem.strip():
            raise Rejection(
                400,
                INVALID_CSR,
                "certificateSigningRequest is missing or not a non-empty PEM string",
            )
        try:  # the bound of the CreateCertificateFromCsr API's CSR
            shapes.check(shapes.CSR, csr_pem, "certificateSigningRequest")
        except shapes.ShapeError as exc:
            raise Rejection(400, INVALID_CSR, str(exc)) from None
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("ascii", "replace"))
        except ValueError as exc:
            raise Rejection(
                400, INVALID_CSR, "certificateSigningRequest is not a PEM CSR: {}".format(exc)
            ) from None
        try:
            public_key = csr.public_key()
            valid = csr.is_signature_valid
        except Exception as exc:  # unsupported key or signature algorithm
            raise Rejection(400, INVALID_CSR, "the CSR cannot be verified: {}".format(exc)) from None
        if not valid:
            raise Rejection(400, INVALID_CSR, "the CSR's signature does not verify against its public key")
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < MIN_RSA_BITS:
                raise Rejection(
                    400,
                    INVALID_CSR,
                    "the CSR's RSA key has {} bits; at least {} are required".format(
                        public_key.key_size, MIN_RSA_BITS
                    ),
                )
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in EC_CURVES:
                raise Rejection(
                    400,
                    INVALID_CSR,
                    "the CSR's EC curve {} is not supported; use P-256 or P-384".format(
                        public_key.curve.name
                    ),
                )
        else:
            raise Rejection(
                400, INVALID_CSR, "the CSR's key type is not supported; use RSA-2048+ or EC P-256"
            )
        cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        cn = str(cns[0].value) if cns and cns[0].value else DEVICE_COMMON_NAME
        cid, pem, token = self._new_certificate(req, public_key, cn)
        return {"certificateId": cid, "certificatePem": pem, "certificateOwnershipToken": token}

    def _register_thing(self, req: Request) -> dict[str, Any]:
        assert req.template is not None
        body = self._decode(req)
        token = body.get("certificateOwnershipToken")
        parameters = body.get("parameters", {})
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()
        ):
            raise Rejection(400, "InvalidParameters", "parameters must be a map of strings to strings")
        try:
            certificate_id = self.registry.check_token(token, requester=req.requester)
        except TokenError as exc:
            raise Rejection(400, INVALID_TOKEN, str(exc)) from None
        template = self.templates.get(req.template)  # TemplateError: a Rejection
        hook = self._hook
        if self.template_settings is not None:
            # Set by the control plane: a template created through the API may be
            # disabled (AWS's default) and may name its own hook by Lambda ARN.
            enabled, template_hook = self.template_settings(req.template)
            if not enabled:
                raise Rejection(
                    400, "InvalidRequestException", "The provisioning template {} is disabled".format(req.template)
                )
            if template_hook is not None:
                hook = template_hook
        if hook is not None:
            parameters = self._run_hook(hook, req, certificate_id, parameters)
        plan = template.evaluate(parameters, certificate_id)
        try:
            self.registry.register(
                token,
                requester=req.requester,
                thing=plan.thing,
                certificate_status=plan.certificate_status,
                policies=[(p.name, p.document) for p in plan.policies],
                certificate_id=certificate_id,
            )
        except TokenError as exc:  # used by a concurrent request in the meantime
            raise Rejection(400, INVALID_TOKEN, str(exc)) from None
        except ConflictError as exc:
            raise Rejection(400, RESOURCE_REGISTRATION_FAILURE, str(exc)) from None
        except ResourceError as exc:
            raise Rejection(400, RESOURCE_REGISTRATION_FAILURE, "{}: {}".format(exc.error_code, exc.message)) from None
        result: dict[str, Any] = {"deviceConfiguration": plan.device_configuration}
        if plan.thing is not None:
            result["thingName"] = plan.thing.name
        return result

    def _run_hook(
        self, hook: Callable[..., Any], req: Request, certificate_id: str, parameters: dict[str, str]
    ) -> dict[str, str]:
        record = self.registry.certificate(certificate_id)
        event = {
            "claimCertificateId": req.requester,
            "certificateId": certificate_id,
            "certificatePem": record.pem if record else "",
            "templateArn": TEMPLATE_ARN.format(region=self.region, account=self.account, name=req.template),
            "clientId": req.client_id,
            "parameters": dict(parameters),
        }
        try:
            ok, value = call_bounded(lambda: _call_hook(hook, event), self.hook_timeout, "iotsim-hook")
        except TimeoutError:
            raise Rejection(
                403,
                ACCESS_DENIED,
                "The pre-provisioning hook did not answer within {:g} seconds".format(self.hook_timeout),
            ) from None
        if not ok:
            log.warning("pre-provisioning hook raised %s: %s", type(value).__name__, value)
            raise Rejection(
                403,
                ACCESS_DENIED,
                "The pre-provisioning hook failed: {}".format(type(value).__name__),
            )
        if not isinstance(value, dict) or value.get("allowProvisioning") is not True:
            raise Rejection(403, ACCESS_DENIED, "The pre-provisioning hook denied provisioning")
        overrides = value.get("parameterOverrides") or {}
        if not isinstance(overrides, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()
        ):
            raise Rejection(
                403,
                ACCESS_DENIED,
                "The pre-provisioning hook returned parameterOverrides that are not a map of strings",
            )
        merged = dict(parameters)
        merged.update(overrides)
        return merged
