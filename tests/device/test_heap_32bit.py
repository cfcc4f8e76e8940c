"""The heap a board needs where pointers, object headers and GC blocks are an
ESP32's size: MicroPython 1.24.1's unix port built for 32-bit x86
(tools/oldports.py), with the umqtt.simple 1.24.1 freezes. The 64-bit ports
overstate a board's heap by about a third; this is the figure to hold against
an ESP32's (tests/device/test_firstboot_iotsim.py bounds the 64-bit one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tools import oldports
from tools.iotsim.broker import MqttQuotas
from tools.unixboard import WORD32_TARGET, Board, make_flash, update_config

if not oldports.can_build_32bit():
    # x86_64 with gcc-multilib only (tools/system_deps.sh); elsewhere `make ports` skips the build
    pytest.skip("gcc cannot build 32-bit x86 here: no 32-bit unix port", allow_module_level=True)
pytestmark = pytest.mark.parametrize(
    "device_target", [WORD32_TARGET], ids=[WORD32_TARGET.id], indirect=True, scope="module"
)

# The budget, held on the port whose objects are an ESP32's size. Measured
# smallest sizes: `make bench`, sections ports and rotation (docs/performance.md).
FIRST_BOOT_KB = 64
PROVISIONED_KB = 40
ROTATION_KB = 64  # a rotation fits where a provisioned board runs its application


@pytest.mark.parametrize("method", ["keys", "csr"])
def test_a_first_boot_a_provisioned_boot_and_a_rotation_fit_an_esp32_sized_heap(
    iotsim_factory: Any, tmp_path: Path, method: str
) -> None:
    # A board's reset, Wi-Fi and NTP take seconds, the harness's restart none:
    # without AWS's one CONNECT a second per client id, the provisioned boot
    # right after the first is not refused once, as no board's would be.
    iotsim = iotsim_factory(mqtt_quotas=MqttQuotas(connect_interval_ms=0))
    config = {"method": method, "retry_base_ms": 20, "retry_max_ms": 100, "rotate_days": 0}
    flash = make_flash(tmp_path / "flash", iotsim.state, config, mpy=True)
    first = Board(flash, heapsize=FIRST_BOOT_KB * 1024).boot(timeout=60)
    assert first.returncode == 0 and first.steps()[-1] == "done", first.text
    second = Board(flash, heapsize=PROVISIONED_KB * 1024).boot(timeout=60)
    assert second.returncode == 0, second.text
    assert "connect-claim" not in second.steps() and second.steps()[-1] == "done", second.text
    update_config(flash, {"rotate_days": 100000})  # due: the certificate expires "within" that
    third = Board(flash, heapsize=ROTATION_KB * 1024).boot(timeout=60)
    assert third.returncode == 0, third.text
    assert "rotated" in third.steps() and "retired" in third.steps() and third.steps()[-1] == "done", third.text
