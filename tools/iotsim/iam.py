"""The IAM calls a fleet-provisioning setup makes, answered by iotsim's control plane.

A provisioning template names a role AWS IoT assumes (``AWSIoTThingsRegistration`` attached):
tools/awssetup creates, inspects and deletes that role. iotsim serves those IAM operations
from botocore's ``iam`` model (query protocol, XML answers: tools/iotsim/apimodel.py) on the
same endpoint as AWS IoT's, told apart by the SigV4 credential scope's service. Roles live in
``<state>/controlplane/iam.json``; the AWS managed policies iotsim knows are the ones fleet
provisioning uses. Errors are IAM's (``NoSuchEntity`` 404, ``EntityAlreadyExists`` 409,
``DeleteConflict`` 409, from the model), with AWS's words where users report them.
"""

from __future__ import annotations

import secrets
import string
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import untrusted
from .apimodel import ApiError
from .store import JsonFile

# AWS managed policies (arn:aws:iam::aws:policy/...) iotsim knows; AWS's descriptions.
MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration": (
        "AWSIoTThingsRegistration",
        "/service-role/",
        "This policy allows users to register things at bulk using AWS IoT StartThingRegistrationTask API",
    ),
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": (
        "AWSLambdaBasicExecutionRole",
        "/service-role/",
        "Provides write permissions to CloudWatch Logs.",
    ),
}
_PAGE_MAX = 1000  # IAM's MaxItems upper bound (the model's)


def _page(items: list[Any], marker: str | None, max_items: int | None) -> dict[str, Any]:
    start = 0
    if marker is not None:
        if not marker.isdigit() or int(marker) > len(items):
            raise ApiError("ValidationError", "Marker {!r} is not one this API returned".format(marker[:40]))
        start = int(marker)
    end = start + (max_items or 100)
    more = end < len(items)
    return {"items": items[start:end], "IsTruncated": more, "Marker": str(end) if more else None}


class Iam:
    """Roles and their attached managed policies for one iotsim (``call`` runs under the plane's lock)."""

    def __init__(self, state: Path, account: str, clock: Callable[[], float]) -> None:
        self.file = JsonFile(Path(state) / "controlplane" / "iam.json", {"roles": {}})
        self.account = account
        self.clock = clock
        self._load, self._save = self.file.load, self.file.save

    def _role(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        role = data["roles"].get(name)
        if role is None:
            raise ApiError("NoSuchEntity", "The role with name {} cannot be found.".format(name))
        return role

    @staticmethod
    def _public(role: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in role.items() if k not in ("AttachedPolicies", "InlinePolicies")}

    def op_CreateRole(
        self,
        RoleName: str,
        AssumeRolePolicyDocument: str,
        Path: str = "/",
        Description: str | None = None,
        MaxSessionDuration: int = 3600,
        PermissionsBoundary: str | None = None,
        Tags: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        data = self._load()
        if RoleName.lower() in {n.lower() for n in data["roles"]}:  # IAM names are case-insensitive
            raise ApiError("EntityAlreadyExists", "Role with name {} already exists.".format(RoleName))
        try:
            untrusted.loads(AssumeRolePolicyDocument)
        except ValueError:
            raise ApiError(
                "MalformedPolicyDocument", "This policy contains invalid Json"
            ) from None
        role_id = "AROA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(17))
        role = {
            "Path": Path,
            "RoleName": RoleName,
            "RoleId": role_id,
            "Arn": "arn:aws:iam::{}:role{}{}".format(self.account, Path, RoleName),
            "CreateDate": self.clock(),
            "AssumeRolePolicyDocument": AssumeRolePolicyDocument,
            "Description": Description,
            "MaxSessionDuration": MaxSessionDuration,
            "Tags": list(Tags or []),
            "AttachedPolicies": [],
        }
        data["roles"][RoleName] = role
        self._save(data)
        return {"Role": self._public(role)}

    def op_GetRole(self, RoleName: str) -> dict[str, Any]:
        return {"Role": self._public(self._role(self._load(), RoleName))}

    def op_ListRoles(
        self, PathPrefix: str = "/", Marker: str | None = None, MaxItems: int | None = None
    ) -> dict[str, Any]:
        roles = [self._public(r) for _, r in sorted(self._load()["roles"].items()) if r["Path"].startswith(PathPrefix)]
        page = _page(roles, Marker, MaxItems)
        return {"Roles": page.pop("items"), **page}

    def op_ListRoleTags(self, RoleName: str, Marker: str | None = None, MaxItems: int | None = None) -> dict[str, Any]:
        page = _page(self._role(self._load(), RoleName)["Tags"], Marker, MaxItems)
        return {"Tags": page.pop("items"), **page}

    def op_DeleteRole(self, RoleName: str) -> dict[str, Any]:
        data = self._load()
        role = self._role(data, RoleName)
        if role["AttachedPolicies"]:
            raise ApiError("DeleteConflict", "Cannot delete entity, must detach all policies first.")
        if role.get("InlinePolicies"):
            raise ApiError("DeleteConflict", "Cannot delete entity, must delete policies first.")
        del data["roles"][RoleName]
        self._save(data)
        return {}

    def op_GetPolicy(self, PolicyArn: str) -> dict[str, Any]:
        known = MANAGED_POLICIES.get(PolicyArn)
        if known is None:
            raise ApiError("NoSuchEntity", "Policy {} does not exist or is not attachable.".format(PolicyArn))
        name, path, description = known
        attached = sum(PolicyArn in r["AttachedPolicies"] for r in self._load()["roles"].values())
        return {
            "Policy": {
                "PolicyName": name,
                "PolicyId": "ANPA" + name.upper()[:17].ljust(17, "X"),
                "Arn": PolicyArn,
                "Path": path,
                "DefaultVersionId": "v1",
                "AttachmentCount": attached,
                "IsAttachable": True,
                "Description": description,
            }
        }

    def op_AttachRolePolicy(self, RoleName: str, PolicyArn: str) -> dict[str, Any]:
        data = self._load()
        role = self._role(data, RoleName)
        self.op_GetPolicy(PolicyArn)
        if PolicyArn not in role["AttachedPolicies"]:
            role["AttachedPolicies"].append(PolicyArn)
            self._save(data)
        return {}

    def op_DetachRolePolicy(self, RoleName: str, PolicyArn: str) -> dict[str, Any]:
        data = self._load()
        role = self._role(data, RoleName)
        if PolicyArn not in role["AttachedPolicies"]:
            raise ApiError("NoSuchEntity", "Policy {} was not found.".format(PolicyArn))
        role["AttachedPolicies"].remove(PolicyArn)
        self._save(data)
        return {}

    def op_ListAttachedRolePolicies(
        self, RoleName: str, PathPrefix: str = "/", Marker: str | None = None, MaxItems: int | None = None
    ) -> dict[str, Any]:
        attached = [
            {"PolicyName": MANAGED_POLICIES[arn][0], "PolicyArn": arn}
            for arn in self._role(self._load(), RoleName)["AttachedPolicies"]
            if MANAGED_POLICIES[arn][1].startswith(PathPrefix)
        ]
        page = _page(attached, Marker, MaxItems)
        return {"AttachedPolicies": page.pop("items"), **page}

    # -- inline policies (what the role may do, e.g. a Lambda function's AWS calls) --------

    def _inline(self, data: dict[str, Any], RoleName: str) -> dict[str, str]:
        return self._role(data, RoleName).setdefault("InlinePolicies", {})

    def op_PutRolePolicy(self, RoleName: str, PolicyName: str, PolicyDocument: str) -> dict[str, Any]:
        data = self._load()
        inline = self._inline(data, RoleName)
        try:
            untrusted.loads(PolicyDocument)
        except ValueError:
            raise ApiError("MalformedPolicyDocument", "This policy contains invalid Json") from None
        inline[PolicyName] = PolicyDocument
        self._save(data)
        return {}

    def op_GetRolePolicy(self, RoleName: str, PolicyName: str) -> dict[str, Any]:
        document = self._inline(self._load(), RoleName).get(PolicyName)
        if document is None:
            raise ApiError(
                "NoSuchEntity", "The role policy with name {} cannot be found.".format(PolicyName)
            )
        # IAM answers the document URL-encoded (botocore decodes and parses it).
        return {"RoleName": RoleName, "PolicyName": PolicyName, "PolicyDocument": urllib.parse.quote(document)}

    def op_DeleteRolePolicy(self, RoleName: str, PolicyName: str) -> dict[str, Any]:
        data = self._load()
        inline = self._inline(data, RoleName)
        if inline.pop(PolicyName, None) is None:
            raise ApiError(
                "NoSuchEntity", "The role policy with name {} cannot be found.".format(PolicyName)
            )
        self._save(data)
        return {}

    def op_ListRolePolicies(
        self, RoleName: str, Marker: str | None = None, MaxItems: int | None = None
    ) -> dict[str, Any]:
        page = _page(sorted(self._inline(self._load(), RoleName)), Marker, MaxItems)
        return {"PolicyNames": page.pop("items"), **page}
