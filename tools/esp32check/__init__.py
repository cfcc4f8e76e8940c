"""ESP32 API check: device code may use only what the ESP32 port of MicroPython provides.

The device files (lib/*.py, boot.py, main.py) are type-checked by basedpyright
(tools/apicheck.py) against the ESP32 firmware's stubs (PyPI
`micropython-esp32-stubs`, with MicroPython's reduced standard library from
`micropython-stdlib-stubs`) instead of CPython's typeshed. A module that does
not exist on the ESP32, a function or attribute a module or class lacks, a
keyword argument a function does not take or an argument of the wrong type is
reported with file and line.

What is checked, and what is not:

- Only API rules are on (`RULES`): missing imports, unknown attributes and
  bad calls. General strictness (Optional narrowing, argument types, return
  types, redeclarations) is the business of code review and the tests, and is
  off. Two filters keep type inference out of it: an unknown attribute on a
  builtin type (`dict`, `list`, ... — the stubs' builtins are CPython's
  typeshed, and a `list | dict` variable is not an API question) is not
  reported, and a bad call is reported only when the function is reached
  through an import (`ssl.wrap_socket(...)`, `ticks_ms(...)`), not through a
  local object (`self._table.get(...)`).
- The check is as complete as the stubs, with two gaps filled here: the
  stubs type `os` from CPython's typeshed, so `os` attributes are checked
  against `ESP32_OS` (the module's contents on ESP32 firmware 1.22, as the
  1.22 stubs list them: no `fsync`, no `path`, no `makedirs`); and `hashlib`
  objects declare `hexdigest()` though MicroPython does not implement it, so
  `NOT_IMPLEMENTED` names it.
- Error numbers by name: ESP32 firmware numbers errors as newlib does
  (ETIMEDOUT 116, ENOTCONN 128, ECONNRESET 104), Linux and the unix port
  otherwise (110, 107, 104), so a number in device code is right on one of
  them only. `errno_check` reports an `OSError(<int>)`, a comparison of
  `.errno` or `.args[0]` with an int (or a tuple of ints), and an errno name
  assigned an int (`ETIMEDOUT = 110`): use `errno.ETIMEDOUT`.
- Device code carries CPython fallbacks (`try: import micropython` /
  `except ImportError: ...`). The handler body of an `except` that catches
  ImportError only runs where the MicroPython module is absent, never on the
  ESP32, so it is blanked (line numbers kept) before checking. Everything else,
  including the `try` body, is checked.
- Only the stubs are visible: the check runs with an empty virtual
  environment, so a device module importing a CPython-only package (say
  `cryptography`) is reported, even though the host venv has it.
- `ALLOWED` lists deliberate uses the stubs cannot describe, each with its
  reason. Keep it short.

Which stubs: by default the 1.29 release of micropython-esp32-stubs (pinned in
requirements.txt). `--firmware 1.22` (… 1.29) checks against that release's
stubs, installed on first use into build/esp32-stubs/ (tools/esp32check/stubs.py,
which pins every release we claim); `make test` checks every one. The 1.22
stubs are generated from the board with less documentation merged in and
report working code (`SSLContext.verify_mode`, `umqtt.simple.MQTTClient`) as
missing: `stubs.STUB_GAPS` lists those per release, with why. `--stubs DIR`
checks against any folder made with `pip install --target DIR micropython-esp32-stubs==X`.

Run it with `python -m tools.esp32check [FILE...]`; tests/host/test_esp32_api.py
runs it in `make test`.
"""

from __future__ import annotations

import argparse
import ast
import errno
import sys
from importlib import metadata
from pathlib import Path

from .. import apicheck
from ..apicheck import Allowance, CheckError, Diagnostic
from ..pinned import PinError

ROOT = Path(__file__).resolve().parents[2]
STUB_DISTS = ("micropython-esp32-stubs", "micropython-stdlib-stubs")

# Deliberate uses the stubs cannot describe: a report matching an entry is not a problem.
ALLOWED: tuple[Allowance, ...] = (
    (
        "lib/mqttlink.py",
        r'"socket" is not a known attribute of module "umqtt\.simple"',
        "umqtt.simple imports socket at module level (1.3.4 to 1.7.0); mqttlink swaps it "
        "for a factory that sets a connect timeout and restores it afterwards",
    ),
)


# The `os` module of the ESP32 port (firmware 1.22; later releases keep these).
ESP32_OS = frozenset(
    "chdir dupterm dupterm_notify getcwd ilistdir listdir mkdir mount remove rename rmdir stat "
    "statvfs sync umount uname unlink urandom VfsFat VfsLfs2".split()
)
# Attributes the stubs declare but MicroPython does not implement.
NOT_IMPLEMENTED = {
    "hexdigest": "MicroPython's hashlib objects have no hexdigest(): "
    "use binascii.hexlify(h.digest()).decode()",
}


def device_files(root: Path = ROOT) -> list[Path]:
    """The files that run on the board: lib/*.py, boot.py and main.py (those present)."""
    files = sorted((root / "lib").glob("*.py"))
    files += [p for p in (root / "boot.py", root / "main.py") if p.is_file()]
    return files


def blank_import_fallbacks(source: str) -> str:
    """Replace the body of every `except ImportError` handler by `pass`,
    keeping every other line where it was (so reported line numbers hold)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and apicheck.catches_import_error(node) and node.body:
            first, last = node.body[0], node.body[-1]
            start, end = first.lineno, last.end_lineno or last.lineno
            if start == node.lineno:  # `except ImportError: x = 1` on one line
                lines[start - 1] = lines[start - 1][: first.col_offset] + "pass\n"
            else:
                lines[start - 1] = " " * first.col_offset + "pass\n"
            for i in range(start + 1, end + 1):
                lines[i - 1] = "\n"
    return "".join(lines)


def _is_stub(rel: str) -> bool:
    return rel.endswith(".pyi") or rel.endswith("/VERSIONS") or rel.endswith("py.typed")


def stub_files(stubs: Path | None = None) -> list[tuple[Path, str]]:
    """(file, path relative to the stub root) of every stub file: those under
    `stubs` (a `pip install --target DIR micropython-esp32-stubs==X` folder), or
    by default the stub packages installed in this interpreter's environment."""
    if stubs is not None:
        if not (stubs / "machine.pyi").is_file():
            raise CheckError("{} holds no machine.pyi: not an ESP32 stub folder".format(stubs))
        return [(f, str(f.relative_to(stubs))) for f in sorted(stubs.rglob("*")) if _is_stub(str(f))]
    return [(src, rel) for name in STUB_DISTS for src, rel in apicheck.dist_files(name) if _is_stub(rel)]


def _stub_versions() -> str:
    return ", ".join("{} {}".format(n, metadata.version(n)) for n in STUB_DISTS)


def layout(files: list[Path], root: Path, stubs: Path | None = None) -> apicheck.Layout:
    """The stubs, and the device files where the board has them, their fallbacks blanked."""
    sources = {}
    for f in files:
        rel = str(apicheck.repository_path(f, root))
        sources[rel] = (rel, blank_import_fallbacks(f.read_text(encoding="utf-8")))
    return apicheck.Layout([(src, "typings/" + rel) for src, rel in stub_files(stubs)], sources)


def inventory_check(path: str, source: str) -> list[Diagnostic]:
    """The gaps of the stubs (see the module docstring), on a source whose
    import fallbacks are already blanked."""
    tree = ast.parse(source)
    out = []

    def report(node: ast.AST, rule: str, message: str) -> None:
        out.append(Diagnostic(path, node.lineno, node.col_offset + 1, rule, message))  # type: ignore[attr-defined]

    def not_in_os(name: str) -> str:
        return '"{}" is not in the ESP32 port\'s os module'.format(name)

    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if a.name in ("os", "uos"))
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "uos"):
            for a in node.names:
                if a.name != "*" and a.name not in ESP32_OS:
                    report(node, "esp32Os", not_in_os(a.name))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in aliases and node.attr not in ESP32_OS:
            report(node, "esp32Os", not_in_os(node.attr))
        elif node.attr in NOT_IMPLEMENTED:
            report(node, "esp32NotImplemented", NOT_IMPLEMENTED[node.attr])
    return out


ERRNO_NAMES = frozenset(errno.errorcode.values())
OSERROR_NAMES = frozenset(("OSError", "IOError", "EnvironmentError"))


def _int_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _ints(node: ast.expr) -> bool:
    """An int literal, or a tuple/list/set of them (`in (104, 113)`)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_int_literal(e) for e in node.elts)
    return _int_literal(node)


def _holds_errno(node: ast.expr) -> bool:
    """`x.errno` or `x.args[0]`: where an OSError keeps its number."""
    if isinstance(node, ast.Attribute):
        return node.attr == "errno"
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "args"
        and isinstance(node.slice, ast.Constant)
        and node.slice.value == 0
    )


def errno_check(path: str, source: str) -> list[Diagnostic]:
    """Error numbers written as numbers (see the module docstring)."""
    out = []

    def report(node: ast.AST, message: str) -> None:
        out.append(Diagnostic(path, node.lineno, node.col_offset + 1, "esp32NumericErrno", message))  # type: ignore[attr-defined]

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in OSERROR_NAMES and node.args and _int_literal(node.args[0]):
                report(node, "{}({}): raise with a name from errno (errno.ETIMEDOUT is 116 on ESP32, "
                       "110 on Linux)".format(name, node.args[0].value))  # type: ignore[attr-defined]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_holds_errno(s) for s in sides) and any(_ints(s) for s in sides):
                report(node, "error number compared with a number: compare with names from errno "
                       "(ENOTCONN is 128 on ESP32, 107 on Linux)")
        elif isinstance(node, ast.Assign) and _int_literal(node.value):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in ERRNO_NAMES:
                    report(node, "{} = {}: import errno and use errno.{} (the number differs "
                           "between ESP32 and Linux)".format(target.id, node.value.value, target.id))  # type: ignore[attr-defined]
    return out


def check(
    files: list[Path] | None = None,
    root: Path = ROOT,
    stubs: Path | None = None,
    firmware: str | None = None,
    with_gaps: bool = True,
) -> list[Diagnostic]:
    """Check `files` (default: the device files) against the ESP32 stubs; the
    diagnostics not covered by ALLOWED, in file and line order.

    `firmware`: check against that release's stubs (installed on first use)
    and, unless `with_gaps` is false, leave out its known stub gaps."""
    excused: tuple[Allowance, ...] = ALLOWED
    if firmware is not None:
        from . import stubs as stub_releases

        try:
            if stubs is None:
                stubs = stub_releases.install(stub_releases.release(firmware))
        except PinError as exc:
            raise CheckError(str(exc)) from None
        if with_gaps:
            excused += stub_releases.STUB_GAPS.get(firmware, ())
    files = device_files(root) if files is None else files
    if not files:
        return []
    sources, errors = apicheck.run_checker(layout(files, root, stubs), "esp32check-")
    out = [d for d in errors if not apicheck.allowed(d, excused) and apicheck.in_scope(d, sources.get(d.path))]
    seen = {(d.path, d.line, d.message.split('"')[1] if '"' in d.message else "") for d in out}
    for rel, source in sources.items():
        for d in inventory_check(rel, source) + errno_check(rel, source):
            name = d.message.split('"')[1] if '"' in d.message else ""
            if not apicheck.allowed(d, excused) and (d.path, d.line, name) not in seen:
                out.append(d)
    return sorted(out, key=lambda d: (d.path, d.line, d.column))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.esp32check", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to check (default: the device files)")
    parser.add_argument(
        "--stubs", type=Path, help="a folder of stubs (pip install --target) instead of the venv's"
    )
    parser.add_argument(
        "--firmware",
        help="check against this firmware release's stubs (1.22 ... 1.29; installed on first use)",
    )
    args = parser.parse_args(argv)
    files = args.files or None
    try:
        diagnostics = check(files, stubs=args.stubs, firmware=args.firmware)
    except CheckError as exc:
        print("esp32check: {}".format(exc), file=sys.stderr)
        return 2
    for d in diagnostics:
        print(d)
    checked = len(device_files()) if files is None else len(files)
    against = str(args.stubs) if args.stubs else _stub_versions()
    if args.firmware:
        folder = args.stubs or "build/esp32-stubs/" + args.firmware
        against = "the firmware {} stubs ({})".format(args.firmware, folder)
    print(
        "esp32check: {} file(s) against {}: {} problem(s)".format(checked, against, len(diagnostics)),
        file=sys.stderr,
    )
    return 1 if diagnostics else 0
