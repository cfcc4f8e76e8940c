"""iotsim's AWS IoT control plane: the HTTP API boto3 and the AWS CLI call, on 127.0.0.1.

Routing, input checks and the answers' layout come from botocore's ``iot`` model (and its
``iam`` model for the IAM calls a setup makes: tools/iotsim/iam.py), through
tools/iotsim/apimodel.py; this module holds only what each operation does, on the same
registry and template folder the MQTT side uses, so a template created here provisions
devices at once and a certificate set INACTIVE here is refused at its next connection.
Errors are AWS's codes with AWS's HTTP status (rest-json: ``x-amzn-ErrorType`` and
``{"message": ...}``; query: IAM's XML). An operation of a model that iotsim does not
implement gets 501 ``NotImplementedException`` naming it.

Who may call, and how much: a request must name this endpoint in its ``Host`` header (a web
page rebinding a name to 127.0.0.1 is refused) and be signed with SigV4 by the key ``up``
wrote (tools/iotsim/sigv4.py, tools/iotsim/localaws.py); no CORS header is ever sent. Each
connection must deliver a whole request within ``request_timeout`` seconds, at most
``max_connections`` are served at once (more get 503 and are closed), and a body over
``max_body`` bytes is refused from its Content-Length before it is read (:class:`ApiLimits`).
AWS documents none of these three numbers; they are iotsim's choices and switches (``up --api-*``).

Templates keep their body in ``<state>/templates/<name>.json`` (the MQTT
service reads it from there) and their control-plane settings (versions,
enabled, role, hook, tags) in ``<state>/controlplane/templates/<name>.json``.
A template file without settings (the demo template, a hand-written file) is
enabled, with one version. As on AWS a template created through the API is
disabled unless ``enabled`` is true, and RegisterThing with a disabled
template is rejected.

A pre-provisioning hook is named by a Lambda ARN
(``arn:aws:lambda:<region>:<account>:function:<name>``): a function created through
the Lambda API (tools/iotsim/functions.py), or a name ``lambdas`` maps to a local
hook ("module:function" or a callable; ``up --lambda NAME=module:function``), which
wins. An unknown function is refused when the template is created, as AWS refuses
a hook it cannot invoke. Topic rules (tools/iotsim/rules.py) and iot-data Publish
(tools/iotsim/dataplane.py) are served here too.

CreateProvisioningClaim (provisioning by trusted user) issues a claim
certificate that the broker accepts for five minutes (``CLAIM_LIFETIME``,
AWS's), with a policy that allows fleet provisioning with that template
only. A sweeper sets expired claims INACTIVE on the registry's clock; tests
move the clock and call :meth:`ControlPlane.expire_claims`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import pki
from .apimodel import ApiError, ApiModel
from .dataplane import IotData
from .functions import Functions
from .limits import MAX_BODY, MAX_CONNECTIONS, REQUEST_TIMEOUT_S, ApiLimits  # noqa: F401 (the API's limits)
from .iam import Iam
from .policy import claim_policy_document
from .registry import (
    ACTIVE,
    BILLING_GROUP,
    CLAIM,
    CLAIM_POLICY,
    INACTIVE,
    REVOKED,
    SERVICE,
    THING_GROUP,
    THING_TYPE,
    Registry,
    ResourceError,
)
from .service import DEVICE_COMMON_NAME, load_hook
from .sigv4 import AuthFailure, Credentials, verify
from .rules import TopicRules
from .templates import MAX_TEMPLATE_CHARS, TEMPLATE_NAME, Template, TemplateError, TemplateStore

log = logging.getLogger("iotsim.controlplane")

CLAIM_LIFETIME = 300.0  # AWS: a provisioning claim certificate is valid for five minutes
MAX_TEMPLATE_VERSIONS = 5  # AWS: up to five versions per template
SWEEP_INTERVAL = 1.0
_LAMBDA_ARN = re.compile(
    r"^arn:aws:lambda:[a-z0-9-]+:\d{12}:function:([A-Za-z0-9_-]{1,64})(:[A-Za-z0-9$_-]+)?\Z"
)
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}\Z")
_CERT_ID = re.compile(r"^[0-9a-fA-F]{64}\Z")
_ENDPOINT_TYPES = ("iot:Data", "iot:Data-ATS", "iot:CredentialProvider", "iot:Jobs")
_PAGE_MAX = 250
# ARN resource kinds TagResource and friends accept -> the registry's kind (None: own lookup).
_TAGGABLE = {
    "provisioningtemplate": None,
    "policy": None,
    "thinggroup": THING_GROUP,
    "thingtype": THING_TYPE,
    "billinggroup": BILLING_GROUP,
    "rule": None,
}


def _status_for_api(status: str) -> str:
    # iotsim's own statuses are active certificates to the outside world.
    return ACTIVE if status in (CLAIM, SERVICE) else status


def _page(items: list[Any], token: str | None, size: int | None, what: str) -> tuple[list[Any], str | None]:
    """One page of ``items`` from an opaque position token (AWS's marker / nextToken)."""
    start = 0
    if token:
        if not token.isdigit() or int(token) > len(items):
            raise ApiError("InvalidRequestException", "the {} is not one this API returned".format(what))
        start = int(token)
    if size is not None and not 1 <= size <= _PAGE_MAX:
        raise ApiError("InvalidRequestException", "page size must be 1-{}, got {}".format(_PAGE_MAX, size))
    end = start + (size or _PAGE_MAX)
    return items[start:end], (str(end) if end < len(items) else None)


class LambdaUnavailable(Exception):
    """A template's hook names a Lambda function iotsim cannot run."""


def _failing_hook(message: str) -> Callable[..., Any]:
    def hook(event: dict[str, Any]) -> Any:
        raise LambdaUnavailable(message)

    return hook




@dataclass(eq=False, kw_only=True)
class ControlPlane:
    """The control-plane HTTP server of one iotsim (``start()``/``stop()``; ``url`` once started).

    ``lambdas`` maps Lambda function names to local hooks; ``credentials`` is the key requests
    must be signed with."""

    state: Path
    registry: Registry
    templates: TemplateStore
    ca: pki.CertificateAuthority
    mqtt_host: str
    mqtt_port: int
    credentials: Credentials
    host: str = "127.0.0.1"
    port: int = 0
    region: str = "local"
    account: str = "000000000000"
    lambdas: dict[str, Callable[..., Any] | str] = field(default_factory=dict)
    sweep_interval: float = SWEEP_INTERVAL
    limits: ApiLimits = field(default_factory=ApiLimits)
    cert_days: int = pki.DEFAULT_DAYS  # the validity of the certificates CreateKeysAndCertificate makes

    def __post_init__(self) -> None:
        self.state = Path(self.state)
        self.lambdas = dict(self.lambdas)
        self.settings_dir = self.state / "controlplane" / "templates"
        self.tags_path = self.state / "controlplane" / "tags.json"
        # Keyed by the service a SigV4 credential scope names.
        self.models = {
            "iot": ApiModel("iot"),
            "iam": ApiModel("iam"),
            "lambda": ApiModel("lambda", self.region),
            "iotdata": ApiModel("iot-data"),
        }
        self.model = self.models["iot"]
        self.iam = Iam(self.state, self.account, self.registry.clock)
        self.functions = Functions(self.state, self.region, self.account, self.registry.clock, self.client)
        self.rules = TopicRules(self.state, self.region, self.account, self.registry.clock, self.functions.invoke)
        self.data = IotData()
        # The service each model's operations run on (keyed by botocore's service name).
        self._services: dict[str, Any] = {"iot": self, "iam": self.iam, "lambda": self.functions, "iot-data": self.data}
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return "http://{}:{}".format(self.host, self.port)

    def start(self) -> ControlPlane:
        plane = self

        class Handler(_Handler):
            control = plane

        self._server = _Server((self.host, self.port), Handler, self.limits.max_connections)
        self.port = self._server.server_address[1]
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="iotsim-controlplane", daemon=True),
            threading.Thread(target=self._sweep, name="iotsim-claim-sweeper", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.rules.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads = []

    def _sweep(self) -> None:
        while not self._stopping.wait(self.sweep_interval):
            try:
                self.expire_claims()
            except Exception:  # a closed registry at shutdown; the next start sweeps again
                log.debug("claim sweep failed", exc_info=True)

    def expire_claims(self) -> list[str]:
        """Set provisioning claims past their five minutes INACTIVE (the broker refuses them)."""
        gone = self.registry.expire_provisioning_claims()
        for cid in gone:
            log.info("provisioning claim %s expired", cid)
        return gone

    def client(self, service: str) -> Any:
        """A boto3 client on this endpoint, signed with iotsim's key (what a Lambda handler's context gives)."""
        import boto3  # only a running function needs it

        with self._clients_lock:
            made = self._clients.get(service)
            if made is None:
                made = self._clients[service] = boto3.session.Session().client(
                    service, endpoint_url=self.url, region_name=self.region,
                    aws_access_key_id=self.credentials.access_key, aws_secret_access_key=self.credentials.secret_key,
                )
        return made

    # -- the MQTT service asks: is this template enabled, and which hook does it name? --

    def template_settings(self, name: str) -> tuple[bool, Callable[..., Any] | None]:
        settings = self._settings(name)
        if settings is None:
            return True, None
        hook = settings.get("preProvisioningHook")
        target = None
        if hook:
            try:
                target = self._lambda(hook["targetArn"], self.arn("provisioningtemplate", name))
            except ApiError as exc:
                # The function went away after the template named it: AWS's invocation
                # fails and the request is refused with ACCESS_DENIED; so here.
                target = _failing_hook(exc.message)
        return bool(settings.get("enabled")), target

    def _lambda(self, arn: str, source_arn: str = "") -> Callable[..., Any]:
        """The hook a template's targetArn names, invoked for ``source_arn`` (the template)."""
        m = _LAMBDA_ARN.match(arn)
        if m is None:
            raise ApiError(
                "InvalidRequestException",
                "preProvisioningHook.targetArn {!r} is not a Lambda function ARN "
                "(arn:aws:lambda:REGION:ACCOUNT:function:NAME)".format(arn),
            )
        target = self.lambdas.get(m.group(1))
        if target is None and self.functions.exists(arn):
            functions = self.functions

            def invoke(event: dict[str, Any]) -> Any:
                return functions.invoke(arn, event, source_arn=source_arn)

            return invoke
        if target is None:
            raise ApiError(
                "InvalidRequestException",
                "Lambda function {} does not exist in iotsim; create it (tools.awssetup does) or map it to "
                "a local hook with `python -m tools.iotsim up --lambda {}=module:function`".format(
                    m.group(1), m.group(1)),
            )
        return load_hook(target) if isinstance(target, str) else target

    # -- ARNs ---------------------------------------------------------------------------

    def arn(self, kind: str, name: str) -> str:
        return "arn:aws:iot:{}:{}:{}/{}".format(self.region, self.account, kind, name)

    def _certificate_of(self, target: str) -> str:
        m = re.match(r"^arn:aws:iot:[^:]*:[^:]*:cert/([0-9a-fA-F]{64})$", target)
        if m is None:
            raise ApiError(
                "InvalidRequestException",
                "target {!r}: iotsim attaches policies to certificates only "
                "(arn:aws:iot:REGION:ACCOUNT:cert/CERTIFICATE_ID)".format(target),
            )
        return m.group(1).lower()

    # -- stored settings ------------------------------------------------------------------

    def _settings_path(self, name: str) -> Path:
        return self.settings_dir / "{}.json".format(name)

    def _settings(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._settings_path(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _save_settings(self, name: str, settings: dict[str, Any]) -> None:
        self.settings_dir.mkdir(parents=True, exist_ok=True)
        pki.write_atomic(self._settings_path(name), json.dumps(settings, indent=2).encode())

    def _template(self, name: str) -> dict[str, Any]:
        """A template's settings; synthesised for a template file made without the API."""
        if not TEMPLATE_NAME.match(name):
            raise ApiError(
                "InvalidRequestException", "template name {!r} must be 1-36 of [0-9A-Za-z_-]".format(name)
            )
        settings = self._settings(name)
        path = self.templates.path(name)
        if not path.exists():
            raise ApiError(
                "ResourceNotFoundException", "The provisioning template {} does not exist".format(name)
            )
        if settings is not None:
            return settings
        stamp = path.stat().st_mtime
        return {
            "templateName": name,
            "description": "",
            "enabled": True,
            "provisioningRoleArn": "arn:aws:iam::{}:role/iotsim-template-file".format(self.account),
            "type": "FLEET_PROVISIONING",
            "creationDate": stamp,
            "lastModifiedDate": stamp,
            "defaultVersionId": 1,
            "versions": [
                {"versionId": 1, "creationDate": stamp, "templateBody": path.read_text(encoding="utf-8")}
            ],
        }

    def _validate_body(self, name: str, body: str) -> None:
        if len(body) > MAX_TEMPLATE_CHARS:
            raise ApiError(
                "InvalidRequestException",
                "templateBody has {} characters; AWS allows {}".format(len(body), MAX_TEMPLATE_CHARS),
            )
        try:
            Template.from_json(name, body)
        except TemplateError as exc:
            raise ApiError("InvalidRequestException", "templateBody: {}".format(exc.message)) from None

    def _taggable(self, arn: str) -> str:
        """The ARN if it names a resource of this iotsim that can carry tags; else AWS's error."""
        m = re.match(r"^arn:aws:iot:([^:]*):([^:]*):([a-z]+)/(.+)\Z", arn)
        if m is None or m.group(3) not in _TAGGABLE:
            raise ApiError(
                "InvalidRequestException",
                "{!r} is not the ARN of a taggable AWS IoT resource ({})".format(arn, ", ".join(_TAGGABLE)),
            )
        region, account, kind, name = m.groups()
        if kind == "provisioningtemplate":
            exists = TEMPLATE_NAME.match(name) is not None and self.templates.path(name).exists()
        elif kind == "rule":
            exists = self.rules.exists(name)
        elif kind == "policy":
            exists = self.registry.policy(name) is not None
        else:
            exists = self.registry.resource(_TAGGABLE[kind], name) is not None  # type: ignore[arg-type]
        if (region, account) != (self.region, self.account) or not exists:
            raise ApiError("ResourceNotFoundException", "{} does not exist".format(arn))
        return arn

    def _tags(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.tags_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def _set_tags(self, arn: str, tags: list[dict[str, str]] | None, *, replace: bool = False) -> None:
        if not tags and not replace:
            return
        with self._lock:
            all_tags = self._tags()
            current = {} if replace else all_tags.get(arn, {})
            for tag in tags or []:
                if "Key" not in tag:
                    raise ApiError("InvalidRequestException", "every tag needs a Key")
                current[tag["Key"]] = tag.get("Value", "")
            if current:
                all_tags[arn] = current
            else:
                all_tags.pop(arn, None)
            self.tags_path.parent.mkdir(parents=True, exist_ok=True)
            pki.write_atomic(self.tags_path, json.dumps(all_tags, indent=2).encode())

    def _drop_tags(self, arn: str) -> None:
        self._set_tags(arn, None, replace=True)

    # -- dispatch ---------------------------------------------------------------------------

    @property
    def hosts(self) -> tuple[str, ...]:
        """The Host header values that name this endpoint."""
        return tuple("{}:{}".format(h, self.port) for h in dict.fromkeys((self.host, "localhost", "127.0.0.1")))

    def authenticate(self, method: str, target: str, headers: Any, body: bytes) -> ApiModel:
        """The model (``iot`` or ``iam``) of a request signed with this iotsim's key; ApiError otherwise."""
        regions = {
            "iot": (self.region,),
            "iam": tuple(dict.fromkeys((self.region, "us-east-1"))),
            "lambda": (self.region,),
            "iotdata": (self.region,),
        }
        try:
            return self.models[verify(method, target, headers, body, credentials=self.credentials,
                                      regions=regions, now=time.time())]
        except AuthFailure as exc:
            raise exc.error(self.guess_model(headers).protocol) from None

    def guess_model(self, headers: Any) -> ApiModel:
        """The model whose error format suits a request not yet authenticated (form bodies: IAM's)."""
        form = "x-www-form-urlencoded" in str(headers.get("Content-Type") or "")
        return self.models["iam" if form else "iot"]

    def call(self, operation: str, params: dict[str, Any], service: str = "iot") -> dict[str, Any]:
        handler = getattr(self._services[service], "op_" + operation, None)
        if handler is None:
            raise ApiError(
                "NotImplementedException",
                "iotsim does not implement {}; docs/iotsim.md lists the operations it serves".format(
                    operation
                ),
                501,
            )
        try:
            with self._lock:
                return handler(**params) or {}
        except ResourceError as exc:
            raise ApiError(exc.error_code, exc.message) from None

    # -- endpoint ------------------------------------------------------------------------------

    def op_DescribeEndpoint(self, endpointType: str | None = None) -> dict[str, Any]:
        if endpointType is not None and endpointType not in _ENDPOINT_TYPES:
            raise ApiError(
                "InvalidRequestException",
                "endpointType must be one of {}, got {!r}".format(", ".join(_ENDPOINT_TYPES), endpointType),
            )
        # iotsim has one broker; its MQTT port is not part of the answer (AWS's is 8883).
        return {"endpointAddress": self.mqtt_host}

    # -- provisioning templates ------------------------------------------------------------------

    def op_CreateProvisioningTemplate(
        self,
        templateName: str,
        templateBody: str,
        provisioningRoleArn: str,
        description: str = "",
        enabled: bool = False,
        preProvisioningHook: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
        type: str = "FLEET_PROVISIONING",
    ) -> dict[str, Any]:
        if not TEMPLATE_NAME.match(templateName):
            raise ApiError(
                "InvalidRequestException",
                "templateName {!r} must be 1-36 of [0-9A-Za-z_-]".format(templateName),
            )
        if self.templates.path(templateName).exists():
            raise ApiError(
                "ResourceAlreadyExistsException",
                "The provisioning template {} already exists".format(templateName),
            )
        if not _ROLE_ARN.match(provisioningRoleArn):
            raise ApiError(
                "InvalidRequestException",
                "provisioningRoleArn {!r} is not an IAM role ARN".format(provisioningRoleArn),
            )
        if preProvisioningHook is not None:
            self._lambda(preProvisioningHook.get("targetArn", ""))
        self._validate_body(templateName, templateBody)
        now = self.registry.clock()
        arn = self.arn("provisioningtemplate", templateName)
        settings = {
            "templateName": templateName,
            "description": description,
            "enabled": enabled,
            "provisioningRoleArn": provisioningRoleArn,
            "preProvisioningHook": preProvisioningHook,
            "type": type,
            "creationDate": now,
            "lastModifiedDate": now,
            "defaultVersionId": 1,
            "versions": [{"versionId": 1, "creationDate": now, "templateBody": templateBody}],
        }
        # Settings first: the MQTT side must never see the body without its enabled flag.
        self._save_settings(templateName, settings)
        try:
            self.templates.put(templateName, templateBody)
        except BaseException:
            self._settings_path(templateName).unlink(missing_ok=True)
            raise
        self._set_tags(arn, tags)
        return {"templateArn": arn, "templateName": templateName, "defaultVersionId": 1}

    def op_DescribeProvisioningTemplate(self, templateName: str) -> dict[str, Any]:
        s = self._template(templateName)
        default = next(v for v in s["versions"] if v["versionId"] == s["defaultVersionId"])
        return {
            "templateArn": self.arn("provisioningtemplate", templateName),
            "templateName": templateName,
            "description": s["description"],
            "creationDate": s["creationDate"],
            "lastModifiedDate": s["lastModifiedDate"],
            "defaultVersionId": s["defaultVersionId"],
            "templateBody": default["templateBody"],
            "enabled": s["enabled"],
            "provisioningRoleArn": s["provisioningRoleArn"],
            "preProvisioningHook": s.get("preProvisioningHook"),
            "type": s["type"],
        }

    def op_ListProvisioningTemplates(
        self, maxResults: int | None = None, nextToken: str | None = None
    ) -> dict[str, Any]:
        items = []
        for name in self.templates.names():
            try:
                s = self._template(name)
            except ApiError:
                continue
            items.append(
                {
                    "templateArn": self.arn("provisioningtemplate", name),
                    "templateName": name,
                    "description": s["description"],
                    "creationDate": s["creationDate"],
                    "lastModifiedDate": s["lastModifiedDate"],
                    "enabled": s["enabled"],
                    "type": s["type"],
                }
            )
        page, token = _page(items, nextToken, maxResults, "nextToken")
        return {"templates": page, "nextToken": token}

    def op_UpdateProvisioningTemplate(
        self,
        templateName: str,
        description: str | None = None,
        enabled: bool | None = None,
        defaultVersionId: int | None = None,
        provisioningRoleArn: str | None = None,
        preProvisioningHook: dict[str, Any] | None = None,
        removePreProvisioningHook: bool | None = None,
    ) -> dict[str, Any]:
        s = self._template(templateName)
        if provisioningRoleArn is not None and not _ROLE_ARN.match(provisioningRoleArn):
            raise ApiError(
                "InvalidRequestException",
                "provisioningRoleArn {!r} is not an IAM role ARN".format(provisioningRoleArn),
            )
        if preProvisioningHook is not None:
            if removePreProvisioningHook:
                raise ApiError(
                    "InvalidRequestException",
                    "give preProvisioningHook or removePreProvisioningHook, not both",
                )
            self._lambda(preProvisioningHook.get("targetArn", ""))
        body = None
        if defaultVersionId is not None:
            match = [v for v in s["versions"] if v["versionId"] == defaultVersionId]
            if not match:
                raise ApiError(
                    "ResourceNotFoundException",
                    "The provisioning template {} has no version {}".format(templateName, defaultVersionId),
                )
            s["defaultVersionId"] = defaultVersionId
            body = match[0]["templateBody"]
        for key, value in (
            ("description", description),
            ("enabled", enabled),
            ("provisioningRoleArn", provisioningRoleArn),
            ("preProvisioningHook", preProvisioningHook),
        ):
            if value is not None:
                s[key] = value
        if removePreProvisioningHook:
            s["preProvisioningHook"] = None
        s["lastModifiedDate"] = self.registry.clock()
        self._save_settings(templateName, s)
        if body is not None:
            self.templates.put(templateName, body)
        return {}

    def op_CreateProvisioningTemplateVersion(
        self, templateName: str, templateBody: str, setAsDefault: bool = False
    ) -> dict[str, Any]:
        s = self._template(templateName)
        if len(s["versions"]) >= MAX_TEMPLATE_VERSIONS:
            raise ApiError(
                "VersionsLimitExceededException",
                "The provisioning template {} already has {} versions; delete one first".format(
                    templateName, MAX_TEMPLATE_VERSIONS
                ),
            )
        self._validate_body(templateName, templateBody)
        version = max(v["versionId"] for v in s["versions"]) + 1
        now = self.registry.clock()
        s["versions"].append({"versionId": version, "creationDate": now, "templateBody": templateBody})
        if setAsDefault:
            s["defaultVersionId"] = version
        s["lastModifiedDate"] = now
        self._save_settings(templateName, s)
        if setAsDefault:
            self.templates.put(templateName, templateBody)
        return {
            "templateArn": self.arn("provisioningtemplate", templateName),
            "templateName": templateName,
            "versionId": version,
            "isDefaultVersion": bool(setAsDefault),
        }

    def op_DeleteProvisioningTemplate(self, templateName: str) -> dict[str, Any]:
        self._template(templateName)
        self.templates.path(templateName).unlink(missing_ok=True)
        self._settings_path(templateName).unlink(missing_ok=True)
        self._drop_tags(self.arn("provisioningtemplate", templateName))
        return {}

    def _new_key_pair(self, days: int = pki.DEFAULT_DAYS) -> tuple[str, str, dict[str, str]]:
        """An RSA-2048 key pair and a certificate for it, as AWS makes them:
        (certificateId, certificatePem, keyPair with PublicKey and PrivateKey PEM)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = self.ca.issue(key.public_key(), DEVICE_COMMON_NAME, days=days)
        pair = {
            "PublicKey": key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii"),
            "PrivateKey": key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ).decode("ascii"),
        }
        return pki.certificate_id(cert), cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), pair

    def op_CreateProvisioningClaim(self, templateName: str) -> dict[str, Any]:
        self._template(templateName)
        cid, pem, pair = self._new_key_pair(days=1)
        expires = self.registry.clock() + CLAIM_LIFETIME
        self.registry.add_provisioning_claim(cid, pem, templateName, expires)
        policy = "iotsim-provisioning-claim-{}".format(templateName)
        if self.registry.policy(policy) is None:
            self.registry.create_policy(policy, claim_policy_document(templates=templateName))
        self.registry.attach_policy(policy, cid)
        return {
            "certificateId": cid,
            "certificatePem": pem,
            "keyPair": pair,
            "expiration": expires,
        }

    # -- certificates --------------------------------------------------------------------------

    def _cert(self, certificateId: str) -> Any:
        if not _CERT_ID.match(certificateId):
            raise ApiError(
                "InvalidRequestException",
                "certificateId must be 64 hex digits, got {!r}".format(certificateId),
            )
        record = self.registry.certificate(certificateId.lower())
        if record is None:
            raise ApiError("ResourceNotFoundException", "Certificate {} does not exist".format(certificateId))
        return record

    def op_CreateKeysAndCertificate(self, setAsActive: bool = False) -> dict[str, Any]:
        cid, pem, pair = self._new_key_pair(days=self.cert_days)
        self.registry.add_certificate(cid, pem, ACTIVE if setAsActive else INACTIVE)
        return {
            "certificateArn": self.arn("cert", cid),
            "certificateId": cid,
            "certificatePem": pem,
            "keyPair": pair,
        }

    def op_DescribeCertificate(self, certificateId: str) -> dict[str, Any]:
        c = self._cert(certificateId)
        parsed = x509.load_pem_x509_certificate(c.pem.encode("ascii"))
        return {
            "certificateDescription": {
                "certificateArn": self.arn("cert", c.id),
                "certificateId": c.id,
                "caCertificateId": None,
                "status": _status_for_api(c.status),
                "certificatePem": c.pem,
                "ownedBy": self.account,
                "creationDate": c.created,
                "lastModifiedDate": c.updated,
                "certificateMode": "DEFAULT",
                "validity": {
                    "notBefore": parsed.not_valid_before_utc.timestamp(),
                    "notAfter": parsed.not_valid_after_utc.timestamp(),
                },
            }
        }

    def op_ListCertificates(
        self, pageSize: int | None = None, marker: str | None = None, ascendingOrder: bool = False
    ) -> dict[str, Any]:
        certs = [c for c in self.registry.certificates() if c.status != SERVICE]
        if not ascendingOrder:
            certs.reverse()  # AWS lists newest first unless ascendingOrder
        items = [
            {
                "certificateArn": self.arn("cert", c.id),
                "certificateId": c.id,
                "status": _status_for_api(c.status),
                "certificateMode": "DEFAULT",
                "creationDate": c.created,
            }
            for c in certs
        ]
        page, token = _page(items, marker, pageSize, "marker")
        return {"certificates": page, "nextMarker": token}

    def op_UpdateCertificate(self, certificateId: str, newStatus: str) -> dict[str, Any]:
        c = self._cert(certificateId)
        if c.status == SERVICE:
            raise ApiError(
                "InvalidRequestException", "certificate {} is iotsim's own service identity".format(c.id)
            )
        if c.status == REVOKED:
            raise ApiError("CertificateStateException", "Certificate {} is revoked and stays so".format(c.id))
        if newStatus not in (ACTIVE, INACTIVE, REVOKED):
            raise ApiError(
                "InvalidRequestException",
                "newStatus {} cannot be set with UpdateCertificate; use ACTIVE, INACTIVE or REVOKED".format(
                    newStatus
                ),
            )
        if newStatus == ACTIVE:
            claim = self.registry.provisioning_claim(c.id)
            is_claim = c.status == CLAIM or any(n == CLAIM_POLICY for n, _ in self.registry.policies_of(c.id))
            if claim is not None:
                if claim[1] <= self.registry.clock():
                    raise ApiError(
                        "CertificateStateException", "Provisioning claim {} has expired".format(c.id)
                    )
                is_claim = True
            newStatus = CLAIM if is_claim else ACTIVE  # a claim stays a claim
        self.registry.set_status(c.id, newStatus)
        return {}

    def op_DeleteCertificate(self, certificateId: str, forceDelete: bool = False) -> dict[str, Any]:
        c = self._cert(certificateId)
        self.registry.delete_certificate(c.id, force=forceDelete)
        return {}

    # -- policies ----------------------------------------------------------------------------

    def op_CreatePolicy(
        self, policyName: str, policyDocument: str, tags: list[dict[str, str]] | None = None
    ) -> dict[str, Any]:
        self.registry.create_policy(policyName, policyDocument)
        arn = self.arn("policy", policyName)
        self._set_tags(arn, tags)
        return {
            "policyName": policyName,
            "policyArn": arn,
            "policyDocument": policyDocument,
            "policyVersionId": "1",
        }

    def op_GetPolicy(self, policyName: str) -> dict[str, Any]:
        document = self.registry.policy(policyName)
        if document is None:
            raise ApiError("ResourceNotFoundException", "Policy {} does not exist".format(policyName))
        return {
            "policyName": policyName,
            "policyArn": self.arn("policy", policyName),
            "policyDocument": document,
            "defaultVersionId": "1",
        }

    def op_ListPolicies(
        self, marker: str | None = None, pageSize: int | None = None, ascendingOrder: bool = False
    ) -> dict[str, Any]:
        items = [
            {"policyName": n, "policyArn": self.arn("policy", n)} for n, _, _ in self.registry.policies()
        ]
        page, token = _page(items, marker, pageSize, "marker")
        return {"policies": page, "nextMarker": token}

    def op_DeletePolicy(self, policyName: str) -> dict[str, Any]:
        self.registry.delete_policy(policyName)
        self._drop_tags(self.arn("policy", policyName))
        return {}

    def op_AttachPolicy(self, policyName: str, target: str) -> dict[str, Any]:
        self.registry.attach_policy(policyName, self._certificate_of(target))
        return {}

    def op_DetachPolicy(self, policyName: str, target: str) -> dict[str, Any]:
        cid = self._certificate_of(target)
        if self.registry.policy(policyName) is None:
            raise ApiError("ResourceNotFoundException", "Policy {} does not exist".format(policyName))
        self._cert(cid)
        self.registry.detach_policy(policyName, cid)
        return {}

    def op_ListAttachedPolicies(
        self, target: str, recursive: bool = False, marker: str | None = None, pageSize: int | None = None
    ) -> dict[str, Any]:
        cid = self._certificate_of(target)
        self._cert(cid)
        items = [
            {"policyName": n, "policyArn": self.arn("policy", n)} for n, _ in self.registry.policies_of(cid)
        ]
        page, token = _page(items, marker, pageSize, "marker")
        return {"policies": page, "nextMarker": token}

    # -- thing groups and types ------------------------------------------------------------------

    def op_CreateThingGroup(
        self,
        thingGroupName: str,
        parentGroupName: str | None = None,
        thingGroupProperties: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        if parentGroupName is not None:
            self._group(parentGroupName)
        wanted = {"parentGroupName": parentGroupName, "thingGroupProperties": thingGroupProperties or {}}
        existing = self.registry.resource(THING_GROUP, thingGroupName)
        if existing is not None:
            props = existing[0]
            same = {k: props.get(k, {} if k == "thingGroupProperties" else None) for k in wanted} == wanted
            if not same:
                # AWS: the same name with the same properties is no error; different ones are.
                raise ApiError(
                    "ResourceAlreadyExistsException",
                    "Thing group {} already exists with different properties".format(thingGroupName),
                )
        else:
            self.registry.create_resource(
                THING_GROUP, thingGroupName, {**wanted, "thingGroupId": str(uuid.uuid4())}
            )
            self._set_tags(self.arn("thinggroup", thingGroupName), tags)
        return {
            "thingGroupName": thingGroupName,
            "thingGroupArn": self.arn("thinggroup", thingGroupName),
            "thingGroupId": self._group_id(thingGroupName),
        }

    def _group_id(self, name: str) -> str:
        found = self.registry.resource(THING_GROUP, name)
        props = found[0] if found else {}
        return str(props.get("thingGroupId") or uuid.uuid5(uuid.NAMESPACE_URL, "thinggroup/" + name))

    def _group(self, name: str) -> tuple[dict[str, Any], float]:
        found = self.registry.resource(THING_GROUP, name)
        if found is None:
            raise ApiError("ResourceNotFoundException", "Thing group {} does not exist".format(name))
        return found

    def op_DescribeThingGroup(self, thingGroupName: str) -> dict[str, Any]:
        props, created = self._group(thingGroupName)
        return {
            "thingGroupName": thingGroupName,
            "thingGroupId": self._group_id(thingGroupName),
            "thingGroupArn": self.arn("thinggroup", thingGroupName),
            "version": 1,
            "thingGroupProperties": props.get("thingGroupProperties") or {},
            "thingGroupMetadata": {"parentGroupName": props.get("parentGroupName"), "creationDate": created},
        }

    def op_ListThingGroups(
        self,
        nextToken: str | None = None,
        maxResults: int | None = None,
        parentGroup: str | None = None,
        namePrefixFilter: str | None = None,
        recursive: bool = True,
    ) -> dict[str, Any]:
        if parentGroup is not None:
            self._group(parentGroup)
        items = []
        for name in self.registry.resources(THING_GROUP):
            if namePrefixFilter and not name.startswith(namePrefixFilter):
                continue
            if parentGroup is not None:
                found = self.registry.resource(THING_GROUP, name)
                if found is None or found[0].get("parentGroupName") != parentGroup:
                    continue
            items.append({"groupName": name, "groupArn": self.arn("thinggroup", name)})
        page, token = _page(items, nextToken, maxResults, "nextToken")
        return {"thingGroups": page, "nextToken": token}

    def op_DeleteThingGroup(self, thingGroupName: str, expectedVersion: int | None = None) -> dict[str, Any]:
        if expectedVersion is not None and expectedVersion != 1:
            raise ApiError(
                "VersionConflictException", "Thing group {} is at version 1".format(thingGroupName)
            )
        children = [
            n
            for n in self.registry.resources(THING_GROUP)
            if (self.registry.resource(THING_GROUP, n) or ({}, 0))[0].get("parentGroupName") == thingGroupName
        ]
        if children:
            raise ApiError(
                "InvalidRequestException",
                "Thing group {} has child groups {}; delete them first".format(
                    thingGroupName, ", ".join(children)
                ),
            )
        # AWS lists no ResourceNotFoundException for DeleteThingGroup: a missing group is no error
        # (https://docs.aws.amazon.com/iot/latest/apireference/API_DeleteThingGroup.html).
        self.registry.delete_resource(THING_GROUP, thingGroupName)
        self._drop_tags(self.arn("thinggroup", thingGroupName))
        return {}

    def op_CreateThingType(
        self,
        thingTypeName: str,
        thingTypeProperties: dict[str, Any] | None = None,
        tags: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        type_id = str(uuid.uuid4())
        if not self.registry.create_resource(
            THING_TYPE,
            thingTypeName,
            {"thingTypeProperties": thingTypeProperties or {}, "thingTypeId": type_id},
        ):
            raise ApiError(
                "ResourceAlreadyExistsException", "Thing type {} already exists".format(thingTypeName)
            )
        self._set_tags(self.arn("thingtype", thingTypeName), tags)
        return {
            "thingTypeName": thingTypeName,
            "thingTypeArn": self.arn("thingtype", thingTypeName),
            "thingTypeId": type_id,
        }

    # -- things ---------------------------------------------------------------------------------

    def _thing(self, thingName: str) -> Any:
        thing = self.registry.thing(thingName)
        if thing is None:
            raise ApiError("ResourceNotFoundException", "Thing {} does not exist".format(thingName))
        return thing

    def op_DescribeThing(self, thingName: str) -> dict[str, Any]:
        t = self._thing(thingName)
        return {
            "defaultClientId": t.name,
            "thingName": t.name,
            "thingId": str(uuid.uuid5(uuid.NAMESPACE_URL, "thing/" + t.name)),
            "thingArn": self.arn("thing", t.name),
            "thingTypeName": t.thing_type,
            "attributes": t.attributes,
            "version": 1,
            "billingGroupName": t.billing_group,
        }

    def op_ListThings(  # the model's members, in its order
        self, nextToken: str | None = None, maxResults: int | None = None, attributeName: str | None = None,
        attributeValue: str | None = None, thingTypeName: str | None = None, usePrefixAttributeValue: bool = False,
    ) -> dict[str, Any]:
        if thingTypeName is not None and self.registry.resource(THING_TYPE, thingTypeName) is None:
            raise ApiError("ResourceNotFoundException", "Thing type {} does not exist".format(thingTypeName))
        items = []
        for t in self.registry.things():
            if thingTypeName is not None and t.thing_type != thingTypeName:
                continue
            if attributeName is not None:
                value = t.attributes.get(attributeName)
                if value is None or (
                    attributeValue is not None
                    and not (
                        value.startswith(attributeValue)
                        if usePrefixAttributeValue
                        else value == attributeValue
                    )
                ):
                    continue
            items.append(
                {
                    "thingName": t.name,
                    "thingTypeName": t.thing_type,
                    "thingArn": self.arn("thing", t.name),
                    "attributes": t.attributes,
                    "version": 1,
                }
            )
        page, token = _page(items, nextToken, maxResults, "nextToken")
        return {"things": page, "nextToken": token}

    def op_DeleteThing(self, thingName: str, expectedVersion: int | None = None) -> dict[str, Any]:
        if (
            expectedVersion is not None
            and self.registry.thing(thingName) is not None
            and expectedVersion != 1
        ):
            raise ApiError(
                "VersionConflictException",
                "Thing {} is at version 1, not {}".format(thingName, expectedVersion),
            )
        # AWS: "Returns successfully with no error if ... you specify a thing that doesn't exist"
        # (https://docs.aws.amazon.com/iot/latest/apireference/API_DeleteThing.html).
        self.registry.delete_thing(thingName)
        return {}

    def op_ListThingPrincipals(
        self, thingName: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        t = self._thing(thingName)
        page, token = _page([self.arn("cert", c) for c in t.certificates], nextToken, maxResults, "nextToken")
        return {"principals": page, "nextToken": token}

    def op_AttachThingPrincipal(
        self, thingName: str, principal: str, thingPrincipalType: str | None = None
    ) -> dict[str, Any]:
        self.registry.attach_thing_principal(thingName, self._certificate_of(principal))
        return {}

    def op_DetachThingPrincipal(self, thingName: str, principal: str) -> dict[str, Any]:
        cid = self._certificate_of(principal)
        self._thing(thingName)
        self._cert(cid)
        self.registry.detach_thing_principal(thingName, cid)
        return {}

    # -- topic rules (tools/iotsim/rules.py) --------------------------------------------------------

    def op_CreateTopicRule(
        self, ruleName: str, topicRulePayload: dict[str, Any], tags: str | None = None
    ) -> dict[str, Any]:
        self.rules.create(ruleName, topicRulePayload)
        # CreateTopicRule's tags travel as a query string in the x-amz-tagging header.
        pairs = urllib.parse.parse_qsl(tags or "", keep_blank_values=True)
        self._set_tags(self.rules.arn(ruleName), [{"Key": k, "Value": v} for k, v in pairs])
        return {}

    def op_ReplaceTopicRule(self, ruleName: str, topicRulePayload: dict[str, Any]) -> dict[str, Any]:
        self.rules.replace(ruleName, topicRulePayload)
        return {}

    def op_GetTopicRule(self, ruleName: str) -> dict[str, Any]:
        return self.rules.get(ruleName)

    def op_DeleteTopicRule(self, ruleName: str) -> dict[str, Any]:
        self.rules.delete(ruleName)
        self._drop_tags(self.rules.arn(ruleName))
        return {}

    def op_ListTopicRules(
        self, topic: str | None = None, maxResults: int | None = None, nextToken: str | None = None,
        ruleDisabled: bool | None = None,
    ) -> dict[str, Any]:
        page, token = _page(self.rules.list(topic, ruleDisabled), nextToken, maxResults, "nextToken")
        return {"rules": page, "nextToken": token}

    # -- tags --------------------------------------------------------------------------------------

    def op_ListTagsForResource(self, resourceArn: str, nextToken: str | None = None) -> dict[str, Any]:
        tags = self._tags().get(self._taggable(resourceArn), {})
        return {"tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]}

    def op_TagResource(self, resourceArn: str, tags: list[dict[str, str]]) -> dict[str, Any]:
        self._set_tags(self._taggable(resourceArn), tags)
        return {}

    def op_UntagResource(self, resourceArn: str, tagKeys: list[str]) -> dict[str, Any]:
        self._taggable(resourceArn)
        with self._lock:
            current = self._tags().get(resourceArn, {})
            kept = [{"Key": k, "Value": v} for k, v in current.items() if k not in tagKeys]
            self._set_tags(resourceArn, kept, replace=True)
        return {}


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; more get 503 and are closed."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[_Handler], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = json.dumps({"message": "too many connections; try again"}).encode()
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                "x-amzn-ErrorType: ServiceUnavailableException\r\nContent-Length: {}\r\n"
                "Connection: close\r\n\r\n".format(len(body))
            )
            try:
                request.setblocking(False)  # never wait on a client that does not read
                request.send(head.encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read bounded by what is left of the request's deadline:
    a client dripping a byte at a time still runs out of time."""

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        self.sock = sock
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    control: ControlPlane
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, a keep-alive client's
    # delayed ACK holds the body back ~40 ms on every call.
    disable_nagle_algorithm = True
    server_version = "iotsim"
    deadline = 0.0

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file: replaced by one that keeps the deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        # The wait for a request counts too: an idle keep-alive connection ends with it.
        self.deadline = time.monotonic() + self.control.limits.request_timeout
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def _body(self) -> bytes:
        """The request's body, refused from its headers alone when it is not one AWS would read."""
        if self.headers.get("Transfer-Encoding"):
            raise ApiError("SerializationException", "send a Content-Length, not a Transfer-Encoding", 411)
        lengths = self.headers.get_all("Content-Length") or ["0"]
        if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
            raise ApiError("SerializationException", "Content-Length {!r} is not a byte count".format(lengths[0][:40]), 400)
        length = int(lengths[0])
        if length > self.control.limits.max_body:
            raise ApiError(
                "RequestEntityTooLargeException",
                "the body has {} bytes; iotsim takes at most {}".format(length, self.control.limits.max_body),
                413,
            )
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise TimeoutError("the body ended early")
        return body

    def _serve(self) -> None:
        plane = self.control
        model = plane.guess_model(self.headers)
        operation = "?"
        try:
            if self.headers.get("Host") not in plane.hosts:
                raise ApiError(
                    "ForbiddenException",
                    "Host {!r} is not this endpoint ({})".format(
                        str(self.headers.get("Host"))[:100], " or ".join(plane.hosts)
                    ),
                    403,
                )
            try:
                body = self._body()
            except ApiError:
                self.close_connection = True  # the rest of the stream cannot be trusted
                raise
            model = plane.authenticate(self.command, self.path, self.headers, body)
            url = urllib.parse.urlsplit(self.path)
            operation, params = model.request(self.command, url.path, url.query, dict(self.headers.items()), body)
            result = plane.call(operation, params, model.service)
            request_id = str(uuid.uuid4())
            status = model.success_status(operation)
            data = model.answer(operation, result, request_id) if status != 204 else b""
            self._send(status, data, model, request_id, None)
        except ApiError as exc:
            request_id = str(uuid.uuid4())
            status, data = model.error(exc, request_id)
            log.info("%s: %s %s", operation, exc.code, exc.message)
            self._send(status, data, model, request_id, exc.code)
        except TimeoutError:
            raise  # handle_one_request closes the connection
        except Exception as exc:  # a bug in iotsim: AWS's InternalFailure, and the traceback logged
            log.exception("%s failed", operation)
            request_id = str(uuid.uuid4())
            status, data = model.error(
                ApiError("InternalFailureException", "iotsim internal error: {}".format(type(exc).__name__), 500),
                request_id,
            )
            self._send(status, data, model, request_id, "InternalFailureException")

    def _send(self, status: int, data: bytes, model: ApiModel, request_id: str, error: str | None) -> None:
        self.connection.settimeout(self.control.limits.request_timeout)  # a client that does not read
        self.send_response(status)
        self.send_header("Content-Type", model.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", request_id)
        if error:
            self.send_header("x-amzn-ErrorType", error)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    # Every method reaches the same checks (OPTIONS too: a CORS preflight is refused like any
    # unsigned request, and no Access-Control-* header is ever sent).
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve
