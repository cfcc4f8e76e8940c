"""iotsim's stand-in for AWS Lambda (tools/iotsim/functions.py) and fleetprov's own functions
(tools/awssetup/lambdas): the API a setup calls, through boto3; invocation by AWS IoT only with
a resource-policy statement for that source; only fleetprov's own package ever runs; and the
handlers refuse hostile events without an AWS call."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import botocore.exceptions
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tools.awssetup import lambdas
from tools.awssetup.lambdas import fleetprov_rotation as rotation
from tools.iotsim.apimodel import ApiError
from tools.iotsim.templates import ROTATION_TEMPLATE_NAME, builtin_template_text
from tools.iotsim.testing import RunningIotSim, provision_csr, register

ROLE = "arn:aws:iam::000000000000:role/probe"


def error_of(call: Callable[[], Any]) -> tuple[str, int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    err = info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


@pytest.fixture
def lam(iotsim: RunningIotSim) -> Any:
    return iotsim.iot_client(service="lambda")


def other_package() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("fleetprov_rotation.py", "def hook_handler(event, context):\n    return {'allowProvisioning': True}\n")
    return out.getvalue()


def create(lam: Any, name: str, code: bytes | None = None, handler: str = lambdas.HOOK_HANDLER) -> dict[str, Any]:
    return lam.create_function(FunctionName=name, Runtime=lambdas.RUNTIME, Role=ROLE, Handler=handler,
                               Code={"ZipFile": code if code is not None else lambdas.package()}, Tags={"k": "v"})


def test_the_package_is_the_same_bytes_every_time_and_names_its_code() -> None:
    assert lambdas.package() == lambdas.package()
    with zipfile.ZipFile(io.BytesIO(lambdas.package())) as z:
        assert z.namelist() == ["fleetprov_rotation.py"]
        assert z.read("fleetprov_rotation.py") == lambdas.SOURCE.read_bytes()
    assert lambdas.module_for(lambdas.code_sha256(lambdas.package())) is rotation
    assert lambdas.module_for(lambdas.code_sha256(other_package())) is None


def test_a_function_is_created_once_described_updated_tagged_and_deleted(iotsim: RunningIotSim, lam: Any) -> None:
    made = create(lam, "Probe1")
    assert made["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert (made["CodeSha256"], made["State"], made["Handler"]) == (
        lambdas.code_sha256(lambdas.package()), "Active", lambdas.HOOK_HANDLER
    )
    assert made["FunctionArn"] == "arn:aws:lambda:local:000000000000:function:Probe1"
    assert error_of(lambda: create(lam, "Probe1"))[:2] == ("ResourceConflictException", 409)
    updated = lam.update_function_code(FunctionName="Probe1", ZipFile=other_package())
    assert updated["CodeSha256"] == lambdas.code_sha256(other_package())
    assert lam.get_function(FunctionName="Probe1")["Configuration"]["CodeSha256"] == updated["CodeSha256"]
    assert lam.list_tags(Resource=made["FunctionArn"])["Tags"] == {"k": "v"}
    lam.delete_function(FunctionName="Probe1")
    code, status, message = error_of(lambda: lam.get_function(FunctionName="Probe1"))
    assert (code, status) == ("ResourceNotFoundException", 404) and made["FunctionArn"] in message


@pytest.mark.parametrize(
    "call",
    [
        lambda lam: create(lam, "bad name!"),  # outside the model's pattern
        lambda lam: lam.create_function(FunctionName="S3Code", Runtime=lambdas.RUNTIME, Role=ROLE,
                                        Handler="x.y", Code={"S3Bucket": "bucket", "S3Key": "k"}),
        lambda lam: lam.create_function(FunctionName="NoHandler", Runtime=lambdas.RUNTIME, Role=ROLE,
                                        Code={"ZipFile": b"x"}),
        lambda lam: lam.add_permission(FunctionName="FleetprovRetire", StatementId="x", Action="lambda:InvokeFunction",
                                       Principal="someone"),
    ],
    ids=["name", "s3", "handler", "principal"],
)
def test_what_iotsim_cannot_record_faithfully_is_refused_and_changes_nothing(
    iotsim: RunningIotSim, lam: Any, call: Callable[[Any], Any]
) -> None:
    before = (iotsim.state / "controlplane" / "lambda.json").read_bytes()
    code, status, _ = error_of(lambda: call(lam))
    assert status == 400 and code in ("ValidationException", "InvalidParameterValueException")
    assert (iotsim.state / "controlplane" / "lambda.json").read_bytes() == before


def test_permissions_are_added_listed_and_removed_by_statement_id(lam: Any) -> None:
    create(lam, "Probe2")
    assert error_of(lambda: lam.get_policy(FunctionName="Probe2"))[:2] == ("ResourceNotFoundException", 404)
    source = "arn:aws:iot:local:000000000000:rule/Somewhere"
    added = lam.add_permission(FunctionName="Probe2", StatementId="iot", Action="lambda:InvokeFunction",
                               Principal="iot.amazonaws.com", SourceArn=source, SourceAccount="000000000000")
    assert json.loads(added["Statement"])["Condition"] == {
        "StringEquals": {"AWS:SourceAccount": "000000000000"}, "ArnLike": {"AWS:SourceArn": source}
    }
    again = error_of(lambda: lam.add_permission(FunctionName="Probe2", StatementId="iot", Action="lambda:*",
                                                Principal="iot.amazonaws.com"))
    assert again[:2] == ("ResourceConflictException", 409)
    assert [s["Sid"] for s in json.loads(lam.get_policy(FunctionName="Probe2")["Policy"])["Statement"]] == ["iot"]
    assert lam.remove_permission(FunctionName="Probe2", StatementId="iot")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert error_of(lambda: lam.remove_permission(FunctionName="Probe2", StatementId="iot"))[:2] == (
        "ResourceNotFoundException", 404
    )


def hook_answer(iotsim: RunningIotSim, template: str) -> tuple[str, Any]:
    """RegisterThing with ``template`` over the claim, whose hook then decides."""
    with iotsim.client("hook-probe") as claim:
        token = provision_csr(claim, ec.generate_private_key(ec.SECP256R1()))["certificateOwnershipToken"]
        return register(claim, token, {"ThingName": "nobody"}, template=template)


def hook_template(iotsim: RunningIotSim, name: str, function: str) -> str:
    iot = iotsim.iot_client()
    iot.create_provisioning_template(
        templateName=name, templateBody=builtin_template_text(ROTATION_TEMPLATE_NAME),
        provisioningRoleArn=ROLE, enabled=True,
        preProvisioningHook={"targetArn": "arn:aws:lambda:local:000000000000:function:" + function},
    )
    return iot.describe_provisioning_template(templateName=name)["templateArn"]


def test_aws_iot_invokes_a_hook_only_with_a_permission_for_that_template_and_only_fleetprovs_code(
    iotsim: RunningIotSim, lam: Any
) -> None:
    create(lam, "HookProbe")
    create(lam, "Uploaded", code=other_package())  # would allow everything, if iotsim ran it
    arn = hook_template(iotsim, "HookProbeT", "HookProbe")
    other = hook_template(iotsim, "UploadedT", "Uploaded")

    outcome, body = hook_answer(iotsim, "HookProbeT")
    assert (outcome, body["statusCode"], body["errorMessage"]) == (
        "rejected", 403, "The pre-provisioning hook failed: InvocationError"  # no permission yet
    )
    lam.add_permission(FunctionName="HookProbe", StatementId="elsewhere", Action="lambda:InvokeFunction",
                       Principal="iot.amazonaws.com", SourceArn=other)
    assert hook_answer(iotsim, "HookProbeT")[1]["errorMessage"] == "The pre-provisioning hook failed: InvocationError"
    lam.add_permission(FunctionName="HookProbe", StatementId="here", Action="lambda:InvokeFunction",
                       Principal="iot.amazonaws.com", SourceArn=arn)
    # Now it runs: and the claim is attached to no thing, so the hook itself says no.
    assert hook_answer(iotsim, "HookProbeT")[1]["errorMessage"] == "The pre-provisioning hook denied provisioning"

    lam.add_permission(FunctionName="Uploaded", StatementId="here", Action="lambda:InvokeFunction",
                       Principal="iot.amazonaws.com", SourceArn=other)
    outcome, body = hook_answer(iotsim, "UploadedT")
    assert (outcome, body["errorMessage"]) == ("rejected", "The pre-provisioning hook failed: InvocationError")


# -- the handlers themselves, with a recording stand-in for boto3 --------------------------------------


class NotFound(Exception):
    response = {"Error": {"Code": "ResourceNotFoundException"}}


class RecordingIot:
    """list_thing_principals from pages; every call recorded."""

    def __init__(self, pages: list[list[str]] | None = None) -> None:
        self.pages = pages
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def list_thing_principals(self, **args: Any) -> dict[str, Any]:
        self.calls.append(("list_thing_principals", args))
        if self.pages is None:
            raise NotFound()
        index = int(args.get("nextToken", 0))
        page: dict[str, Any] = {"principals": self.pages[index]}
        if index + 1 < len(self.pages):
            page["nextToken"] = str(index + 1)
        return page


CERT = "ab" * 32


def arn(cid: str) -> str:
    return "arn:aws:iot:eu-west-1:123456789012:cert/" + cid


@pytest.mark.parametrize(
    "event",
    [None, [], {}, {"parameters": None, "claimCertificateId": CERT}, {"parameters": {"ThingName": 5}, "claimCertificateId": CERT},
     {"parameters": {"ThingName": "a/b"}, "claimCertificateId": CERT}, {"parameters": {"ThingName": "x" * 129}, "claimCertificateId": CERT},
     {"parameters": {"ThingName": "t"}}, {"parameters": {"ThingName": "t"}, "claimCertificateId": "ab"}],
    ids=["none", "list", "empty", "no-parameters", "number", "slash", "too-long", "no-claim", "short-claim"],
)
def test_the_hook_denies_a_hostile_event_without_asking_aws(event: Any) -> None:
    iot = RecordingIot([[arn(CERT)]])
    assert rotation.allow_rotation(event, iot) == {"allowProvisioning": False}
    assert iot.calls == []


def test_the_hook_allows_a_certificate_of_the_thing_found_on_any_page_and_denies_others() -> None:
    iot = RecordingIot([[arn("cd" * 32)], [arn(CERT.upper())]])
    event = {"parameters": {"ThingName": "t"}, "claimCertificateId": CERT}
    assert rotation.allow_rotation(event, iot) == {"allowProvisioning": True}
    assert [a.get("nextToken") for _, a in iot.calls] == [None, "1"]
    assert rotation.allow_rotation({**event, "claimCertificateId": "ef" * 32}, iot) == {"allowProvisioning": False}
    assert rotation.allow_rotation(event, RecordingIot(None)) == {"allowProvisioning": False}  # no such thing


def test_the_hook_fails_rather_than_walk_a_thing_with_endless_principals() -> None:
    iot = RecordingIot([[arn("cd" * 32)]] * (rotation.MAX_PAGES + 1))
    with pytest.raises(RuntimeError):
        rotation.allow_rotation({"parameters": {"ThingName": "t"}, "claimCertificateId": CERT}, iot)
    assert len(iot.calls) == rotation.MAX_PAGES


class RecordingData:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(self, **args: Any) -> None:
        self.published.append(args)


@pytest.mark.parametrize(
    "event",
    [None, {}, {"thingName": "t"}, {"thingName": "a b", "topic": "x"}, {"thingName": "t", "topic": 7},
     {"thingName": "t", "topic": "x" * 248}],
    ids=["none", "empty", "no-topic", "bad-thing", "topic-number", "topic-too-long"],
)
def test_the_retire_step_answers_nothing_and_asks_aws_nothing_without_a_thing_and_a_topic(event: Any) -> None:
    iot, data = RecordingIot([[arn(CERT)]]), RecordingData()
    assert rotation.retire(event, iot, data) is None
    assert iot.calls == [] and data.published == []


def test_the_retire_step_answers_a_failed_aws_call_with_500_and_no_details() -> None:
    class Throttled(Exception):
        response = {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}

    class Failing(RecordingIot):
        def list_thing_principals(self, **args: Any) -> dict[str, Any]:
            raise Throttled()

    data = RecordingData()
    event = {"thingName": "t", "topic": "fleetprov/t/retire", "certificateId": CERT, "principal": "cd" * 32}
    body = rotation.retire(event, Failing(), data)
    assert body == {"statusCode": 500, "errorCode": "InternalFailureException",
                    "errorMessage": "retiring failed: ThrottlingException"}
    assert data.published == [{"topic": "fleetprov/t/retire/rejected", "qos": 1, "payload": json.dumps(body).encode()}]


def test_a_handler_takes_its_clients_from_a_context_that_offers_them() -> None:
    made: list[str] = []
    iot = RecordingIot([[arn(CERT)]])

    class Context:
        def client(self, service: str) -> Any:
            made.append(service)
            return iot

    assert rotation.hook_handler({"parameters": {"ThingName": "t"}, "claimCertificateId": CERT}, Context()) == {
        "allowProvisioning": True
    }
    assert made == ["iot"]


def test_a_zip_that_is_not_base64_is_refused(iotsim: RunningIotSim) -> None:
    # boto3 always sends valid base64: this is the operation behind the HTTP API, given what it could get.
    params = {"FunctionName": "NotB64", "Runtime": lambdas.RUNTIME, "Role": ROLE, "Handler": "a.b",
              "Code": {"ZipFile": "***"}}
    with pytest.raises(ApiError) as info:
        iotsim.controlplane.call("CreateFunction", params, "lambda")
    assert info.value.code == "InvalidParameterValueException"
    assert error_of(lambda: iotsim.iot_client(service="lambda").get_function(FunctionName="NotB64"))[0] == (
        "ResourceNotFoundException"
    )


def test_the_demo_functions_are_fleetprovs_package_and_only_aws_iot_for_their_source_may_invoke_them(
    lam: Any,
) -> None:
    for name, handler, source in (
        (lambdas.HOOK_FUNCTION, lambdas.HOOK_HANDLER, "provisioningtemplate/FleetprovRotation"),
        (lambdas.RETIRE_FUNCTION, lambdas.RETIRE_HANDLER, "rule/FleetprovRetire"),
    ):
        config = lam.get_function(FunctionName=name)["Configuration"]
        assert (config["CodeSha256"], config["Handler"]) == (lambdas.code_sha256(lambdas.package()), handler)
        [statement] = json.loads(lam.get_policy(FunctionName=name)["Policy"])["Statement"]
        assert statement["Principal"] == {"Service": "iot.amazonaws.com"}
        assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == "arn:aws:iot:local:000000000000:" + source

