"""Build the MicroPython unix ports (and their mpy-cross) of older firmware releases.

PyPI has only the newest unix port. The device tier also runs on the oldest
firmware we claim (1.22) and on 1.24, built here from the unmodified source
archives in ``../shared/vendor/micropython/`` (sha256-pinned in tools/pins.toml)
into ``build/ports/<version>/`` (git-ignored). A build runs once: a stamp file
records the archive's sha256 and the build command, and a later run with the
same stamp only checks that both binaries are there.

Without ``../shared`` the same sources come from the upstream tags: point
``FLEETPROV_MICROPYTHON_SRC`` at a folder holding ``micropython-<version>/``
checkouts (README.md, "Older firmware ports"); they are built in place.

Needs gcc and make (tools/system_deps.sh). One more build, ``1.24.1-32bit``,
is 1.24.1 compiled for 32-bit x86 (``MICROPY_FORCE_32BIT=1``): its pointers,
object headers and GC blocks are an ESP32's size, so its heap figures are
the ones to hold against a board's (the 64-bit ports overstate them by about
a third), and like ESP32 firmware it has umqtt.simple frozen in
(tools/esp32like_manifest.py), so umqtt's code and names cost no heap there
either. It needs gcc's 32-bit support (Debian's gcc-multilib, x86_64 only);
without it that one build is skipped with a note, never a failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .pinned import SHARED_VENDOR, PinError, check_sha256, find, pins, run, sha256_of, stamp_is

ROOT = Path(__file__).resolve().parent.parent
VENDOR = SHARED_VENDOR / "micropython"
BUILD = ROOT / "build" / "ports"
SOURCE_ENV = "FLEETPROV_MICROPYTHON_SRC"
# The unix port's optional parts we do not use and that need more than gcc/make.
UNIX_MAKE_ARGS = ("MICROPY_PY_BTREE=0", "MICROPY_PY_FFI=0")


@dataclass(frozen=True)
class OldPort:
    version: str  # the build's name: a release, or a release with a "-32bit" suffix
    word_bits: int = 64
    freeze: str | None = None  # a manifest in this repository (FROZEN_MANIFEST), or the variant's own

    @property
    def release(self) -> str:
        return self.version.split("-")[0]

    @property
    def archive_sha256(self) -> str:
        return pins("micropython-source")[self.release]["sha256"]

    @property
    def tree_name(self) -> str:
        return f"micropython-{self.release}"

    @property
    def archive_name(self) -> str:
        return self.tree_name + "-src.tar.gz"

    @property
    def build_dir(self) -> str:
        # its own objects folder: a source tree (FLEETPROV_MICROPYTHON_SRC) builds both
        return "build-standard" if self.word_bits == 64 else "build-standard-32bit"

    @property
    def make_args(self) -> tuple[str, ...]:
        args = UNIX_MAKE_ARGS
        if self.word_bits == 32:
            args += ("MICROPY_FORCE_32BIT=1", "BUILD=" + self.build_dir)
        if self.freeze is not None:
            args += ("FROZEN_MANIFEST=" + str(ROOT / self.freeze),)
        return args


OLD_PORTS = (
    OldPort("1.22.2"),
    OldPort("1.24.1"),
    OldPort("1.24.1-32bit", word_bits=32, freeze="tools/esp32like_manifest.py"),
)

UPSTREAM_STEPS = """\
MicroPython {release}'s sources are needed to build its unix port and mpy-cross.
Neither {archive} (in ../shared/vendor/micropython/) nor ${env}/{tree} exists.
Get the same sources from the upstream tag:

    mkdir -p ~/mp-src && cd ~/mp-src
    git clone --branch v{release} --depth 1 https://github.com/micropython/micropython {tree}
    git -C {tree} submodule update --init --depth 1 lib/mbedtls lib/micropython-lib
    export {env}=~/mp-src

then run `make ports` again (or `make test OLD_PORTS=0` to skip the old ports)."""


def port_dir(version: str) -> Path:
    return BUILD / version


def micropython_path(version: str) -> Path:
    return port_dir(version) / "micropython"


def mpy_cross_path(version: str) -> Path:
    return port_dir(version) / "mpy-cross"


def find_port(version: str) -> OldPort:
    return find(OLD_PORTS, version, lambda p: p.version, "no such old port: {}")


def is_built(version: str) -> bool:
    return micropython_path(version).exists() and mpy_cross_path(version).exists()


def is_current(version: str) -> bool:
    """Built, and with this checkout's build settings (make arguments, frozen
    manifest): a port built before they changed needs `make ports` again.
    (The sources' own line is checked by build(), which hashes the archive.)"""
    port = find_port(version)
    stamp = port_dir(version) / "stamp"
    if not is_built(version) or not stamp.exists():
        return False
    return stamp.read_text().split("\n", 1)[-1] == _stamp_text("", port).split("\n", 1)[-1]


def _source(port: OldPort, vendor: Path) -> tuple[Path, str]:
    """The source tree to build in, and what the stamp records about it."""
    archive = vendor / port.archive_name
    if archive.exists():
        digest = check_sha256(str(archive), sha256_of(archive), port.archive_sha256, "refusing to build it")
        return archive, "archive " + digest
    src_root = os.environ.get(SOURCE_ENV)
    if src_root:
        tree = Path(src_root).expanduser() / port.tree_name
        if (tree / "ports" / "unix" / "Makefile").exists():
            return tree, "tree " + str(tree)
    raise PinError(
        UPSTREAM_STEPS.format(
            release=port.release, archive=port.archive_name, env=SOURCE_ENV, tree=port.tree_name
        )
    )


def _stamp_text(origin: str, port: OldPort) -> str:
    # The manifest by its place in the repository (its content is hashed below),
    # so a port stays current in another clone of the same commit.
    args = " ".join(port.make_args).replace(str(ROOT) + os.sep, "")
    text = "{}\nmake -C ports/unix {}\n".format(origin, args)
    if port.freeze is not None:  # a changed manifest is a new build
        text += "manifest {}\n".format(hashlib.sha256((ROOT / port.freeze).read_bytes()).hexdigest())
    return text


def can_build_32bit() -> bool:
    """gcc can link a 32-bit x86 program here (gcc-multilib)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return False
    proc = subprocess.run(
        [gcc, "-m32", "-x", "c", "-", "-o", os.devnull],
        input=b"int main(void) { return 0; }\n",
        capture_output=True,
        timeout=60,
    )
    return proc.returncode == 0


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        # The ceiling keeps MicroPython's version header from describing the
        # fleetprov checkout that build/ sits in (it runs `git describe`).
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(BUILD))
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise PinError(f"`{' '.join(cmd)}` failed in {cwd} (full log: {log}):\n{tail}")


def build(port: OldPort, vendor: Path = VENDOR, jobs: int = 2, force: bool = False) -> bool:
    """Build ``port`` into build/ports/<version>/ unless its stamp is current; True if it built."""
    origin, origin_text = _source(port, vendor)
    out = port_dir(port.version)
    wanted = _stamp_text(origin_text, port)
    if not force and is_built(port.version) and stamp_is(out / "stamp", wanted):
        return False
    for tool in ("gcc", "make"):
        if shutil.which(tool) is None:
            raise PinError(f"{tool} is not installed: run `make system-deps` (tools/system_deps.sh)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = out / "build.log"
    if origin.is_file():
        (out / "src").mkdir()
        _run(["tar", "-xzf", str(origin), "-C", str(out / "src")], out, log)
        tree = out / "src" / port.tree_name
    else:
        tree = origin
    make_jobs = f"-j{jobs}"
    _run(["make", "-C", "mpy-cross", make_jobs], tree, log)
    _run(["make", "-C", "ports/unix", make_jobs, *port.make_args], tree, log)
    shutil.copy2(tree / "ports" / "unix" / port.build_dir / "micropython", micropython_path(port.version))
    shutil.copy2(tree / "mpy-cross" / "build" / "mpy-cross", mpy_cross_path(port.version))
    if origin.is_file():
        shutil.rmtree(out / "src")  # about 100 MB of objects; the two binaries are all we use
    (out / "stamp").write_text(wanted)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", help="versions to build (default: all)")
    parser.add_argument("--vendor", type=Path, default=VENDOR, help="folder with the source archives")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="build again even if the stamp is current")
    args = parser.parse_args(argv)

    def steps() -> Iterator[str]:
        for port in [find_port(v) for v in args.versions] if args.versions else OLD_PORTS:
            where = port_dir(port.version).relative_to(ROOT)
            if port.word_bits == 32 and not can_build_32bit():
                yield (f"MicroPython {port.version} skipped: gcc cannot build 32-bit x86 here "
                       "(Debian: gcc-multilib, on x86_64); its heap figures are not measured")
            elif build(port, args.vendor, args.jobs, args.force):
                yield f"MicroPython {port.version} unix port and mpy-cross -> {where}"
            else:
                yield f"MicroPython {port.version} unix port already built in {where}"

    return run("oldports", steps)


if __name__ == "__main__":
    sys.exit(main())
