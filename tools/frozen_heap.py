"""What freezing the device library into firmware saves in heap, measured on a real build.

    python -m tools.frozen_heap [--archive ../shared/vendor/micropython/micropython-1.24.1-src.tar.gz]

Builds MicroPython's unix port from a source archive with FROZEN_MANIFEST
pointing at a board manifest that includes the standard variant's manifest and
this repository's manifest.py (into build/frozen/, about a minute on two
cores; gcc and make only), then imports the library three ways on that one
binary and prints the heap each leaves allocated (gc.mem_alloc after
gc.collect):

    frozen   from the firmware (bytecode stays in flash/ROM)
    .mpy     compiled files on the filesystem (what `make deploy` copies)
    .py      sources on the filesystem (compiled on the board at import)

The unix port is a 64-bit build: objects (module dicts, function objects) are
twice their ESP32 size, bytecode the same, so the ESP32 saves somewhat less
than the table shows. Not part of `make bench`: it builds a firmware.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "vendor" / "micropython" / "micropython-1.24.1-src.tar.gz"
BUILD = ROOT / "build" / "frozen"

# What each first-boot configuration imports (lib/firstboot.py pulls in the rest).
CASES = (
    ("fleetprov alone", "fleetprov"),
    ("first boot, keys + JSON", "firstboot"),
    ("first boot, keys + CBOR", "firstboot,cbor"),
    ("first boot, CSR on the device + JSON", "firstboot,csr"),
    ("the whole library", "firstboot,cbor,csr,p256,der"),
)

HEAP_SCRIPT = """
import gc, sys
gc.collect()
before = gc.mem_alloc()
for m in sys.argv[1].split(","):
    __import__(m)
gc.collect()
print(gc.mem_alloc() - before)
"""


def build(archive: Path) -> tuple[Path, Path]:
    """The unix port with the library frozen in, and its mpy-cross (built once, then reused)."""
    name = archive.name.removesuffix("-src.tar.gz")
    tree = BUILD / name
    if not tree.is_dir():
        BUILD.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(BUILD, filter="data")
    board_manifest = BUILD / "board_manifest.py"
    board_manifest.write_text(
        'include("$(PORT_DIR)/variants/standard/manifest.py")\ninclude({!r})\n'.format(
            str(ROOT / "manifest.py")
        )
    )
    jobs = "-j{}".format(os.cpu_count() or 1)
    subprocess.run(["make", "-s", "-C", "mpy-cross", jobs], cwd=tree, check=True)
    subprocess.run(
        ["make", "-s", "-C", "ports/unix", jobs, "MICROPY_PY_BTREE=0", "MICROPY_PY_FFI=0"]
        + ["FROZEN_MANIFEST={}".format(board_manifest)],
        cwd=tree,
        check=True,
    )
    return (
        tree / "ports" / "unix" / "build-standard" / "micropython",
        tree / "mpy-cross" / "build" / "mpy-cross",
    )


def heap_after_import(micropython: Path, path: str, modules: str) -> int:
    proc = subprocess.run(
        [str(micropython), "-c", HEAP_SCRIPT, modules],
        env=dict(os.environ, MICROPYPATH=path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(proc.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.frozen_heap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="MicroPython source archive")
    args = parser.parse_args(argv)
    if not args.archive.is_file():
        print(
            "frozen_heap: {} not found (see its README for the upstream tag)".format(args.archive),
            file=sys.stderr,
        )
        return 1
    micropython, mpy_cross = build(args.archive)
    mpy_dir = BUILD / "mpy"
    mpy_dir.mkdir(exist_ok=True)
    for src in sorted((ROOT / "lib").glob("*.py")):
        subprocess.run(
            [str(mpy_cross), "-s", src.name, "-o", str(mpy_dir / (src.stem + ".mpy")), str(src)], check=True
        )
    # umqtt.simple stays frozen in every column: only the library's own cost differs.
    paths = {
        "frozen": ".frozen",
        ".mpy": "{}:.frozen".format(mpy_dir),
        ".py": "{}:.frozen".format(ROOT / "lib"),
    }
    print("heap left allocated by the imports, bytes ({}, 64-bit unix port)".format(args.archive.name))
    print("| imports | frozen | .mpy | .py | saved vs .mpy |")
    print("|---|---:|---:|---:|---:|")
    for label, modules in CASES:
        heap = {kind: heap_after_import(micropython, path, modules) for kind, path in paths.items()}
        print(
            "| {} (`{}`) | {} | {} | {} | {} |".format(
                label, modules, heap["frozen"], heap[".mpy"], heap[".py"], heap[".mpy"] - heap["frozen"]
            )
        )
    print()
    print_first_boot(micropython, mpy_dir)
    return 0


def print_first_boot(micropython: Path, mpy_dir: Path) -> None:
    """A whole first boot (main.py: keys + JSON, TLS) against iotsim, the library frozen and
    as .mpy files: the peak heap main.py reports."""
    import re
    import tempfile

    from .iotsim.broker import free_port
    from .iotsim.stack import IotSim
    from .unixboard import make_flash

    print("first boot against iotsim, heap peak main.py reports (sampled at each step), bytes")
    print("| library | heap peak |")
    print("|---|---:|")
    with tempfile.TemporaryDirectory() as tmp, IotSim(Path(tmp) / "iotsim", free_port()) as sim:
        for kind, path in (("frozen", ".frozen"), (".mpy", "{}:.frozen".format(mpy_dir))):
            flash = make_flash(Path(tmp) / kind, sim.state, modules=())  # no lib/ copy on the flash
            proc = subprocess.run(
                [str(micropython), "-c", "import boot, main"],
                env=dict(os.environ, MICROPYPATH=path),
                cwd=flash,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            peak = re.search(r"done\s+heap peak (\d+) bytes", proc.stdout)
            if peak is None:
                raise SystemExit("frozen_heap: the first boot did not finish:\n" + proc.stdout[-2000:])
            print("| {} | {} |".format(kind, peak.group(1)))


if __name__ == "__main__":
    sys.exit(main())
