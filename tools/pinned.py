"""What the tools fetch or build outside pip, pinned: the pins, a sha256 check, a stamp, one error.

tools/fetch_deps.py (umqtt.simple), tools/oldports.py (older MicroPython unix
ports) and tools/esp32check/stubs.py (ESP32 stubs per firmware release) take
their pins from tools/pins.toml and share the rest: a pin is looked up by
name, anything downloaded or found on disk is checked against its sha256
before use, and a finished install or build leaves a stamp recording what it
was made from, so a later run with the same stamp does nothing.
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
PINS = Path(__file__).resolve().parent / "pins.toml"
# Test data beside the project (README files there list the same pins); without it the
# same files come from upstream.
SHARED_VENDOR = ROOT.parent / "shared" / "vendor"

T = TypeVar("T")


class PinError(RuntimeError):
    """Something pinned is missing, differs from its pin, or could not be fetched or
    built; the message says what to do."""


def pins(section: str) -> dict[str, Any]:
    """One section of tools/pins.toml."""
    with PINS.open("rb") as f:
        return tomllib.load(f)[section]


def find(items: Iterable[T], name: str, key: Callable[[T], str], missing: str) -> T:
    """The item whose key is ``name``; else PinError: ``missing`` (with {} for the name)
    and the names known."""
    items = list(items)
    for item in items:
        if key(item) == name:
            return item
    raise PinError("{} (known: {})".format(missing.format(name), ", ".join(key(i) for i in items)))


def sha256_of(data: bytes | Path) -> str:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with data.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(what: str, digest: str, pinned: str, refusal: str = "refusing to use it") -> str:
    """``digest`` when it is the pinned one; else PinError naming both."""
    if digest != pinned:
        raise PinError("{}: sha256 {} does not match the pinned {}; {}".format(what, digest, pinned, refusal))
    return digest


def stamp_is(stamp: Path, text: str) -> bool:
    """Was the thing beside ``stamp`` made from what ``text`` records?"""
    return stamp.is_file() and stamp.read_text() == text


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def run(prog: str, steps: Callable[[], Iterator[str]]) -> int:
    """Print each line ``steps`` yields; a PinError ends it in one line on stderr and exit 1."""
    try:
        for line in steps():
            print(line, flush=True)
    except PinError as exc:
        print("{}: {}".format(prog, exc), file=sys.stderr)
        return 1
    return 0
