"""iotsim's stand-in for AWS Lambda: the functions a setup creates, and their invocation by AWS IoT.

The Lambda calls tools/awssetup makes (Create/Get/Delete Function, UpdateFunctionCode and
-Configuration, Add/RemovePermission, GetPolicy, ListTags) are served from botocore's
``lambda`` model on the control plane's endpoint, signed with service ``lambda``. A function
is recorded in ``<state>/controlplane/lambda.json``: its configuration, its resource policy
and its tags; its code is not kept.

iotsim never runs uploaded code. A function whose deployment package is byte-identical to one
of fleetprov's own (tools/awssetup/lambdas: same CodeSha256) runs that module in-process, its
``Handler`` resolved as Lambda resolves it; any other function exists but fails when invoked,
as a function whose code cannot load fails on AWS. AWS IoT invokes a function (a template's
pre-provisioning hook, a topic rule's action) only when the function's resource policy lets
``iot.amazonaws.com`` call ``lambda:InvokeFunction`` for that source (AWS: "Lambda rule
action", requirements). A handler runs with a context whose ``client(service)`` gives boto3
clients on iotsim's own endpoint, within the function's ``Timeout``. The IAM role a function
names is recorded, not evaluated: its calls act with iotsim's own key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..awssetup import lambdas as packages
from .apimodel import ApiError
from .service import call_bounded
from .store import JsonFile

log = logging.getLogger("iotsim.lambda")

IOT_PRINCIPAL = "iot.amazonaws.com"
DEFAULT_TIMEOUT_S = 3  # AWS Lambda's default
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}\Z")
_ARN = re.compile(r"^arn:aws:lambda:([^:]+):(\d{12}):function:([a-zA-Z0-9_-]{1,64})(?::\$LATEST)?\Z")
_UNSUPPORTED = ("Layers", "VpcConfig", "FileSystemConfigs", "ImageConfig", "KMSKeyArn", "CodeSigningConfigArn")


class InvocationError(Exception):
    """AWS IoT could not invoke a function, or the function failed."""


class _Context:
    """What a handler gets as ``context``: Lambda's attributes, and clients on iotsim's endpoint."""

    def __init__(self, config: dict[str, Any], clients: Callable[[str], Any], timeout: float) -> None:
        self.function_name = config["FunctionName"]
        self.invoked_function_arn = config["FunctionArn"]
        self.memory_limit_in_mb = config["MemorySize"]
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout
        self.client = clients

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _allows(statement: Any, source_arn: str, account: str) -> bool:
    """Whether a resource-policy statement lets AWS IoT invoke the function for ``source_arn``."""
    if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
        return False
    principal = statement.get("Principal")
    service = principal.get("Service") if isinstance(principal, dict) else principal
    if service not in (IOT_PRINCIPAL, "*") or statement.get("Action") not in ("lambda:InvokeFunction", "lambda:*", "*"):
        return False
    condition = statement.get("Condition") or {}
    arn = (condition.get("ArnLike") or {}).get("AWS:SourceArn")
    owner = (condition.get("StringEquals") or {}).get("AWS:SourceAccount")
    return (arn is None or fnmatch.fnmatchcase(source_arn, arn)) and (owner is None or owner == account)


def _principal(value: str) -> Any:
    if value == "*":
        return "*"
    if re.fullmatch(r"\d{12}", value):
        return {"AWS": "arn:aws:iam::{}:root".format(value)}
    if re.fullmatch(r"[a-z0-9.-]+\.amazonaws\.com", value):
        return {"Service": value}
    raise ApiError("InvalidParameterValueException", "The principal {!r} is not an AWS service, account or *".format(value))


class Functions:
    """The Lambda functions of one iotsim (``op_*`` run under the control plane's lock).

    ``clients(service)``: a boto3 client on iotsim's endpoint, for the handlers' context."""

    def __init__(self, state: Path, region: str, account: str, clock: Callable[[], float],
                 clients: Callable[[str], Any] | None = None) -> None:
        self.file = JsonFile(Path(state) / "controlplane" / "lambda.json", {"functions": {}})
        self.region, self.account, self.clock = region, account, clock
        self.clients = clients

    def arn(self, name: str) -> str:
        return "arn:aws:lambda:{}:{}:function:{}".format(self.region, self.account, name)

    def _name(self, FunctionName: str) -> str:
        """The function's name from a name or an ARN of this region and account."""
        m = _ARN.match(FunctionName)
        if m is not None and (m.group(1), m.group(2)) == (self.region, self.account):
            return m.group(3)
        if m is None and _NAME.match(FunctionName):
            return FunctionName
        raise ApiError("ResourceNotFoundException", "Function not found: {}".format(FunctionName))

    def _function(self, data: dict[str, Any], FunctionName: str) -> dict[str, Any]:
        found = data["functions"].get(self._name(FunctionName))
        if found is None:
            raise ApiError("ResourceNotFoundException", "Function not found: {}".format(self.arn(self._name(FunctionName))))
        return found

    def exists(self, arn: str) -> bool:
        try:
            self._function(self.file.load(), arn)
        except ApiError:
            return False
        return True

    def _stamp(self) -> str:
        return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    @staticmethod
    def _code(ZipFile: str | None) -> bytes:
        if ZipFile is None:
            raise ApiError("InvalidParameterValueException", "iotsim takes a function's code as ZipFile only")
        try:
            return base64.b64decode(ZipFile, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("InvalidParameterValueException", "ZipFile is not base64") from None

    def _set_code(self, config: dict[str, Any], data: bytes) -> None:
        config["CodeSha256"] = packages.code_sha256(data)
        config["CodeSize"] = len(data)
        if packages.module_for(config["CodeSha256"]) is None:
            log.warning("Lambda function %s: its package is none of fleetprov's; iotsim does not run uploaded code, "
                        "so invoking it fails", config["FunctionName"])

    def _touch(self, config: dict[str, Any]) -> dict[str, Any]:
        config["LastModified"] = self._stamp()
        config["RevisionId"] = str(uuid.uuid4())
        return config

    # -- functions ----------------------------------------------------------------------

    def op_CreateFunction(
        self, FunctionName: str, Role: str, Code: dict[str, Any], Runtime: str | None = None,
        Handler: str | None = None, Description: str = "", Timeout: int = DEFAULT_TIMEOUT_S,
        MemorySize: int = 128, Environment: dict[str, Any] | None = None, Tags: dict[str, str] | None = None,
        Publish: bool = False, PackageType: str = "Zip", Architectures: list[str] | None = None, **other: Any,
    ) -> dict[str, Any]:
        unsupported = sorted(set(other) & set(_UNSUPPORTED))
        if unsupported or PackageType != "Zip":
            raise ApiError("InvalidParameterValueException",
                           "iotsim makes Zip functions without {}".format(", ".join(unsupported) or "images"))
        if not _NAME.match(FunctionName):
            raise ApiError("InvalidParameterValueException", "FunctionName must be 1-64 of [a-zA-Z0-9_-]")
        if Runtime is None or Handler is None:
            raise ApiError("InvalidParameterValueException", "A Zip function needs Runtime and Handler")
        data = self.file.load()
        if FunctionName in data["functions"]:
            raise ApiError("ResourceConflictException", "Function already exist: {}".format(FunctionName))
        config = {
            "FunctionName": FunctionName, "FunctionArn": self.arn(FunctionName), "Runtime": Runtime, "Role": Role,
            "Handler": Handler, "Description": Description, "Timeout": Timeout, "MemorySize": MemorySize,
            "Environment": {"Variables": dict((Environment or {}).get("Variables") or {})},
            "Version": "$LATEST", "State": "Active", "LastUpdateStatus": "Successful", "PackageType": "Zip",
            "Architectures": Architectures or ["x86_64"],
        }
        self._set_code(config, self._code(Code.get("ZipFile")))
        data["functions"][FunctionName] = {"Configuration": self._touch(config), "Policy": [], "Tags": dict(Tags or {})}
        self.file.save(data)
        return config

    def op_GetFunction(self, FunctionName: str, Qualifier: str | None = None) -> dict[str, Any]:
        found = self._function(self.file.load(), FunctionName)
        return {"Configuration": found["Configuration"], "Code": {"RepositoryType": "S3"}, "Tags": found["Tags"]}

    def op_GetFunctionConfiguration(self, FunctionName: str, Qualifier: str | None = None) -> dict[str, Any]:
        return dict(self._function(self.file.load(), FunctionName)["Configuration"])

    def op_DeleteFunction(self, FunctionName: str, Qualifier: str | None = None) -> dict[str, Any]:
        data = self.file.load()
        self._function(data, FunctionName)
        del data["functions"][self._name(FunctionName)]
        self.file.save(data)
        return {}

    def op_UpdateFunctionCode(
        self, FunctionName: str, ZipFile: str | None = None, Publish: bool = False, DryRun: bool = False,
        RevisionId: str | None = None, **other: Any,
    ) -> dict[str, Any]:
        data = self.file.load()
        config = self._function(data, FunctionName)["Configuration"]
        code = self._code(ZipFile)
        if not DryRun:
            self._set_code(config, code)
            self.file.save(data)
        return self._touch(config) if not DryRun else config

    def op_UpdateFunctionConfiguration(self, FunctionName: str, **changes: Any) -> dict[str, Any]:
        data = self.file.load()
        config = self._function(data, FunctionName)["Configuration"]
        changes.pop("RevisionId", None)
        unsupported = sorted(set(changes) - {"Role", "Handler", "Description", "Timeout", "MemorySize",
                                              "Environment", "Runtime"})
        if unsupported:
            raise ApiError("InvalidParameterValueException", "iotsim does not change {}".format(", ".join(unsupported)))
        if "Environment" in changes:
            changes["Environment"] = {"Variables": dict(changes["Environment"].get("Variables") or {})}
        config.update(changes)
        self._touch(config)
        self.file.save(data)
        return config

    def op_ListFunctions(self, Marker: str | None = None, MaxItems: int | None = None, **other: Any) -> dict[str, Any]:
        configs = [f["Configuration"] for _, f in sorted(self.file.load()["functions"].items())]
        if Marker is not None and not (Marker.isdigit() and int(Marker) <= len(configs)):
            raise ApiError("InvalidParameterValueException", "Marker {!r} is not one this API returned".format(Marker[:40]))
        start = int(Marker or 0)
        end = start + (MaxItems or 50)
        return {"Functions": configs[start:end], "NextMarker": str(end) if end < len(configs) else None}

    def op_ListTags(self, Resource: str) -> dict[str, Any]:
        return {"Tags": self._function(self.file.load(), Resource)["Tags"]}

    # -- the resource policy ------------------------------------------------------------

    def op_AddPermission(
        self, FunctionName: str, StatementId: str, Action: str, Principal: str, SourceArn: str | None = None,
        SourceAccount: str | None = None, Qualifier: str | None = None, RevisionId: str | None = None, **other: Any,
    ) -> dict[str, Any]:
        if other:
            raise ApiError("InvalidParameterValueException", "iotsim does not support {}".format(", ".join(sorted(other))))
        data = self.file.load()
        found = self._function(data, FunctionName)
        if any(s["Sid"] == StatementId for s in found["Policy"]):
            raise ApiError(
                "ResourceConflictException",
                "The statement id ({}) provided already exists. Please provide a new statement id, or remove "
                "the existing statement.".format(StatementId),
            )
        statement: dict[str, Any] = {
            "Sid": StatementId, "Effect": "Allow", "Principal": _principal(Principal), "Action": Action,
            "Resource": found["Configuration"]["FunctionArn"],
        }
        condition: dict[str, Any] = {}
        if SourceAccount is not None:
            condition["StringEquals"] = {"AWS:SourceAccount": SourceAccount}
        if SourceArn is not None:
            condition["ArnLike"] = {"AWS:SourceArn": SourceArn}
        if condition:
            statement["Condition"] = condition
        found["Policy"].append(statement)
        self.file.save(data)
        return {"Statement": json.dumps(statement)}

    def op_RemovePermission(self, FunctionName: str, StatementId: str, **other: Any) -> dict[str, Any]:
        data = self.file.load()
        found = self._function(data, FunctionName)
        kept = [s for s in found["Policy"] if s["Sid"] != StatementId]
        if len(kept) == len(found["Policy"]):
            raise ApiError("ResourceNotFoundException", "Statement {} is not found in resource policy.".format(StatementId))
        found["Policy"] = kept
        self.file.save(data)
        return {}

    def op_GetPolicy(self, FunctionName: str, Qualifier: str | None = None) -> dict[str, Any]:
        found = self._function(self.file.load(), FunctionName)
        if not found["Policy"]:
            raise ApiError("ResourceNotFoundException", "The resource you requested does not exist.")
        policy = {"Version": "2012-10-17", "Id": "default", "Statement": found["Policy"]}
        return {"Policy": json.dumps(policy), "RevisionId": found["Configuration"]["RevisionId"]}

    # -- invocation by AWS IoT ----------------------------------------------------------

    def invoke(self, arn: str, event: dict[str, Any], *, source_arn: str) -> Any:
        """Run the function as AWS IoT invokes it for ``source_arn`` (a template or a rule);
        its answer, or InvocationError."""
        try:
            found = self._function(self.file.load(), arn)
        except ApiError as exc:
            raise InvocationError(exc.message) from None
        config = found["Configuration"]
        if not any(_allows(s, source_arn, self.account) for s in found["Policy"]):
            raise InvocationError("the resource policy of function {} does not let {} invoke it for {}".format(
                config["FunctionName"], IOT_PRINCIPAL, source_arn))
        module = packages.module_for(config["CodeSha256"])
        if module is None:
            raise InvocationError("function {}: iotsim runs no uploaded code, and this package is none of "
                                  "fleetprov's (tools/awssetup/lambdas)".format(config["FunctionName"]))
        module_name, _, attr = config["Handler"].rpartition(".")
        handler = getattr(module, attr, None) if module_name == packages.MODULE else None
        if not callable(handler):
            raise InvocationError("function {}: no handler {}".format(config["FunctionName"], config["Handler"]))
        if self.clients is None:
            raise InvocationError("iotsim's control plane is not running")
        return self._run(handler, event, config)

    def _run(self, handler: Callable[..., Any], event: dict[str, Any], config: dict[str, Any]) -> Any:
        timeout = float(config["Timeout"])
        assert self.clients is not None
        context = _Context(config, self.clients, timeout)
        try:
            ok, value = call_bounded(lambda: handler(event, context), timeout, "iotsim-lambda")
        except TimeoutError:
            raise InvocationError("function {} timed out after {:g} s".format(config["FunctionName"], timeout)) from None
        if not ok:
            raise InvocationError("function {} failed: {}: {}".format(config["FunctionName"], type(value).__name__, value))
        return value

