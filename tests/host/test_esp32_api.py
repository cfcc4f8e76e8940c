"""The ESP32 API check: device code uses only what the ESP32 port provides.

tools/esp32check runs basedpyright against PyPI's micropython-esp32-stubs on
lib/*.py, boot.py and main.py. These tests run it on the real device files
(must be clean) and on snippets that misuse the port's API (must be caught),
so the check can neither rot into a no-op nor be fooled by the CPython
fallbacks device code carries.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from tests.host import api_misuse
from tools import esp32check
from tools.esp32check import stubs as stub_releases


def check_snippet(tmp_path: Path, code: str, name: str = "snippet.py") -> list[esp32check.Diagnostic]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return esp32check.check([path], root=tmp_path)


def test_device_code_uses_only_the_esp32_ports_api() -> None:
    files = esp32check.device_files()
    assert any(f.name == "fleetprov.py" for f in files), files
    problems = esp32check.check(files)
    assert not problems, (
        "device code uses API the ESP32 port does not provide (fix the call; if it is deliberate and "
        "the stubs are wrong, add an entry with its reason to ALLOWED in tools/esp32check):\n"
        + "\n".join(map(str, problems))
    )


# --- every firmware release we claim ---------------------------------------------------

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


def test_the_default_stubs_are_the_newest_pinned_release() -> None:
    pins = dict(
        line.split("==") for line in REQUIREMENTS.read_text().splitlines() if line.startswith("micropython-")
    )
    newest = stub_releases.STUB_RELEASES[-1]
    assert pins["micropython-esp32-stubs"] == newest.esp32
    assert pins["micropython-stdlib-stubs"] == newest.stdlib
    assert [r.firmware for r in stub_releases.STUB_RELEASES] == ["1.{}".format(n) for n in range(22, 30)]


# 1.29 is the virtualenv's release: the first test of this file checks against it.
@pytest.mark.parametrize("firmware", stub_releases.FIRMWARE[:-1], ids=lambda f: "esp32-stubs-" + f)
def test_device_code_uses_only_the_api_of_each_firmware_release(firmware: str) -> None:
    problems = esp32check.check(firmware=firmware, with_gaps=False)
    gaps = stub_releases.STUB_GAPS.get(firmware, ())

    def explained(p: esp32check.Diagnostic) -> bool:
        return any(path == p.path and re.search(pattern, p.message) for path, pattern, _ in gaps)

    unexplained = [p for p in problems if not explained(p)]
    assert not unexplained, "device code uses API firmware {}'s stubs lack:\n{}".format(
        firmware, "\n".join(map(str, unexplained))
    )
    # a gap nothing needs any more is removed, not kept as a blanket excuse
    for path, pattern, _ in gaps:
        assert any(p.path == path and re.search(pattern, p.message) for p in problems), (firmware, pattern)


# One misuse per snippet, marked where the report must point (tests/host/api_misuse.py).
MISUSES = api_misuse.parse(
    """
## unknown-method
import machine
machine.Pin(1).nonexistent()  # <- attribute "nonexistent" for class "Pin"
## unknown-keyword
import ssl, socket
ssl.wrap_socket(socket.socket(), bogus=1)  # <- No parameter named "bogus"
## cpython-only-keyword
import json
json.dumps({}, sort_keys=True)  # <- No overloads for "dumps"
## cpython-only-function
import time
time.monotonic()  # <- "monotonic" is not a known attribute of module "time"
## too-many-arguments
from time import ticks_ms
ticks_ms(5)  # <- Expected 0 positional arguments
## cpython-only-package
import cryptography  # <- Import "cryptography" could not be resolved
## unknown-wlan-method
import network
network.WLAN(network.STA_IF).no_such_method()  # <- "no_such_method"
## os-fsync
import os
f = open('x')
os.fsync(f.fileno())  # <- "fsync" is not in the ESP32 port's os module
## os-makedirs
import os
os.makedirs('a/b')  # <- "makedirs" is not in the ESP32 port's os module
## from-os-import
from os import fsync  # <- "fsync" is not in the ESP32 port's os module
## hexdigest
import hashlib
h = hashlib.sha256(b'x').hexdigest()  # <- no hexdigest()
## numeric-oserror
def f():
    raise OSError(110)  # <- OSError(110): raise with a name from errno
## numeric-args-compare
try:
    pass
except OSError as e:
    ok = e.args[0] == 0x80  # <- error number compared with a number
## numeric-errno-in
try:
    pass
except OSError as e:
    ok = e.errno in (104, 113)  # <- error number compared with a number
## numeric-errno-name
ETIMEDOUT = 110  # <- ETIMEDOUT = 110: import errno
"""
)
# (error numbers differ between ESP32 (newlib) and Linux: only names from errno)


@pytest.fixture(scope="module")
def misuse_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[esp32check.Diagnostic]]:
    return api_misuse.reports(esp32check.check, MISUSES, tmp_path_factory.mktemp("misuse"))


@pytest.mark.parametrize("misuse", MISUSES, ids=lambda m: m.ident)
def test_a_misuse_of_the_esp32_api_is_reported_with_its_line(
    misuse_reports: dict[str, list[esp32check.Diagnostic]], misuse: api_misuse.Misuse
) -> None:
    api_misuse.assert_reported_on_its_line(misuse_reports, misuse)


def test_correct_use_of_the_esp32_api_passes(tmp_path: Path) -> None:
    problems = check_snippet(
        tmp_path,
        """
        import binascii, hashlib, json, machine, network, ntptime, os, socket, ssl, time
        from micropython import const
        from umqtt.simple import MQTTClient
        _N = const(4)
        uid = binascii.hexlify(machine.unique_id()).decode()
        t = time.ticks_add(time.ticks_ms(), 1000)
        left = time.ticks_diff(t, time.ticks_ms())
        h = binascii.hexlify(hashlib.sha256(b"x").digest())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=b"...")
        ctx.load_cert_chain(b"cert", b"key")
        s = socket.socket()
        s.settimeout(5)
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        ntptime.settime()
        os.rename("a.tmp", "a")
        c = MQTTClient("id", "host", port=8883, keepalive=60, ssl=ctx)
        c.set_callback(lambda topic, msg: None)
        json.dumps({"a": 1})
        """,
    )
    assert problems == []


def test_os_probed_by_name_is_fine_and_the_ports_os_functions_pass(tmp_path: Path) -> None:
    problems = check_snippet(
        tmp_path,
        """
        import os
        fs = getattr(os, "fsync", None)
        if hasattr(os, "sync"):
            os.sync()
        os.rename("a.tmp", "a")
        os.remove("b")
        print(os.listdir(), os.stat("a")[6], os.statvfs("/"), os.urandom(4), os.getcwd())
        """,
    )
    assert problems == []


def test_a_cpython_fallback_under_except_import_error_is_not_checked(tmp_path: Path) -> None:
    problems = check_snippet(
        tmp_path,
        """
        try:
            from time import ticks_ms
        except ImportError:  # CPython
            import time as _time

            def ticks_ms():
                return int(_time.monotonic() * 1000)
        """,
    )
    assert problems == []


def test_the_same_misuse_outside_an_import_fallback_is_still_reported(tmp_path: Path) -> None:
    problems = check_snippet(
        tmp_path,
        """
        import time
        try:
            t = time.ticks_ms()
        except OSError:
            t = int(time.monotonic() * 1000)
        """,
    )
    assert [(p.line, "monotonic" in p.message) for p in problems] == [(6, True)]


def test_a_misuse_inside_the_try_body_of_an_import_guard_is_reported(tmp_path: Path) -> None:
    problems = check_snippet(
        tmp_path,
        """
        try:
            import machine
            PIN = machine.Pin(2).nonexistent()
        except ImportError:
            PIN = None
        """,
    )
    assert [p.line for p in problems] == [4]


def test_blanking_a_fallback_keeps_every_other_line_in_place() -> None:
    src = (
        "import a\ntry:\n    import b\nexcept (ValueError, ImportError):\n"
        "    x = (1,\n         2)\n    y = 3\nz = 4\n"
    )
    out = esp32check.blank_import_fallbacks(src)
    assert out.splitlines() == [
        "import a",
        "try:",
        "    import b",
        "except (ValueError, ImportError):",
        "    pass",
        "",
        "",
        "z = 4",
    ]
    compile(out, "blanked", "exec")


def test_a_one_line_fallback_is_blanked_too() -> None:
    out = esp32check.blank_import_fallbacks("try:\n    import b\nexcept ImportError: b = None\nc = 1\n")
    assert out.splitlines() == ["try:", "    import b", "except ImportError: pass", "c = 1"]
    compile(out, "blanked", "exec")


def test_a_handler_for_other_errors_is_left_alone() -> None:
    src = "try:\n    f()\nexcept OSError:\n    g()\n"
    assert esp32check.blank_import_fallbacks(src) == src


def test_a_folder_that_holds_no_esp32_stubs_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "time.pyi").write_text("def sleep(s: float) -> None: ...\n")
    with pytest.raises(esp32check.CheckError, match="holds no machine.pyi"):
        esp32check.stub_files(tmp_path)


def test_the_cli_exits_1_and_prints_each_problem_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\ntime.monotonic()\n", encoding="utf-8")
    assert esp32check.main([str(bad)]) == 1
    out = capsys.readouterr()
    assert '2:6: "monotonic" is not a known attribute of module "time"' in out.out
    assert "1 problem(s)" in out.err


def test_error_numbers_by_name_and_non_errno_numbers_pass_the_errno_rule() -> None:
    source = textwrap.dedent(
        """
        import errno
        try:
            raise OSError(errno.ETIMEDOUT)
        except OSError as e:
            lost = e.args[0] in (errno.ENOTCONN, errno.ECONNRESET)
        code = e.args[0] if e.args else None  # a CONNACK code, read not compared
        refused = code in (4, 5)
        TIMEOUT = 7
        """
    )
    assert esp32check.errno_check("snippet.py", source) == []
