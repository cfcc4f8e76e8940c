"""Fetch the device-side dependencies that pip cannot install.

PyPI holds ``micropython-umqtt.simple`` only as an upip-style sdist (no
``setup.py``), so ``pip install`` refuses it. We still want it from the same
index pip uses, so this script asks pip's own machinery — its option parser
(which reads pip's configuration files and ``PIP_*`` variables), its session
and its package finder — for the pinned release, checks the pinned sha256 and
unpacks the module into ``deps/`` (git-ignored), where the device tier and the
demo put it on MicroPython's path.

No registry host is written here: the index is whatever pip is configured to
use on this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PinnedSdist:
    project: str
    version: str
    sha256: str
    # member path inside the archive (after the top folder) -> path under deps/
    files: dict[str, str]


UMQTT_SIMPLE = PinnedSdist(
    project="micropython-umqtt.simple",
    version="1.3.4",
    sha256="b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
    files={"umqtt/simple.py": "umqtt/simple.py"},
)

PINS = (UMQTT_SIMPLE,)


class FetchError(RuntimeError):
    pass


def _pip_download(pin: PinnedSdist) -> bytes:
    """Download the pinned sdist through pip's configured index."""
    from pip._internal.commands import create_command  # pip's own machinery
    from pip._vendor.packaging.specifiers import SpecifierSet

    command = create_command("download")
    options, _ = command.parse_args(["--no-deps", "--no-binary", ":all:"])
    with command._build_session(options) as session:
        finder = command._build_package_finder(options=options, session=session)
        best = finder.find_best_candidate(pin.project, SpecifierSet("==" + pin.version))
        candidate = best.best_candidate
        if candidate is None:
            raise FetchError(
                "{}=={} is not on the configured package index "
                "(check `pip config list` and your network)".format(pin.project, pin.version)
            )
        response = session.get(candidate.link.url_without_fragment)
        response.raise_for_status()
        return response.content


def _unpack(pin: PinnedSdist, archive: bytes, dest: Path) -> list[Path]:
    digest = hashlib.sha256(archive).hexdigest()
    if digest != pin.sha256:
        raise FetchError(
            "{}=={}: sha256 {} does not match the pinned {}; refusing to use it".format(
                pin.project, pin.version, digest, pin.sha256
            )
        )
    written = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for inner, target in pin.files.items():
            member = members.get(inner)
            if member is None:
                raise FetchError("{}: archive has no {}".format(pin.project, inner))
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            out = dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(out.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(out)
            written.append(out)
    stamp = dest / ".{}-{}.sha256".format(pin.project, pin.version)
    stamp.write_text(digest + "\n")
    return written


def fetch(dest: Path, force: bool = False) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for pin in PINS:
        stamp = dest / ".{}-{}.sha256".format(pin.project, pin.version)
        if not force and stamp.exists() and all((dest / t).exists() for t in pin.files.values()):
            print("{} {} already in {}".format(pin.project, pin.version, dest))
            continue
        archive = _pip_download(pin)
        for path in _unpack(pin, archive, dest):
            print("{} {} -> {}".format(pin.project, pin.version, path.relative_to(ROOT)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=ROOT / "deps", help="where to unpack (default: deps/)")
    parser.add_argument("--force", action="store_true", help="download again even if present")
    args = parser.parse_args(argv)
    try:
        fetch(args.dest, args.force)
    except FetchError as exc:
        print("fetch_deps: " + str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
