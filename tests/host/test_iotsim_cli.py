"""`python -m tools.iotsim`: up, status, certs, things, revoke, new-claim, resources, down — as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.iotsim import localaws
from tools.iotsim.broker import free_port
from tools.iotsim.testing import ConnectRefused, MqttTestClient

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.iotsim", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            "iotsim {} exited {}:\n{}\n{}".format(args, proc.returncode, proc.stdout, proc.stderr)
        )
    return proc


@contextlib.contextmanager
def up(state: Path, port: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """`python -m tools.iotsim up` running until the block ends; its first line has been read."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.iotsim", "up", "--state", str(state), "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first line is printed once everything runs
        assert "iotsim is running" in line, line + proc.stdout.read() if proc.poll() is not None else line
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    state, port = tmp_path / "state", free_port()
    with up(state, port) as proc:
        yield state, port, proc


def test_up_writes_everything_a_device_needs(running: tuple[Path, int, subprocess.Popen[str]]) -> None:
    state, port, _ = running
    for name in (
        "ca.pem",
        "ca.der",
        "claim.pem",
        "claim.key.pem",
        "claim.der",
        "claim.key.der",
        "templates/FleetprovDemo.json",
        "certs/ca.der",
        "certs/claim.der",
        "certs/claim.key.der",
        "iotsim.pid",
    ):
        assert (state / name).is_file(), name
    assert len(list((state / "principals").glob("*/*"))) >= 2  # the service and the claim
    config = json.loads((state / "config.json").read_text())
    assert config == {
        "endpoint": "127.0.0.1",
        "server_hostname": "localhost",
        "port": port,
        "template": "FleetprovDemo",
        "rotation_template": "FleetprovRotation",
        "parameters": {"SerialNumber": "{uid}"},
        "thing_name": "fleetprov-{uid}",
        "format": "json",
        "method": "keys",
        "cert_dir": "certs",
    }
    assert (state / "certs" / "claim.der").read_bytes() == (state / "claim.der").read_bytes()


def test_status_certs_things_revoke_and_down(running: tuple[Path, int, subprocess.Popen[str]]) -> None:
    state, port, proc = running
    status = cli("status", "--state", str(state))
    assert "running, pid {}, port {}".format(proc.pid, port) in status.stdout
    assert "1 CLAIM, 1 SERVICE" in status.stdout
    certs = json.loads(cli("certs", "--state", str(state), "--json").stdout)
    claim_id = next(c["certificateId"] for c in certs if c["status"] == "CLAIM")
    assert "no things yet" in cli("things", "--state", str(state)).stdout

    def claim_client() -> MqttTestClient:
        return MqttTestClient(
            port, state / "ca.pem", state / "claim.pem", state / "claim.key.pem", "cli-test"
        )

    with claim_client():
        pass
    refused = cli("revoke", claim_id[:12], "--state", str(state), check=False)
    assert refused.returncode == 1
    assert "is the claim certificate" in refused.stderr and "--force" in refused.stderr
    assert "new-claim" in refused.stderr
    with claim_client():  # still usable
        pass
    revoked = cli("revoke", claim_id[:12], "--force", "--state", str(state))
    assert claim_id in revoked.stdout
    with pytest.raises(ConnectRefused):
        claim_client().connect()

    down = cli("down", "--state", str(state))
    assert "stopped" in down.stdout
    assert proc.wait(timeout=30) == 0
    assert not (state / "iotsim.pid").exists()
    assert cli("status", "--state", str(state), check=False).returncode == 3


def test_a_second_up_on_the_same_state_is_refused(running: tuple[Path, int, subprocess.Popen[str]]) -> None:
    state, _, proc = running
    again = cli("up", "--state", str(state), "--port", str(free_port()), check=False)
    assert again.returncode == 1 and "already runs" in again.stderr and str(proc.pid) in again.stderr


def test_commands_on_a_folder_without_state_say_how_to_start(tmp_path: Path) -> None:
    for command in ("things", "certs"):
        proc = cli(command, "--state", str(tmp_path / "none"), check=False)
        assert proc.returncode == 1 and "python -m tools.iotsim up" in proc.stderr


def test_revoke_of_an_unknown_certificate_is_refused_by_name(
    running: tuple[Path, int, subprocess.Popen[str]],
) -> None:
    state, _, _ = running
    proc = cli("revoke", "deadbeefdeadbeef", "--state", str(state), check=False)
    assert proc.returncode == 1 and "deadbeefdeadbeef" in proc.stderr


def test_down_when_nothing_runs_says_so(tmp_path: Path) -> None:
    assert "not running" in cli("down", "--state", str(tmp_path)).stdout


def test_up_refuses_a_non_positive_token_ttl(tmp_path: Path) -> None:
    proc = cli("up", "--state", str(tmp_path), "--token-ttl", "0", check=False)
    assert proc.returncode == 1 and "--token-ttl" in proc.stderr


@pytest.mark.parametrize("days", ["0", "-3", "1.5", "many"])
def test_up_refuses_a_certificate_validity_that_is_not_whole_days(tmp_path: Path, days: str) -> None:
    proc = cli("up", "--state", str(tmp_path), "--cert-days", days, check=False)
    assert proc.returncode != 0 and "--cert-days" in proc.stderr
    assert not (tmp_path / "iotsim.pid").exists()


def test_up_prints_the_rotation_template_the_retire_rule_and_the_certificate_validity(tmp_path: Path) -> None:
    with up(tmp_path / "state", free_port(), "--cert-days", "2") as proc:
        assert proc.stdout is not None
        lines = []
        for _ in range(40):  # up's report ends with how to stop it
            lines.append(proc.stdout.readline())
            if lines[-1].startswith("stop with") or not lines[-1]:
                break
    text = "".join(lines)
    assert "rotation template" in text and "(name: FleetprovRotation; hook: Lambda FleetprovRotationHook)" in text
    assert "retire rule             FleetprovRetire on fleetprov/+/retire (Lambda FleetprovRetire)" in text
    assert "device certificates valid 2 days" in text


def test_up_on_a_taken_port_says_so_and_how_to_choose_another(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("up", "--state", str(tmp_path), "--port", str(port), check=False)
    assert proc.returncode == 1
    assert "port {} is taken".format(port) in proc.stderr and "--port" in proc.stderr
    assert not (tmp_path / "iotsim.pid").exists()


def test_new_claim_replaces_the_claim_files_and_retires_the_old_one(
    running: tuple[Path, int, subprocess.Popen[str]],
) -> None:
    state, port, _ = running
    old_der = (state / "claim.der").read_bytes()
    old_pem = state / "old.pem"
    old_pem.write_bytes((state / "claim.pem").read_bytes())
    (state / "old.key.pem").write_bytes((state / "claim.key.pem").read_bytes())
    old_id = next(c["certificateId"] for c in json.loads(cli("certs", "--state", str(state), "--json").stdout)
                  if c["status"] == "CLAIM")
    out = cli("new-claim", "--state", str(state)).stdout
    certs = {c["certificateId"]: c["status"] for c in json.loads(cli("certs", "--state", str(state), "--json").stdout)}
    new_id = next(cid for cid, status in certs.items() if status == "CLAIM")
    assert new_id != old_id and certs[old_id] == "INACTIVE"
    assert new_id in out and old_id in out
    assert (state / "claim.der").read_bytes() != old_der
    assert (state / "certs" / "claim.key.der").read_bytes() == (state / "claim.key.der").read_bytes()
    with MqttTestClient(port, state / "ca.pem", state / "claim.pem", state / "claim.key.pem", "fresh") as c:
        outcome, body = c.request("$aws/certificates/create/json", b"{}")
        assert outcome == "accepted", body
    with pytest.raises(ConnectRefused):  # the retired claim
        MqttTestClient(port, state / "ca.pem", old_pem, state / "old.key.pem", "stale").connect()


def test_resources_and_policies_from_the_cli(running: tuple[Path, int, subprocess.Popen[str]], tmp_path: Path) -> None:
    state, _, _ = running
    assert "thing groups: fleetprov-demo" in cli("things", "--state", str(state)).stdout  # `up` made it
    assert "created" in cli("create-thing-group", "lab", "--state", str(state)).stdout
    assert "already exists" in cli("create-thing-group", "lab", "--state", str(state)).stdout
    cli("create-thing-type", "sensor", "--state", str(state))
    cli("create-billing-group", "team-a", "--state", str(state))
    listed = cli("things", "--state", str(state)).stdout
    assert "thing groups: fleetprov-demo, lab" in listed
    assert "thing types: sensor" in listed and "billing groups: team-a" in listed
    bad = cli("create-thing-group", "bad name", "--state", str(state), check=False)
    assert bad.returncode == 1 and "InvalidRequestException" in bad.stderr

    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}))
    cli("create-policy", "Mine", str(doc), "--state", str(state))
    again = cli("create-policy", "Mine", str(doc), "--state", str(state), check=False)
    assert again.returncode == 1 and "ResourceAlreadyExistsException" in again.stderr
    doc.write_text('{"Statement": [{"Effect": "Permit", "Action": "iot:*", "Resource": "*"}]}')
    malformed = cli("create-policy", "Broken", str(doc), "--state", str(state), check=False)
    assert malformed.returncode == 1 and "MalformedPolicyException" in malformed.stderr
    certs = json.loads(cli("certs", "--state", str(state), "--json").stdout)
    claim_id = next(c["certificateId"] for c in certs if c["status"] == "CLAIM")
    cli("attach-policy", "Mine", claim_id[:16], "--state", str(state))
    policies = json.loads(cli("policies", "--state", str(state), "--json").stdout)
    assert {p["policyName"]: p["targets"] for p in policies} == {
        "Mine": 1, "iotsim-claim-policy": 1, "FleetprovThingPolicy": 0  # the demo's, attached by its templates
    }
    cli("detach-policy", "Mine", claim_id[:16], "--state", str(state))
    assert "Mine  attached to 0 certificate(s)" in cli("policies", "--state", str(state)).stdout
    missing = cli("attach-policy", "Nope", claim_id[:16], "--state", str(state), check=False)
    assert missing.returncode == 1 and "ResourceNotFoundException" in missing.stderr


def test_up_keeps_its_keys_private_and_prints_the_aws_profile_that_signs_for_it(tmp_path: Path) -> None:
    state, api = tmp_path / "state", free_port()
    state.mkdir()
    (state / "certs").mkdir()
    (state / "certs" / "claim.key.der").write_bytes(b"left by an older iotsim")
    os.chmod(state / "certs" / "claim.key.der", 0o644)
    os.chmod(state, 0o755)
    with up(state, free_port(), "--api-port", str(api)) as proc:
        assert proc.stdout is not None
        head = [proc.stdout.readline() for _ in range(3)]
        url = "http://127.0.0.1:{}".format(api)
        assert url in head[0] and "export " + localaws.environment(state.resolve()) in head[1]
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        keys = [p for p in state.rglob("*") if p.is_file() and (".key" in p.name or p.name == "credentials")]
        assert len(keys) >= 6 and {p.name for p in keys} >= {"ca.key.pem", "claim.key.der", "credentials"}
        assert {p.relative_to(state).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in keys} == {
            p.relative_to(state).as_posix(): 0o600 for p in keys
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(kv.split("=", 1) for kv in localaws.environment(state.resolve()).split())
        probe = subprocess.run(
            [sys.executable, "-c", "import boto3; print(boto3.client('iot').describe_endpoint()['endpointAddress'])"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert probe.stdout.strip() == "127.0.0.1", probe.stderr
        assert "control plane: {}".format(url) in cli("status", "--state", str(state)).stdout


def test_up_maps_lambda_functions_for_templates_that_name_them(tmp_path: Path) -> None:
    import boto3
    import botocore.exceptions

    bad = cli("up", "--state", str(tmp_path / "s"), "--lambda", "no-equals-sign", check=False)
    assert bad.returncode != 0 and "--lambda wants NAME=module:function" in bad.stderr
    state = tmp_path / "state"
    with up(state, free_port(), "--lambda", "allow=tools.iotsim.hooks:allow_all"):
        profile = localaws.read(state)
        assert profile is not None
        iot = boto3.client(
            "iot",
            endpoint_url=profile.endpoint_url,
            region_name=profile.region,
            aws_access_key_id=profile.credentials.access_key,
            aws_secret_access_key=profile.credentials.secret_key,
        )
        role = "arn:aws:iam::123456789012:role/FleetprovProvisioning"
        body = (ROOT / "tools" / "iotsim" / "templates" / "demo.json").read_text()
        hook = {"targetArn": "arn:aws:lambda:eu-west-1:123456789012:function:allow"}
        iot.create_provisioning_template(
            templateName="UpHook", templateBody=body, provisioningRoleArn=role, preProvisioningHook=hook
        )
        described = iot.describe_provisioning_template(templateName="UpHook")
        assert described["preProvisioningHook"]["targetArn"] == hook["targetArn"]
        other = {"targetArn": "arn:aws:lambda:eu-west-1:123456789012:function:other"}
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            iot.update_provisioning_template(templateName="UpHook", preProvisioningHook=other)
        assert refused.value.response["Error"]["Code"] == "InvalidRequestException"


@pytest.mark.parametrize("option", ["--api-timeout", "--api-connections", "--api-max-body"])
def test_up_refuses_a_non_positive_control_plane_bound(tmp_path: Path, option: str) -> None:
    proc = cli("up", "--state", str(tmp_path), option, "0", check=False)
    assert proc.returncode == 1 and option in proc.stderr
