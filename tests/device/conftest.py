"""Which firmware each device test runs on: the version matrix.

A target (tools/unixboard.py) is a MicroPython unix port standing in for a
firmware release plus the umqtt.simple that release freezes. Every device
test runs on the default target (the newest port from PyPI, umqtt.simple
1.3.4). The modules in ``OLD_FIRMWARE_MODULES`` also run on each old firmware
(1.22.2 + umqtt 1.3.4, 1.24.1 + umqtt 1.4.0, library compiled with that
release's own mpy-cross); tests marked ``old_firmware`` run on the old
firmware only; tests marked ``umqtt_matrix`` run on the newest
port with every umqtt.simple release and on the old firmware: the cases whose
behaviour differs between versions. Test ids name the target, e.g.
``[mp1.22.2-umqtt1.3.4]``.

An old port that is not built (``make test OLD_PORTS=0``, or pytest run by
hand before ``make ports``) skips its tests with the command to run; under
``make test`` (which sets FLEETPROV_OLD_PORTS=1 unless OLD_PORTS=0) a missing
target fails instead, so a broken build never passes as skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tools.unixboard import (
    DEFAULT_TARGET,
    OLD_FIRMWARE_TARGETS,
    Target,
    TargetUnavailable,
    umqtt_matrix,
    use_target,
)

# The device tier that must hold on the oldest firmware we claim (issue 15).
OLD_FIRMWARE_MODULES = {
    "test_fleetprov_device",  # fleetprov's shared cases from .mpy (from .py: the umqtt matrix)
    "test_iotsim_device",  # keys and CSR, JSON and CBOR against iotsim
    "test_firstboot_iotsim",  # boot.py + main.py first boot against iotsim
    "test_csr_iotsim",  # the on-device key and CSR through iotsim
    "test_power_loss",  # power cut at every step
}
# Matrix economics: in those modules, cases that only repeat what others cover
# on every port run on the default target alone.
DEFAULT_TARGET_ONLY = {
    "test_power_cut_at_random_instants_of_a_keys_first_boot",
    "test_power_cut_at_random_instants_of_a_csr_first_boot",
    # every boundary of the flow is the same code on every port; the flash
    # writes, where a port could differ, run on each (test_power_cut_at_the_flash_writes_on_every_firmware)
    "test_power_cut_at_each_boundary_of_a_first_boot",
    "test_power_cut_while_recovering_from_a_revoked_certificate",
    "test_power_cut_while_resuming_a_staged_identity",
}
# test_virtual_board's `old_firmware` case: what make deploy writes, booted on each old port
# (their unix ports have no raw REPL, so mpremote cannot drive them as a board).


# Where a unix port stands in less faithfully than usual for the firmware it
# represents, the case that depends on it is skipped there, with why.
STAND_IN_GAPS = {
    ("test_first_boot_fits_a_96_kb_heap_with_the_compiled_library", "1.22.2"): (
        "the 1.22 unix port builds mbedTLS with HAVEGE, whose entropy state makes each "
        "ssl.SSLContext 39.7 KB of MicroPython's heap; ESP32 firmware 1.22 has no HAVEGE; the heap budgets "
        "are held on the 32-bit port (tests/device/test_heap_32bit.py)"
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        target = callspec.params.get("device_target") if callspec is not None else None
        if target is None:
            continue
        why = STAND_IN_GAPS.get((item.originalname, target.port))  # type: ignore[attr-defined]
        if why is not None:
            item.add_marker(pytest.mark.skip(reason=f"{target.id}: {why}"))


# (the markers old_firmware and umqtt_matrix are declared in pyproject.toml)


def _targets_for(metafunc: pytest.Metafunc) -> tuple[Target, ...] | None:
    if metafunc.definition.get_closest_marker("umqtt_matrix") is not None:
        return umqtt_matrix()
    if metafunc.definition.get_closest_marker("old_firmware") is not None:
        return OLD_FIRMWARE_TARGETS
    if metafunc.definition.originalname in DEFAULT_TARGET_ONLY:
        return None
    if metafunc.module.__name__.rsplit(".", 1)[-1] in OLD_FIRMWARE_MODULES:
        return (DEFAULT_TARGET, *OLD_FIRMWARE_TARGETS)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    targets = _targets_for(metafunc)
    if targets is not None:
        # module scope: a module's tests run target by target, so module-scoped
        # fixtures that ask for device_target are built once per target.
        metafunc.parametrize(
            "device_target", targets, ids=[t.id for t in targets], indirect=True, scope="module"
        )


@pytest.fixture(scope="module", autouse=True)
def device_target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The target the test runs on; boards, mpy-cross helpers and `micropython` follow it."""
    target: Target = getattr(request, "param", DEFAULT_TARGET)
    try:
        target.check()
    except TargetUnavailable as exc:
        if os.environ.get("FLEETPROV_OLD_PORTS") == "1":
            pytest.fail(f"{target.id}: {exc}", pytrace=False)
        pytest.skip(f"{target.id}: {exc}")
    with use_target(target):
        yield target
