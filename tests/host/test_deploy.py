"""tools/deploy without a board: what it plans, what it refuses, what it lets through.

The virtual-board test (tests/device/test_virtual_board.py) runs the real thing
through mpremote; these pin the decisions down one by one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import deploy
from tools.deploy import DeployError, Upload

ROOT = Path(__file__).resolve().parents[2]


def upload(tmp_path: Path, dest: str, data: bytes) -> Upload:
    src = tmp_path / dest.replace("/", "_")
    src.write_bytes(data)
    return Upload(src, dest)


def test_plan_copies_new_and_changed_files_and_skips_identical_ones(tmp_path: Path) -> None:
    same = upload(tmp_path, "lib/a.mpy", b"same")
    changed = upload(tmp_path, "lib/b.mpy", b"new content")
    new = upload(tmp_path, "main.py", b"print(1)")
    inventory = {"": None, "lib/": None, "lib/a.mpy": [4, same.sha256()], "lib/b.mpy": [3, "00" * 32]}
    plan = deploy.make_plan([same, changed, new], [], ["lib"], inventory)
    assert plan.copies == [changed, new]
    assert plan.unchanged == [same]
    assert plan.mkdirs == [] and plan.removes == []


def test_plan_makes_only_missing_folders_and_removes_only_present_twins(tmp_path: Path) -> None:
    a = upload(tmp_path, "lib/a.mpy", b"a")
    inventory = {"": None, "lib/": None, "lib/a.py": [1, "x"], "lib/mine.py": [1, "y"]}
    plan = deploy.make_plan([a], deploy.stale_twins([a]) + ["lib/b.py"], ["lib", "certs"], inventory)
    assert plan.mkdirs == ["certs"]
    assert plan.removes == ["lib/a.py"]


def test_an_up_to_date_board_needs_no_mpremote_call(tmp_path: Path) -> None:
    a = upload(tmp_path, "lib/a.mpy", b"a")
    plan = deploy.make_plan([a], ["lib/a.py"], ["lib"], {"lib/": None, "lib/a.mpy": [1, a.sha256()]})
    assert plan.is_empty()


def test_stale_twins_are_the_other_form_in_lib_and_both_forms_at_the_root() -> None:
    ups = [Upload(Path("x"), "lib/fleetprov.mpy"), Upload(Path("y"), "lib/cbor.py")]
    assert deploy.stale_twins(ups) == [
        "lib/fleetprov.py",
        "lib/cbor.mpy",
        "fleetprov.py",
        "fleetprov.mpy",
        "cbor.py",
        "cbor.mpy",
    ]


def test_boot_and_main_at_the_root_are_never_taken_for_stale_twins() -> None:
    ups = [Upload(Path("x"), "lib/main.mpy"), Upload(Path("y"), "lib/boot.mpy")]
    assert "main.py" not in deploy.stale_twins(ups) and "boot.py" not in deploy.stale_twins(ups)


def test_plan_commands_are_one_mpremote_chain_folders_first_removals_last(tmp_path: Path) -> None:
    a = upload(tmp_path, "certs/ca.der", b"ca")
    plan = deploy.Plan(mkdirs=["certs"], copies=[a], removes=["lib/a.py"], unchanged=[])
    assert deploy.plan_commands(plan) == [
        "fs",
        "mkdir",
        ":certs",
        "+",
        "fs",
        "cp",
        "-f",
        str(a.src),
        ":certs/ca.der",
        "+",
        "fs",
        "rm",
        ":lib/a.py",
    ]


@pytest.mark.parametrize("cert_dir", ["", "/", "../outside", "a/../../b", 7, None])
def test_a_certificate_folder_outside_the_flash_or_not_a_name_is_refused(cert_dir: object) -> None:
    with pytest.raises(DeployError, match="cert_dir"):
        deploy.board_cert_dir({"cert_dir": cert_dir})


def test_the_certificate_folder_defaults_to_certs_and_may_be_nested() -> None:
    assert deploy.board_cert_dir({}) == "certs"
    assert deploy.board_cert_dir({"cert_dir": "/flash/certs/"}) == "flash/certs"


@pytest.mark.parametrize("name", ["sub/claim.der", "..", "", 5])
def test_a_claim_file_name_must_be_a_plain_file_name(name: object) -> None:
    with pytest.raises(DeployError, match="claim_cert"):
        deploy.claim_file_names({"claim_cert": name})


@pytest.mark.parametrize(
    "name", ["device-0123456789abcdef.crt.der", "device-0123456789abcdef.key.der", "provisioned.json", "uid",
             "pending.json", "pending.key", "pending.crt"]
)
def test_a_device_credential_can_never_be_named_as_a_claim_file(name: str) -> None:
    with pytest.raises(DeployError, match="never copies device credentials"):
        deploy.claim_file_names({"claim_key": name})


def test_device_credential_names_are_the_credential_stores_own() -> None:
    import credstore

    for name in (credstore.RECORD, credstore.PENDING, credstore.STAGED_CERT, credstore.STAGED_KEY, credstore.UID):
        assert deploy.is_device_credential(name)
    assert deploy.is_device_credential(credstore.IDENTITY + "0123456789abcdef.key.der")
    assert not deploy.is_device_credential("claim.der") and not deploy.is_device_credential("ca.der")


def test_claim_files_are_found_in_the_cert_folder_or_beside_config(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"endpoint": "e", "template": "t", "ca": "root.der"}))
    (tmp_path / "certs" / "claim.der").write_bytes(b"c")
    (tmp_path / "claim.key.der").write_bytes(b"k")
    (tmp_path / "root.der").write_bytes(b"r")
    uploads, cert_dir = deploy.collect_config(tmp_path)
    assert cert_dir == "certs"
    assert {(u.src.relative_to(tmp_path).as_posix(), u.dest) for u in uploads} == {
        ("config.json", "config.json"),
        ("certs/claim.der", "certs/claim.der"),
        ("claim.key.der", "certs/claim.key.der"),
        ("root.der", "certs/root.der"),
    }


def test_every_missing_claim_file_is_named_with_where_it_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"endpoint": "e", "template": "t"}))
    with pytest.raises(DeployError) as info:
        deploy.collect_config(tmp_path)
    msg = str(info.value)
    for name in ("claim.der", "claim.key.der", "ca.der"):
        assert name in msg
    assert str(tmp_path / "certs" / "ca.der") in msg


@pytest.mark.parametrize(
    "content", ["[1, 2]", '"text"', "{not json", "\udcff".encode("utf-8", "surrogatepass")]
)
def test_a_config_that_is_not_a_json_object_is_refused(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DeployError, match="config.json"):
        deploy.read_config(tmp_path)


def test_a_missing_or_outdated_mpy_build_is_refused_with_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="run `make mpy`"):
        deploy.collect_library(source=False, mpy_dir=tmp_path)
    for m in deploy.library_modules():
        mpy = tmp_path / (m + ".mpy")
        mpy.write_bytes(b"M\x06")
        os.utime(mpy, (0, 0))  # older than any source
    with pytest.raises(DeployError, match="older than .* run `make mpy`"):
        deploy.collect_library(source=False, mpy_dir=tmp_path)


def test_a_board_answer_without_the_marker_is_an_error_quoting_the_output() -> None:
    with pytest.raises(DeployError, match="Traceback"):
        deploy.parse_marked_json("Traceback (most recent call last):\n  ...", "the listing")


def test_status_passes_on_only_the_documented_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    board_answer = {
        "files": {"config.json": 10},
        "cert_dir": "certs",
        "store": {
            "provisioned": True,
            "thing_name": "t",
            "certificate_id": "c",
            "device_configuration": {},
            "private_key": "-----BEGIN PRIVATE KEY-----",
            "token": "secret",
        },
    }
    monkeypatch.setattr(
        deploy, "run_mpremote", lambda port, args, what: deploy.MARK + json.dumps(board_answer)
    )
    report = deploy.status("/dev/null")
    assert report["store"] == {
        "provisioned": True,
        "thing_name": "t",
        "certificate_id": "c",
        "device_configuration": {},
    }
    text = deploy.format_status(report, "/dev/null")
    assert "secret" not in text and "PRIVATE" not in text
    assert "thing name: t" in text


def test_the_status_script_names_only_the_documented_fields() -> None:
    script = deploy.STATUS_SCRIPT % (deploy.STATUS_FIELDS, deploy.MARK)
    compile(script, "status", "exec")
    assert "identity(" not in script and "claim(" not in script and ".read(" not in script


def test_the_compiled_build_is_bytecode_only_mpy_version_6() -> None:
    # Version 6 without native code: the sub-version is not checked, so
    # firmware 1.22 and every later release load these files (docs/hardware.md).
    subprocess.run(["make", "-s", "mpy"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    for m in deploy.library_modules():
        header = (deploy.MPY_BUILD / (m + ".mpy")).read_bytes()[:4]
        assert header[:2] == b"M\x06", (m, header)
        assert header[2] >> 2 == 0, "{}.mpy carries native code (arch {})".format(m, header[2] >> 2)
        assert header[3] <= 31, "{}.mpy needs {}-bit small ints; the ESP32 has 31".format(m, header[3])


# --- config.json checked as the board checks it ------------------------------------

GOOD_CONFIG = '{"endpoint": "e-ats.example", "template": "FleetprovDemo", "port": 8883}'

# config.json text -> the exact line the board prints at first boot (lib/firstboot.py run()).
# tests/device/test_devconfig_device.py boots the same files on the MicroPython unix port.
BOARD_REFUSALS = {
    '{"endpoint": "e", "template": "T", "port": "8883"}': (
        'fleetprov: config.json: field \'port\' must be an integer, got str "8883" '
        "(the MQTT-over-TLS port, usually 8883)"
    ),
    '{"endpoint": "e"}': (
        "fleetprov: config.json: field 'template' is missing "
        '(the provisioning template name, e.g. "FleetprovDemo")'
    ),
    '{"endpoint": "e", "template": "T", "rx_sise": 8192}': (
        "fleetprov: config.json: field 'rx_sise' is unknown (did you mean 'rx_size'?)"
    ),
    '{"endpoint": "e", "template": "T", "Endpoint": "f"}': (
        "fleetprov: config.json: field 'Endpoint' is unknown (did you mean 'endpoint'?)"
    ),
    '{"endpoint": "e", "template": "T", "region": "eu-west-1"}': (
        "fleetprov: config.json: field 'region' is unknown "
        "(remove it; docs/configuration.md lists the fields)"
    ),
    '{"endpoint": "e", "template": "T", "wifi": {"ssid": "net", "pass": "x"}}': (
        "fleetprov: config.json: field 'wifi.pass' is unknown "
        "(remove it; docs/configuration.md lists the fields)"
    ),
    '{"endpoint": "e", "template": "Caf\u00e9"}': (
        'fleetprov: config.json: field \'template\' must be 1-36 of [0-9A-Za-z_-], got "Caf\u00e9" '
        "(the template name as AWS shows it)"
    ),
    '{"endpoint": "e", "template": "T", "rx_size": 1024.5}': (
        "fleetprov: config.json: field 'rx_size' must be an integer, got float 1024.5 (bytes, at least 1024)"
    ),
    '{"endpoint": "e", "template": "T", "format": "CBOR"}': (
        'fleetprov: config.json: field \'format\' must be one of json or cbor, got "CBOR" ("json" or "cbor")'
    ),
    '["endpoint", "template"]': "fleetprov: config.json: must hold a JSON object, got list",
}


def write_config(folder: Path, text: str) -> Path:
    (folder / "certs").mkdir(parents=True, exist_ok=True)
    for name in ("ca.der", "claim.der", "claim.key.der"):
        (folder / "certs" / name).write_bytes(name.encode())
    (folder / "config.json").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("text", BOARD_REFUSALS)
def test_a_config_the_board_would_refuse_is_refused_with_the_line_the_board_prints(
    tmp_path: Path, text: str
) -> None:
    write_config(tmp_path, text)
    with pytest.raises(DeployError) as info:
        deploy.collect_config(tmp_path)
    first, line = str(info.value).split("\n")
    assert first == "{}: the board would refuse it at first boot and print".format(tmp_path / "config.json")
    assert line == BOARD_REFUSALS[text]
    assert deploy.board_refusal(json.loads(text)) == line


def test_the_board_check_runs_the_boards_own_devconfig_file() -> None:
    module = deploy.board_devconfig()
    assert Path(module.__file__ or "") == ROOT / "lib" / "devconfig.py"
    import devconfig  # tests/conftest.py puts lib/ on sys.path, as the board has it

    assert module.FIELD_NAMES == devconfig.FIELD_NAMES
    assert module is not devconfig and "fleetprov_board_devconfig" not in sys.modules


@pytest.mark.parametrize(
    "text, detail",
    [
        ('{"endpoint": "e", "template": "T",}', "Expecting property name enclosed in double quotes"),
        ('{"endpoint": "e" "template": "T"}', "Expecting ',' delimiter"),
        ('{"endpoint": "e", "template" "T"}', "Expecting ':' delimiter"),
        ('{"endpoint": "e", "template": "T", "template": "U"}', 'key "template" appears twice'),
        (
            '{"endpoint": "e", "template": "T", "wifi": {"ssid": "a", "ssid": "b"}}',
            'key "ssid" appears twice',
        ),
        ('{"endpoint": "e", "template": "T", "rx_size": NaN}', "NaN is not JSON"),
        ('{"endpoint": "e", "template": "T", "rx_size": -Infinity}', "-Infinity is not JSON"),
        ('{"endpoint": "e", "template": "T", "rx_size": 1e400}', "the number 1e400 is too large for a float"),
        ('{"endpoint": "e", "template": "T"} trailing', "Extra data"),
        ("", "Expecting value"),
    ],
)
def test_json_the_boards_lenient_parser_would_read_is_refused_as_not_strict_json(
    tmp_path: Path, text: str, detail: str
) -> None:
    write_config(tmp_path, text)
    with pytest.raises(DeployError) as info:
        deploy.collect_config(tmp_path)
    msg = str(info.value)
    assert msg.startswith("{} is not valid JSON (".format(tmp_path / "config.json"))
    assert detail in msg and msg.endswith("fix it before deploying")


def test_a_config_the_board_takes_passes_and_is_copied_byte_for_byte(tmp_path: Path) -> None:
    # The file itself is copied, never a re-serialised copy of what the check read.
    text = GOOD_CONFIG.replace(",", ",\n  ") + "\n"
    write_config(tmp_path, text)
    assert deploy.board_refusal(json.loads(text)) is None
    uploads, _, _ = deploy.collect(True, tmp_path)
    (config,) = [u for u in uploads if u.dest == "config.json"]
    assert config.src == tmp_path / "config.json" and config.src.read_text() == text


def test_every_documented_example_passes_the_board_check() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    blocks = [b.split("```")[0] for b in doc.split("```json")[1:]]
    assert blocks
    for block in blocks:
        assert deploy.board_refusal(deploy.strict_json(block)) is None


def test_the_config_iotsim_writes_passes_the_board_check() -> None:
    from tools.iotsim.stack import device_config

    assert deploy.board_refusal(device_config(8883)) is None


def test_make_deploy_refuses_a_bad_config_before_touching_the_port_or_building(tmp_path: Path) -> None:
    config = write_config(tmp_path / "device", '{"endpoint": "e", "template": "T", "rx_sise": 8192}')
    proc = subprocess.run(
        [sys.executable, "-m", "tools.deploy", "deploy", "--config", str(config)]
        + ["--port", str(tmp_path / "no-such-port")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-2] == "deploy: {}: the board would refuse it at first boot and print".format(
        config / "config.json"
    )
    assert lines[-1] == "fleetprov: config.json: field 'rx_sise' is unknown (did you mean 'rx_size'?)"
    assert "no-such-port" not in proc.stderr and "built" not in proc.stderr


def test_the_claim_command_reads_config_strictly_but_leaves_the_board_check_to_deploy(tmp_path: Path) -> None:
    # `claim --template NAME` works with a config.json that has no template yet.
    write_config(tmp_path, '{"endpoint": "e"}')
    assert deploy.read_config(tmp_path) == {"endpoint": "e"}
    write_config(tmp_path, '{"endpoint": "e", "endpoint": "f"}')
    with pytest.raises(DeployError, match='key "endpoint" appears twice'):
        deploy.read_config(tmp_path)


def test_a_missing_config_points_at_iotsims_state_folder_when_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / ".iotsim"
    state.mkdir()
    monkeypatch.setattr(deploy, "IOTSIM_STATE", state)
    with pytest.raises(DeployError) as info:
        deploy.read_config(tmp_path / "device")
    assert "config.json not found" in str(info.value) and "iotsim" not in str(info.value).split("wrote")[-1]
    (state / "config.json").write_text("{}")
    with pytest.raises(DeployError, match="FLEETPROV_CONFIG={}".format(state)):
        deploy.read_config(tmp_path / "device")


# --- claim: every failure is one line -------------------------------------------------


def no_aws_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path / "home"), AWS_EC2_METADATA_DISABLED="true")
    return env


@pytest.mark.parametrize(
    "endpoint, words",
    [
        ("http://127.0.0.1:9", "no iotsim state folder here serves it"),  # local, no iotsim profile
        ("https://iot.example.invalid", "You must specify a region"),  # AWS, no region configured
    ],
)
def test_claim_failures_before_the_board_are_one_line(tmp_path: Path, endpoint: str, words: str) -> None:
    write_config(tmp_path, '{"endpoint": "e", "template": "T"}')
    proc = subprocess.run(
        [sys.executable, "-m", "tools.deploy", "claim", "--config", str(tmp_path), "--endpoint-url", endpoint],
        cwd=ROOT, env=no_aws_env(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("claim: ") and words in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_claim_without_credentials_or_with_iotsim_down_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools import trustedclaim
    from tools.iotsim import localaws
    from tools.iotsim.broker import free_port

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    no_creds = trustedclaim.iot_client("https://iot.example.invalid", "eu-west-1", None, [])
    down = "http://127.0.0.1:{}".format(free_port())
    localaws.ensure_credentials(tmp_path)
    localaws.write_config(tmp_path, "local", down)
    for client, words in (
        (no_creds, "Unable to locate credentials"),
        (trustedclaim.iot_client(down, None, None, [tmp_path]), "Could not connect to the endpoint URL"),
    ):
        with pytest.raises(DeployError) as info:
            trustedclaim.request_claim(client, "FleetprovDemo")
        message = str(info.value)
        assert words in message and "\n" not in message and message.startswith("CreateProvisioningClaim failed")


# --- --frozen: a firmware with the library frozen in (manifest.py) ---------------------


def test_a_frozen_deploy_copies_no_library_and_removes_every_copy(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"endpoint": "e", "template": "t"}))
    for name in ("ca.der", "claim.der", "claim.key.der"):
        (tmp_path / "certs" / name).write_bytes(name.encode())
    uploads, twins, _ = deploy.collect(False, tmp_path, frozen=True)
    assert not [u for u in uploads if u.dest.startswith("lib/")]
    assert {u.dest for u in uploads} >= {"boot.py", "main.py", "config.json", "certs/claim.der"}
    for m in deploy.library_modules():
        assert {"lib/{}.py".format(m), "lib/{}.mpy".format(m), m + ".py", m + ".mpy"} <= set(twins)
    assert "main.py" not in twins and "boot.py" not in twins


def test_the_frozen_check_script_compiles_and_names_every_module() -> None:
    script = deploy.FROZEN_CHECK_SCRIPT % (deploy.MARK, deploy.library_modules())
    compile(script, "frozen-check", "exec")
    assert "'fleetprov'" in script


def test_a_frozen_deploy_to_firmware_without_the_frozen_library_is_refused(
    micropython, tmp_path: Path
) -> None:
    from tests.device.test_virtual_board import CLAIM_FILES, start_board

    config = tmp_path / "device"
    (config / "certs").mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"endpoint": "e-ats.example", "template": "T"}))
    for name in CLAIM_FILES:
        (config / "certs" / name).write_bytes(name.encode())
    board = start_board(micropython.binary, tmp_path / "flash", tmp_path / "pty")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tools.deploy", "deploy", "--frozen", "--config", str(config)]
            + ["--port", str(board.pty)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        path_after = board.mpremote("exec", "import sys; print(sys.path)").stdout.strip()
    finally:
        board.stop()
    assert proc.returncode == 1
    assert "does not have" in proc.stderr and "fleetprov" in proc.stderr and "manifest.py" in proc.stderr
    assert not (board.flash / "main.py").exists()  # refused before anything was copied
    assert path_after.startswith("['', '.frozen'")  # the check restored sys.path


# --- how the user ran it ------------------------------------------------------------


def no_board_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """mpremote, asked to auto-detect, finds no board (as it says on a machine without one)."""
    monkeypatch.setattr(deploy, "serial_ports", lambda: [])
    monkeypatch.setattr(deploy, "require_package", lambda *args: None)
    monkeypatch.setattr(
        deploy.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "mpremote: no device found\n"),
    )


@pytest.mark.parametrize(
    ("prog", "make_target", "expected"),
    [
        (None, None, "with --port: python -m tools.deploy status --port /dev/ttyUSB0"),
        ("fleetprov-deploy", None, "with --port: fleetprov-deploy status --port /dev/ttyUSB0"),
        (None, "status", "with PORT=: make status PORT=/dev/ttyUSB0"),
    ],
    ids=["python-m", "fleetprov-deploy", "make"],
)
def test_no_board_found_says_how_to_name_the_port_as_the_user_ran_the_command(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    prog: str | None,
    make_target: str | None,
    expected: str,
) -> None:
    no_board_anywhere(monkeypatch)
    if make_target:
        monkeypatch.setenv(deploy.MAKE_TARGET_ENV, make_target)
    else:
        monkeypatch.delenv(deploy.MAKE_TARGET_ENV, raising=False)
    assert deploy.main(["status"], prog=prog) == 1
    message = caplog.messages[-1]
    assert message.startswith("status: no board found on a USB serial port (ports found: none)")
    assert message.endswith("plug it in, or name its port " + expected)
    assert ("--port" in message) is (make_target is None)


def test_make_status_without_a_board_says_port_equals(tmp_path: Path) -> None:
    from serial.tools import list_ports  # mpremote's auto-detect takes the first USB serial device

    if any(p.vid is not None for p in list_ports.comports()):
        pytest.skip("this machine has a USB serial device: make status would talk to it")
    proc = subprocess.run(
        ["make", "--no-print-directory", "status"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "name its port with PORT=: make status PORT=/dev/ttyUSB0" in proc.stderr
    assert "--port" not in proc.stderr


def test_python_m_tools_deploy_names_itself_so_in_its_usage() -> None:
    # (fleetprov-deploy: tests/host/test_packaging.py)
    proc = subprocess.run(
        [sys.executable, "-m", "tools.deploy", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m tools.deploy ")
