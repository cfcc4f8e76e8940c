"""manifest.py, run through MicroPython's own manifest tool as a firmware build runs it.

The tool (tools/manifestfile.py) and micropython-lib's umqtt.simple come from
the vendored MicroPython 1.24.1 source archive (../shared/vendor/micropython/).
Building a firmware with it: docs/firmware.md.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from tools.oldports import VENDOR

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE = VENDOR / "micropython-1.24.1-src.tar.gz"
TOP = "micropython-1.24.1/"
WANTED = (TOP + "tools/manifestfile.py", TOP + "lib/micropython-lib/micropython/umqtt.simple/")


@pytest.fixture(scope="module")
def mpy_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest tool and umqtt.simple's package folder, extracted from the archive."""
    if not ARCHIVE.is_file():
        pytest.skip("{} is not here (a test dependency outside the repository)".format(ARCHIVE))
    dest = tmp_path_factory.mktemp("mpy")
    with tarfile.open(ARCHIVE) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(WANTED)]
        tar.extractall(dest, members=members, filter="data")
    return dest / TOP


def manifest_tool(tree: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("manifestfile", tree / "tools" / "manifestfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def freeze(tree: Path, manifest: Path) -> tuple[list[str], object]:
    """What a firmware build would freeze from ``manifest``: target paths, and the metadata."""
    tool = manifest_tool(tree)
    path_vars = {
        "MPY_DIR": str(tree),
        "MPY_LIB_DIR": str(tree / "lib" / "micropython-lib"),
        "PORT_DIR": str(tree / "ports" / "esp32"),
        "BOARD_DIR": str(tree / "ports" / "esp32" / "boards" / "ESP32_GENERIC"),
    }
    m = tool.ManifestFile(tool.MODE_FREEZE, path_vars)
    m.execute(str(manifest))
    return [f.target_path for f in m.files()], m.metadata()


def test_the_manifest_freezes_every_device_module_and_umqtt_simple(mpy_tree: Path) -> None:
    targets, _ = freeze(mpy_tree, ROOT / "manifest.py")
    lib = sorted(p.name for p in (ROOT / "lib").glob("*.py"))
    assert sorted(targets) == sorted(lib + ["umqtt/simple.py"])


def test_frozen_modules_are_compiled_from_the_repositorys_lib(mpy_tree: Path) -> None:
    tool = manifest_tool(mpy_tree)
    m = tool.ManifestFile(
        tool.MODE_FREEZE, {"MPY_DIR": str(mpy_tree), "MPY_LIB_DIR": str(mpy_tree / "lib" / "micropython-lib")}
    )
    m.execute(str(ROOT / "manifest.py"))
    ours = [f for f in m.files() if f.target_path != "umqtt/simple.py"]
    assert {Path(f.full_path) for f in ours} == set((ROOT / "lib").glob("*.py"))
    assert {f.kind for f in ours} == {tool.KIND_FREEZE_AS_MPY}


def test_a_board_manifest_that_already_requires_umqtt_freezes_it_once(mpy_tree: Path, tmp_path: Path) -> None:
    # As the ESP32 port's boards/manifest.py does, and docs/firmware.md's board manifest.
    board = tmp_path / "board_manifest.py"
    board.write_text('require("umqtt.simple")\ninclude({!r})\n'.format(str(ROOT / "manifest.py")))
    targets, _ = freeze(mpy_tree, board)
    assert targets.count("umqtt/simple.py") == 1
    assert "fleetprov.py" in targets


def test_the_manifest_version_is_the_mip_packages(mpy_tree: Path) -> None:
    _, metadata = freeze(mpy_tree, ROOT / "manifest.py")
    package = json.loads((ROOT / "package.json").read_text())
    assert metadata.version == package["version"]  # type: ignore[attr-defined]
