"""Run every benchmark section that is present and print its tables.

Each section is a module in this package with ``run(args) -> None`` that prints
its own table(s). Sections are independent so one can be run alone:
``python -m tools.bench core``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

# Order of the report. A section listed here but not yet written is skipped.
SECTIONS = ("core", "keygen", "device", "sdk", "ports", "fleet", "iotsim", "controlplane", "circuitpython")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", help="sections to run (default: all of %s)" % ", ".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a smoke run")
    args = parser.parse_args(argv)
    chosen = args.sections or list(SECTIONS)
    for name in chosen:
        try:
            module = importlib.import_module(__package__ + "." + name)
        except ModuleNotFoundError as exc:
            if exc.name == __package__ + "." + name and not args.sections:
                continue
            raise
        started = time.monotonic()
        print("\n## bench: {}\n".format(name))
        module.run(args)
        print("\n({} took {:.1f} s)".format(name, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
