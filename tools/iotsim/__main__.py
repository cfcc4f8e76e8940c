"""Entry point: ``python -m tools.iotsim up|down|status|things|certs|revoke``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
