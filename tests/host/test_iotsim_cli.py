"""`python -m tools.iotsim`: up, status, certs, things, revoke, down — as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture
def running(tmp_path: Path) -> tuple[Path, int, subprocess.Popen[str]]:
    state, port = tmp_path / "state", free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.iotsim", "up", "--state", str(state), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first line is printed once everything runs
        assert "iotsim is running" in line, line + proc.stdout.read() if proc.poll() is not None else line
        yield state, port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


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
    assert len(list((state / "principals").iterdir())) >= 2  # the service and the claim
    config = json.loads((state / "config.json").read_text())
    assert config == {
        "endpoint": "127.0.0.1",
        "port": port,
        "template": "FleetprovDemo",
        "parameters": {"SerialNumber": "{uid}"},
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
    revoked = cli("revoke", claim_id[:12], "--state", str(state))
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
