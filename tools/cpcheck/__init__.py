"""CircuitPython API check: the code a CircuitPython board runs may use only what CircuitPython provides.

The board files (circuitpython/code.py, boot.py, circuitpython/lib/*.py), the
shared device library they load (lib/*.py) and examples/*circuitpython*.py are
type-checked by basedpyright (tools/apicheck.py), as tools/esp32check does for the
ESP32, but against:

- PyPI `circuitpython-stubs` (pinned in requirements.txt): wifi, socketpool,
  microcontroller, storage, supervisor, rtc, board, digitalio, hashlib (only
  `new()`), micropython, ...; its `X-stubs` packages are laid out as `X`;
- `tools/cpcheck/stubs/`: CircuitPython's own versions of the core modules
  that circuitpython-stubs leaves to CPython's typeshed (time without
  ticks_ms/sleep_ms/gmtime, os without fsync, ssl without PROTOCOL_*/CERT_*
  constants and with PEM-only loading, gc, binascii, errno, select), written
  from CircuitPython's shared-bindings documentation;
- the builtins and the rest of the standard library of
  `micropython-stdlib-stubs`, as esp32check uses them;
- the Adafruit bundle libraries the board installs with circup, as the real
  sources from PyPI (adafruit_minimqtt, adafruit_connection_manager,
  adafruit_ticks, adafruit_ntp), so a MiniMQTT call with a wrong keyword fails.

Rules and filters are tools/apicheck.py's, as for esp32check, with one
difference: esp32check blanks `except ImportError` bodies because MicroPython never runs
them, but CircuitPython often does (timedsock's clock fallback is
CircuitPython's clock), so here every line is checked, and an import inside
such a `try` or its handler is a probe for an optional module (MicroPython's
`time.ticks_ms`, `machine`, `ussl`): a missing module or name there is not
reported.

`ALLOWED` lists the deliberate exceptions with their reasons.

Run it with `python -m tools.cpcheck [FILE...]`; tests/host/test_circuitpython_api.py
runs it in `make test`.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from .. import apicheck
from ..apicheck import Allowance, CheckError, Diagnostic

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = Path(__file__).resolve().parent / "stubs"
STUB_DIST = "circuitpython-stubs"
STDLIB_DIST = "micropython-stdlib-stubs"
# CircuitPython's own versions of these replace the standard library's (OVERLAY).
OWN_STDLIB = ("os", "ssl")
# Adafruit bundle libraries the board code imports: (distribution, top-level names).
BUNDLE_DISTS = (
    ("adafruit-circuitpython-minimqtt", ("adafruit_minimqtt",)),
    ("adafruit-circuitpython-connectionmanager", ("adafruit_connection_manager",)),
    ("adafruit-circuitpython-ticks", ("adafruit_ticks",)),
    ("adafruit-circuitpython-ntp", ("adafruit_ntp",)),
)

ALLOWED: tuple[Allowance, ...] = (
    (
        "lib/mqttlink.py",
        r'"(PROTOCOL_TLS_CLIENT|CERT_REQUIRED|SSLContext)" is not a known attribute of module "ssl"'
        r'|Expected 0 positional arguments|No parameter named "(cert_reqs|key|cert)"'
        r'|"verify_mode" .*"SSLContext"|"socket" is not a known attribute of module "umqtt'
        r'|Import "umqtt" could not be resolved|"gmtime" is not a known attribute of module "time"',
        "mqttlink.connect() is the umqtt.simple connection (MicroPython); on CircuitPython only "
        "its ConnectError and Link are used, and mmqttclient.connect() makes the connection",
    ),
    (
        "lib/linkfail.py",
        r'"gmtime" is not a known attribute of module "time"',
        "linkfail words a failed mqttlink.connect() (MicroPython); CircuitPython never loads it",
    ),
)


def board_files(root: Path = ROOT) -> list[Path]:
    """What a CircuitPython board runs: the board folder, the shared device library
and the CircuitPython examples."""
    board = root / "circuitpython"
    files = [p for p in (board / "code.py", board / "boot.py") if p.is_file()]
    files += sorted((board / "lib").glob("*.py")) + sorted((root / "lib").glob("*.py"))
    files += sorted((root / "examples").glob("*circuitpython*.py"))
    return files


def _replaced(rel: str) -> bool:
    """A standard-library stub CircuitPython has its own version of."""
    return any(rel == "stdlib/{}.pyi".format(n) or rel.startswith("stdlib/{}/".format(n)) for n in OWN_STDLIB)


def _support() -> list[tuple[Path, str]]:
    """(file, path in the scratch folder) of every stub and bundle library."""
    out = []
    for src, rel in apicheck.dist_files(STDLIB_DIST):
        if (rel.endswith(".pyi") or rel.endswith("/VERSIONS")) and not _replaced(rel):
            out.append((src, "typings/" + rel))
    for src, rel in apicheck.dist_files(STUB_DIST):
        top, _, rest = rel.partition("/")
        if top.endswith("-stubs") and rel.endswith(".pyi"):
            out.append((src, "typings/" + top[: -len("-stubs")] + "/" + rest))
    for src in sorted(OVERLAY.glob("*.pyi")):
        out.append((src, "typings/" + src.name))
    out += [(OVERLAY / (n + ".pyi"), "typings/stdlib/{}.pyi".format(n)) for n in OWN_STDLIB]
    for dist, tops in BUNDLE_DISTS:
        for src, rel in apicheck.dist_files(dist):
            if rel.split("/")[0].removesuffix(".py") in tops and rel.endswith(".py"):
                out.append((src, "bundle/" + rel))
    return out


def layout(files: list[Path], root: Path) -> apicheck.Layout:
    """As on CIRCUITPY: code.py and boot.py at the top, every module in lib/; every line checked."""
    sources = {}
    for f in files:
        rel = apicheck.repository_path(f, root)
        on_board = rel.name if rel.suffix == ".py" and rel.parent.name != "lib" else "lib/" + rel.name
        sources[on_board] = (str(rel), f.read_text(encoding="utf-8"))
    return apicheck.Layout(_support(), sources, ("src", "src/lib", "bundle"))


def guarded_import_lines(source: str) -> set[int]:
    """Lines of import statements inside a `try` whose handler catches
    ImportError, or inside that handler."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Try):
            continue
        handlers = [h for h in node.handlers if apicheck.catches_import_error(h)]
        if not handlers:
            continue
        for stmt in node.body + [s for h in handlers for s in h.body]:
            for sub in ast.walk(stmt):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def module_names(source: str) -> set[str]:
    """Names a module defines at its top level, in either branch of a try or if."""
    names: set[str] = set()

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for h in node.handlers:
                    walk(h.body)
                walk(node.orelse)
            elif isinstance(node, ast.If):
                walk(node.body)
                walk(node.orelse)

    walk(ast.parse(source).body)
    return names


def _reexported(d: Diagnostic, source: str | None, modules: dict[str, set[str]]) -> bool:
    # pyright calls a name "unknown" when its first definition in the module it
    # comes from is a probe that failed (timedsock's `from time import ticks_ms`),
    # although the fallback defines it: a name the module does define is fine.
    m = re.match(r'"(\w+)" is unknown import symbol', d.message)
    if not m or source is None:
        return False
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.lineno <= d.line <= (node.end_lineno or node.lineno):
            return m.group(1) in modules.get(node.module or "", set())
    return False


def _probe(d: Diagnostic, guarded: set[int]) -> bool:
    if d.line not in guarded:
        return False
    return d.rule == "reportMissingImports" or "is unknown import symbol" in d.message


def check(files: list[Path] | None = None, root: Path = ROOT) -> list[Diagnostic]:
    """Check `files` (default: board_files()) against CircuitPython's API; the
    diagnostics not covered by ALLOWED, in file and line order."""
    files = board_files(root) if files is None else files
    if not files:
        return []
    sources, errors = apicheck.run_checker(layout(files, root), "cpcheck-")
    guarded = {rel: guarded_import_lines(src) for rel, src in sources.items()}
    modules = {Path(rel).stem: module_names(src) for rel, src in sources.items()}
    out = []
    for d in errors:
        if (
            apicheck.allowed(d, ALLOWED)
            or _probe(d, guarded.get(d.path, set()))
            or _reexported(d, sources.get(d.path), modules)
        ):
            continue
        if apicheck.in_scope(d, sources.get(d.path)):
            out.append(d)
    return sorted(out, key=lambda d: (d.path, d.line, d.column))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cpcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to check (default: what a board runs)")
    args = parser.parse_args(argv)
    try:
        diagnostics = check(args.files or None)
    except CheckError as exc:
        print("cpcheck: {}".format(exc), file=sys.stderr)
        return 2
    for d in diagnostics:
        print(d)
    versions = ", ".join(
        "{} {}".format(n, metadata.version(n)) for n in (STUB_DIST, STDLIB_DIST, BUNDLE_DISTS[0][0])
    )
    if diagnostics:
        print("cpcheck: {} use(s) of API CircuitPython lacks ({})".format(len(diagnostics), versions))
        return 1
    print("cpcheck: clean ({})".format(versions))
    return 0
