"""tools/fetch_deps.py: every umqtt.simple release, from the vendor folder or a mip index, sha256-pinned.

The mip download runs against a local stand-in for micropython-lib's index
(same layout: package/py/<name>/<version>.json and file/<hash[:2]>/<hash>) on
loopback; the real index is not reachable from the test machine.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import fetch_deps

SIMPLE = b"# umqtt.simple stand-in\nclass MQTTClient:\n    pass\n"


def fake_release(data: bytes = SIMPLE, version: str = "9.9.9") -> fetch_deps.UmqttRelease:
    return fetch_deps.UmqttRelease(version, hashlib.sha256(data).hexdigest(), "-")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "index"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def publish(root: Path, version: str, data: bytes, short: str | None = None) -> None:
    short = short or hashlib.sha256(data).hexdigest()[:8]
    meta = root / "package" / "py" / "umqtt.simple" / f"{version}.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"hashes": [["umqtt/simple.py", short]], "version": version}))
    blob = root / "file" / short[:2] / short
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)


def test_every_release_firmware_freezes_is_pinned() -> None:
    assert fetch_deps.UMQTT_VERSIONS == ("1.3.4", "1.4.0", "1.5.0", "1.6.0", "1.7.1", "1.8.0")
    assert all(len(r.sha256) == 64 for r in fetch_deps.UMQTT_RELEASES)


def test_a_vendor_copy_is_used_in_place_after_its_sha256_is_checked(tmp_path: Path) -> None:
    rel = fake_release()
    vendor = tmp_path / "vendor"
    (vendor / rel.version / "umqtt").mkdir(parents=True)
    (vendor / rel.version / "umqtt" / "simple.py").write_bytes(SIMPLE)
    where = fetch_deps.fetch_release(rel, vendor, tmp_path / "deps", index="http://127.0.0.1:9/unused")
    assert "vendor, sha256 checked" in where
    assert not (tmp_path / "deps").exists()  # nothing copied


def test_a_vendor_copy_that_does_not_match_its_pin_is_refused(tmp_path: Path) -> None:
    rel = fake_release()
    vendor = tmp_path / "vendor"
    (vendor / rel.version / "umqtt").mkdir(parents=True)
    (vendor / rel.version / "umqtt" / "simple.py").write_bytes(SIMPLE + b"# changed\n")
    with pytest.raises(fetch_deps.FetchError, match="does not match the pinned"):
        fetch_deps.fetch_release(rel, vendor, tmp_path / "deps")


def test_without_the_vendor_folder_a_release_comes_from_the_mip_index(
    tmp_path: Path, index: tuple[str, Path]
) -> None:
    url, root = index
    rel = fake_release()
    publish(root, rel.version, SIMPLE)
    deps = tmp_path / "deps"
    where = fetch_deps.fetch_release(rel, tmp_path / "no-vendor", deps, index=url)
    assert where.endswith(f"(from {url})")
    assert (deps / "umqtt.simple" / rel.version / "umqtt" / "simple.py").read_bytes() == SIMPLE
    # a second run uses what is there
    assert "already fetched" in fetch_deps.fetch_release(rel, tmp_path / "no-vendor", deps, index=url)


def test_a_mip_file_that_does_not_match_the_pin_is_refused_and_not_written(
    tmp_path: Path, index: tuple[str, Path]
) -> None:
    url, root = index
    rel = fake_release()
    tampered = SIMPLE + b"evil = 1\n"
    publish(root, rel.version, tampered, short=rel.sha256[:8])  # right name, wrong bytes
    deps = tmp_path / "deps"
    with pytest.raises(fetch_deps.FetchError, match="does not match the pinned"):
        fetch_deps.fetch_release(rel, tmp_path / "no-vendor", deps, index=url)
    assert not (deps / "umqtt.simple" / rel.version).exists()


def test_a_mip_description_naming_another_file_is_refused(tmp_path: Path, index: tuple[str, Path]) -> None:
    url, root = index
    rel = fake_release()
    publish(root, rel.version, b"something else\n")
    with pytest.raises(fetch_deps.FetchError, match="not the pinned"):
        fetch_deps.fetch_release(rel, tmp_path / "no-vendor", tmp_path / "deps", index=url)


def test_an_unreachable_index_is_one_clear_error(tmp_path: Path, index: tuple[str, Path]) -> None:
    url, _ = index  # an empty index: 404 for every package
    with pytest.raises(fetch_deps.FetchError, match="cannot download .*/package/py/umqtt.simple/9.9.9.json"):
        fetch_deps.fetch_release(fake_release(), tmp_path / "no-vendor", tmp_path / "deps", index=url)


def test_umqtt_dir_names_the_folder_or_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(fetch_deps.FetchError, match="run `make deps`"):
        fetch_deps.umqtt_dir("1.4.0", vendor=tmp_path / "none", dest=tmp_path / "deps")
    with pytest.raises(fetch_deps.FetchError, match="not pinned"):
        fetch_deps.umqtt_dir("0.1")


def test_the_cli_reports_a_failure_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deps = tmp_path / "deps"
    deps.mkdir()
    present_sdist(deps)  # so only the vendor check runs
    bad_vendor = tmp_path / "vendor"
    (bad_vendor / "1.3.4" / "umqtt").mkdir(parents=True)
    (bad_vendor / "1.3.4" / "umqtt" / "simple.py").write_text("not umqtt\n")
    assert fetch_deps.main(["--dest", str(deps), "--vendor", str(bad_vendor)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fetch_deps: ") and "does not match the pinned" in err
    assert "Traceback" not in err


def present_sdist(deps: Path) -> None:
    """The PyPI sdist as fetched before: its stamp and its file."""
    (deps / fetch_deps.UMQTT_SIMPLE_PYPI.stamp_name).write_text("x\n")
    (deps / "umqtt").mkdir()
    (deps / "umqtt" / "simple.py").write_text("")


def test_quiet_prints_nothing_when_every_copy_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = fake_release()
    monkeypatch.setattr(fetch_deps, "UMQTT_RELEASES", (rel,))
    deps, vendor = tmp_path / "deps", tmp_path / "vendor"
    deps.mkdir()
    present_sdist(deps)
    (vendor / rel.version / "umqtt").mkdir(parents=True)
    (vendor / rel.version / "umqtt" / "simple.py").write_bytes(SIMPLE)
    assert fetch_deps.main(["--dest", str(deps), "--vendor", str(vendor), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert fetch_deps.main(["--dest", str(deps), "--vendor", str(vendor)]) == 0
    assert "vendor, sha256 checked" in capsys.readouterr().out  # without --quiet: where each copy is


def test_quiet_still_names_what_it_downloaded(
    tmp_path: Path, index: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, root = index
    rel = fake_release()
    publish(root, rel.version, SIMPLE)
    monkeypatch.setattr(fetch_deps, "UMQTT_RELEASES", (rel,))
    deps = tmp_path / "deps"
    deps.mkdir()
    present_sdist(deps)
    args = ["--dest", str(deps), "--vendor", str(tmp_path / "no-vendor"), "--mip-index", url, "--quiet"]
    assert fetch_deps.main(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"umqtt.simple {rel.version}: {deps / 'umqtt.simple' / rel.version} (from {url})"
    ]
    assert fetch_deps.main(args) == 0
    assert capsys.readouterr().out == ""  # the second time there is nothing to do
