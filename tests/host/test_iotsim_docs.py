"""docs/iotsim.md's manual provisioning steps work as written (against a test iotsim).

The blocks marked ``<!-- doc-test: ... -->`` are run with only the state
folder (.iotsim) and the port (8883) replaced by the fixture's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.iotsim.testing import RunningIotSim

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "iotsim.md"
pytestmark = pytest.mark.timeout(120)


def block(name: str) -> str:
    found = re.search(
        r"<!-- doc-test: {} -->\n```\w+\n(.*?)```".format(re.escape(name)), DOC.read_text(), re.S
    )
    assert found, "docs/iotsim.md has no block marked doc-test: {}".format(name)
    return found.group(1)


def localise(text: str, iotsim: RunningIotSim) -> str:
    return text.replace(".iotsim", str(iotsim.state)).replace("8883", str(iotsim.port))


def run_shell(script: str, cwd: Path) -> str:
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=90)
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
