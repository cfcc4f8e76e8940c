"""docs/iotsim.md's manual provisioning steps work as written (against a test iotsim), and
docs/rotation.md's thing policy and its check of a thing's certificates are what runs.

The blocks marked ``<!-- doc-test: ... -->`` are run with only the state
folder (.iotsim), the port (8883) and the thing's name replaced by the fixture's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.iotsim import localaws
from tools.iotsim.policy import thing_policy_document
from tools.iotsim.testing import Device, RunningIotSim

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "iotsim.md"
ROTATION_DOC = ROOT / "docs" / "rotation.md"
pytestmark = pytest.mark.timeout(120)


def block(name: str, doc: Path = DOC) -> str:
    found = re.search(
        r"<!-- doc-test: {} -->\n```\w+\n(.*?)```".format(re.escape(name)), doc.read_text(), re.S
    )
    assert found, "{} has no block marked doc-test: {}".format(doc.name, name)
    return found.group(1)


def localise(text: str, iotsim: RunningIotSim) -> str:
    return text.replace(".iotsim", str(iotsim.state)).replace("8883", str(iotsim.port))


def run_shell(script: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=90, env=env
    )
    assert proc.returncode == 0, "exit {}\n--- stdout\n{}\n--- stderr\n{}".format(
        proc.returncode, proc.stdout, proc.stderr
    )
    return proc.stdout


def test_manual_keys_steps_provision_a_device_and_refuse_a_reused_token(iotsim: RunningIotSim) -> None:
    out = run_shell(localise(block("manual-keys"), iotsim), ROOT)
    lines = out.splitlines()
    certificate_id = lines[0]
    assert "refused, as expected" in lines
    accepted = json.loads(next(line for line in lines if line.startswith('{"deviceConfiguration"')))
    assert accepted["thingName"] == "fleetprov-0001"
    rejected = json.loads(lines[-1])
    assert rejected["statusCode"] == 400 and rejected["errorCode"] == "InvalidCertificateOwnershipToken"
    assert iotsim.registry.status(certificate_id) == "ACTIVE"


def test_manual_csr_steps_provision_a_device_whose_key_stays_local(iotsim: RunningIotSim) -> None:
    out = run_shell(localise(block("manual-csr"), iotsim), ROOT)
    assert json.loads(out.splitlines()[-1])["thingName"] == "fleetprov-0002"
    thing = iotsim.registry.thing("fleetprov-0002")
    assert thing is not None and iotsim.registry.status(thing.certificates[0]) == "ACTIVE"


def test_manual_paho_script_provisions_and_reconnects(iotsim: RunningIotSim) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", localise(block("manual-paho"), iotsim)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RegisterThing accepted" in proc.stdout
    assert "again rejected" in proc.stdout
    assert "connected and published as fleetprov-0003" in proc.stdout


def test_rotations_thing_policy_is_the_one_iotsim_and_awssetup_install() -> None:
    assert json.loads(block("thing-policy", ROTATION_DOC)) == json.loads(thing_policy_document())


def test_rotations_check_prints_the_one_active_certificate_a_rotated_thing_holds(
    iotsim: RunningIotSim, tmp_path: Path
) -> None:
    with iotsim.client("docs-rotation-claim") as claim:
        dev = Device(iotsim, claim, tmp_path, "docs-rotation")
    new = dev.rotate(tmp_path, "docs-new")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(kv.split("=", 1) for kv in localaws.environment(iotsim.state).split())
    env["PATH"] = "{}:{}".format(Path(sys.executable).parent, env.get("PATH", ""))  # the pinned awscli
    out = run_shell(block("one-active", ROTATION_DOC).replace("fleetprov-0001", dev.thing), ROOT, env)
    assert out.split() == ["ACTIVE", new.certificate_id]
