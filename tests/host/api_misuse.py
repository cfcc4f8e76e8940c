"""Snippets that misuse a board's API, for the tests of the API checks (tools/esp32check, tools/cpcheck).

A table is one text of snippets, each headed by a `## <id>` line; the misused
line ends with `  # <- <what the report says>`, so the expected line is where
the mark stands. Each snippet is written to a file of its own (without the
mark) and the check runs once over all of them, since each run costs a
Node.js start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.apicheck import Diagnostic

MARK = "  # <- "


@dataclass(frozen=True)
class Misuse:
    ident: str
    code: str
    line: int  # 1-based, in the snippet
    expected: str  # part of the report's message

    @property
    def file_name(self) -> str:
        return "snippet_{}.py".format(self.ident.replace("-", "_"))


def parse(table: str) -> list[Misuse]:
    """The snippets of ``table``; a snippet must mark exactly one line."""
    misuses: list[Misuse] = []
    for block in table.split("\n## ")[1:]:
        ident, *lines = block.rstrip("\n").split("\n")
        marked = [(n, line) for n, line in enumerate(lines, 1) if MARK in line]
        if len(marked) != 1:
            raise ValueError("snippet {} marks {} lines, not one".format(ident, len(marked)))
        line, text = marked[0]
        code = "\n".join(ln.split(MARK)[0] for ln in lines) + "\n"
        misuses.append(Misuse(ident, code, line, text.split(MARK, 1)[1]))
    if len({m.ident for m in misuses}) != len(misuses):
        raise ValueError("two snippets have the same id")
    return misuses


def reports(
    check: Callable[..., list[Diagnostic]],
    misuses: list[Misuse],
    folder: Path,
    others: dict[str, str] | None = None,
) -> dict[str, list[Diagnostic]]:
    """Reports per file name, from one run of ``check`` over every snippet and ``others``
    (file name -> code)."""
    code = {m.file_name: m.code for m in misuses}
    code.update(others or {})
    files = []
    for name, text in code.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        files.append(path)
    found: dict[str, list[Diagnostic]] = {name: [] for name in code}
    for d in check(files, root=folder):
        found[Path(d.path).name].append(d)
    return found


def assert_reported_on_its_line(found: dict[str, list[Diagnostic]], misuse: Misuse) -> None:
    """Exactly one report for the snippet, on the marked line, saying what the mark says."""
    problems = found[misuse.file_name]
    assert len(problems) == 1, problems
    assert problems[0].line == misuse.line
    assert misuse.expected in problems[0].message
