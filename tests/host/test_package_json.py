"""package.json: what `mpremote mip install github:<owner>/<repo>` installs.

It must list exactly the device library (lib/*.py), in the shape mip reads
(`urls` of [dest, src] string pairs, `deps` of [name, version] pairs, a
`version`), so it can neither go stale nor install host code. The virtual-board
test installs it for real with mpremote's mip.
"""

from __future__ import annotations

import json
from pathlib import Path

from tools import package_json

ROOT = Path(__file__).resolve().parents[2]
STALE = "package.json is stale: run `python -m tools.package_json` and commit the result"


def load() -> dict:
    return json.loads((ROOT / "package.json").read_text(encoding="utf-8"))


def test_package_json_lists_exactly_the_device_library() -> None:
    urls = load()["urls"]
    dests = sorted(dest for dest, _ in urls)
    assert dests == sorted(p.name for p in (ROOT / "lib").glob("*.py")), STALE


def test_package_json_is_what_the_generator_writes() -> None:
    assert (ROOT / "package.json").read_text(encoding="utf-8") == package_json.render(
        package_json.manifest()
    ), STALE


def test_every_source_is_a_relative_path_to_an_existing_lib_file() -> None:
    for dest, src in load()["urls"]:
        assert src == "lib/" + dest
        assert not src.startswith(("/", "http:", "https:", "github:"))
        assert (ROOT / src).is_file(), src


def test_package_json_has_mips_shape_and_nothing_else() -> None:
    data = load()
    assert set(data) == {"urls", "deps", "version"}
    for key in ("urls", "deps"):
        assert isinstance(data[key], list)
        for pair in data[key]:
            assert isinstance(pair, list) and len(pair) == 2, pair
            assert all(isinstance(x, str) and x for x in pair), pair
    # mip joins dest under the target lib folder: plain module file names only.
    for dest, _ in data["urls"]:
        assert "/" not in dest and dest.endswith(".py"), dest


def test_umqtt_simple_is_the_only_dependency_pinned_to_a_tested_release() -> None:
    from tools.fetch_deps import UMQTT_VERSIONS

    assert load()["deps"] == [["umqtt.simple", package_json.UMQTT_SIMPLE_PIN]]
    # a release the device tier's version matrix runs (tests/device/test_umqtt_versions.py)
    assert package_json.UMQTT_SIMPLE_PIN in UMQTT_VERSIONS


def test_package_version_is_the_projects_version() -> None:
    assert load()["version"] == package_json.project_version()


def test_no_host_code_or_board_files_are_in_the_package() -> None:
    srcs = [src for _, src in load()["urls"]]
    assert all(src.startswith("lib/") for src in srcs)
    assert not {"boot.py", "main.py", "config.json"} & {dest for dest, _ in load()["urls"]}


def test_the_check_mode_reports_a_stale_manifest(tmp_path: Path, monkeypatch) -> None:
    stale = tmp_path / "package.json"
    stale.write_text('{"urls": [], "deps": [], "version": "0"}\n', encoding="utf-8")
    monkeypatch.setattr(package_json, "PACKAGE_JSON", stale)
    assert package_json.main(["--check"]) == 1
    assert package_json.main([]) == 0
    assert package_json.main(["--check"]) == 0
    assert json.loads(stale.read_text(encoding="utf-8"))["urls"] == load()["urls"]
