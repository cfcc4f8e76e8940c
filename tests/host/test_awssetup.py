"""`python -m tools.awssetup` run for real against iotsim's control plane, which answers its AWS IoT
and IAM calls: setup, idempotence, dry run, teardown of exactly what it made, rollback, and every
error as one line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tools.awssetup.__main__ import main
from tools.awssetup.setup import STATE_FILE, TAG_KEY
from tools.iotsim import localaws
from tools.iotsim.broker import free_port
from tools.iotsim.testing import Device, RunningIotSim, write_identity


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS variable and no AWS configuration: what a local endpoint needs is iotsim's own."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws either
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata service


def iam(iotsim: RunningIotSim) -> Any:
    return iotsim.iot_client(service="iam")


def error_code(call: Any) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


def run(iotsim: RunningIotSim, folder: Path, command: str, *extra: str) -> int:
    argv = [
        command,
        "--folder",
        str(folder),
        "--endpoint-url",
        iotsim.api_url,
        "--iotsim-state",
        str(iotsim.state),
        *extra,
    ]
    if command == "setup":
        argv += rotation_names(extra[extra.index("--template-name") + 1] if "--template-name" in extra else "")
        argv += [
            "--ca-file",
            str(iotsim.ca_path),
            "--mqtt-port",
            str(iotsim.port),
            "--method",
            "keys",
            "--format",
            "json",
        ]
    return main(argv)


def rotation_names(prefix: str) -> list[str]:
    """The rotation's resources named after ``prefix`` (none: the defaults, which iotsim's own demo has)."""
    if not prefix:
        return []
    return [
        "--rotation-template", prefix + "Rotation", "--hook-function", prefix + "Hook", "--hook-role",
        prefix + "HookRole", "--retire-function", prefix + "Retire", "--retire-role", prefix + "RetireRole",
        "--retire-rule", prefix + "Retire",
    ]


def names(iotsim: RunningIotSim, role: str) -> dict[str, Any]:
    iot = iotsim.iot_client()
    roles = [r["RoleName"] for r in iam(iotsim).list_roles()["Roles"]]
    return {
        "role": role in roles,
        "templates": sorted(t["templateName"] for t in iot.list_provisioning_templates()["templates"]),
        "groups": sorted(g["groupName"] for g in iot.list_thing_groups()["thingGroups"]),
        "policies": sorted(p["policyName"] for p in iot.list_policies()["policies"]),
        "certificates": len(iot.list_certificates()["certificates"]),
    }


def test_setup_creates_a_fleet_a_device_provisions_with_and_teardown_removes_exactly_it(
    iotsim: RunningIotSim, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "device"
    before = names(iotsim, "SetupRole")
    args = (
        "--template-name",
        "SetupTemplate",
        "--role-name",
        "SetupRole",
        "--thing-group",
        "fleetprov-demo",
        "--claim-policy",
        "SetupClaim",
    )

    assert run(iotsim, folder, "setup", "--dry-run", *args) == 0
    out = capsys.readouterr().out
    assert "role SetupRole: would create" in out and "dry run: nothing was changed" in out
    assert "template SetupTemplateRotation: would create" in out and "rule SetupTemplateRetire: would create" in out
    assert names(iotsim, "SetupRole") == before and not folder.exists()

    assert run(iotsim, folder, "setup", *args) == 0
    out = capsys.readouterr().out
    assert "thing group fleetprov-demo: exists, unchanged" in out  # iotsim's own: used, not owned
    assert "template SetupTemplate: created" in out
    after = names(iotsim, "SetupRole")
    assert after["role"] and "SetupTemplate" in after["templates"] and "SetupClaim" in after["policies"]
    assert after["certificates"] == before["certificates"] + 1
    attached = [
        p["PolicyArn"]
        for p in iam(iotsim).list_attached_role_policies(RoleName="SetupRole")["AttachedPolicies"]
    ]
    assert attached == ["arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration"]

    config = json.loads((folder / "config.json").read_text())
    assert (config["endpoint"], config["port"], config["template"]) == (
        "127.0.0.1",
        iotsim.port,
        "SetupTemplate",
    )
    # The files make deploy reads are DER, and they provision a device against iotsim.
    ca = x509.load_der_x509_certificate((folder / "certs" / "ca.der").read_bytes())
    assert ca == x509.load_pem_x509_certificate(iotsim.ca_path.read_bytes())
    cert = x509.load_der_x509_certificate((folder / "certs" / "claim.der").read_bytes())
    key = serialization.load_der_private_key((folder / "certs" / "claim.key.der").read_bytes(), None)
    cert_pem, key_pem = tmp_path / "claim.pem", tmp_path / "claim.key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with iotsim.client("setup-device", cert_pem, key_pem) as claim:
        outcome, keys = claim.request("$aws/certificates/create/json", b"")
        assert outcome == "accepted"
        outcome, body = claim.request(
            "$aws/provisioning-templates/SetupTemplate/provision/json",
            {
                "certificateOwnershipToken": keys["certificateOwnershipToken"],
                "parameters": {"SerialNumber": "setup-1"},
            },
        )
        assert (outcome, body["thingName"]) == ("accepted", "fleetprov-setup-1")

    provisioned = names(iotsim, "SetupRole")  # the device's certificate and policy
    assert run(iotsim, folder, "setup", *args) == 0
    out = capsys.readouterr().out
    assert "everything already exists: nothing changed" in out
    assert names(iotsim, "SetupRole") == provisioned

    state = json.loads((folder / STATE_FILE).read_text())
    assert set(state["created"]) == {  # the thing policy is iotsim's own: used, not owned
        "role", "template", "claim", "claim_policy", "hook_role", "hook_function", "rotation_template",
        "retire_role", "retire_function", "retire_rule",
    }
    template_arn = iotsim.iot_client().describe_provisioning_template(templateName="SetupTemplate")[
        "templateArn"
    ]
    assert {"Key": TAG_KEY, "Value": "fleetprov"} in iotsim.iot_client().list_tags_for_resource(
        resourceArn=template_arn
    )["tags"]

    assert run(iotsim, folder, "teardown") == 0
    gone = names(iotsim, "SetupRole")
    assert (
        gone["role"] is False
        and "SetupTemplate" not in gone["templates"]
        and "SetupTemplateRotation" not in gone["templates"]
        and "SetupClaim" not in gone["policies"]
    )
    assert error_code(lambda: iotsim.iot_client(service="lambda").get_function(FunctionName="SetupTemplateHook")) == (
        "ResourceNotFoundException"
    )
    assert "SetupTemplateRetire" not in [r["ruleName"] for r in iotsim.iot_client().list_topic_rules()["rules"]]
    assert "fleetprov-demo" in gone["groups"] and "FleetprovDemo" in gone["templates"]  # not its own: left
    assert gone["certificates"] == before["certificates"] + 1  # the provisioned device's certificate stays
    assert not (folder / STATE_FILE).exists() and not (folder / "certs" / "claim.key.der").exists()


def test_a_failing_step_rolls_back_what_the_run_created(
    iotsim: RunningIotSim, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad-template.json"
    bad.write_text(json.dumps({"Resources": {"x": {"Type": "AWS::S3::Bucket"}}}))
    before = names(iotsim, "RollbackRole")
    status = run(
        iotsim,
        tmp_path / "device",
        "setup",
        "--template-name",
        "RollbackTemplate",
        "--template-file",
        str(bad),
        "--role-name",
        "RollbackRole",
        "--thing-group",
        "rollback-group",
        "--claim-policy",
        "RollbackClaim",
    )
    err = capsys.readouterr().err
    assert status == 1 and len(err.splitlines()) == 1
    assert "iot:CreateProvisioningTemplate failed: InvalidRequestException" in err
    assert "rolled back what this run created: thing_group, role" in err
    assert names(iotsim, "RollbackRole") == before
    assert json.loads((tmp_path / "device" / STATE_FILE).read_text())["created"] == {}


def one_line_error(capsys: pytest.CaptureFixture[str], status: int, expected_status: int) -> str:
    err = capsys.readouterr().err
    assert status == expected_status, err
    assert len(err.splitlines()) == 1 and err.startswith("awssetup: ") and "Traceback" not in err, err
    return err


def test_the_docs_command_runs_against_iotsim_with_no_aws_variable(
    iotsim: RunningIotSim, aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # docs/aws-setup.md, from the repository root where `up` made .iotsim: here a link to the fixture's.
    (tmp_path / ".iotsim").symlink_to(iotsim.state)
    monkeypatch.chdir(tmp_path)
    argv = ["--endpoint-url", iotsim.api_url, "--ca-file", ".iotsim/ca.pem", "--mqtt-port", str(iotsim.port)]
    names_ = ["--template-name", "DocsTemplate", "--role-name", "DocsRole", "--claim-policy", "DocsClaim"]
    assert main(["setup", *argv, *names_]) == 0
    assert "template DocsTemplate: created" in capsys.readouterr().out
    assert json.loads(Path("device/config.json").read_text())["endpoint"] == "127.0.0.1"
    assert main(["teardown", "--endpoint-url", iotsim.api_url]) == 0
    assert not names(iotsim, "DocsRole")["role"]


def test_no_region_is_one_line_and_nothing_is_created(
    iotsim: RunningIotSim, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["setup", "--folder", str(tmp_path / "device"), "--role-name", "NoRegionRole"])
    assert "no AWS region" in one_line_error(capsys, status, 2)
    assert not names(iotsim, "NoRegionRole")["role"] and not (tmp_path / "device").exists()


def test_missing_credentials_are_one_line_and_nothing_is_created(
    iotsim: RunningIotSim, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not a local endpoint: the user's own (absent) credentials are what it would sign with.
    status = main(
        ["setup", "--folder", str(tmp_path / "device"), "--region", "eu-west-1", "--endpoint-url",
         "http://192.0.2.1:9", "--role-name", "NoCredsRole"]
    )
    err = one_line_error(capsys, status, 2)
    assert "no AWS credentials" in err and "aws configure" in err
    assert not names(iotsim, "NoCredsRole")["role"]


def test_a_local_endpoint_no_iotsim_serves_is_one_line(
    aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://127.0.0.1:{}".format(free_port())
    status = main(["setup", "--folder", str(tmp_path / "device"), "--endpoint-url", url, "--iotsim-state", str(tmp_path)])
    err = one_line_error(capsys, status, 2)
    assert url in err and "--iotsim-state" in err


def test_an_iotsim_that_is_down_is_one_line_naming_how_to_start_it(
    aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries of a refused connection: a quick test
    url = "http://127.0.0.1:{}".format(free_port())  # iotsim's profile for it, nothing listening
    localaws.ensure_credentials(tmp_path)
    localaws.write_config(tmp_path, "local", url)
    status = main(
        ["setup", "--folder", str(tmp_path / "device"), "--endpoint-url", url, "--iotsim-state", str(tmp_path)]
    )
    err = one_line_error(capsys, status, 1)
    assert "nothing answers at" in err and "tools.iotsim up" in err
    assert not (tmp_path / "device" / STATE_FILE).exists()


def test_an_unreadable_template_file_is_one_line(
    iotsim: RunningIotSim, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run(iotsim, tmp_path / "device", "setup", "--template-file", str(tmp_path / "none.json"))
    assert "cannot read the template" in one_line_error(capsys, status, 1)


def test_teardown_without_a_setup_removes_nothing(
    iotsim: RunningIotSim, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(iotsim, tmp_path / "device", "teardown") == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_teardown_dry_run_deletes_nothing_and_a_resource_no_longer_tagged_is_left(
    iotsim: RunningIotSim, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "device"
    args = (
        "--template-name",
        "TagTemplate",
        "--role-name",
        "TagRole",
        "--thing-group",
        "tag-group",
        "--claim-policy",
        "TagClaim",
    )
    assert run(iotsim, folder, "setup", *args) == 0
    made = names(iotsim, "TagRole")
    capsys.readouterr()
    assert run(iotsim, folder, "teardown", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "template TagTemplate: would delete" in out and "role TagRole: would delete" in out
    assert names(iotsim, "TagRole") == made and (folder / STATE_FILE).exists()
    # Someone took the template over (removed the tag): teardown must leave it.
    iot = iotsim.iot_client()
    arn = iot.describe_provisioning_template(templateName="TagTemplate")["templateArn"]
    iot.untag_resource(resourceArn=arn, tagKeys=[TAG_KEY])
    assert run(iotsim, folder, "teardown") == 0
    out = capsys.readouterr().out
    assert "template TagTemplate: its tag no longer says this tool made it; left as is" in out
    gone = names(iotsim, "TagRole")
    assert "TagTemplate" in gone["templates"] and "tag-group" not in gone["groups"] and not gone["role"]
    iot.delete_provisioning_template(templateName="TagTemplate")


def test_a_refused_call_names_the_action_and_the_rights_needed(iotsim: RunningIotSim, tmp_path: Path) -> None:
    from botocore.stub import Stubber

    from tools.awssetup.setup import Clients, Options, Setup, SetupError

    denied_iam = boto3.client(
        "iam", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    with Stubber(denied_iam) as stub:
        stub.add_client_error(
            "get_role", service_error_code="AccessDenied", service_message="not allowed", http_status_code=403
        )
        tool = Setup(
            Options(folder=tmp_path / "device", ca_file=iotsim.ca_path, role_name="DeniedRole"),
            Clients(iotsim.iot_client(), denied_iam, iotsim.iot_client(service="lambda")),
        )
        with pytest.raises(SetupError) as info:
            tool.setup()
    message = str(info.value)
    assert "permission denied for iam:GetRole (AccessDenied: not allowed)" in message
    assert "CreateRole" in message and "nothing was created" in message


def test_a_role_not_yet_assumable_is_retried_a_bounded_number_of_times(
    iotsim: RunningIotSim,
    aws_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from botocore.exceptions import ClientError

    from tools.awssetup import setup as setup_mod

    monkeypatch.setattr(setup_mod, "ROLE_PROPAGATION_WAIT_S", 0.0)
    real = iotsim.iot_client()

    real_lam = iotsim.iot_client(service="lambda")

    class NotYet:
        """AWS IoT and Lambda as they answer while IAM has not propagated a new role: each refuses twice.

        AWS Lambda's words: "The role defined for the function cannot be assumed by Lambda"."""

        def __init__(self, real: Any, operation: str, code: str, message: str) -> None:
            self.real, self.operation, self.code, self.message, self.refusals = real, operation, code, message, 2

        def __getattr__(self, name: str) -> Any:
            if name != self.operation:
                return getattr(self.real, name)

            def refuse_twice(**kwargs: Any) -> Any:
                if self.refusals:
                    self.refusals -= 1
                    raise ClientError({"Error": {"Code": self.code, "Message": self.message}}, name)
                return getattr(self.real, name)(**kwargs)

            return refuse_twice

    options = setup_mod.Options(
        folder=tmp_path / "device",
        template_name="RetryTemplate",
        role_name="RetryRole",
        thing_group="retry-group",
        claim_policy="RetryClaim",
        rotation_template="RetryRotation",
        hook_function="RetryHook",
        hook_role="RetryHookRole",
        retire_function="RetryRetire",
        retire_role="RetryRetireRole",
        retire_rule="RetryRetire",
        ca_file=iotsim.ca_path,
    )
    clients = setup_mod.Clients(
        NotYet(real, "create_provisioning_template", "InvalidRequestException", "Unable to assume role"),
        iam(iotsim),
        NotYet(real_lam, "create_function", "InvalidParameterValueException",
               "The role defined for the function cannot be assumed by Lambda."),
    )
    setup_mod.Setup(options, clients).setup()
    # Twice for the first template, twice for the first function.
    assert capsys.readouterr().out.count("the new role is not usable yet") == 4
    assert real.describe_provisioning_template(templateName="RetryTemplate")["enabled"] is True
    assert real_lam.get_function(FunctionName="RetryHook")["Configuration"]["State"] == "Active"
    setup_mod.Setup(options, setup_mod.Clients(real, iam(iotsim), real_lam)).teardown()
    assert not names(iotsim, "RetryRole")["role"] and not names(iotsim, "RetryHookRole")["role"]


def claim_identity(folder: Path, out: Path) -> tuple[Path, Path]:
    """The claim setup wrote (DER, as a device holds it) as PEM files for a test client."""
    cert = x509.load_der_x509_certificate((folder / "certs" / "claim.der").read_bytes())
    key = serialization.load_der_private_key((folder / "certs" / "claim.key.der").read_bytes(), None)
    return write_identity(out, "setup-claim", cert.public_bytes(serialization.Encoding.PEM).decode(), key)


def test_setup_on_an_account_without_them_makes_what_a_rotation_needs_and_a_device_rotates_with_it(
    iotsim_factory: Any, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = iotsim_factory()
    iot, lam = sim.iot_client(), sim.iot_client(service="lambda")
    # iotsim's own demo of the same: gone, as from an account that never had it.
    iot.delete_topic_rule(ruleName="FleetprovRetire")
    iot.delete_provisioning_template(templateName="FleetprovRotation")
    for function in ("FleetprovRotationHook", "FleetprovRetire"):
        lam.delete_function(FunctionName=function)
    iot.delete_policy(policyName="FleetprovThingPolicy")
    folder = tmp_path / "device"

    assert run(sim, folder, "setup") == 0
    out = capsys.readouterr().out
    for line in (
        "thing policy FleetprovThingPolicy: created",
        "role FleetprovRotationHookRole: created (the rotation template's pre-provisioning hook",
        "function FleetprovRotationHook: created (fleetprov's package, fleetprov_rotation.hook_handler",
        "function FleetprovRotationHook: AWS IoT may invoke it for "
        "arn:aws:iot:local:000000000000:provisioningtemplate/FleetprovRotation",
        "template FleetprovRotation: created from",
        "function FleetprovRetire: AWS IoT may invoke it for arn:aws:iot:local:000000000000:rule/FleetprovRetire",
        "rule FleetprovRetire: created (fleetprov/+/retire -> function FleetprovRetire)",
    ):
        assert line in out, line
    assert json.loads((folder / "config.json").read_text())["rotation_template"] == "FleetprovRotation"
    rights = iam(sim).get_role_policy(RoleName="FleetprovRetireRole", PolicyName="fleetprov-rotation")
    assert {a for s in rights["PolicyDocument"]["Statement"] for a in [s["Action"]] if isinstance(a, str)} >= {
        "iot:ListThingPrincipals", "iot:DetachThingPrincipal", "iot:Publish"
    }

    cert, key = claim_identity(folder, tmp_path)
    with sim.client("setup-claim", cert, key) as claim:
        dev = Device(sim, claim, tmp_path, "setup-rotating")
    new = dev.rotate(tmp_path, "setup-new")
    assert (sim.registry.status(dev.certificate_id), sim.registry.status(new.certificate_id)) == ("INACTIVE", "ACTIVE")

    assert run(sim, folder, "setup") == 0
    assert "everything already exists: nothing changed" in capsys.readouterr().out

    # The devices' certificates hold the thing policy: AWS refuses to delete it, and so the teardown
    # says, deletes everything else, and keeps it listed for a later teardown.
    status = run(sim, folder, "teardown")
    captured = capsys.readouterr()
    assert status == 1 and "deleting thing policy FleetprovThingPolicy failed: DeleteConflictException" in captured.err
    assert json.loads((folder / STATE_FILE).read_text())["created"] == {"thing_policy": "FleetprovThingPolicy"}
    assert [t["templateName"] for t in iot.list_provisioning_templates()["templates"]] == ["FleetprovDemo"]
    assert iot.list_topic_rules()["rules"] == [] and lam_names(lam) == []
    for cid in (dev.certificate_id, new.certificate_id):
        sim.registry.detach_policy("FleetprovThingPolicy", cid)
    assert run(sim, folder, "teardown") == 0
    assert "thing policy FleetprovThingPolicy: deleted" in capsys.readouterr().out
    assert not (folder / STATE_FILE).exists()


def lam_names(lam: Any) -> list[str]:
    return [f["FunctionName"] for f in lam.list_functions()["Functions"]]
