"""Provisioning by trusted user on the virtual board: `python -m tools.deploy claim` asks iotsim's
control plane for a five-minute claim, puts it on the board, and the board provisions with it —
with no AWS variable: a local endpoint signs with iotsim's own key (docs/hardware.md)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.device.test_virtual_board import (  # noqa: F401  (pytest fixtures)
    CLAIM_FILES,
    VirtualBoard,
    board,
    build_mpy,
    flash_files,
    run_deploy,
)
from tools.iotsim.testing import RunningIotSim, iotsim, iotsim_module  # noqa: F401  (pytest fixtures)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No AWS variable, no ~/.aws: iotsim's profile in its state folder is all there is."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_a_temporary_claim_put_on_the_board_provisions_it(
    board: VirtualBoard,
    iotsim: RunningIotSim,
    aws_env: None,  # noqa: F811
) -> None:
    build_mpy()
    run_deploy("deploy", "--port", str(board.pty), config=iotsim.state)
    factory_claim = flash_files(board.flash)["certs/claim.der"]

    proc = run_deploy(
        "claim", "--port", str(board.pty), "--endpoint-url", iotsim.api_url, config=iotsim.state
    )
    claim_id = hashlib.sha256((board.flash / "certs" / "claim.der").read_bytes()).hexdigest()
    assert claim_id != factory_claim
    assert "provisioning claim {} for template FleetprovDemo".format(claim_id) in proc.stderr
    key = (board.flash / "certs" / "claim.key.der").read_bytes()
    assert key.hex()[:64] not in proc.stdout + proc.stderr  # the key is never shown
    template, expires = iotsim.registry.provisioning_claim(claim_id)
    assert template == "FleetprovDemo" and expires > iotsim.clock()

    out = board.mpremote("exec", "import boot, main")
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    store = json.loads(run_deploy("status", "--port", str(board.pty), "--json").stdout)["store"]
    assert store["provisioned"] is True
    # The device's certificate was asked for by the temporary claim.
    record = iotsim.registry.certificate(store["certificate_id"])
    assert record is not None and record.owner == claim_id and record.status == "ACTIVE"
    # Provisioned, the board deleted the temporary claim and its marker; no claim stays on it.
    assert "claim-retired" in out.stdout, out.stdout
    left = flash_files(board.flash)
    assert not {"certs/claim.der", "certs/claim.key.der", "certs/claim.temporary"} & set(left), sorted(left)
    again = board.mpremote("exec", "import boot, main")  # a provisioned boot needs no claim
    assert "Traceback" not in again.stdout + again.stderr and "claim-retired" not in again.stdout


def test_a_claim_for_a_missing_template_changes_nothing_on_the_board(
    board: VirtualBoard,
    iotsim: RunningIotSim,
    aws_env: None,
    tmp_path,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    cfg = tmp_path / "device"
    (cfg / "certs").mkdir(parents=True)
    (cfg / "config.json").write_text(json.dumps({"endpoint": "127.0.0.1", "template": "NoSuchTemplate"}))
    before = flash_files(board.flash)
    proc = run_deploy(
        "claim", "--port", str(board.pty), "--endpoint-url", iotsim.api_url,
        "--iotsim-state", str(iotsim.state), config=cfg, check=False,
    )
    assert proc.returncode == 1
    assert (
        "CreateProvisioningClaim for template NoSuchTemplate failed: ResourceNotFoundException" in proc.stderr
    )
    assert flash_files(board.flash) == before
    assert not [f for f in before if f.endswith(CLAIM_FILES)]
