"""`make demo`: the options a user gives reach the device, and only the demo is printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools import fetch_deps

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_make_demo_passes_format_method_and_board_to_the_demo() -> None:
    proc = make("-n", "demo", "FORMAT=cbor", "CSR=1", "BOARD=circuitpython", "ROTATE=1")
    assert proc.returncode == 0, proc.stderr
    demo = [line for line in proc.stdout.splitlines() if "-m tools.demo" in line]
    assert len(demo) == 1
    assert demo[0].split("-m tools.demo")[1].split() == [
        "--rotate", "--method", "csr", "--format", "cbor", "--board", "circuitpython",
    ]


@pytest.mark.parametrize("board", ["micropython", "circuitpython"])
def test_the_demo_in_cbor_provisions_the_device_in_cbor(board: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--format", "cbor", "--board", board, "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the device's own config line, first boot and second
    assert len(re.findall(r"ms  config  \S+ keys cbor template", proc.stdout)) == 2, proc.stdout
    assert re.search(r"^ +method / format +keys / cbor$", proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize("board", ["micropython", "circuitpython"])
def test_the_demo_with_rotate_shows_the_old_certificate_inactive_and_the_new_one_active(
    board: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--rotate", "--board", board, "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rotated = re.search(r"^rotated: ([0-9a-f]{64}) INACTIVE -> ([0-9a-f]{64}) ACTIVE$", proc.stdout, re.M)
    assert rotated and rotated.group(1) != rotated.group(2), proc.stdout
    assert re.search(rf"^ +certificate id +{rotated.group(2)}$", proc.stdout, re.M), proc.stdout
    assert re.search(rf"ms  rotated  {rotated.group(1)} -> {rotated.group(2)}", proc.stdout), proc.stdout


def test_make_deps_prints_nothing_when_every_copy_is_there() -> None:
    if not fetch_deps.all_present():
        pytest.skip("umqtt.simple is not all here yet (make deps would download it)")
    proc = make("deps")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_min_heap_checks_every_size_above_the_smallest_and_names_the_first_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tools import demo, unixboard

    probed: list[int] = []

    def boards_passing(pristine: Path, work: Path, kb: int, trials: int) -> int:
        probed.append(kb)
        return 3 if kb == 70 else trials  # the fourth board at 70 KB fails

    monkeypatch.setattr(unixboard, "boards_passing", boards_passing)
    assert demo.sweep(tmp_path, tmp_path, 64, trials=10, step_kb=2) == (
        "first failure at 70 KB: 3/10 boards passed before one failed"
    )
    assert probed == [64, 66, 68, 70]
    probed.clear()
    assert demo.sweep(tmp_path, tmp_path, 120, trials=10, step_kb=2) == "10/10 at every step from 120 to 128 KB"
    assert probed == [120, 122, 124, 126, 128]
