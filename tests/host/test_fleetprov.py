"""fleetprov on CPython over the real umqtt.simple and a scripted socket.

The cases are the table in tests/cases/fleetprov_cases.py, which the
MicroPython unix port runs too (tests/device/test_fleetprov_device.py); they
run here on umqtt.simple 1.3.4 (deps/, what the host tools use) and 1.8.0 (the
newest: unsubscribe(), check_msg() returning the packet type), with cbor2 as
the test side's CBOR codec. Below the table: what only CPython can check, and
the few tests of a client without a socket (DESIGN: any object with umqtt's
surface works).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import cbor2
import pytest

import fleetprov
from fakemqtt import AwsResponder, FakeClient, MQTTException
from fleetprov_cases import CASES, Harness
from tools import fetch_deps, umqtt_host

UMQTT_VERSIONS = ("1.3.4", "1.8.0")
CODECS: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    "json": (lambda obj: json.dumps(obj).encode(), json.loads),
    "cbor": (cbor2.dumps, cbor2.loads),
}


def _client_class(version: str) -> type:
    try:
        return umqtt_host.client_class(version)
    except fetch_deps.FetchError as exc:
        pytest.fail(f"umqtt.simple {version}: {exc}", pytrace=False)


@pytest.fixture(scope="module", params=UMQTT_VERSIONS, ids=lambda v: f"umqtt{v}")
def client_class(request: pytest.FixtureRequest) -> type:
    return _client_class(request.param)


def _params() -> list[Any]:
    out = []
    for name, case, known_bug in CASES:
        marks = [pytest.mark.xfail(reason=known_bug, strict=True)] if known_bug else []
        out.append(pytest.param(case, id=name, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_case(client_class: type, case: Callable[[Harness], None]) -> None:
    h = Harness(client_class, CODECS)
    try:
        case(h)
    finally:
        problems = h.close()
    assert not problems, problems


def test_the_table_covers_every_status_a_provisioning_call_can_raise() -> None:
    # a guard against the table shrinking unnoticed: the case names say what they expect
    names = " ".join(name for name, _, _ in CASES)
    for word in ("bad_parameter", "bad_response", "server_refused", "timeout", "mqtt_error", "no_memory",
                 "not_initialized", "init_failed"):
        assert word in names, word
    assert len(CASES) >= 200


# -- only on CPython ---------------------------------------------------------------


def test_the_receive_buffer_is_allocated_once_and_reused(client_class: type) -> None:
    # a buffer far larger than anything else an operation allocates: a second
    # one would show in the peak
    rx_size = 1 << 20
    h = Harness(client_class, CODECS)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        p, client, server = h.make(rx_size=rx_size)
        assert tracemalloc.get_traced_memory()[0] - before >= rx_size
        p.create_keys_and_certificate()
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        # (not the same certificate again: fleetprov takes that for a late duplicate)
        p.create_certificate_from_csr("csr")
        p.register_thing("demo", "tok")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assert not h.close()
    assert peak - start < rx_size // 4, peak - start


# -- a client without a socket: the umqtt surface alone ----------------------------------


def test_a_client_without_a_socket_provisions_through_the_same_surface() -> None:
    client = FakeClient(AwsResponder())
    p = fleetprov.Provisioner(client)
    keys = p.create_keys_and_certificate()
    assert keys.private_key.startswith("-----BEGIN") and keys.ownership_token == "T" * 700
    assert p.register_thing("demo", keys.ownership_token).thing_name == "thing-0001"
    topics = [t for t, _, _, _ in client.published]
    assert topics == [b"$aws/certificates/create/json", b"$aws/provisioning-templates/demo/provision/json"]
    assert client.unsubscribed == [t for t, _ in client.subscribed]  # each operation's own two
    p.close()
    assert client.cb is None


def test_a_client_without_a_socket_gets_no_memory_for_an_answer_larger_than_the_buffer() -> None:
    # without a socket fleetprov copies the message umqtt made, so it checks the size itself
    client = FakeClient(AwsResponder())
    with pytest.raises(fleetprov.ProvisioningError) as info:
        fleetprov.Provisioner(client, rx_size=512).create_keys_and_certificate()
    assert info.value.status == fleetprov.NO_MEMORY and "512" in str(info.value)


def test_an_idle_wait_without_a_socket_sleeps_between_polls() -> None:
    responder = AwsResponder()
    responder.silent = True
    client = FakeClient(responder)
    p = fleetprov.Provisioner(client, timeout_ms=200)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        p.create_keys_and_certificate()
    assert info.value.status == fleetprov.TIMEOUT
    # a 200 ms wait with 50 ms rests: a handful of polls, not thousands
    assert client.check_calls <= 200 // 50 + 3, client.check_calls


def test_an_mqtt_exception_outside_subscribe_is_not_called_a_suback_refusal() -> None:
    # umqtt raises MQTTException only for a refused SUBACK; another client may raise it anywhere
    client = FakeClient(AwsResponder())
    client.fail["publish"] = MQTTException(0x80)
    with pytest.raises(fleetprov.ProvisioningError) as info:
        fleetprov.Provisioner(client).create_keys_and_certificate()
    assert info.value.status == fleetprov.MQTT_ERROR
    assert "SUBACK" not in str(info.value) and "MQTTException" in str(info.value)
