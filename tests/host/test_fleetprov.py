"""fleetprov on CPython, driven through the fake umqtt client (tests/fakes/fakemqtt.py)."""

from __future__ import annotations

import errno
import json
from typing import Any

import cbor2
import pytest

import esp32errno
import fleetprov
import timedsock
from fakemqtt import AwsResponder, FakeClient, MQTTException
from fleetprov import ProvisioningError

FORMATS = ["json", "cbor"]
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
KEYS_TOPIC = {f: ("$aws/certificates/create/" + f).encode() for f in FORMATS}
CSR_TOPIC = {f: ("$aws/certificates/create-from-csr/" + f).encode() for f in FORMATS}


def reg_topic(fmt: str, template: str = "demo") -> bytes:
    return "$aws/provisioning-templates/{}/provision/{}".format(template, fmt).encode()


def encode(fmt: str, obj: Any) -> bytes:
    return json.dumps(obj).encode() if fmt == "json" else cbor2.dumps(obj)


def decode(fmt: str, data: bytes) -> Any:
    return json.loads(data) if fmt == "json" else cbor2.loads(data)


def make(fmt: str = "json", **kwargs: Any) -> tuple[fleetprov.Provisioner, FakeClient, AwsResponder]:
    responder = AwsResponder(fmt)
    client = FakeClient(responder)
    return fleetprov.Provisioner(client, fmt=fmt, **kwargs), client, responder


def run_op(p: fleetprov.Provisioner, op: str, **kwargs: Any) -> Any:
    if op == "keys":
        return p.create_keys_and_certificate(**kwargs)
    if op == "csr":
        return p.create_certificate_from_csr(CSR, **kwargs)
    return p.register_thing("demo", "token-1", **kwargs)


def expect_error(status: int, fn: Any, *args: Any, **kwargs: Any) -> ProvisioningError:
    with pytest.raises(ProvisioningError) as info:
        fn(*args, **kwargs)
    assert info.value.status == status, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


# -- status vocabulary ---------------------------------------------------------


def test_status_values_are_the_c_librarys() -> None:
    assert [
        fleetprov.SUCCESS,
        fleetprov.INIT_FAILED,
        fleetprov.NOT_INITIALIZED,
        fleetprov.BAD_PARAMETER,
        fleetprov.NO_MEMORY,
        fleetprov.BAD_RESPONSE,
        fleetprov.TIMEOUT,
        fleetprov.SERVER_REFUSED,
        fleetprov.INTERNAL_FAILURE,
        fleetprov.MQTT_ERROR,
    ] == list(range(1, 11))


def test_strerror_describes_every_status_and_flags_others_invalid() -> None:
    names = {fleetprov.strerror(s) for s in range(1, 11)}
    assert len(names) == 10 and "INVALID STATUS" not in names
    assert fleetprov.strerror(fleetprov.TIMEOUT) == "TIMEOUT"
    assert fleetprov.strerror(fleetprov.MQTT_ERROR) == "MQTT ERROR"
    for bad in (0, 11, -1, True, "1", None, 1.0):
        assert fleetprov.strerror(bad) == "INVALID STATUS"


# -- nominal operations ----------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_create_keys_and_certificate_returns_all_four_fields(fmt: str) -> None:
    p, client, responder = make(fmt)
    keys = p.create_keys_and_certificate()
    expected = responder.accepted("keys")
    assert keys.certificate_id == expected["certificateId"]
    assert keys.certificate_pem == expected["certificatePem"]
    assert keys.private_key == expected["privateKey"]
    assert keys.ownership_token == expected["certificateOwnershipToken"]
    assert client.subscribed == [(KEYS_TOPIC[fmt] + b"/accepted", 1), (KEYS_TOPIC[fmt] + b"/rejected", 1)]
    topic, payload, retain, qos = client.published[0]
    assert (topic, retain) == (KEYS_TOPIC[fmt], False)
    assert payload == (b"{}" if fmt == "json" else b"\xa0")
    assert client.unsubscribed == [KEYS_TOPIC[fmt] + b"/accepted", KEYS_TOPIC[fmt] + b"/rejected"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("qos", [0, 1])
def test_create_certificate_from_csr_sends_the_csr_at_the_chosen_qos(fmt: str, qos: int) -> None:
    p, client, responder = make(fmt)
    cert = p.create_certificate_from_csr(CSR, qos=qos)
    assert cert.private_key is None
    assert cert.certificate_id == "c" * 64
    assert cert.ownership_token == responder.token
    topic, payload, _, sent_qos = client.published[0]
    assert topic == CSR_TOPIC[fmt] and sent_qos == qos
    assert decode(fmt, payload) == {"certificateSigningRequest": CSR}


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_thing_sends_token_and_parameters_and_returns_configuration(fmt: str) -> None:
    p, client, responder = make(fmt)
    responder.device_configuration = {"Url": "https://x", "Mode": "a"}
    reg = p.register_thing("demo", "tok", {"SerialNumber": "42"})
    assert reg.thing_name == "thing-0001"
    assert reg.device_configuration == {"Url": "https://x", "Mode": "a"}
    topic, payload, _, _ = client.published[0]
    assert topic == reg_topic(fmt)
    # AWS documents exactly these two fields; certificateId is not sent.
    assert decode(fmt, payload) == {"certificateOwnershipToken": "tok", "parameters": {"SerialNumber": "42"}}


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_thing_without_parameters_sends_only_the_token(fmt: str) -> None:
    p, client, _ = make(fmt)
    p.register_thing("demo", "tok")
    assert decode(fmt, client.published[0][1]) == {"certificateOwnershipToken": "tok"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_thing_without_thing_name_or_configuration_gives_none_and_empty(fmt: str) -> None:
    p, client, responder = make(fmt)
    responder.override["register"] = (b"/accepted", encode(fmt, {}))
    reg = p.register_thing("demo", "tok")
    assert reg.thing_name is None and reg.device_configuration == {}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("op", ["keys", "csr", "register"])
def test_rejected_response_raises_server_refused_with_the_servers_fields(fmt: str, op: str) -> None:
    p, _, responder = make(fmt)
    responder.override[op] = (b"/rejected", responder.rejected(403, "AccessDenied", "hook refused"))
    err = expect_error(fleetprov.SERVER_REFUSED, run_op, p, op)
    assert (err.status_code, err.error_code, err.error_message) == (403, "AccessDenied", "hook refused")
    assert "403" in str(err) and "hook refused" in str(err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_rejected_response_without_error_fields_leaves_them_none(fmt: str) -> None:
    p, _, responder = make(fmt)
    responder.override["keys"] = (b"/rejected", encode(fmt, {"statusCode": 500}))
    err = expect_error(fleetprov.SERVER_REFUSED, p.create_keys_and_certificate)
    assert (err.status_code, err.error_code, err.error_message) == (500, None, None)


def test_template_name_of_36_allowed_characters_is_accepted() -> None:
    p, client, _ = make()
    name = "Ab0_-" * 7 + "z"
    assert len(name) == 36
    p.register_thing(name, "tok")
    assert client.published[0][0] == reg_topic("json", name)


def test_operations_can_follow_each_other_on_one_provisioner() -> None:
    p, client, _ = make()
    keys = p.create_keys_and_certificate()
    reg = p.register_thing("demo", keys.ownership_token, {"SerialNumber": "1"})
    assert reg.thing_name == "thing-0001"
    assert len(client.published) == 2


# -- parsing rules ---------------------------------------------------------------

KEYS_FIELDS = ["certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"]
CSR_FIELDS = ["certificateId", "certificatePem", "certificateOwnershipToken"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("op,field", [("keys", f) for f in KEYS_FIELDS] + [("csr", f) for f in CSR_FIELDS])
def test_accepted_response_missing_a_required_field_is_bad_response(fmt: str, op: str, field: str) -> None:
    p, _, responder = make(fmt)
    body = responder.accepted(op)
    del body[field]
    responder.override[op] = (b"/accepted", encode(fmt, body))
    err = expect_error(fleetprov.BAD_RESPONSE, run_op, p, op)
    assert field in str(err)


WRONG_TYPES_JSON: list[Any] = [1, 1.5, True, None, [], {}]
WRONG_TYPES_CBOR: list[Any] = WRONG_TYPES_JSON + [b"bytes-not-text"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("op,field", [("keys", f) for f in KEYS_FIELDS] + [("csr", f) for f in CSR_FIELDS])
def test_accepted_field_of_the_wrong_type_is_bad_response(fmt: str, op: str, field: str) -> None:
    for wrong in WRONG_TYPES_CBOR if fmt == "cbor" else WRONG_TYPES_JSON:
        p, _, responder = make(fmt)
        body = responder.accepted(op)
        body[field] = wrong
        responder.override[op] = (b"/accepted", encode(fmt, body))
        err = expect_error(fleetprov.BAD_RESPONSE, run_op, p, op)
        assert field in str(err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_thing_name_that_is_not_text_is_bad_response(fmt: str) -> None:
    for wrong in [7, [], {}] + ([b"x"] if fmt == "cbor" else []):
        p, _, responder = make(fmt)
        responder.override["register"] = (b"/accepted", encode(fmt, {"thingName": wrong}))
        expect_error(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "config",
    [[], "text", 5, {"k": 1}, {"k": None}, {"k": {"nested": "x"}}, {1: "v"}],
    ids=["list", "str", "int", "int-value", "null-value", "map-value", "int-key"],
)
def test_device_configuration_must_map_text_to_text(fmt: str, config: Any) -> None:
    # (JSON turns the int key into text "1"; CBOR keeps it an int, which is refused.)
    if fmt == "json" and isinstance(config, dict) and 1 in config:
        config = {"1": 1}
    p, _, responder = make(fmt)
    responder.override["register"] = (b"/accepted", encode(fmt, {"deviceConfiguration": config}))
    expect_error(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")


def test_cbor_device_configuration_with_byte_string_value_is_bad_response() -> None:
    p, _, responder = make("cbor")
    responder.override["register"] = (b"/accepted", cbor2.dumps({"deviceConfiguration": {"k": b"v"}}))
    expect_error(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "body",
    [{}, {"statusCode": "400"}, {"statusCode": 400.0}, {"statusCode": True}, {"statusCode": None}, [400], "400", 400],
    ids=["empty", "str", "float", "bool", "null", "list", "text", "int"],
)
def test_rejected_response_without_an_integer_status_code_is_bad_response(fmt: str, body: Any) -> None:
    p, _, responder = make(fmt)
    responder.override["keys"] = (b"/rejected", encode(fmt, body))
    err = expect_error(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)
    assert err.status_code is None


def test_rejected_error_fields_of_the_wrong_type_are_dropped_not_fatal() -> None:
    p, _, responder = make("cbor")
    responder.override["keys"] = (b"/rejected", cbor2.dumps({"statusCode": 429, "errorCode": 5, "errorMessage": b"x"}))
    err = expect_error(fleetprov.SERVER_REFUSED, p.create_keys_and_certificate)
    assert (err.status_code, err.error_code, err.error_message) == (429, None, None)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("suffix", [b"/accepted", b"/rejected"])
@pytest.mark.parametrize("payload", [b"", b"{", b"\xff\xfe", b"\x00" * 10, b"nul", b"\xa1"], ids=repr)
def test_malformed_or_truncated_payload_is_bad_response(fmt: str, suffix: bytes, payload: bytes) -> None:
    p, _, responder = make(fmt)
    responder.override["keys"] = (suffix, payload)
    expect_error(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)


def test_cbor_response_with_trailing_bytes_decodes_the_first_item() -> None:
    p, _, responder = make("cbor")
    responder.override["register"] = (b"/accepted", cbor2.dumps({"thingName": "t1"}) + b"\xff\x00garbage")
    assert p.register_thing("demo", "tok").thing_name == "t1"


def test_cbor_indefinite_length_response_is_accepted() -> None:
    p, _, responder = make("cbor")
    # indefinite map {"thingName": indefinite text "t" "1"}
    body = b"\xbf" + cbor2.dumps("thingName") + b"\x7f" + cbor2.dumps("t") + cbor2.dumps("1") + b"\xff\xff"
    responder.override["register"] = (b"/accepted", body)
    assert p.register_thing("demo", "tok").thing_name == "t1"


def test_deeply_nested_cbor_response_is_bad_response_not_a_crash() -> None:
    p, _, responder = make("cbor")
    responder.override["register"] = (b"/accepted", b"\x81" * 5000 + b"\x00")
    expect_error(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")


def test_cbor_length_beyond_the_buffer_is_bad_response() -> None:
    p, _, responder = make("cbor")
    responder.override["register"] = (b"/accepted", b"\xa1\x7b" + (2**40).to_bytes(8, "big") + b"abc")
    expect_error(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_top_level_that_is_not_a_map_is_bad_response(fmt: str) -> None:
    for body in ([1, 2], "text", 7, None):
        p, _, responder = make(fmt)
        responder.override["keys"] = (b"/accepted", encode(fmt, body))
        expect_error(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)


# -- timing and ordering -----------------------------------------------------------


def test_no_answer_within_the_deadline_is_timeout_naming_the_topic() -> None:
    p, client, responder = make()
    responder.silent = True
    err = expect_error(fleetprov.TIMEOUT, p.create_keys_and_certificate, timeout_ms=30)
    assert "$aws/certificates/create/json" in str(err) and "30 ms" in str(err)
    assert client.unsubscribed  # cleaned up after the timeout


def test_an_answer_after_a_timeout_does_not_leak_into_the_next_operation() -> None:
    responder = AwsResponder()
    client = FakeClient(responder)
    app: list[bytes] = []
    client.set_callback(lambda t, m: app.append(t))
    p = fleetprov.Provisioner(client)
    responder.silent = True
    expect_error(fleetprov.TIMEOUT, p.create_keys_and_certificate, timeout_ms=20)
    # the late answer to the keys request arrives during the register call
    client.queue(KEYS_TOPIC["json"] + b"/accepted", json.dumps(responder.accepted("keys")).encode())
    responder.silent = False
    assert p.register_thing("demo", "tok").thing_name == "thing-0001"
    assert app == []  # a stale provisioning answer is nobody's business


def test_an_answer_published_before_the_request_is_ignored() -> None:
    p, client, responder = make()
    # already waiting on the connection when the operation starts
    client.queue(KEYS_TOPIC["json"] + b"/rejected", responder.rejected(500, "Stale", "old"))
    keys = p.create_keys_and_certificate()
    assert keys.certificate_id == "c" * 64


def test_a_stale_answer_processed_while_subscribing_is_ignored() -> None:
    p, client, responder = make()
    client.queue(KEYS_TOPIC["json"] + b"/accepted", json.dumps({"certificateId": 1}).encode())
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


def test_an_answer_arriving_while_waiting_for_puback_counts() -> None:
    p, client, _ = make()
    client.deliver_during_publish = True
    assert p.register_thing("demo", "tok").thing_name == "thing-0001"
    assert client.check_calls >= 1  # the drain before publishing


def test_only_the_first_of_duplicated_answers_counts() -> None:
    p, client, responder = make()

    def answer_twice(c: FakeClient, topic: bytes, msg: bytes) -> None:
        c.queue(topic + b"/accepted", json.dumps({"thingName": "first"}).encode())
        c.queue(topic + b"/rejected", responder.rejected(500, "Dup", "second"))

    client.responder = answer_twice
    assert p.register_thing("demo", "tok").thing_name == "first"


def test_a_late_duplicate_of_the_previous_certificate_is_not_the_next_answer() -> None:
    # umqtt < 1.7 cannot unsubscribe: a duplicate of the first answer may arrive
    # after the second request is published, before that request's own answer
    p, client, _ = make()

    def keys(cert_id: str) -> bytes:
        return json.dumps(
            {"certificateId": cert_id, "certificatePem": "pem", "certificateOwnershipToken": "tok",
             "privateKey": "key"}
        ).encode()

    calls = []

    def answer(c: FakeClient, topic: bytes, msg: bytes) -> None:
        calls.append(topic)
        if len(calls) == 2:
            c.queue(topic + b"/accepted", keys("a" * 64))  # the late duplicate
        c.queue(topic + b"/accepted", keys("ab"[len(calls) - 1] * 64))

    client.responder = answer
    assert p.create_keys_and_certificate().certificate_id == "a" * 64
    assert p.create_keys_and_certificate().certificate_id == "b" * 64


def test_messages_on_other_topics_reach_the_applications_callback() -> None:
    responder = AwsResponder()
    client = FakeClient(responder)
    seen: list[tuple[bytes, bytes]] = []
    client.set_callback(lambda t, m: seen.append((t, m)))
    p = fleetprov.Provisioner(client)
    client.queue(b"app/before", b"1")

    def answer(c: FakeClient, topic: bytes, msg: bytes) -> None:
        c.queue(b"app/during", b"2")
        responder(c, topic, msg)

    client.responder = answer
    p.create_keys_and_certificate()
    assert seen == [(b"app/before", b"1"), (b"app/during", b"2")]
    p.close()
    assert client.cb is not None and client.cb.__name__ == "<lambda>"


def test_close_restores_a_missing_callback_as_none() -> None:
    p, client, _ = make()
    assert client.cb is not None
    p.close()
    assert client.cb is None


# -- memory ----------------------------------------------------------------------


def test_a_response_larger_than_the_receive_buffer_is_no_memory_naming_both_sizes() -> None:
    p, client, responder = make(rx_size=1024)
    err = expect_error(fleetprov.NO_MEMORY, p.create_keys_and_certificate)
    size = len(json.dumps(responder.accepted("keys")).encode())
    assert str(size) in str(err) and "1024" in str(err) and "rx_size" in str(err)


def test_a_response_exactly_the_buffer_size_fits() -> None:
    responder = AwsResponder()
    body = json.dumps({"thingName": "t"}).encode()
    responder.override["register"] = (b"/accepted", body)
    p = fleetprov.Provisioner(FakeClient(responder), rx_size=len(body))
    assert p.register_thing("demo", "tok").thing_name == "t"


def test_the_receive_buffer_is_allocated_once_and_reused() -> None:
    p, _, _ = make()
    buffer = p._rx
    p.create_keys_and_certificate()
    p.register_thing("demo", "tok")
    assert p._rx is buffer and len(buffer) == 6144


# -- MQTT failures ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["subscribe", "publish", "check_msg"])
@pytest.mark.parametrize("exc", [OSError(104), MQTTException(3), IndexError("short read")], ids=repr)
def test_client_raising_mid_operation_is_mqtt_error(method: str, exc: Exception) -> None:
    p, client, _ = make()
    client.fail[method] = exc
    err = expect_error(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert method.split("_")[0] in str(err) or "reading" in str(err) or "polling" in str(err)
    # the provisioner is usable again afterwards
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


def test_refused_subscription_names_the_claim_policy() -> None:
    p, client, _ = make()
    client.fail["subscribe"] = MQTTException(0x80)
    err = expect_error(fleetprov.MQTT_ERROR, p.create_certificate_from_csr, CSR)
    assert "SUBACK 0x80" in str(err) and "policy" in str(err)
    assert "create-from-csr" in str(err)


@pytest.fixture(params=["linux", "esp32"])
def errnos(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The errno table of the unix port (Linux) or of ESP32 firmware (newlib) in the device code."""
    table = errno if request.param == "linux" else esp32errno
    monkeypatch.setattr(timedsock, "errno", table)
    return table


@pytest.mark.parametrize("method", ["subscribe", "publish", "check_msg"])
@pytest.mark.parametrize("name", ["ETIMEDOUT", "ENOTCONN", "ECONNRESET"])
def test_a_dropped_link_is_an_mqtt_error_named_by_errno_never_a_policy_refusal(
    errnos: Any, method: str, name: str
) -> None:
    # ENOTCONN is 128 == 0x80 on an ESP32: once read as "SUBACK refused"
    number = getattr(errnos, name)
    p, client, _ = make()
    client.fail[method] = OSError(number)
    err = expect_error(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "OSError {} ({})".format(name, number) in str(err)
    assert "reconnect and retry" in str(err)
    assert "SUBACK" not in str(err) and "policy" not in str(err)


def test_an_mqtt_exception_outside_subscribe_is_not_called_a_suback_refusal() -> None:
    p, client, _ = make()
    client.fail["publish"] = MQTTException(0x80)
    err = expect_error(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "SUBACK" not in str(err) and "MQTTException" in str(err)


def test_failure_of_the_second_subscription_undoes_the_first() -> None:
    p, client, _ = make()
    calls = {"n": 0}
    real = client.subscribe

    def second_fails(topic: bytes, qos: int = 0) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(113)
        real(topic, qos)

    client.subscribe = second_fails  # type: ignore[method-assign]
    expect_error(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert client.unsubscribed == [KEYS_TOPIC["json"] + b"/accepted"]


def test_client_without_unsubscribe_works_and_drops_late_answers() -> None:
    responder = AwsResponder()
    client = FakeClient(responder, with_unsubscribe=False)
    seen: list[bytes] = []
    client.set_callback(lambda t, m: seen.append(t))
    p = fleetprov.Provisioner(client)
    p.create_keys_and_certificate()
    client.queue(KEYS_TOPIC["json"] + b"/accepted", b"{}")
    client.check_msg()
    assert seen == []


def test_unsubscribe_failing_after_the_answer_keeps_the_credentials() -> None:
    p, client, _ = make()
    client.fail["unsubscribe"] = OSError(104)
    assert p.create_keys_and_certificate().private_key.startswith("-----BEGIN")


def test_the_applications_own_callback_error_propagates_unchanged() -> None:
    responder = AwsResponder()
    client = FakeClient(responder)

    class AppBug(Exception):
        pass

    def app(topic: bytes, msg: bytes) -> None:
        raise AppBug(topic)

    client.set_callback(app)
    p = fleetprov.Provisioner(client)
    client.queue(b"app/x", b"1")
    with pytest.raises(AppBug):
        p.create_keys_and_certificate()
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


def test_memory_error_from_the_client_is_no_memory() -> None:
    p, client, _ = make()
    client.fail["check_msg"] = MemoryError()
    expect_error(fleetprov.NO_MEMORY, p.create_keys_and_certificate)


# -- re-entrancy and lifecycle --------------------------------------------------------


def test_an_operation_started_from_inside_another_is_bad_parameter() -> None:
    responder = AwsResponder()
    client = FakeClient(responder)
    inner: list[ProvisioningError] = []
    holder: dict[str, fleetprov.Provisioner] = {}

    def app(topic: bytes, msg: bytes) -> None:
        for call in (lambda: holder["p"].register_thing("demo", "tok"), holder["p"].close):
            try:
                call()
            except ProvisioningError as exc:
                inner.append(exc)

    client.set_callback(app)
    holder["p"] = p = fleetprov.Provisioner(client)
    client.queue(b"app/x", b"1")
    p.create_keys_and_certificate()
    assert [e.status for e in inner] == [fleetprov.BAD_PARAMETER, fleetprov.BAD_PARAMETER]
    assert "in progress" in str(inner[0])


def test_calls_after_close_are_not_initialized_and_close_is_idempotent() -> None:
    p, _, _ = make()
    p.close()
    p.close()
    for op in ("keys", "csr", "register"):
        expect_error(fleetprov.NOT_INITIALIZED, run_op, p, op)


def test_set_callback_failing_is_init_failed() -> None:
    client = FakeClient()

    def broken(f: Any) -> None:
        raise OSError(5)

    client.set_callback = broken  # type: ignore[method-assign]
    expect_error(fleetprov.INIT_FAILED, fleetprov.Provisioner, client)


# -- argument validation -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fmt": "xml"},
        {"fmt": b"json"},
        {"timeout_ms": 0},
        {"timeout_ms": -5},
        {"timeout_ms": 1.5},
        {"timeout_ms": True},
        {"rx_size": 0},
        {"rx_size": "6144"},
        {"mqtt_timeout_ms": 0},
        {"mqtt_timeout_ms": None},
    ],
    ids=repr,
)
def test_invalid_constructor_arguments_are_bad_parameter(kwargs: dict[str, Any]) -> None:
    expect_error(fleetprov.BAD_PARAMETER, fleetprov.Provisioner, FakeClient(), **kwargs)


@pytest.mark.parametrize("missing", ["set_callback", "subscribe", "publish", "check_msg"])
def test_a_client_without_the_umqtt_surface_is_bad_parameter(missing: str) -> None:
    class Partial:
        pass

    client = Partial()
    for name in ("set_callback", "subscribe", "publish", "check_msg"):
        if name != missing:
            setattr(client, name, lambda *a: None)
    err = expect_error(fleetprov.BAD_PARAMETER, fleetprov.Provisioner, client)
    assert missing in str(err)


@pytest.mark.parametrize(
    "template", ["", "x" * 37, "has space", "semi;colon", "slash/", "plus+", "hash#", "ünï", None, 5, b"demo"], ids=repr
)
def test_invalid_template_names_are_bad_parameter(template: Any) -> None:
    p, client, _ = make()
    expect_error(fleetprov.BAD_PARAMETER, p.register_thing, template, "tok")
    assert client.published == [] and client.subscribed == []


@pytest.mark.parametrize("token", ["", None, 5, b"tok"], ids=repr)
def test_an_empty_or_non_text_ownership_token_is_bad_parameter(token: Any) -> None:
    p, _, _ = make()
    expect_error(fleetprov.BAD_PARAMETER, p.register_thing, "demo", token)


@pytest.mark.parametrize(
    "parameters", [[], "a=b", {"a": 1}, {1: "a"}, {"a": None}, {"a": b"b"}], ids=repr
)
def test_parameters_must_map_str_to_str(parameters: Any) -> None:
    p, _, _ = make()
    expect_error(fleetprov.BAD_PARAMETER, p.register_thing, "demo", "tok", parameters)


@pytest.mark.parametrize("csr", ["", None, 7], ids=repr)
def test_an_empty_or_non_text_csr_is_bad_parameter(csr: Any) -> None:
    p, _, _ = make()
    expect_error(fleetprov.BAD_PARAMETER, p.create_certificate_from_csr, csr)


@pytest.mark.parametrize("qos", [2, -1, True, "1", 1.0], ids=repr)
def test_qos_other_than_0_or_1_is_bad_parameter(qos: Any) -> None:
    p, _, _ = make()
    expect_error(fleetprov.BAD_PARAMETER, p.create_certificate_from_csr, CSR, qos=qos)


@pytest.mark.parametrize("op", ["keys", "csr", "register"])
@pytest.mark.parametrize("timeout", [0, -1, 2.5, True, "10"], ids=repr)
def test_per_call_timeouts_must_be_positive_ints(op: str, timeout: Any) -> None:
    p, _, _ = make()
    expect_error(fleetprov.BAD_PARAMETER, run_op, p, op, timeout_ms=timeout)


# -- secrets ---------------------------------------------------------------------------


def test_secrets_never_appear_in_errors_or_reprs() -> None:
    token = "SECRET-TOKEN-" + "z" * 40
    key = "-----BEGIN RSA PRIVATE KEY-----\nSECRETKEY\n-----END RSA PRIVATE KEY-----\n"
    messages: list[str] = []
    p, _, responder = make()
    body = {"certificateId": 5, "certificatePem": "x", "privateKey": key, "certificateOwnershipToken": token}
    responder.override["keys"] = (b"/accepted", json.dumps(body).encode())
    messages.append(str(expect_error(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)))
    for bad_token in (token.encode(), 123):
        try:
            p.register_thing("demo", bad_token)  # type: ignore[arg-type]
        except ProvisioningError as exc:
            messages.append(str(exc))
    p2, _, responder2 = make()
    responder2.token = token
    keys = p2.create_keys_and_certificate()
    messages += [repr(keys), repr(p2.register_thing("demo", token))]
    for text in messages:
        assert "SECRET" not in text, text


# -- waiting for the answer --------------------------------------------------------


@pytest.mark.timeout(10)
def test_a_client_whose_check_msg_always_returns_a_packet_type_still_times_out() -> None:
    # umqtt returns the type of every non-PUBLISH packet (0x40: a PUBACK) from
    # check_msg(); a broker sending strays without end once kept the wait alive for ever
    p, client, responder = make(timeout_ms=100)
    responder.silent = True
    real = client.check_msg

    def stray() -> int:
        real()
        return 0x40

    client.check_msg = stray  # type: ignore[method-assign]
    expect_error(fleetprov.TIMEOUT, p.create_keys_and_certificate)
    assert client.check_calls > 16  # it kept reading: strays are not "idle"


def test_an_idle_wait_without_a_socket_sleeps_between_polls() -> None:
    p, client, responder = make(timeout_ms=200)
    responder.silent = True
    expect_error(fleetprov.TIMEOUT, p.create_keys_and_certificate)
    # a 200 ms wait with 50 ms rests: a handful of polls, not thousands
    assert client.check_calls <= 200 // 50 + 3, client.check_calls
