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
import pytest

from tests.host import api_misuse
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


# One misuse per snippet, marked where the report must point (tests/host/api_misuse.py).
MISUSES = api_misuse.parse(
    """
## micropython-clock
import time
time.ticks_ms()  # <- "ticks_ms" is not a known attribute of module "time"
## hashlib-sha256
import hashlib
hashlib.sha256(b'x')  # <- "sha256" is not a known attribute
## os-fsync
import os
os.fsync(3)  # <- "fsync" is not a known attribute of module "os"
## ssl-protocol-constant
import ssl
ssl.create_default_context()
x = ssl.PROTOCOL_TLS_CLIENT  # <- "PROTOCOL_TLS_CLIENT" is not a known attribute of module "ssl"
## ssl-cafile
import ssl
ssl.create_default_context().load_verify_locations(cafile='ca.pem')  # <- No parameter named "cafile"
## no-machine
import machine  # <- Import "machine" could not be resolved
## wifi-radio
import wifi
wifi.radio.no_such_method()  # <- "no_such_method"
## storage-keyword
import storage
storage.remount('/', read_only=False)  # <- No parameter named "read_only"
## cpu-attribute
import microcontroller
x = microcontroller.cpu.serial_number  # <- "serial_number"
## minimqtt-keyword
from adafruit_minimqtt.adafruit_minimqtt import MQTT
MQTT(broker='h', socket_timout=1)  # <- No parameter named "socket_timout"
## cpython-only-package
import cryptography  # <- Import "cryptography" could not be resolved
"""
)


@pytest.fixture(scope="module")
def misuse_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[cpcheck.Diagnostic]]:
    others = {"snippet_correct.py": textwrap.dedent(CORRECT)}
    return api_misuse.reports(cpcheck.check, MISUSES, tmp_path_factory.mktemp("misuse"), others)


@pytest.mark.parametrize("misuse", MISUSES, ids=lambda m: m.ident)
def test_a_misuse_of_circuitpythons_api_is_reported_with_its_line(
    misuse_reports: dict[str, list[cpcheck.Diagnostic]], misuse: api_misuse.Misuse
) -> None:
    api_misuse.assert_reported_on_its_line(misuse_reports, misuse)


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
