"""Run every benchmark section that is present and print its tables.

Each section is a module in this package with ``run(args)`` that prints its
own tables and the targets it judges (tools/bench/report.py), and returns
those targets; the run ends with every judged target in one table.
Sections are independent so one can be run alone: ``python -m tools.bench core``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from .report import table

# Order of the report. A section listed here but not yet written is skipped.
SECTIONS = ("core", "keygen", "device", "sdk", "ports", "rotation", "fleet", "iotsim", "controlplane", "circuitpython")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", help="sections to run (default: all of %s)" % ", ".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a smoke run")
    args = parser.parse_args(argv)
    chosen = args.sections or list(SECTIONS)
    judged: list[list[str]] = []
    for name in chosen:
        try:
            module = importlib.import_module(__package__ + "." + name)
        except ModuleNotFoundError as exc:
            if exc.name == __package__ + "." + name and not args.sections:
                continue
            raise
        started = time.monotonic()
        print("\n## bench: {}\n".format(name))
        targets = module.run(args) or []
        judged += [[name, t.name, t.measured, t.goal, t.outcome] for t in targets]
        print("\n({} took {:.1f} s)".format(name, time.monotonic() - started))
    if judged:
        print("\n## bench: every target judged above\n")
        print(table(["section", "target", "measured", "goal", "met"], judged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
