"""The CircuitPython API check: what a CircuitPython board runs uses only what CircuitPython provides.

tools/cpcheck runs basedpyright against PyPI's circuitpython-stubs (plus
CircuitPython's own time/os/ssl/... in tools/cpcheck/stubs and the real Adafruit
bundle libraries) on circuitpython/ and lib/. These tests run it on the real
files (must be clean) and on snippets that misuse CircuitPython's API (must be
caught), so the check can neither rot into a no-op nor be fooled by the
MicroPython probes the shared code carries.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tools import cpcheck


def test_the_code_a_circuitpython_board_runs_uses_only_circuitpythons_api() -> None:
    files = cpcheck.board_files()
    names = {f.name for f in files}
    assert {"code.py", "boot.py", "mmqttclient.py", "cpboard.py", "fleetprov.py", "credstore.py"} <= names
    problems = cpcheck.check(files)
    assert not problems, (
        "code that runs on CircuitPython uses API CircuitPython does not provide (fix the call; if it "
        "is deliberate, add an entry with its reason to ALLOWED in tools/cpcheck):\n"
        + "\n".join(map(str, problems))
    )


# One misuse per snippet: (id, code, line of the misuse, what the report says).
MISUSES = [
    (
        "micropython-clock",
        "import time\ntime.ticks_ms()\n",
        2,
        '"ticks_ms" is not a known attribute of module "time"',
    ),
    ("hashlib-sha256", "import hashlib\nhashlib.sha256(b'x')\n", 2, '"sha256" is not a known attribute'),
    ("os-fsync", "import os\nos.fsync(3)\n", 2, '"fsync" is not a known attribute of module "os"'),
    (
        "ssl-protocol-constant",
        "import ssl\nssl.create_default_context()\nx = ssl.PROTOCOL_TLS_CLIENT\n",
        3,
        '"PROTOCOL_TLS_CLIENT" is not a known attribute of module "ssl"',
    ),
    (
        "ssl-cafile",
        "import ssl\nssl.create_default_context().load_verify_locations(cafile='ca.pem')\n",
        2,
        'No parameter named "cafile"',
    ),
    ("no-machine", "import machine\n", 1, 'Import "machine" could not be resolved'),
    ("wifi-radio", "import wifi\nwifi.radio.no_such_method()\n", 2, '"no_such_method"'),
    (
        "storage-keyword",
        "import storage\nstorage.remount('/', read_only=False)\n",
        2,
        'No parameter named "read_only"',
    ),
    (
        "cpu-attribute",
        "import microcontroller\nx = microcontroller.cpu.serial_number\n",
        2,
        '"serial_number"',
    ),
    (
        "minimqtt-keyword",
        "from adafruit_minimqtt.adafruit_minimqtt import MQTT\nMQTT(broker='h', socket_timout=1)\n",
        2,
        'No parameter named "socket_timout"',
    ),
    ("cpython-only-package", "import cryptography\n", 1, 'Import "cryptography" could not be resolved'),
]


@pytest.fixture(scope="module")
def misuse_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[cpcheck.Diagnostic]]:
    # One checker run for all snippets (each run costs a Node.js start-up).
    folder = tmp_path_factory.mktemp("misuse")
    files = []
    for ident, code, _, _ in MISUSES:
        path = folder / "snippet_{}.py".format(ident.replace("-", "_"))
        path.write_text(code, encoding="utf-8")
        files.append(path)
    good = folder / "snippet_correct.py"
    good.write_text(textwrap.dedent(CORRECT), encoding="utf-8")
    files.append(good)
    reports: dict[str, list[cpcheck.Diagnostic]] = {f.name: [] for f in files}
    for d in cpcheck.check(files, root=folder):
        reports[Path(d.path).name].append(d)
    return reports


@pytest.mark.parametrize(("ident", "code", "line", "expected"), MISUSES, ids=[m[0] for m in MISUSES])
def test_a_misuse_of_circuitpythons_api_is_reported_with_its_line(
    misuse_reports: dict[str, list[cpcheck.Diagnostic]], ident: str, code: str, line: int, expected: str
) -> None:
    problems = misuse_reports["snippet_{}.py".format(ident.replace("-", "_"))]
    assert len(problems) == 1, problems
    assert problems[0].line == line
    assert expected in problems[0].message


CORRECT = """
import binascii, hashlib, json, os, ssl, time
import microcontroller, rtc, socketpool, storage, supervisor, wifi
import adafruit_ntp
from adafruit_minimqtt.adafruit_minimqtt import MQTT
from micropython import const

try:
    from time import ticks_ms  # a probe: MicroPython has it, CircuitPython falls back
except ImportError:
    def ticks_ms():
        return time.monotonic_ns() // 1000000

try:
    import machine  # a probe
except ImportError:
    machine = None

_N = const(4)
uid = binascii.hexlify(microcontroller.cpu.uid).decode()
h = hashlib.new("sha256", b"x").digest()
ctx = ssl.create_default_context()
ctx.load_verify_locations(cadata="-----BEGIN CERTIFICATE-----")
ctx.load_cert_chain("certs/claim.pem", "certs/claim.key.pem")
pool = socketpool.SocketPool(wifi.radio)
wifi.radio.connect("ssid", "password", timeout=20)
rtc.RTC().datetime = adafruit_ntp.NTP(pool, server="pool.ntp.org", tz_offset=0).datetime
storage.remount("/", readonly=False)
ro = storage.getmount("/").readonly
endpoint = os.getenv("FLEETPROV_ENDPOINT")
os.sync()
mqtt = MQTT(broker="h", port=8883, client_id="c", is_ssl=True, socket_pool=pool, ssl_context=ctx,
            use_binary_mode=True, socket_timeout=1, recv_timeout=5, connect_retries=1)
mqtt.loop(1)
json.dumps({"a": ticks_ms()})
supervisor.reload()
"""


def test_correct_use_of_circuitpythons_api_and_probes_pass(
    misuse_reports: dict[str, list[cpcheck.Diagnostic]],
) -> None:
    assert misuse_reports["snippet_correct.py"] == []
