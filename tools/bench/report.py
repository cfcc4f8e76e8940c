"""How a bench section prints: tables, and the targets it judges, each met or not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One judged figure: what, the value measured, the goal (``<= 64 KB``), and whether it is met."""

    name: str
    measured: str
    goal: str
    met: bool

    @property
    def outcome(self) -> str:
        return "met" if self.met else "NOT MET"


def at_most(name: str, measured: float, limit: float, unit: str) -> Target:
    return Target(name, "{:g} {}".format(measured, unit), "<= {:g} {}".format(limit, unit), measured <= limit)


def heap_kb(kb: int | None) -> str:
    """A smallest heap as the tables print it (None: not even the largest size tried passed)."""
    return f"{kb} KB" if kb else "over 256 KB"


def heap_target(name: str, kb: int | None, limit: int) -> Target:
    """A smallest heap judged against its budget in KB."""
    return at_most(name, kb, limit, "KB") if kb else Target(name, heap_kb(kb), f"<= {limit} KB", False)


def percentile(values: list[float] | list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))])


def table(headers: list[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "OVER by {:g}".format(value - target)


def targets_table(targets: list[Target]) -> str:
    return table(
        ["target", "measured", "goal", "met"],
        [[t.name, t.measured, t.goal, t.outcome] for t in targets],
    )


def print_targets(targets: list[Target]) -> list[Target]:
    """The section's closing table; returns ``targets`` for the summary of the whole run."""
    print("\n#### Targets\n")
    print(targets_table(targets))
    return targets
