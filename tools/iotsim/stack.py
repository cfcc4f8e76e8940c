"""The whole iotsim in one object: PKI, registry, templates, broker and service.

``IotSim(state, port).start()`` prepares the state folder (CA, server, service
and claim identities, the registry with the claim and service certificates,
the claim and thing policies, the demo template, a device ``config.json`` and
``certs/``, the control plane's AWS credentials) and runs mosquitto with the
plugin, the provisioning service and the control plane, which holds the cloud
side of a certificate rotation as tools.awssetup makes it on AWS (the rotation
template with its pre-provisioning hook, the retire rule, their Lambda
functions: :func:`install_rotation`). The CLI (``python -m tools.iotsim up``),
the pytest fixture and the fleet benchmark all use it.

The state folder holds private keys: it is mode 0700 and every key file (and
the credentials file) 0600, also in a folder an older iotsim made.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from ..awssetup import lambdas
from . import localaws, pki
from .broker import ACCOUNT, AWS_QUOTAS, DEFAULT_PLUGIN, REGION, Broker, MqttQuotas
from .controlplane import ControlPlane
from .limits import MAX_BODY, MAX_CONNECTIONS, REQUEST_TIMEOUT_S, ApiLimits
from .policy import THING_POLICY, claim_policy_document, thing_policy_document
from .registry import CLAIM, CLAIM_POLICY, DEFAULT_TOKEN_TTL, SERVICE, THING_GROUP, Registry
from .service import ProvisioningService
from .templates import DEMO_TEMPLATE_NAME, ROTATION_TEMPLATE_NAME, TemplateStore, builtin_template_text

log = logging.getLogger("iotsim")

DEFAULT_PORT = 8883
DEVICE_CERT_DIR = "certs"
# What the demo template names, created by `up` as docs/aws-setup.md creates it on AWS.
DEMO_THING_GROUPS = ("fleetprov-demo",)


def device_config(
    port: int, *, endpoint: str = "127.0.0.1", template: str = DEMO_TEMPLATE_NAME
) -> dict[str, Any]:
    """The device ``config.json`` that points at this iotsim (see docs/configuration.md).

    ``server_hostname`` is the DNS name in iotsim's server certificate, as a
    board checks AWS's endpoint by its DNS name: the mbedTLS 2.28 of firmware
    1.22 does not match an IP address against an IP SAN at all."""
    return {
        "endpoint": endpoint,
        "server_hostname": "localhost",
        "port": port,
        "template": template,
        "rotation_template": ROTATION_TEMPLATE_NAME,
        "parameters": {"SerialNumber": "{uid}"},
        # the demo template's ThingName: "fleetprov-" + SerialNumber
        "thing_name": "fleetprov-{uid}",
        "format": "json",
        "method": "keys",
        "cert_dir": DEVICE_CERT_DIR,
    }


def install_device_certs(state: Path, claim: pki.ClientIdentity) -> Path:
    """``<state>/certs/``: the CA and the claim as DER, what a device's flash holds (key 0600)."""
    certs = state / DEVICE_CERT_DIR
    certs.mkdir(mode=0o700, exist_ok=True)
    for src, name in (
        (state / "ca.der", "ca.der"),
        (claim.cert_der_path, "claim.der"),
        (claim.key_der_path, "claim.key.der"),
    ):
        pki.write_atomic(certs / name, src.read_bytes(), private=name.endswith("key.der"))
    return certs


def _private_state(state: Path) -> None:
    """The folder 0700 and its key files 0600, whatever mode an older iotsim left them in."""
    os.chmod(state, 0o700)
    for path in (*state.glob("*.key*"), *state.glob("*/*.key*"), localaws.credentials_path(state)):
        if path.is_file():
            os.chmod(path, 0o600)


def ensure_policies(registry: Registry, claim_id: str) -> None:
    """The claim policy of docs/aws-setup.md (any template but the rotation template), attached
    to the claim certificate, and the thing policy the demo and rotation templates name."""
    if registry.policy(CLAIM_POLICY) is None:
        registry.create_policy(CLAIM_POLICY, claim_policy_document(deny_templates=[ROTATION_TEMPLATE_NAME]))
    registry.attach_policy(CLAIM_POLICY, claim_id)
    if registry.policy(THING_POLICY) is None:
        registry.create_policy(THING_POLICY, thing_policy_document())


def install_rotation(plane: ControlPlane) -> None:
    """The cloud side of a rotation (docs/rotation.md), as tools.awssetup makes it on AWS, made
    through the control plane's own operations where missing: the two Lambda functions of
    tools/awssetup/lambdas (updated when their package changed), each invocable by AWS IoT for
    its source only, the rotation template with its pre-provisioning hook, and the retire rule."""
    code = lambdas.package()
    zipped = base64.b64encode(code).decode("ascii")
    role = "arn:aws:iam::{}:role/iotsim-lambda".format(plane.account)
    template_arn = plane.arn("provisioningtemplate", ROTATION_TEMPLATE_NAME)
    wanted = (
        (lambdas.HOOK_FUNCTION, lambdas.HOOK_HANDLER, template_arn),
        (lambdas.RETIRE_FUNCTION, lambdas.RETIRE_HANDLER, plane.rules.arn(lambdas.RETIRE_RULE)),
    )
    for name, handler, source in wanted:
        if not plane.functions.exists(name):
            plane.call("CreateFunction", {"FunctionName": name, "Role": role, "Code": {"ZipFile": zipped},
                                          "Runtime": lambdas.RUNTIME, "Handler": handler,
                                          "Timeout": lambdas.TIMEOUT_S}, "lambda")
            plane.call("AddPermission", {"FunctionName": name, "StatementId": "iot-invoke",
                                         "Action": "lambda:InvokeFunction", "Principal": "iot.amazonaws.com",
                                         "SourceArn": source, "SourceAccount": plane.account}, "lambda")
        elif plane.call("GetFunction", {"FunctionName": name}, "lambda")["Configuration"]["CodeSha256"] != (
                lambdas.code_sha256(code)):
            plane.call("UpdateFunctionCode", {"FunctionName": name, "ZipFile": zipped}, "lambda")
    hook = {"targetArn": plane.functions.arn(lambdas.HOOK_FUNCTION), "payloadVersion": lambdas.HOOK_PAYLOAD_VERSION}
    if ROTATION_TEMPLATE_NAME not in plane.templates.names():
        plane.call("CreateProvisioningTemplate", {
            "templateName": ROTATION_TEMPLATE_NAME, "templateBody": builtin_template_text(ROTATION_TEMPLATE_NAME),
            "provisioningRoleArn": role, "enabled": True, "preProvisioningHook": hook,
            "description": "fleetprov: a thing's own certificate registers its next one (docs/rotation.md)"})
    elif plane.call("DescribeProvisioningTemplate", {"templateName": ROTATION_TEMPLATE_NAME}).get(
            "preProvisioningHook") != hook:
        # Without its hook the template would let any certificate register on any thing.
        plane.call("UpdateProvisioningTemplate", {"templateName": ROTATION_TEMPLATE_NAME, "preProvisioningHook": hook})
    if not plane.rules.exists(lambdas.RETIRE_RULE):
        plane.call("CreateTopicRule", {"ruleName": lambdas.RETIRE_RULE, "topicRulePayload": {
            "sql": lambdas.RETIRE_SQL, "awsIotSqlVersion": lambdas.SQL_VERSION,
            "actions": [{"lambda": {"functionArn": plane.functions.arn(lambdas.RETIRE_FUNCTION)}}]}})


@dataclass(eq=False)
class IotSim:
    """iotsim on ``host:port`` with its state in ``state``.

    ``tps``: throttle each operation (None: AWS's rates; 0: off); ``mqtt_quotas``: the
    broker's rate quotas (AWS's unless a test turns one off); ``token_ttl``: ownership token
    lifetime in seconds; ``hook``: pre-provisioning hook (callable or
    "module:function"); ``clock``: the registry's clock (tests); ``api_port``:
    the AWS IoT control plane's HTTP port (0: a free one); ``lambdas``: Lambda
    function name -> hook; ``api_timeout``, ``api_connections``,
    ``api_max_body``: the control plane's bounds (iotsim's choices, docs/iotsim.md);
    ``cert_days``: the validity of the device certificates it issues.
    """

    state: Path
    port: int = DEFAULT_PORT
    _: KW_ONLY
    host: str = "127.0.0.1"
    tps: float | None = None
    token_ttl: float = DEFAULT_TOKEN_TTL
    hook: Callable[..., Any] | str | None = None
    clock: Callable[[], float] = time.time
    plugin: Path = DEFAULT_PLUGIN
    keygen_processes: int | None = None
    workers: int = 8
    single_use_tokens: bool = True
    tokens_bound_to_requester: bool = True
    region: str = REGION
    account: str = ACCOUNT
    api_port: int = 0
    lambdas: dict[str, Callable[..., Any] | str] = field(default_factory=dict)
    api_timeout: float = REQUEST_TIMEOUT_S
    api_connections: int = MAX_CONNECTIONS
    api_max_body: int = MAX_BODY
    mqtt_quotas: MqttQuotas = AWS_QUOTAS
    cert_days: int = pki.DEFAULT_DAYS

    def __post_init__(self) -> None:
        self.state = Path(self.state).resolve()
        self.port, self.api_port, self.plugin = int(self.port), int(self.api_port), Path(self.plugin)
        self.lambdas = dict(self.lambdas or {})
        self.api_limits = ApiLimits(self.api_timeout, self.api_connections, self.api_max_body)
        self.templates = TemplateStore(self.state / "templates")
        # Made by prepare() and start(); None until then and after stop().
        self.credentials: localaws.Credentials | None = None
        self.ca: pki.CertificateAuthority | None = None
        self.claim: pki.ClientIdentity | None = None
        self.service_identity: pki.ClientIdentity | None = None
        self.registry: Registry | None = None
        self.broker: Broker | None = None
        self.service: ProvisioningService | None = None
        self.controlplane: ControlPlane | None = None

    # -- paths -----------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        return self.state / "ca.pem"

    @property
    def ca_der(self) -> Path:
        return self.state / "ca.der"

    @property
    def config_path(self) -> Path:
        return self.state / "config.json"

    # -- lifecycle ---------------------------------------------------------------------

    def prepare(self) -> list[Path]:
        """Create everything in the state folder that a device and the broker need.

        Idempotent; returns the files a user cares about.
        """
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_state(self.state)
        self.credentials = localaws.ensure_credentials(self.state)
        self.ca = pki.CertificateAuthority.load_or_create(self.state)
        self.service_identity = pki.ensure_client_identity(self.state, self.ca, "service", "iotsim-service",
                                                           key_type="ec")  # host side only
        self.claim = pki.ensure_client_identity(self.state, self.ca, "claim", "iotsim-claim")
        if self.registry is None:
            self.registry = Registry(
                self.state,
                token_ttl=self.token_ttl,
                clock=self.clock,
                single_use_tokens=self.single_use_tokens,
                tokens_bound_to_requester=self.tokens_bound_to_requester,
            )
        for identity, status in ((self.service_identity, SERVICE), (self.claim, CLAIM)):
            # Only when unknown: a claim revoked with `revoke` stays revoked across restarts.
            if self.registry.status(identity.certificate_id) is None:
                self.registry.add_certificate(
                    identity.certificate_id, identity.cert_path.read_text(encoding="ascii"), status
                )
        ensure_policies(self.registry, self.claim.certificate_id)
        for group in DEMO_THING_GROUPS:
            self.registry.create_resource(THING_GROUP, group)
        if DEMO_TEMPLATE_NAME not in self.templates.names():
            self.templates.put(DEMO_TEMPLATE_NAME, builtin_template_text(DEMO_TEMPLATE_NAME))
        certs = install_device_certs(self.state, self.claim)
        pki.write_atomic(self.config_path, (json.dumps(device_config(self.port), indent=2) + "\n").encode())
        return [
            self.ca_path,
            self.ca_der,
            self.claim.cert_path,
            self.claim.key_path,
            self.claim.cert_der_path,
            self.claim.key_der_path,
            self.templates.path(DEMO_TEMPLATE_NAME),
            self.config_path,
            certs,
        ]

    def start(self, timeout: float = 20.0) -> IotSim:
        """Prepare, start mosquitto and the service; returns when provisioning works."""
        self.prepare()
        assert self.ca and self.service_identity and self.registry and self.credentials
        self.broker = Broker(
            self.state, self.port, self.plugin, host=self.host, region=self.region, account=self.account,
            quotas=self.mqtt_quotas,
        )
        try:
            self.broker.start()
            # What the service and the control plane share: one registry, one template folder.
            shared: dict[str, Any] = dict(
                registry=self.registry, templates=self.templates, ca=self.ca, region=self.region, account=self.account
            )
            self.service = ProvisioningService(
                host=self.host,
                port=self.port,
                ca_path=self.ca_path,
                identity=self.service_identity,
                hook=self.hook,
                tps=self.tps,
                keygen_processes=self.keygen_processes,
                workers=self.workers,
                cert_days=self.cert_days,
                **shared,
            )
            self.service.start(timeout=timeout)
            self.controlplane = ControlPlane(
                state=self.state,
                mqtt_host=self.host,
                mqtt_port=self.port,
                host=self.host,
                port=self.api_port,
                lambdas=self.lambdas,
                credentials=self.credentials,
                limits=self.api_limits,
                cert_days=self.cert_days,
                **shared,
            ).start()
            self.api_port = self.controlplane.port
            localaws.write_config(self.state, self.region, self.api_url)
            self.service.template_settings = self.controlplane.template_settings
            self.service.rule_sink = self.controlplane.rules.dispatch
            self.controlplane.data.publisher = self.service.publish
            install_rotation(self.controlplane)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def api_url(self) -> str:
        """The control plane's endpoint URL (boto3 ``endpoint_url=``, AWS CLI ``--endpoint-url``)."""
        return "http://{}:{}".format(self.host, self.api_port)

    def stop(self) -> None:
        for part in ("controlplane", "service", "broker"):  # the reverse of start()
            running = getattr(self, part)
            if running is not None:
                running.stop()
                setattr(self, part, None)
        if self.registry is not None:
            self.registry.close()
            self.registry = None

    def __enter__(self) -> IotSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
