"""The CircuitPython board folder (code.py, boot.py, lib/) booted on CPython against iotsim.

tools/cphost runs the board's own files unchanged, with the real MiniMQTT, and
stands in only for the modules a board has (wifi, socketpool, microcontroller,
storage, rtc, adafruit_ntp, supervisor, board, digitalio), including
CIRCUITPY's rule that code cannot write the drive unless boot.py remounted it.
Each boot is a fresh process, as a reset is.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boot_steps
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tools import cpbundle
from tools.iotsim.broker import MqttQuotas

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
FAST = {"FLEETPROV_RETRY_BASE_MS": 10, "FLEETPROV_RETRY_MAX_MS": 50}  # MiniMQTT keeps its defaults


def boot(folder: Path, *args: str) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cphost", str(folder), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, lines


def steps(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "fleetprov" and parts[2] == "ms":
            out.append(parts[3])
    return out


@pytest.fixture
def flash(tmp_path: Path, iotsim: Any) -> Any:
    def make(**settings: str | int) -> Path:
        return cpbundle.make_folder(tmp_path / "CIRCUITPY", iotsim.state, {**FAST, **settings})

    return make


def claim_digests(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / "certs" / n).read_bytes()).hexdigest() for n in cpbundle.CLAIM_FILES}


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize("method", ["keys", "csr"])
def test_first_boot_provisions_stores_pem_and_the_second_boot_connects_as_the_thing(
    iotsim_factory: Any, tmp_path: Path, method: str, fmt: str
) -> None:
    # This reads the exact steps of two boots run back to back: its iotsim lets
    # a client id CONNECT again within a second, as a board's reboot takes
    # seconds and the harness's none (AWS's rule: tests/device/test_firstboot_iotsim.py).
    iotsim = iotsim_factory(mqtt_quotas=MqttQuotas(connect_interval_ms=0))
    folder = cpbundle.make_folder(
        tmp_path / "CIRCUITPY", iotsim.state, {**FAST, "FLEETPROV_METHOD": method, "FLEETPROV_FORMAT": fmt}
    )
    claim = claim_digests(folder)
    rc, lines = boot(folder, "--uid", "a1b2c3" + method.encode().hex() + fmt.encode().hex())
    assert rc == 0, "\n".join(lines)
    got = steps(lines)
    expected = boot_steps.CSR_FIRST_BOOT if method == "csr" else boot_steps.FIRST_BOOT
    assert got == expected + boot_steps.APPLICATION, "\n".join(lines)
    assert any("CircuitPython" in line for line in lines)  # it says plainly what it is
    record = json.loads((folder / "certs" / "provisioned.json").read_text())
    cert_pem = (folder / "certs" / record["files"]["cert"]).read_bytes()
    key_pem = (folder / "certs" / record["files"]["key"]).read_bytes()
    assert cert_pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert key_pem.startswith(
        b"-----BEGIN EC PRIVATE KEY-----" if method == "csr" else b"-----BEGIN RSA PRIVATE KEY"
    )
    thing = iotsim.registry.thing(record["thing_name"])
    assert thing is not None and record["certificate_id"] in thing.certificates
    assert iotsim.registry.status(record["certificate_id"]) == "ACTIVE"
    assert claim_digests(folder) == claim
    key_text = key_pem.decode()
    assert not any(key_text.split("\n")[1] in line for line in lines)  # no key material printed

    rc, lines = boot(folder)
    assert rc == 0, "\n".join(lines)
    assert steps(lines) == boot_steps.PROVISIONED_BOOT + boot_steps.APPLICATION, "\n".join(lines)


def test_a_read_only_drive_stops_before_anything_is_sent_and_says_how_to_free_it(
    iotsim: Any, flash: Any
) -> None:
    folder = flash()
    (folder / "usb-write").write_text("")  # the user keeps the drive for the computer
    before = len(iotsim.registry.certificates())
    rc, lines = boot(folder)
    assert rc == 0
    text = "\n".join(lines)
    assert "CIRCUITPY is read-only to code" in text and "usb-write" in text and "Nothing was sent" in text
    assert "connect-claim" not in steps(lines)
    assert not (folder / "certs" / "provisioned.json").exists()
    assert len(iotsim.registry.certificates()) == before  # no certificate issued for nothing


def test_the_button_held_at_reset_keeps_the_drive_for_the_computer(iotsim: Any, flash: Any) -> None:
    folder = flash(FLEETPROV_USB_WRITE_PIN="BUTTON")
    rc, lines = boot(folder, "--button")
    text = "\n".join(lines)
    assert "BUTTON held at reset" in text and "CIRCUITPY is read-only to code" in text
    assert not (folder / "certs" / "provisioned.json").exists()


def test_a_provisioned_board_runs_with_the_drive_left_to_the_computer(iotsim: Any, flash: Any) -> None:
    folder = flash()
    assert boot(folder)[0] == 0
    (folder / "usb-write").write_text("")
    rc, lines = boot(folder)
    assert rc == 0 and steps(lines)[-2:] == ["hello", "done"], "\n".join(lines)


def test_without_wifi_the_board_reloads_to_try_again(iotsim: Any, flash: Any) -> None:
    rc, lines = boot(flash(), "--wifi-down")
    text = "\n".join(lines)
    assert rc == 3 and "did not connect" in text and "supervisor.reload()" in text


def test_a_503_is_retried_on_a_fresh_connection_and_the_board_provisions(iotsim: Any, flash: Any) -> None:
    iotsim.set_fault(
        "CreateKeysAndCertificate",
        "reject",
        status_code=503,
        error_code="ServiceUnavailable",
        error_message="later",
        times=1,
    )
    rc, lines = boot(flash())
    got = steps(lines)
    assert rc == 0 and got.count("connect-claim") == 2 and got[-1] == "done", "\n".join(lines)
    assert any("retry" in line and "503" in line for line in lines)


def test_a_rejected_registration_is_final_and_names_the_server_message(iotsim: Any, flash: Any) -> None:
    folder = flash(FLEETPROV_TEMPLATE="NoSuchTemplate")
    rc, lines = boot(folder)
    text = "\n".join(lines)
    assert rc == 0 and "404" in text and "ResourceNotFound" in text, text
    assert "supervisor.reload()" not in text
    assert not (folder / "certs" / "provisioned.json").exists()


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"FLEETPROV_ENDPOINT": ""}, "settings.toml: FLEETPROV_ENDPOINT must not be empty"),
        ({"FLEETPROV_FORMAT": "xml"}, "settings.toml: FLEETPROV_FORMAT must be one of json or cbor"),
        ({"FLEETPROV_PARAMETERS": "{not json"}, "FLEETPROV_PARAMETERS is not JSON text"),
        ({"FLEETPROV_MQTT_TIMEOUT_MS": 1000}, "MQTT_TIMEOUT_MS = 1000 must exceed MiniMQTT's socket timeout"),
        ({"FLEETPROV_SOCKET_TIMEOUT_MS": "soon"}, "SOCKET_TIMEOUT_MS must be a positive whole number"),
        ({"FLEETPROV_PORT": "eighty"}, "settings.toml: FLEETPROV_PORT must be an integer"),
    ],
)
def test_a_bad_setting_stops_with_one_line_naming_the_key(
    iotsim: Any, flash: Any, settings: dict[str, Any], message: str
) -> None:
    rc, lines = boot(flash(**settings))
    assert rc == 0 and any(message in line for line in lines), "\n".join(lines)
    assert "connect-claim" not in steps(lines)


def test_settings_the_board_could_not_read_are_refused_by_the_stand_in(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("FLEETPROV_PORT = 8883.5\n")
    from tools import cphost

    with pytest.raises(cphost.SettingsError):
        cphost.read_settings(tmp_path / "settings.toml")


def test_the_settings_example_uses_only_what_circuitpython_reads() -> None:
    from tools import cphost

    values = cphost.read_settings(ROOT / "circuitpython" / "settings.toml.example")
    assert values["FLEETPROV_PARAMETERS"] == '{"SerialNumber": "{uid}"}'


def boot_and_cut_power_at(folder: Path, step: str) -> list[str]:
    """Boot until firstboot's stop hook reports ``step`` (FLEETPROV_STOP_AT, read
    from settings.toml as a board reads it), then kill the process: a power cut."""
    settings = folder / "settings.toml"
    original = settings.read_text()
    settings.write_text(original + f'FLEETPROV_STOP_AT = "{step}"\n')
    lines: list[str] = []
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "tools.cphost", str(folder)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # bounded: the process ends by itself if the step never comes
                lines.append(line.rstrip("\n"))
                if line.startswith("fleetprov STOP " + step):
                    proc.kill()
                    break
            proc.wait(timeout=30)
    finally:
        settings.write_text(original)
    assert lines and lines[-1] == "fleetprov STOP " + step, "\n".join(lines)
    return lines


@pytest.mark.parametrize("step", ["pending.key", "provisioned.json.tmp", "provisioned.json"])
def test_a_power_cut_during_the_commit_leaves_a_board_that_boots_into_a_working_identity(
    iotsim: Any, flash: Any, step: str
) -> None:
    folder = flash()
    claim = claim_digests(folder)
    boot_and_cut_power_at(folder, step)
    rc, lines = boot(folder)
    got = steps(lines)
    assert rc == 0 and got[-1] == "done", "\n".join(lines)
    # before the record landed the board starts over with the claim; after, it is provisioned
    assert ("connect-claim" in got) == (step != "provisioned.json"), got
    record = json.loads((folder / "certs" / "provisioned.json").read_text())
    assert iotsim.registry.status(record["certificate_id"]) == "ACTIVE"
    assert claim_digests(folder) == claim
    assert not list((folder / "certs").glob("*.tmp"))


@pytest.fixture
def expiring(iotsim_factory: Any) -> Any:
    # Certificates valid for 20 days: within the default rotate_days (30) from the
    # start. Boots run back to back, as no board's reboot does: no connect-rate refusal.
    return iotsim_factory(cert_days=20, mqtt_quotas=MqttQuotas(connect_interval_ms=0))


def provisioned_board(iotsim: Any, folder: Path) -> str:
    """Provision the board in ``folder`` (rotation off); the certificate id it holds."""
    cpbundle.make_folder(folder, iotsim.state, {**FAST, "FLEETPROV_ROTATE_DAYS": 0})
    rc, lines = boot(folder)
    assert rc == 0 and steps(lines)[-1] == "done", "\n".join(lines)
    cpbundle.make_folder(folder, iotsim.state, FAST)  # the default rotate_days from now on
    return str(json.loads((folder / "certs" / "provisioned.json").read_text())["certificate_id"])


def active_on_thing(iotsim: Any, folder: Path) -> tuple[list[str], str]:
    """The thing's ACTIVE certificates, and the id of the one on the drive."""
    record = json.loads((folder / "certs" / "provisioned.json").read_text())
    thing = iotsim.registry.thing(record["thing_name"])
    assert thing is not None
    active = [c for c in thing.certificates if iotsim.registry.status(c) == "ACTIVE"]
    pem = (folder / "certs" / record["files"]["cert"]).read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return active, hashlib.sha256(der).hexdigest()


def test_a_board_rotates_a_certificate_that_expires_within_rotate_days_over_minimqtt(
    expiring: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "CIRCUITPY"
    old = provisioned_board(expiring, folder)
    rc, lines = boot(folder)
    assert rc == 0, "\n".join(lines)
    assert steps(lines) == boot_steps.PROVISIONED_BOOT + boot_steps.ROTATION + boot_steps.APPLICATION, \
        "\n".join(lines)
    active, stored = active_on_thing(expiring, folder)
    assert active == [stored] and stored != old
    assert expiring.registry.status(old) == "INACTIVE" and expiring.registry.thing_of(old) is None  # detached
    record = json.loads((folder / "certs" / "provisioned.json").read_text())
    key_pem = (folder / "certs" / record["files"]["key"]).read_bytes()
    assert key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")  # made on the board
    assert not [p.name for p in (folder / "certs").iterdir() if p.name.startswith("pending")]


@pytest.mark.parametrize("step", ["pending.json", "register", "connect-new", "provisioned.json", "rotated"])
def test_a_power_cut_during_a_rotation_leaves_a_board_that_boots_into_one_active_identity(
    expiring: Any, tmp_path: Path, step: str
) -> None:
    folder = tmp_path / "CIRCUITPY"
    old = provisioned_board(expiring, folder)
    claim = claim_digests(folder)
    boot_and_cut_power_at(folder, step)
    cpbundle.make_folder(folder, expiring.state, {**FAST, "FLEETPROV_ROTATE_DAYS": 0})  # finish, start nothing new
    rc, lines = boot(folder)
    got = steps(lines)
    assert rc == 0 and got[-1] == "done" and "connect-claim" not in got, "\n".join(lines)
    active, stored = active_on_thing(expiring, folder)
    assert active == [stored] and stored != old, "\n".join(lines)  # staged before every one of these cuts
    assert claim_digests(folder) == claim
    assert not list((folder / "certs").glob("*.tmp"))
