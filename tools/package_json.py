"""Write package.json, the manifest `mip` reads, from lib/*.py.

    python -m tools.package_json          # rewrite package.json
    python -m tools.package_json --check  # exit 1 if package.json is stale

`mpremote mip install github:<owner>/<repo>` (or `mip.install(...)` on a
board with network) fetches package.json from the repository root, installs
every `urls` entry into the board's lib folder and then each of `deps` from
micropython-lib. The device library is exactly lib/*.py; boot.py, main.py,
config.json and the certificates are the board's own (`make deploy` copies
them). `src` paths are relative, so mip resolves them against wherever
package.json was fetched from (a branch or tag: `github:<owner>/<repo>@v0.1.0`).

umqtt.simple is a dependency for ports that do not freeze it; on ESP32 firmware
the frozen copy comes first on sys.path and the installed one is never used.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_JSON = ROOT / "package.json"
# Pinned, not "latest": the newest release the device tier runs (tools/fetch_deps.UMQTT_VERSIONS,
# on the newest port and on firmware 1.22). mip then fetches exactly that file.
UMQTT_SIMPLE_PIN = "1.8.0"
DEPS = [["umqtt.simple", UMQTT_SIMPLE_PIN]]


def project_version(root: Path = ROOT) -> str:
    """The version in pyproject.toml's [project] table (one version for the project)."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    if m is None:
        raise SystemExit("pyproject.toml: no version in [project]")
    return m.group(1)


def manifest(root: Path = ROOT) -> dict[str, object]:
    """package.json's content: every lib/*.py into the board's lib folder, umqtt.simple as a dependency."""
    modules = sorted(p.name for p in (root / "lib").glob("*.py"))
    return {
        "urls": [[name, "lib/" + name] for name in modules],
        "deps": DEPS,
        "version": project_version(root),
    }


def render(data: dict[str, object]) -> str:
    """JSON with one [dest, src] pair per line, as micropython-lib writes them."""
    parts = []
    for key, value in data.items():
        if isinstance(value, list):
            rows = ",\n".join("    " + json.dumps(row) for row in value)
            parts.append("  {}: [\n{}\n  ]".format(json.dumps(key), rows))
        else:
            parts.append("  {}: {}".format(json.dumps(key), json.dumps(value)))
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.package_json", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="only report whether package.json is up to date")
    args = parser.parse_args(argv)
    want = render(manifest())
    have = PACKAGE_JSON.read_text(encoding="utf-8") if PACKAGE_JSON.exists() else ""
    if args.check:
        if have != want:
            print("package.json is stale: run `python -m tools.package_json`", file=sys.stderr)
            return 1
        return 0
    if have != want:
        PACKAGE_JSON.write_text(want, encoding="utf-8")
        print("wrote {}".format(PACKAGE_JSON))
    return 0


if __name__ == "__main__":
    sys.exit(main())
