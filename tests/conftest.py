"""Shared test plumbing: paths, and a runner for the real MicroPython unix port."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Timings are measured in benchmarks, never asserted: no per-example deadline
# (a loaded CI machine would turn it into flakiness).
settings.register_profile("fleetprov", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fleetprov")

# iotsim's fixtures (iotsim, iotsim_factory): tools/iotsim/testing.py.
pytest_plugins = ["tools.iotsim.testing"]

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
FAKES = ROOT / "tests" / "fakes"
CASES = ROOT / "tests" / "cases"

# Device code is imported by host tests exactly as it is deployed: from lib/.
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Fakes and the case table shared by the CPython and MicroPython tiers
# (device-compatible code); the table's asserts explain themselves under pytest.
for shared in (FAKES, CASES):
    if str(shared) not in sys.path:
        sys.path.append(str(shared))
pytest.register_assert_rewrite("fleetprov_cases")

from tools.unixboard import Target, current_target  # noqa: E402  (needs ROOT on sys.path first)


@dataclass
class MicroPython:
    """Runs code on the real MicroPython unix port, with lib/ and umqtt.simple on its path.

    Port and umqtt.simple are the current target's (tools/unixboard.py): the
    default one, or the one tests/device/conftest.py selects for a test."""

    @property
    def target(self) -> Target:
        return current_target()

    @property
    def binary(self) -> Path:
        return self.target.micropython()

    def path(self, extra: tuple[Path, ...] = ()) -> str:
        # .frozen first, as on a board; then the device library, umqtt (and the
        # ussl alias where it needs one), and the test-only fake MQTT client.
        parts = [".frozen", *map(str, extra), str(LIB), *self.target.umqtt_path(), str(FAKES)]
        return os.pathsep.join(parts)

    def run(
        self,
        code: str | None = None,
        *,
        script: Path | None = None,
        args: tuple[str, ...] = (),
        extra_path: tuple[Path, ...] = (),
        heapsize: int | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary)]
        if heapsize is not None:
            cmd += ["-X", "heapsize={}".format(heapsize)]
        if code is not None:
            cmd += ["-c", code]
        elif script is not None:
            cmd += [str(script)]
        cmd += list(args)
        full_env = dict(os.environ, MICROPYPATH=self.path(extra_path))
        if env:
            full_env.update(env)
        proc = subprocess.run(
            cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                "micropython exited {}\n--- stdout\n{}\n--- stderr\n{}".format(
                    proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]
                )
            )
        return proc


@pytest.fixture(scope="session")
def micropython() -> MicroPython:
    return MicroPython()
