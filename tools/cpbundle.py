"""The CircuitPython file set: a CIRCUITPY folder (for iotsim runs) and the user's bundle zip.

One list of what goes on a CircuitPython board, used by the tests, by
``make demo BOARD=circuitpython`` and by ``make circuitpython-bundle``:

    code.py, boot.py                  circuitpython/
    settings.toml.example             circuitpython/ (the user's template)
    lib/*.py                          lib/ (fleetprov and the first-boot flow, as on MicroPython)
                                      + circuitpython/lib/ (mmqttclient, cpboard)
    requirements.txt                  Adafruit bundle libraries, for `circup install -r requirements.txt`

Sources, not .mpy: CircuitPython's .mpy format is its own and no CircuitPython
mpy-cross is installed here (docs/circuitpython.md says how to compile them).

``python -m tools.cpbundle bundle [--out build/fleetprov-circuitpython.zip]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "circuitpython"
LIB = ROOT / "lib"
BUNDLE = ROOT / "build" / "fleetprov-circuitpython.zip"
# From the Adafruit CircuitPython bundle (circup names); the versions tested on
# CPython are pinned in requirements.txt.
CIRCUP_LIBRARIES = ("adafruit_minimqtt", "adafruit_connection_manager", "adafruit_ticks", "adafruit_ntp")
CLAIM_FILES = {"ca.pem": "ca.pem", "claim.pem": "claim.pem", "claim.key.pem": "claim.key.pem"}


def board_files() -> list[tuple[Path, str]]:
    """(source, path on CIRCUITPY) of every file the bundle carries."""
    files = [(BOARD / n, n) for n in ("code.py", "boot.py", "settings.toml.example")]
    for src in sorted(LIB.glob("*.py")) + sorted((BOARD / "lib").glob("*.py")):
        files.append((src, "lib/" + src.name))
    return files


def circup_requirements() -> str:
    return "# circup install -r requirements.txt\n" + "".join(n + "\n" for n in CIRCUP_LIBRARIES)


def toml_value(v: str | int) -> str:
    """A value in the TOML subset CircuitPython reads (a JSON string is a TOML basic string)."""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise TypeError(f"settings.toml holds strings and whole numbers, not {v!r}")
    return str(v) if isinstance(v, int) else json.dumps(v)


def write_settings(path: Path, settings: dict[str, str | int]) -> None:
    lines = ["# written by tools/cpbundle.py"] + [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_folder(folder: Path, iotsim_state: Path, settings: dict[str, str | int]) -> Path:
    """Fill ``folder`` as a user fills CIRCUITPY: the bundle's files, certs/
    with the CA and claim PEM files from an iotsim state folder, and
    settings.toml pointing at that iotsim (``settings`` override or add keys)."""
    (folder / "lib").mkdir(parents=True, exist_ok=True)
    for src, rel in board_files():
        shutil.copyfile(src, folder / rel)
    certs = folder / "certs"
    certs.mkdir(exist_ok=True)
    for src, name in CLAIM_FILES.items():
        shutil.copyfile(iotsim_state / src, certs / name)
    device = json.loads((iotsim_state / "config.json").read_text())
    base: dict[str, str | int] = {
        "CIRCUITPY_WIFI_SSID": "iotsim-lan",
        "CIRCUITPY_WIFI_PASSWORD": "not-a-secret",
        "FLEETPROV_ENDPOINT": device["endpoint"],
        "FLEETPROV_PORT": device["port"],
        "FLEETPROV_TEMPLATE": device["template"],
        "FLEETPROV_PARAMETERS": json.dumps(device["parameters"]),
        "FLEETPROV_METHOD": device["method"],
        "FLEETPROV_FORMAT": device["format"],
    }
    for field in ("thing_name", "rotation_template"):  # iotsim's demo sets both
        if device.get(field):
            base["FLEETPROV_" + field.upper()] = device[field]
    base.update(settings)
    write_settings(folder / "settings.toml", base)
    return folder


def bundle(out: Path = BUNDLE) -> Path:
    """Write the zip: a ``fleetprov-circuitpython/`` folder laid out as CIRCUITPY."""
    out.parent.mkdir(parents=True, exist_ok=True)
    top = "fleetprov-circuitpython/"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for src, rel in board_files():
            z.write(src, top + rel)
        z.writestr(top + "requirements.txt", circup_requirements())
        z.writestr(
            top + "certs/README.txt",
            "Copy the CA (ca.pem), the claim certificate (claim.pem) and its key (claim.key.pem) here.\n"
            "See docs/circuitpython.md.\n",
        )
    return out


def size_line(zipped: Path) -> str:
    """What the bundle weighs: the zip, and the Python sources it puts on CIRCUITPY."""
    sources = sum(src.stat().st_size for src, rel in board_files() if rel.endswith(".py"))
    return "size: {:.1f} KB zipped; its .py files take {:.1f} KB on CIRCUITPY".format(
        zipped.stat().st_size / 1024, sources / 1024
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cpbundle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="write the CircuitPython bundle zip")
    b.add_argument("--out", type=Path, default=BUNDLE)
    args = parser.parse_args(argv)
    out = bundle(args.out)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
    print(f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}: {len(names)} files")
    for n in names:
        print("  " + n)
    print(size_line(out))
    print(
        "then: circup install -r requirements.txt (Adafruit bundle libraries: {})".format(
            ", ".join(CIRCUP_LIBRARIES)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
