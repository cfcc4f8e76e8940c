"""micropython-esp32-stubs of every firmware release we claim, each in its own folder.

The stub releases conflict with each other (same module names), so each is
installed with ``pip install --no-deps --target build/esp32-stubs/<firmware>``
(pip's public command line), pinned (tools/pins.toml) together with the
micropython-stdlib-stubs release pip resolved for it. An install runs once: a stamp records the pins.
The newest release is also in the virtualenv (requirements.txt), which is what
``python -m tools.esp32check`` uses by default.

Some stub releases describe the firmware less completely than the firmware is
(they are generated from a board, with documentation merged in where it
exists): ``STUB_GAPS`` lists, per release, the reports that are known to be
wrong there, each with why. The device tier runs the code on a real
interpreter of that release (README, "Compatibility").

    python -m tools.esp32check.stubs            # install every release (cached)
    python -m tools.esp32check --firmware 1.22  # check against one release
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..pinned import PinError, find, pins, run, stamp_is

ROOT = Path(__file__).resolve().parents[2]
STUBS_DIR = ROOT / "build" / "esp32-stubs"


@dataclass(frozen=True)
class StubRelease:
    firmware: str  # the MicroPython release, as the README's compatibility table names it
    esp32: str  # micropython-esp32-stubs version
    stdlib: str  # micropython-stdlib-stubs version pip resolves for it

    @property
    def pins(self) -> tuple[str, str]:
        return (f"micropython-esp32-stubs=={self.esp32}", f"micropython-stdlib-stubs=={self.stdlib}")


# Every firmware release we claim (1.22 and later), oldest first.
STUB_RELEASES = tuple(StubRelease(firmware, **pin) for firmware, pin in pins("esp32-stubs").items())
FIRMWARE = tuple(r.firmware for r in STUB_RELEASES)

# firmware -> ((repository path, regex on the message, why the report is wrong), ...)
STUB_GAPS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "1.22": (
        (
            "lib/mqttlink.py",
            r'"verify_mode" for class "SSLContext"',
            "firmware 1.22's SSLContext has verify_mode (modssl_mbedtls.c; set and read back on the "
            "1.22 unix port); the 1.22 stubs omit it",
        ),
        (
            "lib/mqttlink.py",
            r'"MQTTClient" is not a known attribute of module "umqtt\.simple"',
            "the 1.22 stubs list umqtt.simple without members; its MQTTClient (umqtt.simple 1.3.4, "
            "frozen into 1.22) is what the device tier runs on the 1.22 port",
        ),
    ),
}

def release(firmware: str) -> StubRelease:
    return find(STUB_RELEASES, firmware, lambda r: r.firmware, "no stubs pinned for firmware {}")


def stub_dir(firmware: str) -> Path:
    return STUBS_DIR / firmware


def install(rel: StubRelease, force: bool = False) -> Path:
    """The folder holding ``rel``'s stubs, installed there first if its stamp is not current."""
    dest = stub_dir(rel.firmware)
    wanted = "\n".join(rel.pins) + "\n"
    if not force and stamp_is(dest / ".pins", wanted) and (dest / "machine.pyi").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    proc = subprocess.run(pip + ["--target", str(tmp), *rel.pins], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise PinError(
            "pip could not install {} into {}:\n{}".format(" ".join(rel.pins), tmp, proc.stderr[-2000:])
        )
    (tmp / ".pins").write_text(wanted)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.esp32check.stubs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("firmware", nargs="*", help="releases to install (default: all)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    def steps() -> Iterator[str]:
        for fw in args.firmware or FIRMWARE:
            path = install(release(fw), args.force)
            yield f"ESP32 stubs for firmware {fw}: {path.relative_to(ROOT)}"

    return run("esp32check.stubs", steps)


if __name__ == "__main__":
    sys.exit(main())
