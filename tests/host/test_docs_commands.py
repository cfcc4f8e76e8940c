"""Every command README, hardware.md, configuration.md and firmware.md show, run here where it can.

Every line of every shell block (```sh, ```bat) in those documents, and the
command in examples/provision.py's header, is in exactly one of three
tables below: run by a test in this file (RUN_HERE), run by another test
(ELSEWHERE, naming it), or not runnable here by design (BY_DESIGN: it needs a
board, AWS, Windows, or it is `make test` itself, with the reason). A command
added to the docs without a row fails
test_every_documented_command_is_run_or_listed; a row whose command left the
docs fails it too. docs/iotsim.md has its own doc-tests (test_iotsim_docs.py).

The runnable blocks run as written, with only the iotsim state folder, its
port and scratch paths replaced by the test's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tools.iotsim.testing import RunningIotSim

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/hardware.md", "docs/configuration.md", "docs/firmware.md")
EXAMPLE = ROOT / "examples" / "provision.py"
SHELL_LANGUAGES = ("sh", "bash", "bat")
pytestmark = pytest.mark.timeout(180)

BOARD = "needs a board on a serial port"
ESP_IDF = "builds ESP32 firmware from a GitHub clone with ESP-IDF, neither of which is here"
FIRMWARE_BUILD = (
    "builds a firmware from a MicroPython clone (a minute of both cores); make ports builds the 1.24.1 "
    "unix port with a manifest frozen in the same way (tools/esp32like_manifest.py)"
)
UPSTREAM_TAGS = (
    "clones MicroPython's release tags from GitHub, which is not reachable here; make test builds "
    "the same versions from the pinned archives in ../shared/vendor/micropython"
)
WINDOWS = "Windows only (the same tools.deploy and mpremote commands run on Linux in tests)"

# The command (one logical line, comment stripped) -> how it is covered.
RUN_HERE = {
    # docs/hardware.md "Trying it without hardware": test_the_virtual_board_walkthrough_provisions_a_board
    "REPO=$(pwd)",
    "mkdir -p /tmp/board && cd /tmp/board",
    "MICROPYPATH=.frozen:$REPO/deps:$REPO/tests/device/support:lib socat PTY,link=/tmp/board.pty,rawer "
    "EXEC:$REPO/.venv/bin/micropython,pty,stderr,rawer &",
    "cd $REPO",
    "while [ ! -e /tmp/board.pty ]; do sleep 0.1; done",
    "make deploy PORT=/tmp/board.pty FLEETPROV_CONFIG=/tmp/iotsim",
    '.venv/bin/mpremote connect /tmp/board.pty resume exec "import boot, main"',
    "make status PORT=/tmp/board.pty",
    "kill %1",
    # examples/provision.py: test_the_examples_documented_command_provisions_a_device
    "cd .iotsim && MICROPYPATH=.frozen:../lib:../deps:../tests/device/support ../.venv/bin/micropython "
    "../examples/provision.py 127.0.0.1 8883 keys",
}
VIRTUAL_BOARD_AGAIN = (
    "tests/device/test_virtual_board.py (test_a_failed_boot_keeps_the_repl_with_its_failure_line_and_boots_"
    "again_as_documented runs the reset and main.py-again blocks after the walkthrough's boot)"
)
ELSEWHERE = {
    "while [ -e /tmp/board.pty ]; do sleep 0.1; done": VIRTUAL_BOARD_AGAIN,
    "cd /tmp/board": VIRTUAL_BOARD_AGAIN,
    ".venv/bin/mpremote connect /tmp/board.pty resume exec \"import sys; sys.modules.pop('main', None); "
    "import main\"": VIRTUAL_BOARD_AGAIN,
    ".venv/bin/python -m tools.esp32check": "tests/host/test_esp32_api.py",
    ".venv/bin/python -m tools.esp32check mycode.py": "tests/host/test_esp32_api.py (on the reader's file)",
    "make demo": "tests/device/test_firstboot_iotsim.py runs the same first boot (the demo takes a minute)",
    "make claim PORT=/tmp/board.pty ENDPOINT_URL=http://127.0.0.1:<port> FLEETPROV_CONFIG=.iotsim": (
        "tests/device/test_trusted_claim.py (the same tools.deploy claim against iotsim on the virtual board)"
    ),
}
BY_DESIGN = {
    "make test": "the suite this test is part of (.ci/run runs it)",
    ".venv/bin/python -m tools.awssetup setup --region eu-west-1": "needs an AWS account; the same setup "
    "against iotsim: tests/host/test_awssetup.py",
    ".venv/bin/pip install esptool": "esptool only flashes a board; not a project dependency",
    ".venv/bin/esptool.py --chip esp32 --port /dev/ttyUSB0 erase_flash": BOARD,
    ".venv/bin/esptool.py --chip esp32 --port /dev/ttyUSB0 --baud 460800 write_flash -z 0x1000 "
    "ESP32_GENERIC-<date>-v1.24.1.bin": BOARD,
    '.venv/bin/mpremote connect /dev/ttyUSB0 exec "import sys; print(sys.implementation)"': BOARD,
    "make deploy PORT=/dev/ttyUSB0": BOARD + " (the virtual board runs the same target above)",
    "make deploy PORT=/dev/ttyUSB0 MPY=0": BOARD + " (tests/device/test_virtual_board.py deploys sources)",
    "make deploy": BOARD + " (auto-detected)",
    "make status PORT=/dev/ttyUSB0": BOARD + " (the virtual board runs the same target above)",
    "make claim PORT=/dev/ttyUSB0": BOARD
    + " and AWS (tests/device/test_trusted_claim.py runs it on the virtual board)",
    ".venv/bin/mpremote connect /dev/ttyUSB0 repl": BOARD + ", and a person at the console",
    ".venv/bin/mpremote connect /dev/ttyUSB0 mip install github:<owner>/<repo>": BOARD + " and GitHub",
    ".venv/bin/mpremote connect /dev/ttyUSB0 mip install github:<owner>/<repo>@<ref>": BOARD + " and GitHub",
    "py -3 -m venv .venv": WINDOWS,
    r".venv\Scripts\python -m pip install -r requirements-deploy.txt": WINDOWS,
    r".venv\Scripts\python -m mpremote devs": WINDOWS,
    r".venv\Scripts\python -m tools.deploy deploy --port COM3 --config device": WINDOWS,
    r".venv\Scripts\python -m tools.deploy status --port COM3": WINDOWS,
    r".venv\Scripts\python -m mpremote connect COM3 repl": WINDOWS,
    "git clone --branch v1.24.1 https://github.com/micropython/micropython": ESP_IDF,
    "cd micropython": ESP_IDF,
    "make -C mpy-cross": ESP_IDF,
    "cd ports/esp32": ESP_IDF,
    "make BOARD=ESP32_GENERIC submodules": ESP_IDF,
    "make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/board_manifest.py": ESP_IDF,
    "make deploy PORT=/dev/ttyUSB0 FROZEN=1": BOARD
    + " with firmware built from manifest.py (test_deploy.py checks the refusal on stock firmware)",
    "mkdir -p ~/mp-src && cd ~/mp-src": UPSTREAM_TAGS,
    "for v in 1.22.2 1.24.1; do": UPSTREAM_TAGS,
    "git clone --branch v$v --depth 1 https://github.com/micropython/micropython "
    "micropython-$v": UPSTREAM_TAGS,
    "git -C micropython-$v submodule update --init --depth 1 lib/mbedtls lib/micropython-lib": UPSTREAM_TAGS,
    "done": UPSTREAM_TAGS,
    "export FLEETPROV_MICROPYTHON_SRC=~/mp-src": UPSTREAM_TAGS,
    "make -C ports/unix submodules": FIRMWARE_BUILD,
    "make -C ports/unix FROZEN_MANIFEST=/path/to/board_manifest.py": FIRMWARE_BUILD,
}


def logical_lines(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", "", block)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(re.sub(r"\s+", " ", line))
    return commands


def documented_commands() -> dict[str, str]:
    """command -> the document that shows it."""
    found = {}
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for lang, body in re.findall(r"^ *```(\w*)\n(.*?)^ *```", text, re.S | re.M):
            if lang in SHELL_LANGUAGES:
                for command in logical_lines(body):
                    found[command] = doc
    for command in logical_lines(example_block()):
        found[command] = str(EXAMPLE.relative_to(ROOT))
    return found


def example_block() -> str:
    """The command in examples/provision.py's header: its indented `#   ` lines."""
    lines = [line[4:] for line in EXAMPLE.read_text().splitlines() if line.startswith("#   ")]
    assert lines, "examples/provision.py no longer shows how to run it"
    return "\n".join(lines) + "\n"


def doc_block(doc: str, name: str) -> str:
    found = re.search(
        r"<!-- doc-test: {} -->\n```\w+\n(.*?)```".format(re.escape(name)), (ROOT / doc).read_text(), re.S
    )
    assert found, "{} has no block marked doc-test: {}".format(doc, name)
    return found.group(1)


def test_every_documented_command_is_run_or_listed() -> None:
    documented = documented_commands()
    tables = [set(RUN_HERE), set(ELSEWHERE), set(BY_DESIGN)]
    assert not (tables[0] & tables[1] or tables[0] & tables[2] or tables[1] & tables[2])
    listed = set().union(*tables)
    unlisted = {c: doc for c, doc in documented.items() if c not in listed}
    assert not unlisted, "documented commands neither run nor listed as skipped: {}".format(unlisted)
    stale = listed - set(documented)
    assert not stale, "listed commands no longer in the docs: {}".format(sorted(stale))


def run_group(script: str, cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """bash -e in a session of its own, so whatever it leaves running is ended with it."""
    # A script that stops early still ends what it started in the background (which would
    # otherwise hold its output open until the timeout).
    ended = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    proc = subprocess.Popen(
        ["bash", "-e", "-c", ended],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_virtual_board_walkthrough_provisions_a_board(iotsim: RunningIotSim, tmp_path: Path) -> None:
    script = (
        doc_block("docs/hardware.md", "virtual-board")
        .replace("/tmp/iotsim", str(iotsim.state))
        .replace("/tmp/board", str(tmp_path / "board"))
    )
    proc = run_group(script, ROOT)
    assert proc.returncode == 0, "exit {}\n--- stdout\n{}\n--- stderr\n{}".format(
        proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]
    )
    assert "done" in proc.stdout  # first boot's last progress line
    assert "provisioned: yes" in proc.stdout
    thing = re.search(r"^thing name: (\S+)$", proc.stdout, re.M)
    assert thing is not None and iotsim.registry.thing(thing.group(1)) is not None
    assert (tmp_path / "board" / "lib" / "fleetprov.mpy").is_file()


@pytest.mark.parametrize("method", ["keys", "csr"])
def test_the_examples_documented_command_provisions_a_device(
    iotsim_factory: Any, tmp_path: Path, method: str
) -> None:
    # The example is one device (client ids claim-0001, fleetprov-0001) run twice
    # here within seconds: an iotsim each, as AWS accepts one CONNECT a second
    # per client id (that rule: tests/device/test_firstboot_iotsim.py).
    iotsim = iotsim_factory()
    # The fixture's state folder for .iotsim (so ../ is the repository) and its port.
    script = example_block().replace("cd .iotsim", "cd {}".format(iotsim.state))
    script = script.replace("../", "{}/".format(ROOT)).replace("8883", str(iotsim.port))
    # keys: the command as written; csr: another device too (its optional serial), as AWS
    # accepts one CONNECT a second per client id
    proc = run_group(script.replace(" keys", " keys" if method == "keys" else " csr 0002"), ROOT, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"^thing (\S+) certificate ([0-9a-f]{64})$", proc.stdout, re.M)
    assert found, proc.stdout
    assert iotsim.registry.status(found.group(2)) == "ACTIVE"
    # kept as DER and connected with it, as the thing
    assert "connected as {} and published".format(found.group(1)) in proc.stdout


def json_blocks(doc: str) -> list[dict[str, object]]:
    text = (ROOT / doc).read_text(encoding="utf-8")
    return [json.loads(body) for body in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_configurations_iotsim_example_is_what_iotsim_writes(iotsim: RunningIotSim) -> None:
    written = json.loads((iotsim.state / "config.json").read_text())
    written["port"] = 8883  # the fixture runs on a free port, the docs show the default
    assert json_blocks("docs/configuration.md")[0] == written


def test_configurations_examples_are_valid_configs() -> None:
    import devconfig

    for example in json_blocks("docs/configuration.md"):
        devconfig.validate(example)


def test_configurations_error_examples_are_the_messages_devconfig_gives() -> None:
    import devconfig

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    shown = re.search(r"for example:\n\n```\n(.*?)```", text, re.S)
    assert shown, "docs/configuration.md no longer shows example error messages"
    messages = []
    for broken in (
        {"endpoint": "e"},
        {"endpoint": "e", "template": "T", "port": "8883"},
        {"endpoint": "e", "template": "T", "rx_sise": 8192},
    ):
        with pytest.raises(devconfig.ConfigError) as info:
            devconfig.validate(broken)
        messages.append("fleetprov: " + str(info.value))  # as lib/firstboot.py run() prints it
    assert shown.group(1).splitlines() == messages


def test_configurations_make_deploy_example_is_what_make_deploy_prints(tmp_path: Path) -> None:
    from tools import deploy

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    shown = re.search(r"```\n\s*(deploy: device/config.json: .*?)```", text, re.S)
    assert shown, "docs/configuration.md no longer shows make deploy's refusal"
    device = tmp_path / "device"
    device.mkdir()
    (device / "config.json").write_text('{"endpoint": "e", "template": "T", "rx_sise": 8192}')
    with pytest.raises(deploy.DeployError) as info:
        deploy.collect_config(device)
    printed = "deploy: " + str(info.value).replace(str(device), "device")  # as main() logs it
    assert [line.strip() for line in shown.group(1).strip().splitlines()] == printed.splitlines()


def test_iotsims_synopsis_takes_v_after_the_subcommand_as_written() -> None:
    from tools.iotsim.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["up", "--port", "8883", "-v"]).verbose is True
    assert parser.parse_args(["-v", "up"]).verbose is True
    assert parser.parse_args(["up"]).verbose is False


def test_performance_md_quotes_only_bench_sections_and_the_bundle_line_as_printed(tmp_path: Path) -> None:
    from tools import cpbundle
    from tools.bench.__main__ import SECTIONS

    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    named = set(re.findall(r"^Section (\w+):", text, re.M))
    rows = re.findall(r"^\| (\w+) +\|.*\| (?:met|NOT MET) +\|$", text, re.M)  # the targets table
    named |= set(rows) - {"section", "target"}  # header rows
    assert named and named <= set(SECTIONS), named - set(SECTIONS)
    shown = re.search(r"^size: .*$", text, re.M)
    assert shown, "docs/performance.md no longer shows what make circuitpython-bundle prints"
    printed = cpbundle.size_line(cpbundle.bundle(tmp_path / "b.zip"))
    number = r"[0-9]+\.[0-9]"  # the figures move with the library; the line is the one printed
    assert re.sub(number, "N", shown.group(0)) == re.sub(number, "N", printed)
