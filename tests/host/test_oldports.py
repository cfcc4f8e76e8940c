"""tools/oldports.py: the 1.22.2/1.24.1 unix ports are built once, from pinned sources,
or the user is told how."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tools import oldports
from tools.pinned import PinError


def test_without_sources_the_message_gives_the_upstream_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(oldports.SOURCE_ENV, raising=False)
    assert oldports.main(["1.22.2", "--vendor", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("oldports: MicroPython 1.22.2's sources are needed")
    assert (
        "git clone --branch v1.22.2 --depth 1 https://github.com/micropython/micropython micropython-1.22.2"
        in err
    )
    assert "submodule update --init --depth 1 lib/mbedtls lib/micropython-lib" in err
    assert f"export {oldports.SOURCE_ENV}=" in err and "OLD_PORTS=0" in err


def test_an_archive_that_does_not_match_its_pin_is_not_built(tmp_path: Path) -> None:
    port = oldports.find_port("1.24.1")
    (tmp_path / port.archive_name).write_bytes(b"not the release\n")
    with pytest.raises(PinError, match="does not match the pinned"):
        oldports.build(port, vendor=tmp_path)


def test_an_unknown_version_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert oldports.main(["1.19.1"]) == 1
    assert "no such old port: 1.19.1 (known: 1.22.2, 1.24.1, 1.24.1-32bit)" in capsys.readouterr().err


@pytest.mark.parametrize("version", [p.version for p in oldports.OLD_PORTS])
def test_a_built_port_is_not_built_again(version: str) -> None:
    port = oldports.find_port(version)
    if not (oldports.VENDOR / port.archive_name).exists() or not oldports.is_built(version):
        pytest.skip(f"MicroPython {version} is not built from ../shared here (make ports)")
    if not oldports.is_current(version):
        # build() would build it again, for minutes, under whoever else uses build/ports
        pytest.skip(f"MicroPython {version} was built with other settings here (make ports)")
    before = oldports.micropython_path(version).stat().st_mtime_ns
    assert oldports.build(port) is False  # the stamp is current: nothing to do
    assert oldports.micropython_path(version).stat().st_mtime_ns == before
    stamp = (oldports.port_dir(version) / "stamp").read_text()
    assert port.archive_sha256 in stamp and "MICROPY_PY_BTREE=0" in stamp
    assert os.access(oldports.mpy_cross_path(version), os.X_OK)


def test_the_32bit_build_is_skipped_with_a_note_where_gcc_cannot_make_32bit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(oldports, "can_build_32bit", lambda: False)
    built: list[str] = []
    monkeypatch.setattr(oldports, "build", lambda port, *a, **k: built.append(port.version) or False)
    assert oldports.main(["1.24.1-32bit"]) == 0
    assert built == []
    assert "1.24.1-32bit skipped: gcc cannot build 32-bit x86 here" in capsys.readouterr().out


def test_the_32bit_build_is_a_32bit_program_of_the_same_release() -> None:
    port = oldports.find_port("1.24.1-32bit")
    assert port.release == "1.24.1" and port.archive_sha256 == oldports.find_port("1.24.1").archive_sha256
    assert "MICROPY_FORCE_32BIT=1" in port.make_args and "MICROPY_FORCE_32BIT=1" not in oldports.find_port(
        "1.24.1"
    ).make_args
    if not oldports.is_built(port.version):
        pytest.skip("the 32-bit 1.24.1 port is not built here (make ports, with gcc-multilib)")
    elf = oldports.micropython_path(port.version).read_bytes()[:5]
    assert elf[:4] == b"\x7fELF" and elf[4] == 1  # EI_CLASS 1: ELFCLASS32
    assert "MICROPY_FORCE_32BIT=1" in (oldports.port_dir(port.version) / "stamp").read_text()


def test_the_32bit_build_has_umqtt_frozen_in_as_esp32_firmware_does() -> None:
    port = oldports.find_port("1.24.1-32bit")
    manifest = oldports.ROOT / "tools" / "esp32like_manifest.py"
    assert port.freeze == "tools/esp32like_manifest.py" and f"FROZEN_MANIFEST={manifest}" in port.make_args
    assert 'require("umqtt.simple")' in manifest.read_text()
    assert not any(a.startswith("FROZEN_MANIFEST=") for a in oldports.find_port("1.24.1").make_args)
    # a changed manifest makes a new build
    assert "manifest " in oldports._stamp_text("archive x", port)
    if not oldports.is_built(port.version):
        pytest.skip("the 32-bit 1.24.1 port is not built here (make ports, with gcc-multilib)")
    proc = subprocess.run(
        [str(oldports.micropython_path(port.version)), "-c",
         "import sys; sys.path[:] = ['.frozen']; import umqtt.simple; print(umqtt.simple.__file__)"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "umqtt/simple.py"  # a frozen module's name, no file behind it


def test_a_port_built_with_older_settings_is_not_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oldports, "BUILD", tmp_path)
    port = oldports.find_port("1.24.1-32bit")
    out = oldports.port_dir(port.version)
    out.mkdir()
    for name in ("micropython", "mpy-cross"):
        (out / name).write_bytes(b"")
    assert not oldports.is_current(port.version)  # no stamp
    (out / "stamp").write_text("archive abc\nmake -C ports/unix MICROPY_FORCE_32BIT=1\n")  # before the manifest
    assert not oldports.is_current(port.version)
    (out / "stamp").write_text(oldports._stamp_text("archive abc", port))
    assert oldports.is_current(port.version)


def test_the_stamp_is_the_same_in_every_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a checkout elsewhere (a git worktree, a moved clone) sharing build/ports builds nothing again
    port = oldports.find_port("1.24.1-32bit")
    assert port.freeze is not None
    manifest = port.freeze
    here = oldports._stamp_text("archive abc", port)
    elsewhere = tmp_path / "clone"
    (elsewhere / "tools").mkdir(parents=True)
    (elsewhere / manifest).write_bytes((oldports.ROOT / manifest).read_bytes())
    monkeypatch.setattr(oldports, "ROOT", elsewhere)
    assert oldports._stamp_text("archive abc", port) == here
    assert "FROZEN_MANIFEST=tools/esp32like_manifest.py" in here
    assert any(a == "FROZEN_MANIFEST=" + str(elsewhere / manifest) for a in port.make_args)
    (elsewhere / manifest).write_text("# another manifest\n")
    assert oldports._stamp_text("archive abc", port) != here
