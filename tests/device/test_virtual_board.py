"""The virtual board: the MicroPython unix port behind a pseudo-terminal.

socat gives the unix port a serial line of its own (a pty), so mpremote talks
to it exactly as it talks to an ESP32 on /dev/ttyUSB0: raw REPL, `fs cp`,
`exec`. The process runs in a scratch folder that plays the board's flash, and
its path is the board's: '' (the flash root), `.frozen`, then umqtt from deps/
(frozen into real firmware), then the flash's `lib/`.

The unix port has no soft reset (Ctrl-D in the raw REPL would end the
process), so every mpremote call uses `resume`; tools/deploy does the same.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPS = ROOT / "deps"
SUPPORT = ROOT / "tests" / "device" / "support"
MPREMOTE = Path(sys.executable).parent / "mpremote"

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
    return os.pathsep.join([".frozen", str(DEPS), str(SUPPORT), "lib"])


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
