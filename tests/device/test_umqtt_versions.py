"""The umqtt.simple version matrix: what differs between releases, on every port × umqtt combination.

Each target (tests/device/conftest.py: the newest port with every umqtt.simple
release, 1.22.2 + 1.3.4, 1.24.1 + 1.4.0) runs tests/device/scripts/umqtt_probe.py
once against iotsim; the tests below read its report. The expectations per
release come from the umqtt sources (../shared/vendor/umqtt.simple/), so a
matrix that silently ran one version everywhere would fail here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tools.unixboard import Target

pytestmark = pytest.mark.umqtt_matrix

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "device" / "scripts" / "umqtt_probe.py"
TEMPLATE = "FleetprovDemo"

# umqtt 1.4.0 and 1.5.0 take only ssl=<SSLContext>; the others take ssl=True + ssl_params.
CONTEXT_ONLY = {"1.4.0", "1.5.0"}
# unsubscribe() arrived in 1.7.0.
WITH_UNSUBSCRIBE = {"1.7.1", "1.8.0"}
# After handling a PUBLISH, check_msg() returns None in 1.3.4 and the packet's
# first byte (0x30 | flags) from 1.4.0 on.
PUBLISH_RETURNS_NONE = {"1.3.4"}


@pytest.fixture(scope="module")
def probe(
    micropython: Any, iotsim_module: Any, device_target: Target, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    serial = "probe-" + device_target.id.replace(".", "")
    proc = micropython.run(
        script=PROBE,
        args=(str(iotsim_module.port), str(iotsim_module.state / "certs"), TEMPLATE, serial),
        cwd=tmp_path_factory.mktemp("probe"),
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(lines[0][len("RESULT ") :])
    report["serial"] = serial
    return report


def test_the_probe_ran_on_the_targets_port_and_umqtt(probe: dict[str, Any], device_target: Target) -> None:
    assert (probe["micropython"] + ".").startswith(device_target.port + ".")
    umqtt_folder = Path(device_target.umqtt_path()[0])
    assert Path(probe["umqtt_file"]) == umqtt_folder / "umqtt" / "simple.py"
    assert umqtt_folder.name == device_target.umqtt  # ../shared/vendor/umqtt.simple/<version>


def test_the_server_name_is_verified(probe: dict[str, Any]) -> None:
    assert probe["wrong_name"] == "tls-error"


def test_mqttlink_picks_the_tls_form_this_umqtt_takes(probe: dict[str, Any], device_target: Target) -> None:
    assert probe["tls_form"] == ("context" if device_target.umqtt in CONTEXT_ONLY else "ssl_params")


def test_a_connected_link_no_longer_holds_the_certificate_key_or_ca(probe: dict[str, Any]) -> None:
    # umqtt 1.3.4 and 1.6+ keep ssl_params for the client's life; mqttlink
    # empties it once TLS has parsed them (the round trip after shows the link works)
    assert probe["held_der"] == []
    assert probe["reconnected"] is True


def test_fleetprov_reads_answers_whatever_check_msg_returns(
    probe: dict[str, Any], device_target: Target
) -> None:
    returns = probe["check_msg_returns"]
    publish_ops = [r for r in returns if isinstance(r, int) and r & 0xF0 == 0x30]
    if device_target.umqtt in PUBLISH_RETURNS_NONE:
        assert returns == [None]
    else:
        assert publish_ops == [0x32]  # the answers: PUBLISH at QoS 1
        assert set(returns) == {None, 0x32}


def test_close_unsubscribes_where_umqtt_can(probe: dict[str, Any], device_target: Target) -> None:
    assert probe["has_unsubscribe"] == (device_target.umqtt in WITH_UNSUBSCRIBE)
    if probe["has_unsubscribe"]:
        assert sorted(probe["unsubscribed"]) == sorted(
            [
                "$aws/certificates/create/json/accepted",
                "$aws/certificates/create/json/rejected",
                f"$aws/provisioning-templates/{TEMPLATE}/provision/json/accepted",
                f"$aws/provisioning-templates/{TEMPLATE}/provision/json/rejected",
            ]
        )
    else:
        assert probe["unsubscribed"] == []


def test_a_provisioning_round_trip_registers_the_thing(probe: dict[str, Any], iotsim_module: Any) -> None:
    assert probe["reconnected"] is True
    thing = iotsim_module.registry.thing(probe["thing_name"])
    assert thing is not None and probe["certificate_id"] in thing.certificates
    assert iotsim_module.registry.status(probe["certificate_id"]) == "ACTIVE"
    assert len(probe["certificate_id"]) == len(hashlib.sha256().hexdigest())
