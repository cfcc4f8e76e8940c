"""Boot a CircuitPython board folder on CPython: boot.py, then code.py.

There is no CircuitPython interpreter here. This runs the board's own files
(``circuitpython/boot.py``, ``code.py``, ``lib/``) unchanged on CPython with the
real Adafruit MiniMQTT, and stands in for the modules only a board has:

- ``wifi``: ``radio.connected`` / ``connect()`` / ``ipv4_address``
  (``--wifi-down``: not connected, and ``connect()`` raises ConnectionError);
- ``socketpool``: ``SocketPool(radio)`` is CPython's ``socket`` module, the
  socket pool MiniMQTT documents for CPython;
- ``microcontroller``: ``cpu.uid`` (``--uid``, hex);
- ``storage``: CIRCUITPY's write access. As on a board, code cannot write the
  drive unless boot.py called ``storage.remount("/", readonly=False)``; while it
  cannot, every write, rename, remove and mkdir under the folder raises
  ``OSError(EROFS)``, and ``getmount("/").readonly`` is True. ``remount`` works
  only while boot.py runs;
- ``board`` / ``digitalio``: one pin, ``BUTTON``, held low with ``--button``;
- ``rtc`` / ``adafruit_ntp``: NTP gives the host's UTC time to the RTC;
- ``supervisor``: ``reload()`` ends the run with exit status 3 (a board would
  run code.py again); ``time.sleep`` of a retry pause is not waited for;
- ``os.getenv``: reads the folder's ``settings.toml`` as CircuitPython does
  (double-quoted strings and whole numbers only; anything else is refused).

``python -m tools.cphost FOLDER [--button] [--wifi-down] [--uid HEX]``. Exit
status 0 when code.py returned, 3 on ``supervisor.reload()``.
"""

from __future__ import annotations

import argparse
import builtins
import errno
import os
import re
import runpy
import socket
import sys
import time
import tomllib
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RELOAD_EXIT = 3
_TOML_LINE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*("(?:[^"\\]|\\.)*"|-?[0-9]+)\s*(#.*)?$')


class SettingsError(Exception):
    """settings.toml uses something CircuitPython's reader does not accept."""


def read_settings(path: Path) -> dict[str, str | int]:
    """settings.toml as CircuitPython's os.getenv sees it: key = "string" or
    key = integer, comments and blank lines; anything else is an error here,
    because a board would not read it."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#") and not _TOML_LINE.match(line):
            raise SettingsError(f'{path}:{n}: CircuitPython reads only key = "string" or key = 123: {line!r}')
    values = tomllib.loads(text)
    return {k: v for k, v in values.items() if isinstance(v, (str, int))}


class _Mount:
    def __init__(self) -> None:
        self.readonly = True  # to code, until boot.py remounts


class Board:
    """The stand-in modules and the state they share for one boot."""

    def __init__(
        self, folder: Path, *, button: bool = False, wifi_up: bool = True, uid: str = "c0ffee01"
    ) -> None:
        self.folder = folder.resolve()
        self.settings = read_settings(self.folder / "settings.toml")
        self.mount = _Mount()
        self.in_boot_py = False
        self.button = button
        self.wifi_up = wifi_up
        self.uid = bytes.fromhex(uid)
        self.rtc_set: Any = None

    # -- the modules -------------------------------------------------------------------

    def modules(self) -> dict[str, types.ModuleType]:
        board = self
        mods: dict[str, types.ModuleType] = {}

        def module(name: str, **attrs: Any) -> types.ModuleType:
            m = types.ModuleType(name)
            m.__dict__.update(attrs)
            mods[name] = m
            return m

        class Radio:
            @property
            def connected(self) -> bool:
                return board.wifi_up

            @property
            def ipv4_address(self) -> str | None:
                return "127.0.0.1" if board.wifi_up else None

            def connect(self, ssid: str, password: str = "", *, timeout: float | None = None) -> None:
                if not board.wifi_up:
                    raise ConnectionError("No network with that ssid")

        module("wifi", radio=Radio())
        module("socketpool", SocketPool=lambda radio: socket)
        module("microcontroller", cpu=types.SimpleNamespace(uid=bytearray(self.uid)))

        def remount(
            path: str, readonly: bool = False, *, disable_concurrent_write_protection: bool = False
        ) -> None:
            if not board.in_boot_py:
                raise RuntimeError("Cannot remount '/' when visible via USB.")
            board.mount.readonly = readonly

        module("storage", remount=remount, getmount=lambda path: board.mount)
        pin = object()

        class DigitalInOut:
            def __init__(self, p: object) -> None:
                self.value = not (p is pin and board.button)  # pulled up; held = low

            def switch_to_input(self, pull: Any = None) -> None:
                pass

            def deinit(self) -> None:
                pass

        module("board", BUTTON=pin)
        module("digitalio", DigitalInOut=DigitalInOut, Pull=types.SimpleNamespace(UP=1, DOWN=2))

        class RTC:
            @property
            def datetime(self) -> time.struct_time:
                return time.gmtime()

            @datetime.setter
            def datetime(self, value: time.struct_time) -> None:
                board.rtc_set = value

        module("rtc", RTC=RTC)

        class NTP:
            def __init__(
                self, pool: Any, *, server: str = "0.adafruit.pool.ntp.org", tz_offset: int = 0
            ) -> None:
                pass

            @property
            def datetime(self) -> time.struct_time:
                return time.gmtime()

        module("adafruit_ntp", NTP=NTP)

        def reload() -> None:
            print("supervisor.reload(): code.py would run again", flush=True)
            raise SystemExit(RELOAD_EXIT)

        module("supervisor", reload=reload)
        return mods

    # -- the drive's write access ------------------------------------------------------------

    def _inside(self, path: Any) -> bool:
        try:
            p = Path(os.fspath(path))
        except TypeError:
            return False  # a file descriptor
        return (p if p.is_absolute() else Path.cwd() / p).resolve().is_relative_to(self.folder)

    def _guard(self, call: Any, writes: Any) -> Any:
        def guarded(*args: Any, **kw: Any) -> Any:
            if self.mount.readonly and writes(*args, **kw):
                raise OSError(errno.EROFS, "Read-only filesystem")
            return call(*args, **kw)

        return guarded

    def install(self) -> None:
        """Put the stand-ins, the settings and the drive's write rule in place (this process only)."""
        sys.dont_write_bytecode = True  # nothing but the board's own writes lands in the folder
        sys.modules.update(self.modules())
        for name in ("fleetprov", "cbor", "credstore", "firstboot", "mqttlink", "cpboard", "mmqttclient"):
            sys.modules.pop(name, None)  # the folder's copies, not anything imported before
        sys.path[:0] = [str(self.folder), str(self.folder / "lib")]
        settings = self.settings
        os.getenv = lambda key, default=None: settings.get(key, default)  # type: ignore[assignment]

        def opens_for_writing(file: Any, mode: str = "r", *a: Any, **kw: Any) -> bool:
            return any(c in mode for c in "wax+") and self._inside(file)

        builtins.open = self._guard(builtins.open, opens_for_writing)
        for name in ("remove", "unlink", "mkdir", "rmdir"):
            setattr(os, name, self._guard(getattr(os, name), lambda p, *a, **kw: self._inside(p)))
        os.rename = self._guard(os.rename, lambda a, b, *x, **kw: self._inside(a) or self._inside(b))
        stop_at = settings.get("FLEETPROV_STOP_AT")
        if stop_at:
            self._stop_at(stop_at)
        real_sleep = time.sleep
        # the retry pause before supervisor.reload() is not waited for; short sleeps are real
        time.sleep = lambda s: real_sleep(s) if s < 5 else None  # type: ignore[assignment]

    @staticmethod
    def _stop_at(step: str) -> None:
        # FLEETPROV_STOP_AT in settings.toml (a harness setting, not the
        # board's): print "fleetprov STOP <step>" at that progress step or
        # credential write boundary and wait on stdin for the power cut.
        import progress

        mark = progress.Progress.mark

        def stop_mark(self: Any, name: str) -> None:
            mark(self, name)
            if name == step:
                print("fleetprov STOP " + name, flush=True)
                sys.stdin.read(1)

        progress.Progress.mark = stop_mark  # type: ignore[method-assign]

    def boot(self) -> int:
        """Run boot.py (if any), then code.py, in the folder. Returns the exit status."""
        os.chdir(self.folder)
        self.install()
        print(
            "cphost: CPython {} standing in for CircuitPython; board-only modules are stand-ins".format(
                sys.version.split()[0]
            ),
            flush=True,
        )
        try:
            if (self.folder / "boot.py").is_file():
                self.in_boot_py = True
                try:
                    runpy.run_path("boot.py", run_name="__main__")
                finally:
                    self.in_boot_py = False
            runpy.run_path("code.py", run_name="__main__")
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0


def iotsim_link(sim: Any, client_id: str, cert: str | None = None, key: str | None = None, **kw: Any) -> Any:
    """The board's own MQTT connection (circuitpython/lib/mmqttclient.py, MiniMQTT) to a
    running iotsim, on CPython: with the claim certificate unless ``cert`` and ``key``
    name PEM files of another; ``kw`` go to mmqttclient.connect (its defaults are MiniMQTT's)."""
    for folder in (ROOT / "lib", ROOT / "circuitpython" / "lib"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import mmqttclient

    cert, key = (cert, key) if cert and key else (str(sim.claim_cert), str(sim.claim_key))
    # CPython's socket module is the pool, as MiniMQTT documents for CPython
    ca = sim.ca_path.read_text()
    return mmqttclient.connect(client_id, "127.0.0.1", sim.port, cert, key, ca, pool=socket, **kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cphost", description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, help="the board's CIRCUITPY folder (code.py, boot.py, lib/, certs/)"
    )
    parser.add_argument("--button", action="store_true", help="hold board.BUTTON low during the boot")
    parser.add_argument("--wifi-down", action="store_true", help="no Wi-Fi network")
    parser.add_argument("--uid", default="c0ffee01", help="microcontroller.cpu.uid, hex")
    args = parser.parse_args(argv)
    try:
        board = Board(args.folder, button=args.button, wifi_up=not args.wifi_down, uid=args.uid)
    except SettingsError as exc:
        print(f"cphost: {exc}", file=sys.stderr)
        return 2
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return board.boot()


if __name__ == "__main__":
    sys.exit(main())
