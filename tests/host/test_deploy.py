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


@pytest.mark.parametrize("name", ["device.crt.der", "device.key.der", "provisioned.json", "uid"])
def test_a_device_credential_can_never_be_named_as_a_claim_file(name: str) -> None:
    with pytest.raises(DeployError, match="never copies device credentials"):
        deploy.claim_file_names({"claim_key": name})


def test_device_credential_names_are_the_credential_stores_own() -> None:
    import credstore

    assert deploy.device_credential_names() == {
        credstore.RECORD,
        credstore.DEVICE_CERT,
        credstore.DEVICE_KEY,
        credstore.UID,
    }


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
    (tmp_path / "config.json").write_text('{"endpoint": "e", "template": "t"}')
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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"endpoint": "e", "template": "t", "port": "8883"}', "field 'port' must be an integer, got str \"8883\""),
        ('{"endpoint": "e"}', "field 'template' is missing"),
        ('{"endpoint": "e", "template": "t", "rx_sise": 8192}', "unknown field 'rx_sise' (did you mean 'rx_size'?)"),
        ('{"endpoint": "e", "template": "bad name"}', "field 'template' must be 1-36 of [0-9A-Za-z_-]"),
    ],
)
def test_a_config_the_board_would_refuse_is_refused_with_the_boards_message(
    tmp_path: Path, content: str, message: str
) -> None:
    import devconfig

    (tmp_path / "config.json").write_text(content)
    with pytest.raises(DeployError) as info:
        deploy.read_config(tmp_path)
    with pytest.raises(devconfig.ConfigError) as board:
        devconfig.validate(json.loads(content))
    assert str(info.value) == "the board would refuse this config: fleetprov: " + str(board.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "content",
    ['{"endpoint": "e", "template": "t",}', '{"endpoint": "e" "template": "t"}',
     '{"endpoint": "e", "template": "t", "template": "u"}'],
)
def test_json_the_boards_parser_would_let_through_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(DeployError, match="is not valid JSON"):
        deploy.read_config(tmp_path)


def test_an_unknown_field_the_board_ignores_is_reported_with_difflibs_guess(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "config.json").write_text('{"endpoint": "e", "template": "t", "connection_timeout": 5}')
    with caplog.at_level("WARNING", logger="deploy"):
        assert deploy.read_config(tmp_path)["connection_timeout"] == 5
    assert caplog.messages == [
        "config.json: unknown field 'connection_timeout' ignored (the fields are in docs/configuration.md)"
        " (closest field: 'connect_timeout_ms')"
    ]


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
