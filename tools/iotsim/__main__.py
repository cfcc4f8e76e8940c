"""Entry point: ``python -m tools.iotsim up|down|status|things|certs|revoke``."""

import sys

from ..entrypoints import iotsim

if __name__ == "__main__":
    sys.exit(iotsim())
