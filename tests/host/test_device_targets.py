"""The device tier's targets (tools/unixboard.py): the version matrix covers what the README claims."""

from __future__ import annotations

import pytest

from tools import fetch_deps
from tools.package_json import UMQTT_SIMPLE_PIN
from tools.unixboard import (
    DEFAULT_TARGET,
    NEWEST_PORT,
    OLD_FIRMWARE_TARGETS,
    SUPPORT,
    Target,
    umqtt_matrix,
)


def test_the_matrix_runs_every_umqtt_release_on_the_newest_port_and_the_old_firmware() -> None:
    matrix = umqtt_matrix()
    ids = [t.id for t in matrix]
    assert len(ids) == len(set(ids))
    assert [t.umqtt for t in matrix if t.port == NEWEST_PORT] == list(fetch_deps.UMQTT_VERSIONS)
    assert set(OLD_FIRMWARE_TARGETS) <= set(matrix)
    assert Target(OLD_FIRMWARE_TARGETS[0].port, UMQTT_SIMPLE_PIN) in matrix
    assert DEFAULT_TARGET.umqtt_from_deps and DEFAULT_TARGET.port == NEWEST_PORT


@pytest.mark.parametrize("target", OLD_FIRMWARE_TARGETS, ids=lambda t: t.id)
def test_each_old_firmware_runs_the_umqtt_it_freezes(target: Target) -> None:
    release = next(r for r in fetch_deps.UMQTT_RELEASES if r.version == target.umqtt)
    minor = ".".join(target.port.split(".")[:2])  # 1.22.2 -> 1.22
    assert minor in release.frozen_in


def test_the_ussl_alias_is_on_the_path_only_where_umqtt_1_3_4_needs_it() -> None:
    def has_alias(t: Target) -> bool:
        return str(SUPPORT) in t.umqtt_path()

    assert has_alias(DEFAULT_TARGET)  # 1.3.4 on a port without ussl
    assert has_alias(Target(NEWEST_PORT, "1.3.4"))
    assert not has_alias(Target("1.22.2", "1.3.4"))  # 1.22 has ussl itself
    assert not any(has_alias(Target(NEWEST_PORT, v)) for v in fetch_deps.UMQTT_VERSIONS if v != "1.3.4")
