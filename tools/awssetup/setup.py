"""What `python -m tools.awssetup` creates on AWS (or iotsim), step by step, and how it undoes it.

First boot: the provisioning role, the thing group, the thing policy both
templates name, the demo template, the claim certificate and its policy.
Rotation (docs/rotation.md): the rotation template with its pre-provisioning
hook, the retire rule on ``fleetprov/+/retire``, their two Lambda functions
(fleetprov's own package, tools/awssetup/lambdas), each with an execution role
that may make only the calls it needs and a resource policy that lets AWS IoT
invoke it for that template or rule only.

Every resource the tool creates is tagged ``fleetprov:awssetup=<setup name>``
where the service can tag it (IAM roles, the thing group, the templates, the
policies, the functions, the rule) and recorded in ``<device folder>/awssetup.json``
as soon as it exists; the claim certificate, which AWS cannot tag, is recorded there
only. ``teardown`` deletes what that file lists and whose tag still says this
tool made it, nothing else: a resource that existed before ``setup`` (the same
name, no tag) is used and reported, never deleted.

A step that fails makes ``setup`` undo what this run created (newest first)
and say what it undid and what, if anything, it could not; the state file
always lists what still exists, so ``teardown`` can finish the job.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..iotsim.policy import THING_POLICY, claim_policy_document, thing_policy_document
from . import lambdas

TAG_KEY = "fleetprov:awssetup"
STATE_FILE = "awssetup.json"
THINGS_REGISTRATION = "arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration"
LAMBDA_LOGS = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
INLINE_POLICY = "fleetprov-rotation"  # a Lambda role's own rights, an inline policy of the role
PERMISSION_SID = "aws-iot-invoke"  # the function's resource-policy statement for AWS IoT
SYSTEM_AMAZON_ROOT_CA = Path("/etc/ssl/certs/Amazon_Root_CA_1.pem")
TEMPLATES = Path(__file__).resolve().parents[1] / "iotsim" / "templates"
DEFAULT_TEMPLATE_FILE = TEMPLATES / "demo.json"
ROTATION_TEMPLATE_FILE = TEMPLATES / "rotation.json"
WAIT = {"Delay": 2, "MaxAttempts": 60}  # a new or updated Lambda function settles within seconds
ROLE_PROPAGATION_TRIES = 10
ROLE_PROPAGATION_WAIT_S = 3.0
_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedException", "UnauthorizedOperation")


class _Gone(Exception):
    """A resource the state file lists no longer exists."""


class SetupError(Exception):
    """A failure with a one-line message for the user (exit status 1; 2 for credentials)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Options:
    folder: Path
    name: str = "fleetprov"
    template_name: str = "FleetprovDemo"
    template_file: Path = DEFAULT_TEMPLATE_FILE
    role_name: str = "FleetprovProvisioningRole"
    thing_group: str = "fleetprov-demo"
    claim_policy: str = "FleetprovClaimPolicy"
    rotation_template: str = "FleetprovRotation"
    hook_function: str = lambdas.HOOK_FUNCTION
    hook_role: str = "FleetprovRotationHookRole"
    retire_function: str = lambdas.RETIRE_FUNCTION
    retire_role: str = "FleetprovRetireRole"
    retire_rule: str = lambdas.RETIRE_RULE
    ca_file: Path | None = None
    mqtt_port: int | None = None
    method: str = "csr"
    fmt: str = "cbor"
    dry_run: bool = False


@dataclass
class Clients:
    iot: Any
    iam: Any
    lam: Any  # AWS Lambda


@dataclass(frozen=True)
class RoleSpec:
    """An IAM role the setup makes: who may assume it, its managed policy, its own rights."""

    kind: str  # its key in awssetup.json
    name: str
    service: str  # the service that assumes it
    managed: str
    purpose: str
    inline: dict[str, Any] | None = None


def trust(service: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def lambda_rights(region: str, account: str, retire: bool) -> dict[str, Any]:
    """What a rotation function may do: the hook reads a thing's principals; the retire step also
    reads, deactivates and detaches certificates and answers on the retire topics."""
    arn = "arn:aws:iot:{}:{}:".format(region, account)
    statements: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": "iot:ListThingPrincipals", "Resource": arn + "thing/*"}
    ]
    if retire:
        statements += [
            {"Effect": "Allow", "Action": "iot:DetachThingPrincipal", "Resource": arn + "thing/*"},
            {"Effect": "Allow", "Action": ["iot:DescribeCertificate", "iot:UpdateCertificate"],
             "Resource": arn + "cert/*"},
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": arn + "topic/" + lambdas.RETIRE_TOPIC_FILTER.replace("+", "*") + "/*"},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    changed: bool = False

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


def explain(exc: BaseException, action: str) -> SetupError:
    """A user's message for a boto3 failure during ``action``."""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return SetupError(
            "no AWS credentials for {}: run `aws configure` (or set AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); against iotsim give its local "
            "--endpoint-url, which signs with iotsim's own key".format(action),
            2,
        )
    if isinstance(exc, NoRegionError):
        return SetupError("no AWS region: pass --region or set AWS_REGION / `aws configure set region`", 2)
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if code in _DENIED:
            return SetupError(
                "permission denied for {} ({}: {}): the identity running this tool needs IAM "
                "(CreateRole, AttachRolePolicy, PutRolePolicy, TagRole, GetRole, PassRole), AWS IoT "
                "(iot:*ProvisioningTemplate*, iot:CreateThingGroup, iot:CreatePolicy, iot:*TopicRule*, "
                "iot:CreateKeysAndCertificate, iot:AttachPolicy, iot:DescribeEndpoint, iot:TagResource) "
                "and Lambda rights (lambda:*Function*, lambda:AddPermission, lambda:GetPolicy)".format(
                    action, code, message
                )
            )
        return SetupError("{} failed: {}: {}".format(action, code, " ".join(str(message).split())))
    if isinstance(exc, EndpointConnectionError):
        return SetupError(
            "{} failed: nothing answers at {} (iotsim: is `python -m tools.iotsim up` running?)".format(
                action, exc.kwargs.get("endpoint_url", "the endpoint")
            )
        )
    return SetupError("{} failed: {}".format(action, " ".join(str(exc).split())))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class Setup:
    """``setup()`` and ``teardown()`` for one device folder."""

    def __init__(self, options: Options, clients: Clients) -> None:
        self.o = options
        self.c = clients
        self.state_path = options.folder / STATE_FILE
        self.state: dict[str, Any] = self._load()
        self.report = Report()
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self.region = self.account = ""  # the account's, once setup knows them

    # -- the state file -------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"created": {}}
        except ValueError as exc:
            raise SetupError(
                "{} is not valid JSON ({}); fix or remove it".format(self.state_path, exc)
            ) from None
        state.setdefault("created", {})
        return state

    def _save(self) -> None:
        if self.o.dry_run:
            return
        self.o.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state_path)

    def _created(self, kind: str, value: Any, undo: Callable[[], None]) -> None:
        self.state["created"][kind] = value
        self._save()
        self._undo.append((kind, undo))
        self.report.changed = True

    def _forget(self, kind: str) -> None:
        self.state["created"].pop(kind, None)
        self._save()

    def _tags(self) -> list[dict[str, str]]:
        return [{"Key": TAG_KEY, "Value": self.o.name}]

    def _call(self, action: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, action) from exc

    def _exists(self, action: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """fn's answer, or None when the service says the resource does not exist."""
        try:
            return fn(**kwargs)
        except ClientError as exc:
            if _code(exc) in ("ResourceNotFoundException", "NoSuchEntity"):
                return None
            raise explain(exc, action) from exc
        except BotoCoreError as exc:
            raise explain(exc, action) from exc

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> Report:
        verb = "would create" if self.o.dry_run else "created"
        try:
            body = self.o.template_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise SetupError("cannot read the template {}: {}".format(self.o.template_file, exc)) from None
        ca_pem = self._ca_pem()
        try:
            endpoint = self._endpoint()
            role_arn = self._role(verb, RoleSpec("role", self.o.role_name, "iot.amazonaws.com", THINGS_REGISTRATION,
                                                 "AWS IoT fleet provisioning"))
            # The account's ARNs: its region, and its number from the role's ARN.
            self.region, self.account = self.c.iot.meta.region_name, role_arn.split(":")[4]
            self._thing_group(verb)
            self._thing_policy(verb)
            self._template(verb, "template", self.o.template_name, self.o.template_file, body, role_arn)
            cert = self._claim(verb)
            self._claim_policy(verb, cert)
            self._rotation(verb, endpoint, role_arn)
            self._device_folder(endpoint, cert, ca_pem)
        except SetupError as exc:
            undone, left = self._rollback()
            parts = [str(exc)]
            if undone:
                parts.append("rolled back what this run created: {}".format(", ".join(undone)))
            if left:
                parts.append(
                    "could NOT remove: {} (listed in {}; `python -m tools.awssetup teardown` retries)".format(
                        ", ".join(left), self.state_path
                    )
                )
            elif not undone:
                parts.append("nothing was created")
            raise SetupError("; ".join(parts), exc.status) from exc
        if self.o.dry_run:
            self.report.say("dry run: nothing was changed")
        elif not self.report.changed:
            self.report.say("everything already exists: nothing changed")
        return self.report

    def _rollback(self) -> tuple[list[str], list[str]]:
        undone, left = [], []
        for kind, undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:  # report every failure, keep undoing the rest
                left.append("{} ({})".format(kind, exc))
                continue
            undone.append(kind)
            self._forget(kind)
        self._undo.clear()
        return undone, left

    def _ca_pem(self) -> bytes:
        path = self.o.ca_file or SYSTEM_AMAZON_ROOT_CA
        try:
            data = path.read_bytes()
            x509.load_pem_x509_certificate(data)
        except (OSError, ValueError) as exc:
            hint = (
                " (Debian: apt-get install ca-certificates; or --ca-file AmazonRootCA1.pem)"
                if self.o.ca_file is None
                else ""
            )
            raise SetupError("cannot read the CA certificate {}: {}{}".format(path, exc, hint)) from None
        return data

    def _endpoint(self) -> str:
        answer = self._call("iot:DescribeEndpoint", self.c.iot.describe_endpoint, endpointType="iot:Data-ATS")
        endpoint = str(answer["endpointAddress"])
        if ".amazonaws.com" in endpoint and "-ats." not in endpoint:
            raise SetupError("DescribeEndpoint returned {}, not an -ats endpoint".format(endpoint))
        self.report.say("endpoint: {}".format(endpoint))
        return endpoint

    def _arn(self, service: str, resource: str) -> str:
        return "arn:aws:{}:{}:{}:{}".format(service, self.region, self.account, resource)

    def _changed(self, line: str) -> None:
        self.report.say(line)
        self.report.changed = True

    def _role(self, verb: str, spec: RoleSpec) -> str:
        name = spec.name
        found = self._exists("iam:GetRole", self.c.iam.get_role, RoleName=name)
        managed = spec.managed.rsplit("/", 1)[1]
        if found is None:
            self.report.say("role {}: {} ({}: trusts {}, {}{})".format(
                name, verb, spec.purpose, spec.service, managed, ", its own rights" if spec.inline else ""))
            if self.o.dry_run:
                return "arn:aws:iam::000000000000:role/{}".format(name)
            role = self._call(
                "iam:CreateRole", self.c.iam.create_role, RoleName=name,
                AssumeRolePolicyDocument=json.dumps(trust(spec.service)),
                Description="{} for fleetprov ({})".format(spec.purpose, self.o.name), Tags=self._tags(),
            )
            self._created(spec.kind, name, lambda: self._delete_role(name))
            self._call("iam:AttachRolePolicy", self.c.iam.attach_role_policy, RoleName=name, PolicyArn=spec.managed)
            if spec.inline is not None:
                self._call("iam:PutRolePolicy", self.c.iam.put_role_policy, RoleName=name,
                           PolicyName=INLINE_POLICY, PolicyDocument=json.dumps(spec.inline))
            return str(role["Role"]["Arn"])
        attached = self._call("iam:ListAttachedRolePolicies", self.c.iam.list_attached_role_policies, RoleName=name)
        attach = spec.managed not in [p["PolicyArn"] for p in attached["AttachedPolicies"]]
        put = False
        if spec.inline is not None:
            own = self._exists("iam:GetRolePolicy", self.c.iam.get_role_policy, RoleName=name, PolicyName=INLINE_POLICY)
            put = own is None or own["PolicyDocument"] != spec.inline  # boto3 gives the document parsed
        missing = [what for what, yes in ((managed, attach), ("its own rights ({})".format(INLINE_POLICY), put)) if yes]
        if not missing:
            self.report.say("role {}: exists, unchanged".format(name))
        elif self.o.dry_run:
            self.report.say("role {}: would give it {}".format(name, ", ".join(missing)))
        else:
            if attach:
                self._call("iam:AttachRolePolicy", self.c.iam.attach_role_policy, RoleName=name, PolicyArn=spec.managed)
            if put:
                self._call("iam:PutRolePolicy", self.c.iam.put_role_policy, RoleName=name,
                           PolicyName=INLINE_POLICY, PolicyDocument=json.dumps(spec.inline))
            self._changed("role {}: gave it {}".format(name, ", ".join(missing)))
        return str(found["Role"]["Arn"])

    def _thing_group(self, verb: str) -> None:
        name = self.o.thing_group
        found = self._exists("iot:DescribeThingGroup", self.c.iot.describe_thing_group, thingGroupName=name)
        if found is not None:
            self.report.say("thing group {}: exists, unchanged".format(name))
            return
        self.report.say("thing group {}: {}".format(name, verb))
        if self.o.dry_run:
            return
        self._call(
            "iot:CreateThingGroup", self.c.iot.create_thing_group, thingGroupName=name, tags=self._tags()
        )
        self._created("thing_group", name, lambda: self.c.iot.delete_thing_group(thingGroupName=name))

    def _thing_policy(self, verb: str) -> None:
        """The policy both templates attach to a thing's certificate (docs/rotation.md)."""
        name = THING_POLICY
        if self._exists("iot:GetPolicy", self.c.iot.get_policy, policyName=name) is not None:
            self.report.say("thing policy {}: exists, unchanged".format(name))
            return
        self.report.say("thing policy {}: {} (the thing's own topics; CreateCertificateFromCsr and template {} "
                        "for the thing itself)".format(name, verb, self.o.rotation_template))
        if self.o.dry_run:
            return
        document = thing_policy_document(self.region, self.account, self.o.rotation_template)
        self._call("iot:CreatePolicy", self.c.iot.create_policy, policyName=name, policyDocument=document,
                   tags=self._tags())
        self._created("thing_policy", name, lambda: self.c.iot.delete_policy(policyName=name))

    def _template(
        self, verb: str, kind: str, name: str, path: Path, body: str, role_arn: str, hook: dict[str, str] | None = None
    ) -> None:
        found = self._exists(
            "iot:DescribeProvisioningTemplate", self.c.iot.describe_provisioning_template, templateName=name
        )
        if found is not None:
            new_body = json.loads(found["templateBody"]) != json.loads(body)
            wrong = [why for why, yes in (
                ("its body differs from {}".format(path), new_body),
                ("it is disabled", not found["enabled"]),
                ("its pre-provisioning hook is not {}".format(hook and hook["targetArn"]),
                 hook is not None and (found.get("preProvisioningHook") or {}).get("targetArn") != hook["targetArn"]),
            ) if yes]
            if not wrong:
                self.report.say("template {}: exists, unchanged".format(name))
                return
            # A different body is a new version (AWS keeps the old ones), never an overwrite.
            self.report.say("template {}: exists but {}; {} it".format(
                name, " and ".join(wrong), "would update" if self.o.dry_run else "updated"))
            if self.o.dry_run:
                return
            if new_body:
                self._call("iot:CreateProvisioningTemplateVersion", self.c.iot.create_provisioning_template_version,
                           templateName=name, templateBody=body, setAsDefault=True)
            update: dict[str, Any] = {"templateName": name, "enabled": True}
            if hook is not None:
                update["preProvisioningHook"] = hook
            self._call("iot:UpdateProvisioningTemplate", self.c.iot.update_provisioning_template, **update)
            self.report.changed = True
            return
        self.report.say("template {}: {} from {} (enabled{})".format(
            name, verb, path, ", hook " + hook["targetArn"] if hook else ""))
        if self.o.dry_run:
            return
        kwargs: dict[str, Any] = dict(
            templateName=name, description="fleetprov ({})".format(self.o.name), templateBody=body, enabled=True,
            provisioningRoleArn=role_arn, tags=self._tags(),
        )
        if hook is not None:
            kwargs["preProvisioningHook"] = hook
        self._with_fresh_role("iot:CreateProvisioningTemplate", self.c.iot.create_provisioning_template, kwargs,
                              "role", "InvalidRequestException")
        self._created(kind, name, lambda: self.c.iot.delete_provisioning_template(templateName=name))

    def _with_fresh_role(
        self, action: str, fn: Callable[..., Any], kwargs: dict[str, Any], role_kind: str, code: str
    ) -> Any:
        """``fn(**kwargs)``; a role this run created may not be usable yet (IAM is eventually
        consistent): that one refusal is retried, a bounded number of times."""
        for attempt in range(ROLE_PROPAGATION_TRIES):
            try:
                return fn(**kwargs)
            except ClientError as exc:
                message = str(exc.response.get("Error", {}).get("Message", "")).lower()
                if not (role_kind in self.state["created"] and _code(exc) == code and "role" in message
                        and attempt + 1 < ROLE_PROPAGATION_TRIES):
                    raise explain(exc, action) from exc
                self.report.say("the new role is not usable yet; retrying in {:g} s".format(ROLE_PROPAGATION_WAIT_S))
                time.sleep(ROLE_PROPAGATION_WAIT_S)
            except BotoCoreError as exc:
                raise explain(exc, action) from exc
        raise AssertionError("unreachable: the last attempt raises")

    # -- rotation (docs/rotation.md) ----------------------------------------------------------

    def _rotation(self, verb: str, endpoint: str, role_arn: str) -> None:
        o = self.o
        template_arn = self._arn("iot", "provisioningtemplate/" + o.rotation_template)
        hook_role = self._role(verb, RoleSpec("hook_role", o.hook_role, "lambda.amazonaws.com", LAMBDA_LOGS,
                                              "the rotation template's pre-provisioning hook",
                                              lambda_rights(self.region, self.account, retire=False)))
        hook = self._function(verb, "hook_function", o.hook_function, lambdas.HOOK_HANDLER, hook_role, template_arn, {})
        body = ROTATION_TEMPLATE_FILE.read_text(encoding="utf-8")
        self._template(verb, "rotation_template", o.rotation_template, ROTATION_TEMPLATE_FILE, body, role_arn,
                       {"targetArn": hook, "payloadVersion": lambdas.HOOK_PAYLOAD_VERSION})
        retire_role = self._role(verb, RoleSpec("retire_role", o.retire_role, "lambda.amazonaws.com", LAMBDA_LOGS,
                                                "the retire rule's action",
                                                lambda_rights(self.region, self.account, retire=True)))
        retire = self._function(verb, "retire_function", o.retire_function, lambdas.RETIRE_HANDLER, retire_role,
                                self._arn("iot", "rule/" + o.retire_rule), {"IOT_DATA_ENDPOINT": endpoint})
        self._retire_rule(verb, retire)

    def _function(
        self, verb: str, kind: str, name: str, handler: str, role_arn: str, source: str, env: dict[str, str]
    ) -> str:
        """fleetprov's package as function ``name``, invocable by AWS IoT for ``source`` only; its ARN."""
        code = lambdas.package()
        wanted = {"Runtime": lambdas.RUNTIME, "Handler": handler, "Role": role_arn, "Timeout": lambdas.TIMEOUT_S,
                  "Environment": {"Variables": env}}
        found = self._exists("lambda:GetFunction", self.c.lam.get_function, FunctionName=name)
        if found is None:
            self.report.say("function {}: {} (fleetprov's package, {}, {})".format(
                name, verb, handler, role_arn.rsplit("/", 1)[1]))
            if self.o.dry_run:
                self.report.say("function {}: would let AWS IoT invoke it for {}".format(name, source))
                return self._arn("lambda", "function:" + name)
            made = self._with_fresh_role("lambda:CreateFunction", self.c.lam.create_function,
                                         dict(FunctionName=name, Code={"ZipFile": code}, Tags={TAG_KEY: self.o.name},
                                              Description="fleetprov certificate rotation ({})".format(self.o.name),
                                              **wanted), "hook_role" if kind == "hook_function" else "retire_role",
                                         "InvalidParameterValueException")
            self._created(kind, name, lambda: self.c.lam.delete_function(FunctionName=name))
            self._wait("function_active_v2", name)
            self._permission(name, source)
            return str(made["FunctionArn"])
        config = found["Configuration"]
        stale = [what for what, yes in (
            ("its code", config["CodeSha256"] != lambdas.code_sha256(code)),
            ("its configuration", any(config.get(k) != v for k, v in wanted.items() if k != "Environment")
             or (config.get("Environment") or {}).get("Variables", {}) != env),
        ) if yes]
        if self.state["created"].get(kind) != name:
            # Not this tool's: changing it could tie it to a role a teardown deletes.
            self.report.say("function {}: exists, not made by this tool: used as it is{}".format(
                name, " ({} differs from fleetprov's)".format(" and ".join(stale)) if stale else ""))
            return str(config["FunctionArn"])
        if not stale:
            self.report.say("function {}: exists, unchanged".format(name))
        elif self.o.dry_run:
            self.report.say("function {}: exists but {} differs; would update it".format(name, " and ".join(stale)))
        else:
            if "its code" in stale:
                self._call("lambda:UpdateFunctionCode", self.c.lam.update_function_code, FunctionName=name, ZipFile=code)
                self._wait("function_updated_v2", name)
            if "its configuration" in stale:
                self._call("lambda:UpdateFunctionConfiguration", self.c.lam.update_function_configuration,
                           FunctionName=name, **wanted)
                self._wait("function_updated_v2", name)
            self._changed("function {}: {} updated".format(name, " and ".join(stale)))
        if not self.o.dry_run:
            self._permission(name, source)
        return str(config["FunctionArn"])

    def _wait(self, waiter: str, name: str) -> None:
        try:
            self.c.lam.get_waiter(waiter).wait(FunctionName=name, WaiterConfig=WAIT)
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, "waiting for function {} ({})".format(name, waiter)) from exc

    def _permission(self, name: str, source: str) -> None:
        """The function's resource-policy statement: AWS IoT may invoke it for ``source`` only
        (AWS asks for the source's ARN and account against the confused deputy)."""
        condition = {"StringEquals": {"AWS:SourceAccount": self.account}, "ArnLike": {"AWS:SourceArn": source}}
        found = self._exists("lambda:GetPolicy", self.c.lam.get_policy, FunctionName=name)
        mine = [s for s in (json.loads(found["Policy"])["Statement"] if found else []) if s.get("Sid") == PERMISSION_SID]
        if mine and mine[0].get("Condition") == condition and mine[0].get("Action") == "lambda:InvokeFunction":
            return
        if mine:
            self._call("lambda:RemovePermission", self.c.lam.remove_permission, FunctionName=name,
                       StatementId=PERMISSION_SID)
        self._call("lambda:AddPermission", self.c.lam.add_permission, FunctionName=name, StatementId=PERMISSION_SID,
                   Action="lambda:InvokeFunction", Principal="iot.amazonaws.com", SourceArn=source,
                   SourceAccount=self.account)
        self._changed("function {}: AWS IoT may invoke it for {}".format(name, source))

    def _retire_rule(self, verb: str, function_arn: str) -> None:
        name = self.o.retire_rule
        wanted = {"sql": lambdas.RETIRE_SQL, "awsIotSqlVersion": lambdas.SQL_VERSION, "ruleDisabled": False,
                  "actions": [{"lambda": {"functionArn": function_arn}}]}
        # GetTopicRule answers a missing rule with UnauthorizedException: look the rule up in the list.
        listed = self._call("iot:ListTopicRules", self.c.iot.list_topic_rules, topic=lambdas.RETIRE_TOPIC_FILTER)
        if name not in [r["ruleName"] for r in listed["rules"]]:
            self.report.say("rule {}: {} ({} -> function {})".format(
                name, verb, lambdas.RETIRE_TOPIC_FILTER, function_arn.rsplit(":", 1)[1]))
            if self.o.dry_run:
                return
            self._call("iot:CreateTopicRule", self.c.iot.create_topic_rule, ruleName=name,
                       topicRulePayload={**wanted, "description": "fleetprov ({}): retire a rotated-out "
                                         "certificate".format(self.o.name)},
                       tags=urllib.parse.urlencode({TAG_KEY: self.o.name}))
            self._created("retire_rule", name, lambda: self.c.iot.delete_topic_rule(ruleName=name))
            return
        rule = self._call("iot:GetTopicRule", self.c.iot.get_topic_rule, ruleName=name)["rule"]
        if all(rule.get(k) == v for k, v in wanted.items()):
            self.report.say("rule {}: exists, unchanged".format(name))
        elif self.o.dry_run:
            self.report.say("rule {}: exists but differs; would replace it".format(name))
        else:
            self._call("iot:ReplaceTopicRule", self.c.iot.replace_topic_rule, ruleName=name,
                       topicRulePayload={**wanted, "description": rule.get("description", "")})
            self._changed("rule {}: replaced".format(name))

    def _claim(self, verb: str) -> dict[str, Any]:
        recorded = self.state["created"].get("claim")
        certs = self.o.folder / "certs"
        if recorded is not None:
            found = self._exists(
                "iot:DescribeCertificate", self.c.iot.describe_certificate, certificateId=recorded["certificateId"]
            )
            if found is not None and (certs / "claim.key.der").is_file():
                self.report.say("claim certificate {}: exists, unchanged".format(recorded["certificateId"]))
                return {**recorded, "new": False}
            raise SetupError(
                "the claim certificate {} in {} is gone from the account or its key from {}; run "
                "`python -m tools.awssetup teardown` and setup again".format(
                    recorded["certificateId"], self.state_path, certs
                )
            )
        self.report.say("claim certificate: {} (key pair made by AWS IoT, active)".format(verb))
        if self.o.dry_run:
            return {
                "certificateId": "<new>",
                "certificateArn": "arn:aws:iot:REGION:ACCOUNT:cert/<new>",
                "new": True,
            }
        made = self._call(
            "iot:CreateKeysAndCertificate", self.c.iot.create_keys_and_certificate, setAsActive=True
        )
        cid, arn = made["certificateId"], made["certificateArn"]

        def undo() -> None:
            self._delete_certificate(cid)
            for name in ("claim.der", "claim.key.der"):
                (certs / name).unlink(missing_ok=True)

        self._created("claim", {"certificateId": cid, "certificateArn": arn}, undo)
        self._write_claim_files(made["certificatePem"], made["keyPair"]["PrivateKey"])
        return {"certificateId": cid, "certificateArn": arn, "new": True}

    def _claim_policy(self, verb: str, cert: dict[str, Any]) -> None:
        name = self.o.claim_policy
        # The ARNs in the policy are the account's own: taken from the certificate's ARN
        # (arn:aws:iot:REGION:ACCOUNT:cert/ID), which AWS IoT (and iotsim) wrote.
        parts = cert["certificateArn"].split(":")
        region, account = parts[3], parts[4]
        found = self._exists("iot:GetPolicy", self.c.iot.get_policy, policyName=name)
        if found is None:
            self.report.say(
                "claim policy {}: {} (provisioning with template {} only)".format(
                    name, verb, self.o.template_name
                )
            )
            if self.o.dry_run:
                return
            self._call(
                "iot:CreatePolicy",
                self.c.iot.create_policy,
                policyName=name,
                policyDocument=claim_policy_document(region, account, self.o.template_name),
                tags=self._tags(),
            )
            self._created("claim_policy", name, lambda: self.c.iot.delete_policy(policyName=name))
        else:
            self.report.say("claim policy {}: exists, unchanged".format(name))
        if self.o.dry_run:
            return
        attached = self._call(
            "iot:ListAttachedPolicies", self.c.iot.list_attached_policies, target=cert["certificateArn"]
        )
        if name not in [p["policyName"] for p in attached["policies"]]:
            self._call(
                "iot:AttachPolicy", self.c.iot.attach_policy, policyName=name, target=cert["certificateArn"]
            )
            self.report.changed = True
            self.report.say("claim policy {}: attached to the claim certificate".format(name))

    def _write_claim_files(self, pem: str, key_pem: str) -> None:
        certs = self.o.folder / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        key_der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write(certs / "claim.der", der)
        _write(certs / "claim.key.der", key_der, private=True)

    def _device_folder(self, endpoint: str, cert: dict[str, Any], ca_pem: bytes) -> None:
        config: dict[str, Any] = {
            "endpoint": endpoint,
            "template": self.o.template_name,
            "rotation_template": self.o.rotation_template,
            "parameters": {"SerialNumber": "{uid}"},
            "format": self.o.fmt,
            "method": self.o.method,
            "cert_dir": "certs",
        }
        if self.o.mqtt_port is not None:
            config["port"] = self.o.mqtt_port
        text = (json.dumps(config, indent=2) + "\n").encode()
        ca_der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
        path = self.o.folder / "config.json"
        ca_path = self.o.folder / "certs" / "ca.der"
        changes = [
            p for p, data in ((path, text), (ca_path, ca_der)) if not p.is_file() or p.read_bytes() != data
        ]
        if cert.get("new"):
            changes += [self.o.folder / "certs" / "claim.der", self.o.folder / "certs" / "claim.key.der"]
        if not changes:
            self.report.say("device folder {}: unchanged".format(self.o.folder))
            return
        self.report.say(
            "device folder {}: {} {}".format(
                self.o.folder,
                "would write" if self.o.dry_run else "wrote",
                ", ".join(str(p.relative_to(self.o.folder)) for p in changes),
            )
        )
        if self.o.dry_run:
            return
        _write(path, text)
        _write(ca_path, ca_der)
        self.state.setdefault("files", [])
        for p in ("config.json", "certs/ca.der", "certs/claim.der", "certs/claim.key.der"):
            if p not in self.state["files"]:
                self.state["files"].append(p)
        self._save()
        self.report.changed = True

    # -- teardown ------------------------------------------------------------------------

    def _delete_role(self, name: str) -> None:
        attached = self.c.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        for p in attached:
            self.c.iam.detach_role_policy(RoleName=name, PolicyArn=p["PolicyArn"])
        for policy in self.c.iam.list_role_policies(RoleName=name)["PolicyNames"]:
            self.c.iam.delete_role_policy(RoleName=name, PolicyName=policy)
        self.c.iam.delete_role(RoleName=name)

    def _delete_certificate(self, cid: str) -> None:
        arn = self.c.iot.describe_certificate(certificateId=cid)["certificateDescription"]["certificateArn"]
        for p in self.c.iot.list_attached_policies(target=arn)["policies"]:
            self.c.iot.detach_policy(policyName=p["policyName"], target=arn)
        self.c.iot.update_certificate(certificateId=cid, newStatus="INACTIVE")
        self.c.iot.delete_certificate(certificateId=cid)

    def _ours_rule(self, name: str) -> bool:
        # GetTopicRule answers a missing rule with UnauthorizedException: the list says whether it is there.
        listed = self.c.iot.list_topic_rules(topic=lambdas.RETIRE_TOPIC_FILTER)["rules"]
        arns = [r["ruleArn"] for r in listed if r["ruleName"] == name]
        if not arns:
            raise _Gone(name)
        return self._ours_iot(arns[0])

    def _ours_iot(self, arn: str) -> bool:
        tags = self._call("iot:ListTagsForResource", self.c.iot.list_tags_for_resource, resourceArn=arn)[
            "tags"
        ]
        return {"Key": TAG_KEY, "Value": self.o.name} in tags

    def teardown(self) -> Report:
        created = dict(self.state["created"])
        if not created and not self.state.get("files"):
            self.report.say("{} lists nothing this tool created: nothing to remove".format(self.state_path))
            return self.report
        verb = "would delete" if self.o.dry_run else "deleted"
        failures = []
        iot, iam, lam, tag = self.c.iot, self.c.iam, self.c.lam, {"Key": TAG_KEY, "Value": self.o.name}
        role = ("role", lambda n: tag in iam.list_role_tags(RoleName=n)["Tags"], self._delete_role)
        function = (
            "function",
            lambda n: lam.get_function(FunctionName=n).get("Tags", {}).get(TAG_KEY) == self.o.name,
            lambda n: lam.delete_function(FunctionName=n),
        )
        template = (
            "template",
            lambda n: self._ours_iot(iot.describe_provisioning_template(templateName=n)["templateArn"]),
            lambda n: iot.delete_provisioning_template(templateName=n),
        )
        policy = (
            "policy",
            lambda n: self._ours_iot(iot.get_policy(policyName=n)["policyArn"]),
            lambda n: iot.delete_policy(policyName=n),
        )
        # kind -> (what it is, is it still ours?, delete it), newest first; the claim certificate
        # cannot be tagged: the state file alone says this tool made it.
        plan: dict[str, tuple[str, Callable[[str], bool], Callable[[str], Any]]] = {
            "retire_rule": ("rule", self._ours_rule, lambda n: iot.delete_topic_rule(ruleName=n)),
            "retire_function": function,
            "retire_role": role,
            "rotation_template": template,
            "hook_function": function,
            "hook_role": role,
            "claim": ("claim certificate", lambda cid: True, self._delete_certificate),
            "claim_policy": ("claim " + policy[0], *policy[1:]),
            "template": template,
            "thing_policy": ("thing " + policy[0], *policy[1:]),
            "thing_group": (
                "thing group",
                lambda n: self._ours_iot(iot.describe_thing_group(thingGroupName=n)["thingGroupArn"]),
                lambda n: iot.delete_thing_group(thingGroupName=n),
            ),
            "role": role,
        }
        for kind, (label, ours, delete) in plan.items():
            if kind not in created:
                continue
            value = created[kind]["certificateId"] if kind == "claim" else created[kind]
            what = "{} {}".format(label, value)
            try:
                if not ours(value):
                    self.report.say("{}: its tag no longer says this tool made it; left as is".format(what))
                    self._forget(kind)
                    continue
                if not self.o.dry_run:
                    delete(value)
                    self._forget(kind)
                self.report.say("{}: {}".format(what, verb))
            except (ClientError, _Gone) as exc:
                if isinstance(exc, _Gone) or _code(exc) in ("ResourceNotFoundException", "NoSuchEntity"):
                    self.report.say("{}: already gone".format(what))
                    self._forget(kind)
                    continue
                failures.append(str(explain(exc, "deleting " + what)))
            except BotoCoreError as exc:
                raise explain(exc, "teardown") from exc
        for rel in self.state.get("files", []):
            p = self.o.folder / rel
            if p.exists():
                self.report.say("device folder: {} {}".format(verb, rel))
                if not self.o.dry_run:
                    p.unlink()
        if failures:
            raise SetupError(
                "; ".join(failures + ["still listed in {}; run teardown again".format(self.state_path)])
            )
        if not self.o.dry_run:
            self.state_path.unlink(missing_ok=True)
        return self.report


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
