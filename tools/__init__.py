"""fleetprov's host tools (CPython 3.11): iotsim, deploy, benchmarks, checks."""

import sys

# `python -m tools.X` (runpy sets argv[0] to "-m" while it imports the package):
# a missing third-party package ends in one line saying what to install.
if sys.argv[:1] == ["-m"]:
    from .entrypoints import install_missing_package_hook

    install_missing_package_hook()
