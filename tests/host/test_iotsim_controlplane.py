"""iotsim's AWS IoT control plane through boto3: every operation succeeds and fails as AWS's does,
and what it changes is what the MQTT side (broker + provisioning service) sees at once."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tools.iotsim.controlplane import CLAIM_LIFETIME
from tools.iotsim.policy import claim_policy_document
from tools.iotsim.templates import demo_template_text
from tools.iotsim.testing import ConnectRefused, RunningIotSim

ROLE = "arn:aws:iam::123456789012:role/FleetprovProvisioning"
BODY = demo_template_text()


@pytest.fixture
def iot(iotsim: RunningIotSim) -> Any:
    # botocore's own checks off: bad input must be refused by iotsim itself, as AWS does.
    return iotsim.iot_client(validate=False)


def error_of(call: Callable[[], Any]) -> tuple[str, int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    err = info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


def write_identity(folder: Path, name: str, pem: str, key: str) -> tuple[Path, Path]:
    cert, key_path = folder / (name + ".pem"), folder / (name + ".key.pem")
    cert.write_text(pem)
    key_path.write_text(key)
    return cert, key_path


def provision(
    iotsim: RunningIotSim, template: str, serial: str, cert: Path | None = None, key: Path | None = None
) -> tuple[str, Any, Any]:
    """CreateKeysAndCertificate + RegisterThing over MQTT; (register outcome, register body, keys body)."""
    with iotsim.client("claim-" + serial, cert, key) as claim:
        outcome, keys = claim.request("$aws/certificates/create/json", b"")
        assert outcome == "accepted", keys
        outcome, body = claim.request(
            "$aws/provisioning-templates/{}/provision/json".format(template),
            {
                "certificateOwnershipToken": keys["certificateOwnershipToken"],
                "parameters": {"SerialNumber": serial},
            },
        )
    return outcome, body, keys


# -- the same registry as the MQTT side ----------------------------------------------------------


def test_a_template_created_through_the_api_is_disabled_by_default_then_provisions_once_enabled(
    iotsim: RunningIotSim, iot: Any
) -> None:
    iot.create_provisioning_template(templateName="ApiMade", templateBody=BODY, provisioningRoleArn=ROLE)
    outcome, body, _ = provision(iotsim, "ApiMade", "api-1")
    disabled = "The provisioning template ApiMade is disabled"
    assert (outcome, body["statusCode"], body["errorMessage"]) == ("rejected", 400, disabled)
    iot.update_provisioning_template(templateName="ApiMade", enabled=True)
    outcome, body, _ = provision(iotsim, "ApiMade", "api-2")
    assert outcome == "accepted" and body["thingName"] == "fleetprov-api-2"
    assert iot.describe_thing(thingName="fleetprov-api-2")["attributes"]["serial"] == "api-2"
    iot.delete_provisioning_template(templateName="ApiMade")
    outcome, body, _ = provision(iotsim, "ApiMade", "api-3")
    assert (outcome, body["statusCode"]) == ("rejected", 404)


def test_a_certificate_set_inactive_through_the_api_is_refused_at_its_next_connection(
    iotsim: RunningIotSim, iot: Any, tmp_path: Path
) -> None:
    outcome, body, keys = provision(iotsim, "FleetprovDemo", "inactive-1")
    assert outcome == "accepted"
    cert, key = write_identity(tmp_path, "dev", keys["certificatePem"], keys["privateKey"])
    with iotsim.client(body["thingName"], cert, key):
        pass  # ACTIVE: connects
    described = iot.describe_certificate(certificateId=keys["certificateId"])["certificateDescription"]
    assert described["status"] == "ACTIVE"
    iot.update_certificate(certificateId=keys["certificateId"], newStatus="INACTIVE")
    with pytest.raises(ConnectRefused):
        iotsim.client(body["thingName"], cert, key)
    iot.update_certificate(certificateId=keys["certificateId"], newStatus="ACTIVE")
    with iotsim.client(body["thingName"], cert, key):
        pass


def test_a_template_version_set_as_default_is_what_register_thing_evaluates(
    iotsim: RunningIotSim, iot: Any
) -> None:
    iot.create_provisioning_template(
        templateName="Versioned", templateBody=BODY, provisioningRoleArn=ROLE, enabled=True
    )
    second = BODY.replace('"fleetprov-"', '"v2-"')
    assert second != BODY
    made = iot.create_provisioning_template_version(
        templateName="Versioned", templateBody=second, setAsDefault=False
    )
    assert (made["versionId"], made["isDefaultVersion"]) == (2, False)
    assert provision(iotsim, "Versioned", "ver-1")[1]["thingName"] == "fleetprov-ver-1"
    iot.update_provisioning_template(templateName="Versioned", defaultVersionId=2)
    assert provision(iotsim, "Versioned", "ver-2")[1]["thingName"] == "v2-ver-2"
    assert iot.describe_provisioning_template(templateName="Versioned")["defaultVersionId"] == 2
    for _ in range(3):
        iot.create_provisioning_template_version(templateName="Versioned", templateBody=BODY)
    code, status, message = error_of(
        lambda: iot.create_provisioning_template_version(templateName="Versioned", templateBody=BODY)
    )
    assert (code, status) == ("VersionsLimitExceededException", 409) and "5 versions" in message


def test_a_hook_named_by_lambda_arn_runs_the_mapped_local_hook(iotsim: RunningIotSim, iot: Any) -> None:
    seen: list[dict[str, Any]] = []

    def deny_odd(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        return {"allowProvisioning": not event["parameters"]["SerialNumber"].endswith("1")}

    arn = "arn:aws:lambda:us-east-1:123456789012:function:deny-odd"
    code, status, message = error_of(
        lambda: iot.create_provisioning_template(
            templateName="Hooked",
            templateBody=BODY,
            provisioningRoleArn=ROLE,
            enabled=True,
            preProvisioningHook={"targetArn": arn},
        )
    )
    assert (code, status) == ("InvalidRequestException", 400) and "--lambda deny-odd=" in message
    iotsim.controlplane.lambdas["deny-odd"] = deny_odd
    try:
        iot.create_provisioning_template(
            templateName="Hooked",
            templateBody=BODY,
            provisioningRoleArn=ROLE,
            enabled=True,
            preProvisioningHook={"targetArn": arn, "payloadVersion": "2020-04-01"},
        )
        outcome, body, _ = provision(iotsim, "Hooked", "hook-1")
        assert (outcome, body["statusCode"]) == ("rejected", 403)
        assert provision(iotsim, "Hooked", "hook-2")[0] == "accepted"
        assert [e["parameters"]["SerialNumber"] for e in seen] == ["hook-1", "hook-2"]
        assert seen[0]["templateArn"].endswith(":provisioningtemplate/Hooked")
        del iotsim.controlplane.lambdas["deny-odd"]  # the function is gone: refused, as AWS does
        outcome, body, _ = provision(iotsim, "Hooked", "hook-4")
        failed = "The pre-provisioning hook failed: LambdaUnavailable"
        assert (outcome, body["statusCode"], body["errorMessage"]) == ("rejected", 403, failed)
        iot.update_provisioning_template(templateName="Hooked", removePreProvisioningHook=True)
        assert provision(iotsim, "Hooked", "hook-3")[0] == "accepted"
    finally:
        iotsim.controlplane.lambdas.pop("deny-odd", None)


def test_a_provisioning_claim_provisions_for_five_minutes_then_the_broker_refuses_it(
    iotsim: RunningIotSim, iot: Any, tmp_path: Path
) -> None:
    before = iotsim.clock()
    claim = iot.create_provisioning_claim(templateName="FleetprovDemo")
    assert before + CLAIM_LIFETIME - 5 <= claim["expiration"].timestamp() <= iotsim.clock() + CLAIM_LIFETIME
    cert, key = write_identity(tmp_path, "temp", claim["certificatePem"], claim["keyPair"]["PrivateKey"])
    outcome, body, _ = provision(iotsim, "FleetprovDemo", "trusted-1", cert, key)
    assert outcome == "accepted" and body["thingName"] == "fleetprov-trusted-1"
    # Its policy names this template only.
    with iotsim.client("claim-other", cert, key) as c:
        assert c.subscribe(
            "$aws/provisioning-templates/Other/provision/json/accepted",
            "$aws/provisioning-templates/FleetprovDemo/provision/json/accepted",
        ) == [128, 1]
    iotsim.clock.advance(CLAIM_LIFETIME - 10)
    assert iotsim.controlplane.expire_claims() == []
    iotsim.clock.advance(11)
    assert iotsim.controlplane.expire_claims() == [claim["certificateId"]]
    with pytest.raises(ConnectRefused):
        iotsim.client("claim-late", cert, key)
    assert (
        iot.describe_certificate(certificateId=claim["certificateId"])["certificateDescription"]["status"]
        == "INACTIVE"
    )
    code, status, _ = error_of(
        lambda: iot.update_certificate(certificateId=claim["certificateId"], newStatus="ACTIVE")
    )
    assert (code, status) == ("CertificateStateException", 406)


# -- every operation: one success and one AWS error through boto3 ----------------------------------


def test_describe_endpoint(iotsim: RunningIotSim, iot: Any) -> None:
    assert iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == "127.0.0.1"
    assert error_of(lambda: iot.describe_endpoint(endpointType="iot:Nope"))[:2] == (
        "InvalidRequestException",
        400,
    )


def test_provisioning_template_operations(iot: Any) -> None:
    made = iot.create_provisioning_template(
        templateName="Ops",
        templateBody=BODY,
        provisioningRoleArn=ROLE,
        description="d",
        tags=[{"Key": "owner", "Value": "test"}],
    )
    assert made["templateArn"].endswith(":provisioningtemplate/Ops") and made["defaultVersionId"] == 1
    assert error_of(
        lambda: iot.create_provisioning_template(
            templateName="Ops", templateBody=BODY, provisioningRoleArn=ROLE
        )
    )[:2] == ("ResourceAlreadyExistsException", 409)
    assert error_of(
        lambda: iot.create_provisioning_template(
            templateName="Bad", templateBody="{", provisioningRoleArn=ROLE
        )
    )[:2] == ("InvalidRequestException", 400)
    assert error_of(
        lambda: iot.create_provisioning_template(
            templateName="Bad", templateBody=BODY, provisioningRoleArn="arn:aws:iam::1:user/someone"
        )
    )[:2] == ("InvalidRequestException", 400)
    assert error_of(
        lambda: iot.create_provisioning_template(
            templateName="Big", templateBody=" " * 10241 + "{}", provisioningRoleArn=ROLE
        )
    )[:2] == ("InvalidRequestException", 400)
    d = iot.describe_provisioning_template(templateName="Ops")
    assert (d["description"], d["enabled"], d["templateBody"], d["provisioningRoleArn"]) == (
        "d",
        False,
        BODY,
        ROLE,
    )
    assert error_of(lambda: iot.describe_provisioning_template(templateName="Missing"))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    names = [t["templateName"] for t in iot.list_provisioning_templates()["templates"]]
    assert {"FleetprovDemo", "Ops"} <= set(names)
    assert error_of(lambda: iot.list_provisioning_templates(nextToken="garbage"))[:2] == (
        "InvalidRequestException",
        400,
    )
    iot.update_provisioning_template(templateName="Ops", description="e")
    assert iot.describe_provisioning_template(templateName="Ops")["description"] == "e"
    assert error_of(lambda: iot.update_provisioning_template(templateName="Ops", defaultVersionId=9))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert error_of(lambda: iot.update_provisioning_template(templateName="Missing", enabled=True))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert iot.create_provisioning_template_version(templateName="Ops", templateBody=BODY)["versionId"] == 2
    assert error_of(lambda: iot.create_provisioning_template_version(templateName="Ops", templateBody="[]"))[
        :2
    ] == ("InvalidRequestException", 400)
    assert iot.list_tags_for_resource(resourceArn=made["templateArn"])["tags"] == [
        {"Key": "owner", "Value": "test"}
    ]
    iot.delete_provisioning_template(templateName="Ops")
    assert error_of(lambda: iot.delete_provisioning_template(templateName="Ops"))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert error_of(lambda: iot.list_tags_for_resource(resourceArn=made["templateArn"]))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    iot.create_provisioning_template(templateName="Ops", templateBody=BODY, provisioningRoleArn=ROLE)
    assert iot.list_tags_for_resource(resourceArn=made["templateArn"])["tags"] == []  # none left over
    iot.delete_provisioning_template(templateName="Ops")


def test_provisioning_claim_for_a_missing_template(iot: Any) -> None:
    assert error_of(lambda: iot.create_provisioning_claim(templateName="Missing"))[:2] == (
        "ResourceNotFoundException",
        404,
    )


def test_certificate_operations(iotsim: RunningIotSim, iot: Any) -> None:
    made = iot.create_keys_and_certificate(setAsActive=False)
    cid = made["certificateId"]
    assert made["keyPair"]["PrivateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert iotsim.registry.status(cid) == "INACTIVE"
    d = iot.describe_certificate(certificateId=cid)["certificateDescription"]
    assert (d["certificateArn"], d["status"], d["certificatePem"]) == (
        made["certificateArn"],
        "INACTIVE",
        made["certificatePem"],
    )
    assert error_of(lambda: iot.describe_certificate(certificateId="0" * 64))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert error_of(lambda: iot.describe_certificate(certificateId="xyz"))[:2] == (
        "InvalidRequestException",
        400,
    )
    listed = iot.list_certificates(pageSize=1)
    assert listed["certificates"][0]["certificateId"] == cid and listed["nextMarker"] == "1"
    service_id = iotsim.sim.service_identity.certificate_id  # type: ignore[union-attr]
    assert service_id not in [c["certificateId"] for c in iot.list_certificates()["certificates"]]
    assert error_of(lambda: iot.list_certificates(pageSize=0))[:2] == ("InvalidRequestException", 400)
    iot.update_certificate(certificateId=cid, newStatus="ACTIVE")
    assert iotsim.registry.status(cid) == "ACTIVE"
    assert error_of(lambda: iot.update_certificate(certificateId=cid, newStatus="PENDING_TRANSFER"))[:2] == (
        "InvalidRequestException",
        400,
    )
    assert error_of(lambda: iot.delete_certificate(certificateId=cid))[:2] == (
        "CertificateStateException",
        406,
    )
    iot.attach_policy(policyName="iotsim-claim-policy", target=made["certificateArn"])
    iot.update_certificate(certificateId=cid, newStatus="INACTIVE")
    assert error_of(lambda: iot.delete_certificate(certificateId=cid))[:2] == ("DeleteConflictException", 409)
    iot.delete_certificate(certificateId=cid, forceDelete=True)
    assert iotsim.registry.status(cid) is None
    assert not (iotsim.state / "principals" / cid).exists()
    revoked = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    iot.update_certificate(certificateId=revoked, newStatus="REVOKED")
    assert error_of(lambda: iot.update_certificate(certificateId=revoked, newStatus="ACTIVE"))[:2] == (
        "CertificateStateException",
        406,
    )


def test_policy_operations(iot: Any) -> None:
    doc = claim_policy_document()
    made = iot.create_policy(policyName="OpsPolicy", policyDocument=doc)
    assert (made["policyArn"].endswith(":policy/OpsPolicy"), made["policyVersionId"]) == (True, "1")
    assert error_of(lambda: iot.create_policy(policyName="OpsPolicy", policyDocument=doc))[:2] == (
        "ResourceAlreadyExistsException",
        409,
    )
    assert error_of(lambda: iot.create_policy(policyName="Broken", policyDocument="{"))[:2] == (
        "MalformedPolicyException",
        400,
    )
    assert iot.get_policy(policyName="OpsPolicy")["policyDocument"] == doc
    assert error_of(lambda: iot.get_policy(policyName="Missing"))[:2] == ("ResourceNotFoundException", 404)
    assert "OpsPolicy" in [p["policyName"] for p in iot.list_policies()["policies"]]
    assert error_of(lambda: iot.list_policies(marker="x"))[:2] == ("InvalidRequestException", 400)
    cert = iot.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    iot.attach_policy(policyName="OpsPolicy", target=cert)
    assert error_of(lambda: iot.attach_policy(policyName="Missing", target=cert))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert error_of(
        lambda: iot.attach_policy(policyName="OpsPolicy", target="arn:aws:iot:local:0:thinggroup/g")
    )[:2] == ("InvalidRequestException", 400)
    assert [p["policyName"] for p in iot.list_attached_policies(target=cert)["policies"]] == ["OpsPolicy"]
    missing_cert = cert.rsplit("/", 1)[0] + "/" + "0" * 64
    assert error_of(lambda: iot.list_attached_policies(target=missing_cert))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert error_of(lambda: iot.delete_policy(policyName="OpsPolicy"))[:2] == ("DeleteConflictException", 409)
    iot.detach_policy(policyName="OpsPolicy", target=cert)
    assert error_of(lambda: iot.detach_policy(policyName="Missing", target=cert))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert iot.list_attached_policies(target=cert)["policies"] == []
    iot.delete_policy(policyName="OpsPolicy")
    assert error_of(lambda: iot.delete_policy(policyName="OpsPolicy"))[:2] == (
        "ResourceNotFoundException",
        404,
    )


def test_thing_group_and_type_operations(iot: Any) -> None:
    made = iot.create_thing_group(
        thingGroupName="ops-group", thingGroupProperties={"thingGroupDescription": "x"}
    )
    again = iot.create_thing_group(
        thingGroupName="ops-group", thingGroupProperties={"thingGroupDescription": "x"}
    )
    assert again["thingGroupId"] == made["thingGroupId"]  # same properties: AWS answers with the group
    assert error_of(
        lambda: iot.create_thing_group(
            thingGroupName="ops-group", thingGroupProperties={"thingGroupDescription": "y"}
        )
    )[:2] == ("ResourceAlreadyExistsException", 409)
    assert error_of(lambda: iot.create_thing_group(thingGroupName="child", parentGroupName="no-such"))[
        :2
    ] == ("ResourceNotFoundException", 404)
    assert error_of(lambda: iot.create_thing_group(thingGroupName="bad name!"))[:2] == (
        "InvalidRequestException",
        400,
    )
    d = iot.describe_thing_group(thingGroupName="ops-group")
    assert (d["thingGroupArn"], d["thingGroupProperties"]) == (
        made["thingGroupArn"],
        {"thingGroupDescription": "x"},
    )
    assert error_of(lambda: iot.describe_thing_group(thingGroupName="no-such"))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert [g["groupName"] for g in iot.list_thing_groups(namePrefixFilter="ops-")["thingGroups"]] == [
        "ops-group"
    ]
    assert error_of(lambda: iot.list_thing_groups(maxResults=1000))[:2] == ("InvalidRequestException", 400)
    iot.create_thing_group(thingGroupName="ops-child", parentGroupName="ops-group")
    assert [g["groupName"] for g in iot.list_thing_groups(parentGroup="ops-group")["thingGroups"]] == [
        "ops-child"
    ]
    assert error_of(lambda: iot.delete_thing_group(thingGroupName="ops-group"))[:2] == (
        "InvalidRequestException",
        400,
    )
    iot.delete_thing_group(thingGroupName="ops-child")
    iot.delete_thing_group(thingGroupName="ops-group")
    assert error_of(lambda: iot.describe_thing_group(thingGroupName="ops-group"))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    t = iot.create_thing_type(thingTypeName="ops-type")
    assert t["thingTypeArn"].endswith(":thingtype/ops-type")
    assert error_of(lambda: iot.create_thing_type(thingTypeName="ops-type"))[:2] == (
        "ResourceAlreadyExistsException",
        409,
    )


def test_thing_operations(iotsim: RunningIotSim, iot: Any) -> None:
    _, body, keys = provision(iotsim, "FleetprovDemo", "things-1")
    name = body["thingName"]
    d = iot.describe_thing(thingName=name)
    assert (d["thingArn"].endswith(":thing/" + name), d["attributes"]["serial"]) == (True, "things-1")
    assert error_of(lambda: iot.describe_thing(thingName="no-such"))[:2] == ("ResourceNotFoundException", 404)
    listed = iot.list_things(attributeName="serial", attributeValue="things-1")["things"]
    assert [t["thingName"] for t in listed] == [name]
    assert error_of(lambda: iot.list_things(nextToken="x"))[:2] == ("InvalidRequestException", 400)
    principals = iot.list_thing_principals(thingName=name)["principals"]
    assert principals == ["arn:aws:iot:local:000000000000:cert/" + keys["certificateId"]]
    assert error_of(lambda: iot.list_thing_principals(thingName="no-such"))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert error_of(lambda: iot.delete_thing(thingName=name)) == (
        "InvalidRequestException",
        400,
        "Cannot delete. Thing {} is still attached to one or more principals".format(name),
    )
    assert error_of(lambda: iot.delete_thing(thingName=name, expectedVersion=7))[:2] == (
        "VersionConflictException",
        409,
    )
    assert error_of(lambda: iot.attach_thing_principal(thingName="no-such", principal=principals[0]))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    assert error_of(lambda: iot.detach_thing_principal(thingName="no-such", principal=principals[0]))[:2] == (
        "ResourceNotFoundException",
        404,
    )
    iot.detach_thing_principal(thingName=name, principal=principals[0])
    assert iot.list_thing_principals(thingName=name)["principals"] == []
    iot.attach_thing_principal(thingName=name, principal=principals[0])
    assert iot.list_thing_principals(thingName=name)["principals"] == principals
    iot.detach_thing_principal(thingName=name, principal=principals[0])
    iot.delete_thing(thingName=name)
    assert iotsim.registry.thing(name) is None


# -- the wire: what no SDK would send -----------------------------------------------------------


def signed(
    iotsim: RunningIotSim,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    service: str = "iot",
    secret: str | None = None,
    region: str | None = None,
) -> dict[str, str]:
    """The headers of a request SigV4-signed as boto3 signs it (with iotsim's key unless told)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    creds = iotsim.sim.credentials
    assert creds is not None
    request = AWSRequest(
        method=method,
        url=iotsim.api_url + path,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    SigV4Auth(
        Credentials(creds.access_key, secret or creds.secret_key), service, region or iotsim.sim.region
    ).add_auth(request)
    return dict(request.headers.items())


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    data: bytes

    def getheader(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def send(
    iotsim: RunningIotSim, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Reply:
    """One request exactly as given (no signing added)."""
    url = urllib.parse.urlsplit(iotsim.api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def raw(
    iotsim: RunningIotSim, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, str | None, dict[str, Any]]:
    """A signed request as no SDK would send it: (status, x-amzn-ErrorType, JSON body)."""
    url = urllib.parse.urlsplit(iotsim.api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=signed(iotsim, method, path, body, headers))
        resp = conn.getresponse()
        return resp.status, resp.getheader("x-amzn-ErrorType"), json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "method, path, body, status, error",
    [
        ("POST", "/provisioning-templates", b"{not json", 400, "SerializationException"),
        ("POST", "/provisioning-templates", b"[1]", 400, "SerializationException"),
        (
            "POST",
            "/provisioning-templates",
            json.dumps({"templateName": 5, "templateBody": "{}", "provisioningRoleArn": ROLE}).encode(),
            400,
            "InvalidRequestException",
        ),
        (
            "POST",
            "/provisioning-templates",
            json.dumps({"templateName": "x"}).encode(),
            400,
            "InvalidRequestException",
        ),
        (
            "POST",
            "/provisioning-templates",
            json.dumps(
                {"templateName": "x", "templateBody": "{}", "provisioningRoleArn": ROLE, "type": "WRONG"}
            ).encode(),
            400,
            "InvalidRequestException",
        ),
        ("GET", "/no/such/operation", b"", 404, "UnknownOperationException"),
        ("PATCH", "/provisioning-templates", b"", 405, "MethodNotAllowedException"),
        ("GET", "/endpoint?endpointType=", b"", 400, "InvalidRequestException"),
        ("GET", "/certificates?pageSize=ten", b"", 400, "InvalidRequestException"),
        ("GET", "/jobs", b"", 501, "NotImplementedException"),
        ("POST", "/keys-and-certificate?setAsActive=maybe", b"", 400, "InvalidRequestException"),
        (
            "POST",
            "/tags",
            json.dumps(
                {"resourceArn": "arn:aws:iot:local:0:thinggroup/g", "tags": [{"Value": "v"}]}
            ).encode(),
            400,
            "InvalidRequestException",
        ),
        ("GET", "/tags", b"", 400, "InvalidRequestException"),
    ],
)
def test_malformed_or_unknown_requests_get_aws_errors(
    iotsim: RunningIotSim, method: str, path: str, body: bytes, status: int, error: str
) -> None:
    got_status, got_error, doc = raw(iotsim, method, path, body)
    assert (got_status, got_error) == (status, error)
    assert doc["message"]
    assert raw(iotsim, "GET", "/endpoint")[0] == 200  # and it keeps serving


# -- docs/aws-setup.md: the AWS CLI (pinned awscli) and boto3 with iotsim's profile ------------------


def test_the_aws_cli_and_boto3_work_against_iotsim_as_docs_aws_setup_shows(iotsim: RunningIotSim) -> None:
    import os
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "aws-setup.md").read_text()
    found = re.search(r"<!-- doc-test: iotsim-endpoint-url -->\n```sh\n(.*?)```", doc, re.S)
    assert found, "docs/aws-setup.md has no block marked doc-test: iotsim-endpoint-url"
    script = found.group(1).replace(".iotsim/", str(iotsim.state) + "/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = "{}:{}".format(Path(sys.executable).parent, env.get("PATH", ""))
    proc = subprocess.run(
        ["bash", "-e", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "arn:aws:iot:local:000000000000:thinggroup/bench-group",
        "arn:aws:iot:local:000000000000:provisioningtemplate/Bench",
        "true",
        "127.0.0.1",
    ]
    # and what the CLI made is what the MQTT side provisions with
    assert provision(iotsim, "Bench", "cli-1")[0] == "accepted"
    iotsim.iot_client().delete_provisioning_template(templateName="Bench")


# -- who may call: SigV4 with iotsim's key, this Host, no CORS ------------------------------------


def group_request(iotsim: RunningIotSim, name: str) -> tuple[str, bytes]:
    """CreateThingGroup on the wire: what a refused request must not do."""
    return "/thing-groups/{}".format(name), b"{}"


def test_requests_not_signed_with_iotsims_key_are_refused_with_awss_errors_and_change_nothing(
    iotsim: RunningIotSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    import botocore.auth

    creds = iotsim.sim.credentials
    assert creds is not None

    def case(name: str) -> tuple[str, bytes, dict[str, str]]:
        path, body = group_request(iotsim, name)
        return path, body, signed(iotsim, "POST", path, body)

    path, body, good = case("sig-unsigned")
    unsigned = {k: v for k, v in good.items() if k not in ("Authorization", "X-Amz-Date")}
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [(path, body, unsigned, 403, "MissingAuthenticationTokenException")]
    path, body, _ = case("sig-secret")
    cases.append((path, body, signed(iotsim, "POST", path, body, secret="x" * 40), 403, "InvalidSignatureException"))
    path, body, good = case("sig-key")
    other_key = dict(good, Authorization=good["Authorization"].replace(creds.access_key, "AKIAIOSFODNN7EXAMPLE"))
    cases.append((path, body, other_key, 403, "UnrecognizedClientException"))
    path, body, good = case("sig-garbage")
    cases.append((path, body, dict(good, Authorization="AWS4-HMAC-SHA256 garbage"), 400, "IncompleteSignatureException"))
    path, body, _ = case("sig-region")
    cases.append((path, body, signed(iotsim, "POST", path, body, region="eu-west-3"), 403, "InvalidSignatureException"))
    path, body, _ = case("sig-service")
    cases.append((path, body, signed(iotsim, "POST", path, body, service="s3"), 403, "InvalidSignatureException"))
    path, body, good = case("sig-body")
    cases.append((path, b"[]", good, 403, "InvalidSignatureException"))  # same length, other bytes
    path, body, good = case("sig-path")
    cases.append((group_request(iotsim, "sig-path2")[0], body, good, 403, "InvalidSignatureException"))
    path, body, _ = case("sig-expired")
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda: dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=6)
    )
    cases.append((path, body, signed(iotsim, "POST", path, body), 403, "InvalidSignatureException"))
    monkeypatch.undo()
    for path, body, headers, status, code in cases:
        resp = send(iotsim, "POST", path, body, headers)
        assert (resp.status, resp.getheader("x-amzn-ErrorType")) == (status, code), path
    assert [g for g in iotsim.registry.resources("thing-group") if g.startswith("sig-")] == []
    path, body, good = case("sig-good")
    assert send(iotsim, "POST", path, body, good).status == 200  # the same request, signed: done
    assert "sig-good" in iotsim.registry.resources("thing-group")


def test_a_signed_request_for_another_host_is_refused(iotsim: RunningIotSim) -> None:
    """A web page that rebinds its own name to 127.0.0.1 sends its own Host: never served."""
    port = urllib.parse.urlsplit(iotsim.api_url).port
    path, body = group_request(iotsim, "rebound")
    headers = signed(iotsim, "POST", path, body, {"Host": "attacker.example:{}".format(port)})
    resp = send(iotsim, "POST", path, body, headers)
    assert (resp.status, resp.getheader("x-amzn-ErrorType")) == (403, "ForbiddenException")
    assert "rebound" not in iotsim.registry.resources("thing-group")
    local = signed(iotsim, "GET", "/endpoint", b"", {"Host": "localhost:{}".format(port)})
    assert send(iotsim, "GET", "/endpoint", b"", local).status == 200  # the endpoint by its other name


def test_a_browser_gets_nothing_usable_no_cors_header_and_nothing_done(iotsim: RunningIotSim) -> None:
    origin = {"Origin": "http://attacker.example"}
    preflight = send(
        iotsim,
        "OPTIONS",
        "/policies/FromBrowser",
        b"",
        {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    form = send(
        iotsim,
        "POST",
        "/policies/FromBrowser",
        json.dumps({"policyDocument": claim_policy_document()}).encode(),
        {**origin, "Content-Type": "text/plain"},
    )
    ok = send(iotsim, "GET", "/endpoint", b"", signed(iotsim, "GET", "/endpoint", b"", origin))
    for resp in (preflight, form):
        assert (resp.status, resp.getheader("x-amzn-ErrorType")) == (403, "MissingAuthenticationTokenException")
    assert ok.status == 200
    for resp in (preflight, form, ok):
        assert not [h for h, _ in resp.headers if h.lower().startswith("access-control-")]
    assert iotsim.registry.policy("FromBrowser") is None


# -- bounded: framing, sizes, nesting, time, connections -------------------------------------------


def test_malformed_framing_and_oversized_bodies_are_refused_before_the_body_is_read(iotsim: RunningIotSim) -> None:
    import socket

    port = urllib.parse.urlsplit(iotsim.api_url).port
    host = "127.0.0.1:{}".format(port)

    def exchange(head: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head.encode() + b"{")  # one byte of a body, never more
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                assert chunk, data
                data += chunk
            return data

    for header, status, code in (
        ("Content-Length: abc", b"400", b"SerializationException"),
        ("Content-Length: -5", b"400", b"SerializationException"),
        ("Content-Length: 300000000", b"413", b"RequestEntityTooLargeException"),
        ("Transfer-Encoding: chunked", b"411", b"SerializationException"),
    ):
        answer = exchange("POST /thing-groups/framing HTTP/1.1\r\nHost: {}\r\n{}\r\n\r\n".format(host, header))
        assert answer.startswith(b"HTTP/1.1 " + status) and b"x-amzn-ErrorType: " + code in answer, header
    assert raw(iotsim, "GET", "/endpoint")[0] == 200


def test_deeply_nested_json_is_a_400_not_a_crash(iotsim: RunningIotSim) -> None:
    for body in (b"[" * 200_000, b'{"tags": ' + b"[" * 50 + b"]" * 50 + b"}", b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        status, code, _ = raw(iotsim, "POST", "/thing-groups/deep", body)
        assert (status, code) in {(400, "SerializationException"), (400, "InvalidRequestException")}
    assert "deep" not in iotsim.registry.resources("thing-group")


def test_a_request_dripped_byte_by_byte_is_cut_off_at_its_deadline(
    iotsim_factory: Callable[..., RunningIotSim],
) -> None:
    import socket
    import threading

    sim = iotsim_factory(api_timeout=1.0)
    port = urllib.parse.urlsplit(sim.api_url).port
    head = "GET /endpoint HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-Padding: {}\r\n\r\n".format(port, "p" * 200)
    pace = threading.Event()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sent = 0
        try:
            for byte in head.encode():  # a byte every 50 ms: the whole head would take 12 s
                sock.sendall(bytes([byte]))
                sent += 1
                pace.wait(0.05)
        except OSError:
            pass  # the server closed the connection: what this test wants
        sock.settimeout(10)
        try:
            rest = sock.recv(4096)
        except OSError:
            rest = b""
    assert sent < len(head) and rest == b""  # cut off, without an answer
    assert raw(sim, "GET", "/endpoint")[0] == 200


def test_connections_over_the_cap_get_503_and_the_cap_frees_as_they_close(
    iotsim_factory: Callable[..., RunningIotSim],
) -> None:
    import socket

    sim = iotsim_factory(api_connections=3, api_timeout=30.0)
    port = urllib.parse.urlsplit(sim.api_url).port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"ServiceUnavailableException" in answer
    finally:
        for sock in idle:
            sock.close()
    status = 0
    for _ in range(200):  # the three threads see their connections end; bounded
        try:
            status = raw(sim, "GET", "/endpoint")[0]
        except ConnectionError:
            continue
        if status == 200:
            break
    assert status == 200


# -- every value a caller sends is checked against botocore's model --------------------------------


def principal_files(iotsim: RunningIotSim) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (iotsim.state / "principals").rglob("*") if p.is_file()}


def test_every_byte_in_caller_fields_is_taken_or_refused_as_the_model_says_and_grants_nothing(
    iotsim: RunningIotSim, iot: Any
) -> None:
    import re
    import unicodedata

    before = principal_files(iotsim)
    group = iot.create_thing_group(thingGroupName="bytes-group")["thingGroupArn"]
    attribute = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]*")  # botocore iot: AttributeValue
    name = re.compile(r"[a-zA-Z0-9:_-]+")  # ThingGroupName, ThingTypeName
    for code in range(256):
        ch = chr(code)
        value = "hq" + ch + "status SERVICE"
        for call, fits in (
            (
                lambda: iot.create_thing_group(
                    thingGroupName="b{}".format(code),
                    thingGroupProperties={"attributePayload": {"attributes": {"site": value}}},
                ),
                attribute.fullmatch(value),
            ),
            (lambda: iot.create_thing_type(thingTypeName="t" + ch + "x"), name.fullmatch("t" + ch + "x")),
            (  # TagKey: \p{L}\p{Z}\p{N} and _.:/=+-@ (Unicode classes)
                lambda: iot.tag_resource(resourceArn=group, tags=[{"Key": "k" + ch, "Value": "v"}]),
                unicodedata.category(ch)[0] in "LZN" or ch in "_.:/=+-@",
            ),
            (  # ThingGroupDescription: [\p{Graph}\x20]*, Java's ASCII \p{Graph}
                lambda: iot.create_thing_group(
                    thingGroupName="d{}".format(code), thingGroupProperties={"thingGroupDescription": "d" + ch}
                ),
                0x20 <= code <= 0x7E,
            ),
        ):
            try:
                call()
                taken = True
            except botocore.exceptions.ClientError as exc:
                assert exc.response["Error"]["Code"] == "InvalidRequestException", (code, exc)
                taken = False
            assert taken == bool(fits), code
    keys = {t["Key"] for t in iot.list_tags_for_resource(resourceArn=group)["tags"]}
    assert "k\n" not in keys and "k\x00" not in keys and {"ka", "k\xe9", "k "} <= keys
    longest = "a" * 800  # AttributeValue: at most 800
    iot.create_thing_group(
        thingGroupName="bytes-long", thingGroupProperties={"attributePayload": {"attributes": {"a": longest}}}
    )
    assert error_of(
        lambda: iot.create_thing_group(
            thingGroupName="bytes-longer",
            thingGroupProperties={"attributePayload": {"attributes": {"a": longest + "a"}}},
        )
    )[:2] == ("InvalidRequestException", 400)
    assert "bytes-longer" not in iotsim.registry.resources("thing-group")
    assert principal_files(iotsim) == before  # no certificate gained (or lost) a right


@pytest.mark.parametrize(
    "call",
    [
        lambda iot: iot.describe_thing(thingName="x" * 129),  # URI label over its 128
        lambda iot: iot.describe_thing(thingName="evil/#\n"),
        lambda iot: iot.create_policy(policyName="a/b", policyDocument=claim_policy_document()),
        lambda iot: iot.create_provisioning_template(templateName="T" * 37, templateBody=BODY, provisioningRoleArn=ROLE),
        lambda iot: iot.list_certificates(pageSize=251),  # an integer over the model's max
        lambda iot: iot.list_things(attributeName="serial", attributeValue="a\nb"),  # a query-string value
        lambda iot: iot.tag_resource(resourceArn="arn:aws:iot:local:000000000000:thinggroup/fleetprov-demo", tags=[{"Value": "v"}]),
    ],
)
def test_values_outside_the_model_are_invalid_requests_before_anything_runs(
    iotsim: RunningIotSim, iot: Any, call: Callable[[Any], Any]
) -> None:
    before = principal_files(iotsim)
    assert error_of(lambda: call(iot))[:2] == ("InvalidRequestException", 400)
    assert principal_files(iotsim) == before


# -- every call that names a resource: ResourceNotFoundException when it does not exist ------------

NO_CERT = "0" * 64
NO_CERT_ARN = "arn:aws:iot:local:000000000000:cert/" + NO_CERT
MISSING: dict[str, Callable[[Any], Any]] = {
    "DescribeProvisioningTemplate": lambda iot: iot.describe_provisioning_template(templateName="Nope"),
    "UpdateProvisioningTemplate": lambda iot: iot.update_provisioning_template(templateName="Nope", enabled=True),
    "CreateProvisioningTemplateVersion": lambda iot: iot.create_provisioning_template_version(
        templateName="Nope", templateBody=BODY
    ),
    "DeleteProvisioningTemplate": lambda iot: iot.delete_provisioning_template(templateName="Nope"),
    "CreateProvisioningClaim": lambda iot: iot.create_provisioning_claim(templateName="Nope"),
    "DescribeCertificate": lambda iot: iot.describe_certificate(certificateId=NO_CERT),
    "UpdateCertificate": lambda iot: iot.update_certificate(certificateId=NO_CERT, newStatus="INACTIVE"),
    "DeleteCertificate": lambda iot: iot.delete_certificate(certificateId=NO_CERT),
    "GetPolicy": lambda iot: iot.get_policy(policyName="Nope"),
    "DeletePolicy": lambda iot: iot.delete_policy(policyName="Nope"),
    "AttachPolicy": lambda iot: iot.attach_policy(policyName="iotsim-claim-policy", target=NO_CERT_ARN),
    "DetachPolicy": lambda iot: iot.detach_policy(policyName="iotsim-claim-policy", target=NO_CERT_ARN),
    "ListAttachedPolicies": lambda iot: iot.list_attached_policies(target=NO_CERT_ARN),
    "CreateThingGroup": lambda iot: iot.create_thing_group(thingGroupName="orphan", parentGroupName="nope"),
    "DescribeThingGroup": lambda iot: iot.describe_thing_group(thingGroupName="nope"),
    "ListThingGroups": lambda iot: iot.list_thing_groups(parentGroup="nope"),
    "DescribeThing": lambda iot: iot.describe_thing(thingName="nope"),
    "ListThings": lambda iot: iot.list_things(thingTypeName="nope"),
    "ListThingPrincipals": lambda iot: iot.list_thing_principals(thingName="nope"),
    "AttachThingPrincipal": lambda iot: iot.attach_thing_principal(thingName="nope", principal=NO_CERT_ARN),
    "DetachThingPrincipal": lambda iot: iot.detach_thing_principal(thingName="nope", principal=NO_CERT_ARN),
    "ListTagsForResource": lambda iot: iot.list_tags_for_resource(
        resourceArn="arn:aws:iot:local:000000000000:provisioningtemplate/Nope"
    ),
    "TagResource": lambda iot: iot.tag_resource(
        resourceArn="arn:aws:iot:local:000000000000:thinggroup/nope", tags=[{"Key": "k", "Value": "v"}]
    ),
    "UntagResource": lambda iot: iot.untag_resource(
        resourceArn="arn:aws:iot:local:123456789012:policy/iotsim-claim-policy", tagKeys=["k"]  # another account
    ),
}
# What names no existing resource, and what AWS documents as succeeding for a missing one.
NAMES_NONE = {
    "DescribeEndpoint", "CreateProvisioningTemplate", "ListProvisioningTemplates", "CreateKeysAndCertificate",
    "ListCertificates", "CreatePolicy", "ListPolicies", "CreateThingType", "CreateTopicRule", "ListTopicRules",
}
MISSING_IS_NO_ERROR = {"DeleteThing", "DeleteThingGroup"}  # AWS's API reference: see controlplane.py
# AWS answers a topic rule that does not exist with UnauthorizedException (see rules.py).
MISSING_RULE: dict[str, Callable[[Any], Any]] = {
    "GetTopicRule": lambda iot: iot.get_topic_rule(ruleName="Nope"),
    "DeleteTopicRule": lambda iot: iot.delete_topic_rule(ruleName="Nope"),
    "ReplaceTopicRule": lambda iot: iot.replace_topic_rule(
        ruleName="Nope", topicRulePayload={"sql": "SELECT * FROM 'a'", "actions": []}
    ),
}


def test_every_operation_is_classified_for_missing_resources() -> None:
    from tools.iotsim.controlplane import ControlPlane

    served = {n[3:] for n in dir(ControlPlane) if n.startswith("op_")}
    assert served == set(MISSING) | NAMES_NONE | MISSING_IS_NO_ERROR | set(MISSING_RULE)


@pytest.mark.parametrize("operation", sorted(MISSING_RULE))
def test_a_call_naming_a_missing_topic_rule_is_unauthorized_as_on_aws(iot: Any, operation: str) -> None:
    code, status, message = error_of(lambda: MISSING_RULE[operation](iot))[:3]
    assert (code, status) == ("UnauthorizedException", 401) and "'Nope'" in message


@pytest.mark.parametrize("operation", sorted(MISSING))
def test_a_call_naming_a_missing_resource_is_resource_not_found(iot: Any, operation: str) -> None:
    assert error_of(lambda: MISSING[operation](iot))[:2] == ("ResourceNotFoundException", 404)


def test_deleting_a_missing_thing_or_thing_group_succeeds_as_aws_documents(iot: Any) -> None:
    iot.delete_thing(thingName="never-was")
    iot.delete_thing_group(thingGroupName="never-was")


# -- IAM: the role calls tools/awssetup makes, from botocore's iam model --------------------------


def test_iam_roles_are_served_with_iams_errors(iotsim: RunningIotSim) -> None:
    iam = iotsim.iot_client(service="iam", validate=False)
    trust = json.dumps({"Version": "2012-10-17", "Statement": []})
    made = iam.create_role(
        RoleName="CpRole", AssumeRolePolicyDocument=trust, Tags=[{"Key": "fleetprov:awssetup", "Value": "t"}]
    )["Role"]
    assert made["Arn"] == "arn:aws:iam::000000000000:role/CpRole" and made["RoleId"].startswith("AROA")
    assert error_of(lambda: iam.create_role(RoleName="cprole", AssumeRolePolicyDocument=trust))[:2] == (
        "EntityAlreadyExists",
        409,
    )
    assert error_of(lambda: iam.create_role(RoleName="bad role", AssumeRolePolicyDocument=trust))[:2] == (
        "ValidationError",
        400,
    )
    assert iam.get_role(RoleName="CpRole")["Role"]["Arn"] == made["Arn"]
    assert error_of(lambda: iam.get_role(RoleName="NoRole"))[:2] == ("NoSuchEntity", 404)
    assert iam.list_role_tags(RoleName="CpRole")["Tags"] == [{"Key": "fleetprov:awssetup", "Value": "t"}]
    managed = "arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration"
    assert iam.get_policy(PolicyArn=managed)["Policy"]["PolicyName"] == "AWSIoTThingsRegistration"
    assert error_of(
        lambda: iam.attach_role_policy(RoleName="CpRole", PolicyArn="arn:aws:iam::aws:policy/NoSuchPolicy")
    )[:2] == ("NoSuchEntity", 404)
    iam.attach_role_policy(RoleName="CpRole", PolicyArn=managed)
    attached = iam.list_attached_role_policies(RoleName="CpRole")["AttachedPolicies"]
    assert attached == [{"PolicyName": "AWSIoTThingsRegistration", "PolicyArn": managed}]
    assert error_of(lambda: iam.delete_role(RoleName="CpRole"))[:2] == ("DeleteConflict", 409)
    iam.detach_role_policy(RoleName="CpRole", PolicyArn=managed)
    assert error_of(lambda: iam.detach_role_policy(RoleName="CpRole", PolicyArn=managed))[:2] == (
        "NoSuchEntity",
        404,
    )
    iam.delete_role(RoleName="CpRole")
    assert "CpRole" not in [r["RoleName"] for r in iam.list_roles()["Roles"]]


def test_iam_requests_get_iams_xml_errors_when_unsigned_or_malformed(iotsim: RunningIotSim) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    body = b"Action=ListRoles&Version=2010-05-08"
    unsigned = send(iotsim, "POST", "/", body, form)
    assert unsigned.status == 403 and b"<Code>MissingAuthenticationToken</Code>" in unsigned.data
    wrong = send(iotsim, "POST", "/", body, signed(iotsim, "POST", "/", body, form, service="iam", secret="y" * 40))
    assert wrong.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in wrong.data
    for payload, code in ((b"Version=2010-05-08", b"MissingAction"), (b"Action=Nope", b"InvalidAction")):
        resp = send(iotsim, "POST", "/", payload, signed(iotsim, "POST", "/", payload, form, service="iam"))
        assert resp.status == 400 and b"<Code>" + code + b"</Code>" in resp.data
