"""On-device P-256 key pair and CSR (lib/p256.py, lib/csr.py) on the MicroPython unix port.

Measures, for the source build (.py) and the mpy-cross build (.mpy), and the
.mpy build in a 96 KB heap: the time of a key pair (generate_key +
public_key), of a CSR for it (csr.build), and of both together
(csr.generate), median and p90 over N runs (time.ticks_us inside MicroPython,
so process start-up is not counted), and the import time of the two modules
(the .py build compiles them on the device). Target: key pair + CSR <= 40 ms
here (median); an ESP32 is roughly 50x slower than this machine for this kind
of bignum code. The heap a CSR first boot needs is judged by section ports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..unixboard import compile_lib, micropython_binary
from .report import Target, at_most, percentile, print_targets, table

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "lib"
MODULES = ("runtime", "p256", "csr")
TARGET_MS = 40.0
ESP32_FACTOR = 50

TIMING_SCRIPT = """
import time, gc, json
t = time.ticks_us()
import p256, csr
imp = time.ticks_diff(time.ticks_us(), t)
key, pair, req = [], [], []
for i in range({runs}):
    t = time.ticks_us()
    d = p256.generate_key()
    pub = p256.public_key(d)
    t1 = time.ticks_us()
    csr.build(d, "bench-device-%d" % i, pub)
    t2 = time.ticks_us()
    pair.append(time.ticks_diff(t1, t))
    req.append(time.ticks_diff(t2, t1))
    t = time.ticks_us()
    csr.generate("bench-device-%d" % i)
    key.append(time.ticks_diff(time.ticks_us(), t))
print(json.dumps({{"import": imp, "pair": pair, "csr": req, "generate": key}}))
"""


def run_micropython(code: str, path: Path, heapsize: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(micropython_binary())] + (["-X", "heapsize={}".format(heapsize)] if heapsize else [])
    env = dict(os.environ, MICROPYPATH=str(path))
    return subprocess.run(cmd + ["-c", code], capture_output=True, text=True, timeout=300, env=env)


def timings(path: Path, runs: int, heapsize: int | None = None) -> dict[str, Any]:
    proc = run_micropython(TIMING_SCRIPT.format(runs=runs), path, heapsize)
    if proc.returncode != 0:
        raise RuntimeError("timing run failed:\n{}\n{}".format(proc.stdout[-2000:], proc.stderr[-2000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(us: list[int]) -> str:
    """Median / p90, in ms."""
    return "{:.1f} / {:.1f}".format(statistics.median(us) / 1000, percentile(us, 0.9) / 1000)


def run(args: argparse.Namespace) -> list[Target]:
    runs = 10 if getattr(args, "quick", False) else 30
    rows: list[list[object]] = []
    targets = []
    with tempfile.TemporaryDirectory(prefix="bench-keygen-") as tmp:
        mpy_dir = Path(tmp)
        compile_lib(mpy_dir, MODULES)
        builds = (("py", LIB, None), ("mpy", mpy_dir, None), ("mpy, 96 KB heap", mpy_dir, 96 * 1024))
        for label, path, heapsize in builds:
            t = timings(path, runs, heapsize)
            med = statistics.median(t["generate"])
            rows.append([label, "{:.1f}".format(t["import"] / 1000), spread(t["pair"]), spread(t["csr"]),
                         spread(t["generate"]), "~{:.1f} s".format(med * ESP32_FACTOR / 1e6)])
            targets.append(at_most("key pair + CSR median, " + label, round(med / 1000, 1), TARGET_MS, "ms"))
    print("### Key pair + CSR on the MicroPython unix port ({} runs each, ms)\n".format(runs))
    print(table(["build", "import", "key pair median / p90", "CSR median / p90", "key pair + CSR median / p90",
                 "ESP32 est. ({}x)".format(ESP32_FACTOR)], rows))
    return print_targets(targets)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args())
