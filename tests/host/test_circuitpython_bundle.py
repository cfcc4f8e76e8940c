"""The CircuitPython bundle zip (make circuitpython-bundle): the CIRCUITPY layout a user copies."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import pytest

from tools import cpbundle

# Modules CircuitPython has built in (circuitpython-stubs and tools/cpcheck/stubs name them).
BUILTIN = {
    "binascii",
    "board",
    "digitalio",
    "errno",
    "gc",
    "hashlib",
    "json",
    "microcontroller",
    "micropython",
    "os",
    "io",
    "re",
    "rtc",
    "select",
    "socketpool",
    "ssl",
    "storage",
    "struct",
    "supervisor",
    "sys",
    "time",
    "wifi",
}
# Imported only on MicroPython, behind an ImportError probe or in a MicroPython-only function.
# socket: mqttlink.nodelay's probe for the socket module (CircuitPython has socketpool).
MICROPYTHON_ONLY = {"machine", "ussl", "umqtt", "socket"}


def test_the_bundle_is_the_circuitpy_layout_with_sources_and_a_circup_list(tmp_path: Path) -> None:
    out = cpbundle.bundle(tmp_path / "b.zip")
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        requirements = z.read("fleetprov-circuitpython/requirements.txt").decode()
    top = "fleetprov-circuitpython/"
    for n in (
        "code.py",
        "boot.py",
        "settings.toml.example",
        "lib/fleetprov.py",
        "lib/mmqttclient.py",
        "lib/cpboard.py",
        "lib/credstore.py",
        "lib/firstboot.py",
        "certs/README.txt",
    ):
        assert top + n in names
    assert not any(n.endswith((".mpy", ".der", ".key.pem")) or n.endswith("/settings.toml") for n in names)
    assert [line for line in requirements.splitlines() if not line.startswith("#")] == list(
        cpbundle.CIRCUP_LIBRARIES
    )


def test_everything_the_board_imports_is_in_the_bundle_circup_or_circuitpython() -> None:
    shipped = {Path(rel).stem for _, rel in cpbundle.board_files() if rel.endswith(".py")}
    missing = {}
    for src, rel in cpbundle.board_files():
        if not rel.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module.split(".")[0]]
            else:
                continue
            for m in mods:
                if m not in shipped | BUILTIN | MICROPYTHON_ONLY | set(cpbundle.CIRCUP_LIBRARIES):
                    missing.setdefault(rel, set()).add(m)
    assert not missing, missing


def test_the_board_files_and_the_example_compile_with_mpy_cross(tmp_path: Path) -> None:
    # CircuitPython's compiler is MicroPython's with its own .mpy format: the
    # language it accepts is the same, so MicroPython's mpy-cross catches
    # CPython-only syntax in the board files.
    import subprocess

    from tools.unixboard import mpy_cross_binary

    for src in (
        cpbundle.BOARD / "code.py",
        cpbundle.BOARD / "boot.py",
        *sorted((cpbundle.BOARD / "lib").glob("*.py")),
        *sorted((cpbundle.ROOT / "examples").glob("*circuitpython*.py")),
    ):
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run(
            [str(mpy_cross_binary()), "-o", str(out), str(src)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr


def test_make_circuitpython_bundle_prints_the_size_of_the_zip_and_of_the_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.zip"
    assert cpbundle.main(["bundle", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    sources = sum(src.stat().st_size for src, rel in cpbundle.board_files() if rel.endswith(".py"))
    expected = "size: {:.1f} KB zipped; its .py files take {:.1f} KB on CIRCUITPY".format(
        out.stat().st_size / 1024, sources / 1024
    )
    assert expected in printed.splitlines()
    with zipfile.ZipFile(out) as z:  # the .py files counted are the ones the zip carries
        assert sum(i.file_size for i in z.infolist() if i.filename.endswith(".py")) == sources
