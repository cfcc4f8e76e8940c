"""The core of the two API checks, tools/esp32check and tools/cpcheck: basedpyright against a board's stubs.

A check lays out a scratch folder (the stubs under typings/, any library
sources it resolves against, the checked files under src/ as the board holds
them, an empty virtual environment so the host's packages never resolve),
writes the checker's configuration with only the API rules on, runs
basedpyright (PyPI `basedpyright`, which ships its own Node.js runtime, so
nothing is fetched at check time) and reads its JSON report back as
Diagnostics with repository paths. Each check says which stubs, where each
file goes on its board, and which reports it filters.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CHECKER_TIMEOUT_S = 300.0

# basedpyright rules that describe "uses only what the board provides"; all
# others are off (typeCheckingMode "off").
RULES = (
    "reportMissingImports",
    "reportAttributeAccessIssue",
    "reportCallIssue",
    "reportUndefinedVariable",
)

BUILTIN_TYPES = frozenset(
    "object int float complex bool str bytes bytearray memoryview list tuple dict set frozenset "
    "range slice type None NoneType".split()
)

# (repository path, regex on the message, why it is fine): a report matching one is not a problem.
Allowance = tuple[str, str, str]


class CheckError(Exception):
    """The check could not run (checker or stubs missing); says how to fix it."""


@dataclass(frozen=True)
class Diagnostic:
    path: str  # repository-relative
    line: int  # 1-based
    column: int  # 1-based
    rule: str
    message: str

    def __str__(self) -> str:
        return "{}:{}:{}: {} ({})".format(self.path, self.line, self.column, self.message, self.rule)


@dataclass(frozen=True)
class Layout:
    """What one check run sees: ``support`` is (file, path in the scratch folder) of
    every stub and library (later entries replace earlier ones); ``sources`` maps a
    path under src/ to (repository path, text to check); ``extra_paths`` are the
    board's import path, relative to the scratch folder."""

    support: list[tuple[Path, str]]
    sources: dict[str, tuple[str, str]]
    extra_paths: tuple[str, ...] = ("src", "src/lib")


def dist_files(name: str) -> list[tuple[Path, str]]:
    """(file, path inside the distribution) of every file an installed distribution has."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise CheckError(
            "{} is not installed in {}: run `make test` (requirements.txt pins it)".format(name, sys.prefix)
        ) from None
    return [(Path(str(dist.locate_file(f))), str(f)) for f in dist.files or ()]


def repository_path(file: Path, root: Path) -> Path:
    """``file`` relative to the repository, or its bare name when it lies outside."""
    resolved = file.resolve()
    return resolved.relative_to(root.resolve()) if resolved.is_relative_to(root.resolve()) else Path(file.name)


def catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    t = handler.type
    if isinstance(t, ast.Name):
        return t.id in names
    if isinstance(t, ast.Tuple):
        return any(isinstance(e, ast.Name) and e.id in names for e in t.elts)
    return False


def allowed(d: Diagnostic, allowances: Iterable[Allowance]) -> bool:
    return any(path == d.path and re.search(pattern, d.message) for path, pattern, _ in allowances)


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _root_name(expr: ast.expr) -> str | None:
    while isinstance(expr, (ast.Attribute, ast.Call, ast.Subscript)):
        expr = expr.func if isinstance(expr, ast.Call) else expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _call_through_import(tree: ast.AST, imported: set[str], line: int, column: int) -> bool:
    """Is the innermost call around (line, column) a call of something imported?"""
    best: ast.Call | None = None
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or node.end_lineno is None or node.end_col_offset is None:
            continue
        start = (node.lineno, node.col_offset + 1)
        end = (node.end_lineno, node.end_col_offset + 1)
        if start <= (line, column) <= end:
            if best is None or (node.lineno, node.col_offset) >= (best.lineno, best.col_offset):
                best = node
    return best is not None and _root_name(best.func) in imported


def in_scope(d: Diagnostic, source: str | None) -> bool:
    """Does this report concern the board's API? An unknown attribute of a builtin
    type is type inference, not API (the stubs' builtins are CPython's typeshed),
    and a bad call counts only when the function is reached through an import."""
    if d.rule == "reportAttributeAccessIssue":
        m = re.search(r'for class "([A-Za-z_]\w*)', d.message)
        return not (m and m.group(1) in BUILTIN_TYPES)
    if d.rule == "reportCallIssue" and source is not None:
        tree = ast.parse(source)
        return _call_through_import(tree, _imported_names(tree), d.line, d.column)
    return True


def checker_command() -> list[str]:
    exe = Path(sys.executable).parent / "basedpyright"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("basedpyright")
    if found:
        return [found]
    raise CheckError("basedpyright is not installed: run `make test` (requirements.txt pins it)")


def _prepare(work: Path, layout: Layout) -> dict[str, str]:
    """Lay out ``work``; returns checked file path -> repository path."""
    for src, rel in layout.support:
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    # An empty environment: the host venv's packages must not resolve.
    (work / "venv" / "empty" / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    mapping = {}
    for rel, (repo_rel, text) in layout.sources.items():
        dest = work / "src" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
        mapping[str(dest)] = repo_rel
    config: dict[str, object] = {
        "include": ["src"],
        "typeshedPath": "typings",
        "stubPath": "typings",
        "venvPath": "venv",
        "venv": "empty",
        "extraPaths": list(layout.extra_paths),
        "pythonVersion": "3.11",
        "typeCheckingMode": "off",
        "enableTypeIgnoreComments": True,
        "reportMissingModuleSource": "none",
        "failOnWarnings": False,
    }
    for rule in RULES:
        config[rule] = "error"
    (work / "pyrightconfig.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return mapping


def run_checker(layout: Layout, prefix: str) -> tuple[dict[str, str], list[Diagnostic]]:
    """Run basedpyright on ``layout`` in a scratch folder; the checked sources by
    repository path, and every error it reports."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        mapping = _prepare(work, layout)
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.run(
            checker_command() + ["--outputjson", "-p", str(work / "pyrightconfig.json")],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=CHECKER_TIMEOUT_S,
        )
    sources = {repo_rel: text for repo_rel, text in layout.sources.values()}
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise CheckError(
            "basedpyright exited {} without a JSON report:\n{}\n{}".format(
                proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]
            )
        ) from None
    errors = []
    for diag in report.get("generalDiagnostics", []):
        if diag.get("severity") != "error":
            continue
        start = diag.get("range", {}).get("start", {})
        errors.append(
            Diagnostic(
                path=str(mapping.get(diag.get("file", ""), diag.get("file", "?"))),
                line=start.get("line", 0) + 1,
                column=start.get("character", 0) + 1,
                rule=diag.get("rule", "error"),
                message=diag.get("message", "").replace("\n", " / "),
            )
        )
    return sources, errors
