# fleetprov's unit cases: one table for CPython (tests/host/test_fleetprov.py)
# and for the MicroPython unix port (tests/device/scripts/run_fleetprov_cases.py).
#
# Every case drives fleetprov through its public API over the real
# umqtt.simple, whose socket is a ScriptedSocket (tests/fakes/scriptsock.py)
# with an AwsServer (tests/fakes/scriptaws.py) at the other end: real MQTT
# framing both ways, and lib/timedsock's real deadlines. A case is a function
# taking a Harness; it asserts and returns nothing. It knows which umqtt.simple
# it runs on only by what the client offers (unsubscribe() from 1.7 on), and
# expects what that release does.
#
# CASES: [(name, case, known_bug)]; known_bug is None, or the reason the case
# fails today (a fleetprov bug kept visible until it is fixed).
#
# Device-compatible: CPython and MicroPython (no typing, no dataclasses).

import errno
import json

import esp32errno
import fleetprov
import runtime
import timedsock
from fleetprov import ProvisioningError
from scriptaws import (
    AwsServer,
    ack_then,
    break_link,
    flood,
    hang_up,
    refuse,
    reply_then,
    request_topic,
    send,
    silence,
    usual,
)
from scriptsock import PINGRESP, PUBACK, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, ScriptedSocket, puback, suback

FORMATS = ("json", "cbor")
OPS = ("keys", "csr", "register")
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
KEYS_FIELDS = ("certificateId", "certificatePem", "privateKey", "certificateOwnershipToken")
CSR_FIELDS = ("certificateId", "certificatePem", "certificateOwnershipToken")


class Harness:
    """What a case gets: provisioners over the real umqtt.simple on scripted sockets.

    client_class: umqtt.simple's MQTTClient on this interpreter.
    codecs: {fmt: (dumps, loads)} the test side encodes answers and decodes
        requests with (on CPython cbor2, independent of lib/cbor.py).
    """

    def __init__(self, client_class, codecs):
        self.client_class = client_class
        self.codecs = codecs
        self.unsubscribes = hasattr(client_class, "unsubscribe")  # umqtt 1.7+
        self._links = []  # (client, socket) in the order made

    def encode(self, fmt, obj):
        return self.codecs[fmt][0](obj)

    def decode(self, fmt, data):
        return self.codecs[fmt][1](data)

    def server(self, fmt="json"):
        codec = self.codecs[fmt][0]
        return AwsServer(fmt, codec)

    def client(self, server, app=None, **options):
        """A client whose link is a ScriptedSocket(server, **options); app: its callback."""
        client = self.client_class(b"fleetprov-cases", "127.0.0.1")
        if app is not None:
            client.set_callback(app)
        self.connect(client, server, **options)
        return client

    def connect(self, client, server, **options):
        """A fresh link for client, as a reconnect gives it; returns the socket."""
        sock = ScriptedSocket(server, **options)
        self._links.append((client, sock))
        client.sock = sock
        return sock

    def make(self, fmt="json", app=None, max_read=0, max_write=0, **kwargs):
        """(provisioner, client, server): kwargs go to the Provisioner."""
        server = self.server(fmt)
        client = self.client(server, app, max_read=max_read, max_write=max_write)
        return fleetprov.Provisioner(client, fmt, **kwargs), client, server

    def close(self):
        """After every case: each client has its socket back, unwrapped and
        blocking, and no read would have blocked for ever. Returns the problems."""
        problems = []
        last = {}
        for client, sock in self._links:
            last[id(client)] = (client, sock)
            if sock.hung:
                problems.append("{} blocking read(s) the script could not satisfy".format(sock.hung))
        for client, sock in last.values():
            if client.sock is not sock:
                problems.append("the client's socket is {!r}, not the scripted one".format(client.sock))
            elif not sock.blocking:
                problems.append("the socket was handed back non-blocking")
        for _, sock in self._links:
            sock.close()
        return problems


CASES = []
_NAMES = set()


def add(name, case, known_bug=None):
    if name in _NAMES:
        raise ValueError("two cases named " + name)
    _NAMES.add(name)
    CASES.append((name, case, known_bug))


def case(fn):
    add(fn.__name__, fn)
    return fn


def expect(status, fn, *args, **kwargs):
    """fn(*args, **kwargs) must raise ProvisioningError with status and a one-line message."""
    try:
        fn(*args, **kwargs)
    except ProvisioningError as exc:
        assert exc.status == status, "status {} ({}), wanted {}".format(exc.status, exc, status)
        assert "\n" not in str(exc), str(exc)
        return exc
    raise AssertionError("no ProvisioningError, wanted status {}".format(status))


def run_op(p, op, **kwargs):
    if op == "keys":
        return p.create_keys_and_certificate(**kwargs)
    if op == "csr":
        return p.create_certificate_from_csr(CSR, **kwargs)
    return p.register_thing("demo", "token-1", **kwargs)


def both(topic):
    return [topic + b"/accepted", topic + b"/rejected"]


def unsubscribed_if_it_can(h, topics):
    # what a client unsubscribes at the end of an operation: nothing before umqtt 1.7
    return topics if h.unsubscribes else []


def nothing_sent(client):
    assert client.sock.sent == b"", client.sock.packets


# -- status vocabulary -----------------------------------------------------------


@case
def status_values_are_the_c_librarys(h):
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


@case
def strerror_describes_every_status_and_flags_others_invalid(h):
    names = set(fleetprov.strerror(s) for s in range(1, 11))
    assert len(names) == 10 and "INVALID STATUS" not in names, names
    assert fleetprov.strerror(fleetprov.TIMEOUT) == "TIMEOUT"
    assert fleetprov.strerror(fleetprov.MQTT_ERROR) == "MQTT ERROR"
    for bad in (0, 11, -1, True, "1", None, 1.0):
        assert fleetprov.strerror(bad) == "INVALID STATUS", bad


# -- nominal operations, and what goes over the wire ---------------------------------


def keys_returns_all_four_fields_in_mqtt_order(fmt):
    def run(h):
        p, client, server = h.make(fmt)
        keys = p.create_keys_and_certificate()
        expected = server.accepted("keys")
        assert keys.certificate_id == expected["certificateId"]
        assert keys.certificate_pem == expected["certificatePem"]
        assert keys.private_key == expected["privateKey"]
        assert keys.ownership_token == expected["certificateOwnershipToken"]
        topic = request_topic("keys", fmt)
        assert server.subscribed() == [(t, 1) for t in both(topic)]
        (request,) = server.published()
        assert (request.topic, request.qos, request.retain) == (topic, 1, False)
        assert request.payload == (b"{}" if fmt == "json" else b"\xa0")
        # subscribed before the request; the answer (QoS 1) acknowledged; then unsubscribed
        kinds = [pk.kind for pk in server.packets]
        unsubscribes = [UNSUBSCRIBE] * (2 if h.unsubscribes else 0)
        assert kinds == [SUBSCRIBE, SUBSCRIBE, PUBLISH, PUBACK] + unsubscribes, kinds
        assert server.of_kind(PUBACK)[0].pid == 1
        assert server.unsubscribed() == unsubscribed_if_it_can(h, both(topic))

    return run


def csr_is_sent_at_the_chosen_qos(fmt, qos):
    def run(h):
        p, client, server = h.make(fmt)
        cert = p.create_certificate_from_csr(CSR, qos=qos)
        assert cert.private_key is None
        assert cert.certificate_id == "c" * 64 and cert.ownership_token == server.token
        assert cert.certificate_pem == server.accepted("csr")["certificatePem"]
        (request,) = server.published()
        assert (request.topic, request.qos) == (request_topic("csr", fmt), qos)
        assert h.decode(fmt, request.payload) == {"certificateSigningRequest": CSR}

    return run


def register_sends_token_and_parameters_and_returns_configuration(fmt):
    def run(h):
        p, client, server = h.make(fmt)
        server.device_configuration = {"Url": "https://x", "Mode": "a"}
        reg = p.register_thing("demo", "tok", {"SerialNumber": "42"})
        assert reg.thing_name == "thing-0001"
        assert reg.device_configuration == {"Url": "https://x", "Mode": "a"}
        (request,) = server.published()
        assert request.topic == request_topic("register", fmt)
        # AWS documents exactly these two fields; certificateId is not sent
        sent = h.decode(fmt, request.payload)
        assert sent == {"certificateOwnershipToken": "tok", "parameters": {"SerialNumber": "42"}}, sent

    return run


def register_without_parameters_sends_only_the_token(fmt):
    def run(h):
        p, client, server = h.make(fmt)
        p.register_thing("demo", "tok")
        assert h.decode(fmt, server.published()[0].payload) == {"certificateOwnershipToken": "tok"}

    return run


def register_without_thing_name_or_configuration_gives_none_and_empty(fmt):
    def run(h):
        p, client, server = h.make(fmt)
        server.answers["register"] = (b"/accepted", h.encode(fmt, {}))
        reg = p.register_thing("demo", "tok")
        assert reg.thing_name is None and reg.device_configuration == {}

    return run


def rejected_answer_is_server_refused_with_the_servers_fields(fmt, op):
    def run(h):
        p, client, server = h.make(fmt)
        server.answers[op] = (b"/rejected", server.rejected(403, "AccessDenied", "hook refused"))
        err = expect(fleetprov.SERVER_REFUSED, run_op, p, op)
        assert (err.status_code, err.error_code, err.error_message) == (403, "AccessDenied", "hook refused")
        assert "403" in str(err) and "hook refused" in str(err), str(err)

    return run


def rejected_answer_without_error_fields_leaves_them_none(fmt):
    def run(h):
        p, client, server = h.make(fmt)
        server.answers["keys"] = (b"/rejected", h.encode(fmt, {"statusCode": 500}))
        err = expect(fleetprov.SERVER_REFUSED, p.create_keys_and_certificate)
        assert (err.status_code, err.error_code, err.error_message) == (500, None, None)

    return run


for _fmt in FORMATS:
    add("create_keys_and_certificate_returns_all_four_fields_in_mqtt_order-" + _fmt,
        keys_returns_all_four_fields_in_mqtt_order(_fmt))
    for _qos in (0, 1):
        add("create_certificate_from_csr_sends_the_csr_at_qos_{}-{}".format(_qos, _fmt),
            csr_is_sent_at_the_chosen_qos(_fmt, _qos))
    add("register_thing_sends_token_and_parameters_and_returns_configuration-" + _fmt,
        register_sends_token_and_parameters_and_returns_configuration(_fmt))
    add("register_thing_without_parameters_sends_only_the_token-" + _fmt,
        register_without_parameters_sends_only_the_token(_fmt))
    add("register_thing_without_thing_name_or_configuration_gives_none_and_empty-" + _fmt,
        register_without_thing_name_or_configuration_gives_none_and_empty(_fmt))
    for _op in OPS:
        add("rejected_answer_is_server_refused_with_the_servers_fields-{}-{}".format(_op, _fmt),
            rejected_answer_is_server_refused_with_the_servers_fields(_fmt, _op))
    add("rejected_answer_without_error_fields_leaves_them_none-" + _fmt,
        rejected_answer_without_error_fields_leaves_them_none(_fmt))


@case
def template_name_of_36_allowed_characters_is_accepted(h):
    p, client, server = h.make()
    name = "Ab0_-" * 7 + "z"
    assert len(name) == 36
    p.register_thing(name, "tok")
    assert server.published()[0].topic == request_topic("register", "json", name)


@case
def operations_can_follow_each_other_on_one_provisioner(h):
    p, client, server = h.make()
    sock = client.sock
    keys = p.create_keys_and_certificate()
    assert client.sock is sock
    p.create_certificate_from_csr(CSR)
    reg = p.register_thing("demo", keys.ownership_token, {"SerialNumber": "1"})
    assert reg.thing_name == "thing-0001"
    requests = server.published()
    assert [r.topic for r in requests] == [request_topic(op, "json") for op in OPS]
    assert [op for op, _ in server.requests] == list(OPS)
    pids = [pk.pid for pk in server.packets if pk.kind in (SUBSCRIBE, PUBLISH, UNSUBSCRIBE)]
    assert pids == sorted(pids) and len(set(pids)) == len(pids), pids  # umqtt numbers every packet anew


@case
def a_large_answer_with_a_three_byte_length_is_read_whole(h):
    # more than 16383 bytes: the remaining length takes three bytes
    p, client, server = h.make(rx_size=32768)
    server.key_size = 20000
    keys = p.create_keys_and_certificate()
    assert len(keys.private_key) > 20000 and keys.private_key == server.accepted("keys")["privateKey"]


def survives_a_link_that_delivers(fmt, max_read, max_write):
    def run(h):
        p, client, server = h.make(fmt, max_read=max_read, max_write=max_write)
        keys = p.create_keys_and_certificate()
        assert keys.private_key == server.accepted("keys")["privateKey"]
        assert p.create_certificate_from_csr(CSR).certificate_id == "c" * 64
        assert p.register_thing("demo", keys.ownership_token).thing_name == "thing-0001"
        assert h.decode(fmt, server.published()[2].payload) == {"certificateOwnershipToken": server.token}

    return run


for _fmt in FORMATS:
    add("a_link_delivering_one_byte_per_read_still_provisions-" + _fmt,
        survives_a_link_that_delivers(_fmt, 1, 0))
    add("a_link_taking_three_bytes_per_write_still_provisions-" + _fmt,
        survives_a_link_that_delivers(_fmt, 0, 3))


@case
def an_answer_at_qos_0_counts_and_is_not_acknowledged(h):
    p, client, server = h.make()
    server.answer_qos = 0
    assert p.create_keys_and_certificate().certificate_id == "c" * 64
    assert server.of_kind(PUBACK) == []


@case
def pingresp_and_stray_acks_before_the_answer_are_passed_over(h):
    p, client, server = h.make()

    def reply(s, sock, request):
        sock.feed(puback(request.pid) + PINGRESP + puback(77) + s.answer(request))

    server.then(PUBLISH, reply)
    assert p.register_thing("demo", "tok").thing_name == "thing-0001"


# -- parsing rules ---------------------------------------------------------------

WRONG_TYPES = [1, 1.5, True, None, [], {}]  # JSON has no byte strings; CBOR adds them


def answer_missing_a_required_field_is_bad_response(fmt, op, field):
    def run(h):
        p, client, server = h.make(fmt)
        body = server.accepted(op)
        del body[field]
        server.answers[op] = (b"/accepted", h.encode(fmt, body))
        err = expect(fleetprov.BAD_RESPONSE, run_op, p, op)
        assert field in str(err), str(err)

    return run


def answer_field_of_the_wrong_type_is_bad_response(fmt, op, field):
    def run(h):
        for wrong in WRONG_TYPES + ([b"bytes-not-text"] if fmt == "cbor" else []):
            p, client, server = h.make(fmt)
            body = server.accepted(op)
            body[field] = wrong
            server.answers[op] = (b"/accepted", h.encode(fmt, body))
            err = expect(fleetprov.BAD_RESPONSE, run_op, p, op)
            assert field in str(err), str(err)

    return run


def thing_name_that_is_not_text_is_bad_response(fmt):
    def run(h):
        for wrong in [7, [], {}] + ([b"x"] if fmt == "cbor" else []):
            p, client, server = h.make(fmt)
            server.answers["register"] = (b"/accepted", h.encode(fmt, {"thingName": wrong}))
            expect(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")

    return run


# Names an answer may not hand on: a client id, a topic or a file would carry them.
HOSTILE_THING_NAMES = ("", "evil/#\n" + "x" * 300, "a/b", "a+b", "t#", "a b", "\u00e9t\u00e9", "t\x00", "x" * 129)
HOSTILE_CERTIFICATE_IDS = ("", "ab" * 31, "ab" * 33, "g" * 64, "../" + "a" * 61, "A" * 63 + "\n")


def thing_name_outside_aws_rule_is_bad_response(fmt):
    def run(h):
        for wrong in HOSTILE_THING_NAMES:
            p, client, server = h.make(fmt)
            server.answers["register"] = (b"/accepted", h.encode(fmt, {"thingName": wrong}))
            err = expect(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")
            assert "thingName" in str(err) and "1-128 of [a-zA-Z0-9:_-]" in str(err), str(err)
            assert len(str(err)) < 200, str(err)  # a hostile name is cut, not echoed whole
        for fine in ("a", "x" * 128, "Thing:one_2-3"):
            p, client, server = h.make(fmt)
            server.answers["register"] = (b"/accepted", h.encode(fmt, {"thingName": fine}))
            assert p.register_thing("demo", "tok").thing_name == fine

    return run


def certificate_id_outside_aws_rule_is_bad_response(fmt, op):
    def run(h):
        for wrong in HOSTILE_CERTIFICATE_IDS:
            p, client, server = h.make(fmt)
            body = server.accepted(op)
            body["certificateId"] = wrong
            server.answers[op] = (b"/accepted", h.encode(fmt, body))
            err = expect(fleetprov.BAD_RESPONSE, run_op, p, op)
            assert "certificateId" in str(err) and "64 hex digits" in str(err), str(err)

    return run


RETIRE = b"fleetprov/thing-1/retire"


def request_on_a_topic_of_ones_own_returns_the_accepted_map(fmt):
    def run(h):
        p, client, server = h.make(fmt)
        got = p.request(RETIRE, {"certificateId": "c" * 64})
        assert got == {"certificateId": "c" * 64, "status": "INACTIVE"}, got
        subs = [t for pk in server.of_kind(0x80) for t, _ in pk.topics]
        assert subs == both(RETIRE), subs
        (topic, payload), = [(pk.topic, pk.payload) for pk in server.published()]
        assert topic == RETIRE and h.decode(fmt, payload) == {"certificateId": "c" * 64}

    return run


def request_rejected_is_server_refused_with_the_servers_fields(fmt):
    def run(h):
        p, client, server = h.make(fmt)
        server.answers["request"] = (b"/rejected", server.rejected(403, "ForbiddenException", "not yours"))
        err = expect(fleetprov.SERVER_REFUSED, p.request, RETIRE, {"certificateId": "c" * 64})
        assert (err.status_code, err.error_code, err.error_message) == (403, "ForbiddenException", "not yours")

    return run


@case
def request_needs_a_bytes_topic_and_a_dict(h):
    p, client, server = h.make("json")
    for topic, message in ((None, {}), ("fleetprov/t", {}), (b"", {}), (RETIRE, []), (RETIRE, "x")):
        err = expect(fleetprov.BAD_PARAMETER, p.request, topic, message)
        assert "topic must be bytes and message a dict" in str(err), str(err)
    nothing_sent(client)


# (JSON turns an int key into text, so there the int-key map has an int value instead.)
BAD_CONFIGS = (
    ("list", [], []),
    ("str", "text", "text"),
    ("int", 5, 5),
    ("int-value", {"k": 1}, {"k": 1}),
    ("null-value", {"k": None}, {"k": None}),
    ("map-value", {"k": {"nested": "x"}}, {"k": {"nested": "x"}}),
    ("int-key", {1: "v"}, {"1": 1}),
)


def device_configuration_must_map_text_to_text(fmt, config):
    def run(h):
        p, client, server = h.make(fmt)
        server.answers["register"] = (b"/accepted", h.encode(fmt, {"deviceConfiguration": config}))
        expect(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")

    return run


BAD_STATUS_CODES = (
    ("empty", {}),
    ("str", {"statusCode": "400"}),
    ("float", {"statusCode": 400.0}),
    ("bool", {"statusCode": True}),
    ("null", {"statusCode": None}),
    ("list", [400]),
    ("text", "400"),
    ("int", 400),
)


def rejected_answer_without_an_integer_status_code_is_bad_response(fmt, body):
    def run(h):
        p, client, server = h.make(fmt)
        server.answers["keys"] = (b"/rejected", h.encode(fmt, body))
        err = expect(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)
        assert err.status_code is None

    return run


MALFORMED = (
    ("empty", b""),
    ("open-brace", b"{"),
    ("not-utf8", b"\xff\xfe"),
    ("ten-zero-bytes", b"\x00" * 10),
    ("nul", b"nul"),
    ("cbor-map-head-only", b"\xa1"),
)


def malformed_or_truncated_payload_is_bad_response(fmt, suffix, payload):
    def run(h):
        p, client, server = h.make(fmt)
        server.answers["keys"] = (suffix, payload)
        expect(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)

    return run


def a_top_level_that_is_not_a_map_is_bad_response(fmt):
    def run(h):
        for body in ([1, 2], "text", 7, None):
            p, client, server = h.make(fmt)
            server.answers["keys"] = (b"/accepted", h.encode(fmt, body))
            expect(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)

    return run


for _fmt in FORMATS:
    for _op, _fields in (("keys", KEYS_FIELDS), ("csr", CSR_FIELDS)):
        for _field in _fields:
            add("accepted_answer_missing_{}_is_bad_response-{}-{}".format(_field, _op, _fmt),
                answer_missing_a_required_field_is_bad_response(_fmt, _op, _field))
            add("accepted_{}_of_the_wrong_type_is_bad_response-{}-{}".format(_field, _op, _fmt),
                answer_field_of_the_wrong_type_is_bad_response(_fmt, _op, _field))
    add("thing_name_that_is_not_text_is_bad_response-" + _fmt,
        thing_name_that_is_not_text_is_bad_response(_fmt))
    add("thing_name_outside_aws_rule_is_bad_response-" + _fmt, thing_name_outside_aws_rule_is_bad_response(_fmt))
    add("request_on_a_topic_of_ones_own_returns_the_accepted_map-" + _fmt,
        request_on_a_topic_of_ones_own_returns_the_accepted_map(_fmt))
    add("request_rejected_is_server_refused_with_the_servers_fields-" + _fmt,
        request_rejected_is_server_refused_with_the_servers_fields(_fmt))
    for _op in ("keys", "csr"):
        add("certificate_id_outside_aws_rule_is_bad_response-{}-{}".format(_op, _fmt),
            certificate_id_outside_aws_rule_is_bad_response(_fmt, _op))
    for _name, _cbor_config, _json_config in BAD_CONFIGS:
        add("device_configuration_must_map_text_to_text-{}-{}".format(_name, _fmt),
            device_configuration_must_map_text_to_text(_fmt, _cbor_config if _fmt == "cbor" else _json_config))
    for _name, _body in BAD_STATUS_CODES:
        add("rejected_answer_without_an_integer_status_code_is_bad_response-{}-{}".format(_name, _fmt),
            rejected_answer_without_an_integer_status_code_is_bad_response(_fmt, _body))
    for _suffix in (b"/accepted", b"/rejected"):
        for _name, _payload in MALFORMED:
            add("malformed_or_truncated_payload_is_bad_response-{}-{}-{}".format(
                _name, _suffix[1:].decode(), _fmt),
                malformed_or_truncated_payload_is_bad_response(_fmt, _suffix, _payload))
    add("a_top_level_that_is_not_a_map_is_bad_response-" + _fmt,
        a_top_level_that_is_not_a_map_is_bad_response(_fmt))


@case
def cbor_device_configuration_with_a_byte_string_value_is_bad_response(h):
    p, client, server = h.make("cbor")
    server.answers["register"] = (b"/accepted", h.encode("cbor", {"deviceConfiguration": {"k": b"v"}}))
    expect(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")


@case
def rejected_error_fields_of_the_wrong_type_are_dropped_not_fatal(h):
    p, client, server = h.make("cbor")
    body = {"statusCode": 429, "errorCode": 5, "errorMessage": b"x"}
    server.answers["keys"] = (b"/rejected", h.encode("cbor", body))
    err = expect(fleetprov.SERVER_REFUSED, p.create_keys_and_certificate)
    assert (err.status_code, err.error_code, err.error_message) == (429, None, None)


@case
def cbor_answer_with_trailing_bytes_decodes_the_first_item(h):
    p, client, server = h.make("cbor")
    server.answers["register"] = (b"/accepted", h.encode("cbor", {"thingName": "t1"}) + b"\xff\x00garbage")
    assert p.register_thing("demo", "tok").thing_name == "t1"


@case
def cbor_indefinite_length_answer_is_accepted(h):
    p, client, server = h.make("cbor")
    # indefinite map {"thingName": indefinite text "t" "1"}
    text = b"\x7f" + h.encode("cbor", "t") + h.encode("cbor", "1") + b"\xff"
    body = b"\xbf" + h.encode("cbor", "thingName") + text + b"\xff"
    server.answers["register"] = (b"/accepted", body)
    assert p.register_thing("demo", "tok").thing_name == "t1"


@case
def deeply_nested_cbor_answer_is_bad_response_not_a_crash(h):
    p, client, server = h.make("cbor")
    server.answers["register"] = (b"/accepted", b"\x81" * 5000 + b"\x00")
    expect(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")


@case
def cbor_length_beyond_the_buffer_is_bad_response(h):
    p, client, server = h.make("cbor")
    # a map whose key claims 2**40 bytes of text
    server.answers["register"] = (b"/accepted", b"\xa1\x7b\x00\x00\x01\x00\x00\x00\x00\x00abc")
    expect(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")


# -- timing and ordering -------------------------------------------------------------


@case
def no_answer_within_the_deadline_is_timeout_naming_the_topic(h):
    p, client, server = h.make()
    server.silent = True
    err = expect(fleetprov.TIMEOUT, p.create_keys_and_certificate, timeout_ms=30)
    assert "$aws/certificates/create/json" in str(err) and "30 ms" in str(err), str(err)
    # cleaned up after the timeout as after an answer
    assert server.unsubscribed() == unsubscribed_if_it_can(h, both(request_topic("keys", "json")))


@case
def an_answer_after_a_timeout_does_not_leak_into_the_next_operation(h):
    seen = []
    p, client, server = h.make(app=lambda topic, msg: seen.append(topic))
    server.silent = True
    expect(fleetprov.TIMEOUT, p.create_keys_and_certificate, timeout_ms=20)
    server.silent = False
    # the late answer to the keys request arrives after the register request
    late = (request_topic("keys", "json") + b"/accepted", server.dumps(server.accepted("keys")))
    server.answers["register"] = [late, (b"/accepted", server.dumps(server.accepted("register")))]
    assert p.register_thing("demo", "tok").thing_name == "thing-0001"
    assert seen == []  # a stale provisioning answer is nobody's business


@case
def an_answer_waiting_before_the_request_is_published_is_ignored(h):
    p, client, server = h.make()
    stale = server.message(request_topic("keys", "json") + b"/rejected", server.rejected(500, "Stale", "old"))
    server.then(SUBSCRIBE, usual)
    server.then(SUBSCRIBE, reply_then(send(stale)))  # read by the drain before the request
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


@case
def a_stale_answer_read_while_subscribing_is_ignored(h):
    p, client, server = h.make()
    client.sock.feed(server.message(request_topic("keys", "json") + b"/accepted", b'{"certificateId": 1}'))
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


@case
def an_answer_arriving_while_waiting_for_puback_counts(h):
    p, client, server = h.make()
    server.answer_first = True
    assert p.register_thing("demo", "tok").thing_name == "thing-0001"


@case
def only_the_first_of_duplicated_answers_counts(h):
    p, client, server = h.make()
    server.answers["register"] = [
        (b"/accepted", h.encode("json", {"thingName": "first"})),
        (b"/rejected", server.rejected(500, "Dup", "second")),
    ]
    assert p.register_thing("demo", "tok").thing_name == "first"
    # the duplicate left on the link spoils nothing that follows
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


@case
def a_late_duplicate_of_the_previous_certificate_is_not_the_next_answer(h):
    # umqtt < 1.7 cannot unsubscribe: a duplicate of the first answer may arrive
    # after the second request is published, before that request's own answer
    p, client, server = h.make()

    def keys(cert_id):
        body = {"certificateId": cert_id, "certificatePem": "pem", "certificateOwnershipToken": "tok",
                "privateKey": "key"}
        return (b"/accepted", h.encode("json", body))

    def answer(s, op):
        if len(s.requests) == 1:
            return [keys("a" * 64)]
        return [keys("a" * 64), keys("b" * 64)]

    server.answers["keys"] = answer
    assert p.create_keys_and_certificate().certificate_id == "a" * 64
    assert p.create_keys_and_certificate().certificate_id == "b" * 64


@case
def messages_on_other_topics_reach_the_applications_callback(h):
    seen = []

    def app(topic, msg):
        seen.append((topic, msg))

    p, client, server = h.make(app=app)
    client.sock.feed(server.message(b"app/before", b"1"))
    server.answers["keys"] = lambda s, op: [(b"app/during", b"2"),
                                            (b"/accepted", s.dumps(s.accepted("keys")))]
    p.create_keys_and_certificate()
    assert seen == [(b"app/before", b"1"), (b"app/during", b"2")], seen
    # QoS 1 application messages are acknowledged like the answer
    assert [pk.pid for pk in server.of_kind(PUBACK)] == [1, 2, 3]
    p.close()
    assert client.cb is app


@case
def a_message_on_another_topic_without_an_application_callback_is_dropped(h):
    p, client, server = h.make()
    client.sock.feed(server.message(b"app/x", b"1"))
    assert p.create_keys_and_certificate().certificate_id == "c" * 64
    assert [pk.pid for pk in server.of_kind(PUBACK)] == [1, 2]  # read and acknowledged all the same


@case
def close_restores_a_missing_callback_as_none(h):
    p, client, server = h.make()
    assert client.cb is not None
    p.close()
    assert client.cb is None


@case
def a_late_answer_after_the_operation_never_reaches_the_application(h):
    seen = []
    p, client, server = h.make(app=lambda topic, msg: seen.append(topic))
    p.create_keys_and_certificate()
    client.sock.feed(server.message(request_topic("keys", "json") + b"/accepted", b"{}"))
    client.check_msg()
    assert seen == [] and client.sock.inbox == b""


@case
def a_flood_of_stray_packets_still_times_out_at_the_deadline(h):
    # umqtt returns the type of every non-PUBLISH packet from check_msg(); a
    # broker sending strays without end once kept the wait alive for ever
    p, client, server = h.make(timeout_ms=100)
    server.silent = True
    server.then(PUBLISH, reply_then(flood))
    expect(fleetprov.TIMEOUT, p.create_keys_and_certificate)
    assert client.sock.reads > 16, client.sock.reads  # it kept reading: strays are not "idle"


@case
def a_silent_server_is_read_once_per_wait_slice_not_in_a_busy_loop(h):
    p, client, server = h.make(timeout_ms=200)
    server.silent = True
    reads_at_publish = []
    server.then(PUBLISH, reply_then(lambda s, sock, pk: reads_at_publish.append(sock.reads)))
    expect(fleetprov.TIMEOUT, p.create_keys_and_certificate)
    # the PUBACK (3 reads), one read per 50 ms slice, one last look, the unsubscribes (4)
    reads = client.sock.reads - reads_at_publish[0]
    assert reads <= 3 + 200 // 50 + 2 + 4, reads


# -- memory ----------------------------------------------------------------------


@case
def an_answer_larger_than_the_receive_buffer_is_no_memory_naming_both_sizes(h):
    p, client, server = h.make(rx_size=1024)
    err = expect(fleetprov.NO_MEMORY, p.create_keys_and_certificate)
    size = len(server.dumps(server.accepted("keys")))
    assert str(size) in str(err) and "1024" in str(err) and "rx_size" in str(err), str(err)


@case
def an_answer_exactly_the_buffer_size_fits(h):
    body = h.encode("json", {"thingName": "t"})
    p, client, server = h.make(rx_size=len(body))
    server.answers["register"] = (b"/accepted", body)
    assert p.register_thing("demo", "tok").thing_name == "t"


@case
def memory_error_on_the_link_is_no_memory(h):
    p, client, server = h.make()
    server.then(PUBLISH, ack_then(break_link(MemoryError)))
    expect(fleetprov.NO_MEMORY, p.create_keys_and_certificate)


# -- MQTT failures -------------------------------------------------------------------

# Where the link fails: instead of the SUBACK, instead of the PUBACK, or
# after the PUBACK instead of the answer; and the words naming that step.
PHASES = (
    ("subscribe", SUBSCRIBE, lambda fault: fault, "subscribe"),
    ("publish", PUBLISH, lambda fault: fault, "publish"),
    ("answer", PUBLISH, ack_then, "reading from the server"),
)
FAULTS = (
    ("reset", break_link(errno.ECONNRESET)),
    ("closed", hang_up),
)


def a_link_failing_is_mqtt_error_and_a_reconnect_recovers(kind, wrap, words, fault):
    def run(h):
        p, client, server = h.make()
        server.then(kind, wrap(fault))
        err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
        assert words in str(err) and "reconnect and retry" in str(err), str(err)
        h.connect(client, server)
        assert p.create_keys_and_certificate().certificate_id == "c" * 64

    return run


for _phase, _kind, _wrap, _words in PHASES:
    for _fault_name, _fault in FAULTS:
        add("a_link_{}_at_{}_is_mqtt_error_and_a_reconnect_recovers".format(_fault_name, _phase),
            a_link_failing_is_mqtt_error_and_a_reconnect_recovers(_kind, _wrap, _words, _fault))


def a_dropped_link_is_an_mqtt_error_named_by_errno(table, kind, wrap, name):
    # ENOTCONN is 128 == 0x80 on an ESP32: once read as "SUBACK refused"
    def run(h):
        saved = timedsock.errno
        timedsock.errno = table  # the port's errno names, as fleetprov reports them
        try:
            number = getattr(table, name)
            p, client, server = h.make()
            server.then(kind, wrap(break_link(number)))
            err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
        finally:
            timedsock.errno = saved
        text = str(err)
        assert "OSError {} ({})".format(name, number) in text, text
        assert "reconnect and retry" in text, text
        assert "SUBACK" not in text and "policy" not in text, text

    return run


for _numbering, _table in (("linux", errno), ("esp32", esp32errno)):
    for _phase, _kind, _wrap, _words in PHASES:
        for _name in ("ETIMEDOUT", "ENOTCONN", "ECONNRESET"):
            add("a_dropped_link_at_{}_is_mqtt_error_named_{}-{}".format(_phase, _name, _numbering),
                a_dropped_link_is_an_mqtt_error_named_by_errno(_table, _kind, _wrap, _name))


@case
def a_refused_subscription_names_the_claim_policy(h):
    p, client, server = h.make()
    server.then(SUBSCRIBE, refuse)
    err = expect(fleetprov.MQTT_ERROR, p.create_certificate_from_csr, CSR)
    text = str(err)
    assert "SUBACK 0x80" in text and "iot:Subscribe" in text and "create-from-csr" in text, text
    assert server.published() == [] and server.unsubscribed() == []


@case
def failure_of_the_second_subscription_undoes_the_first(h):
    p, client, server = h.make()
    server.then(SUBSCRIBE, usual)
    server.then(SUBSCRIBE, refuse)
    expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert server.published() == []
    assert server.unsubscribed() == unsubscribed_if_it_can(h, both(request_topic("keys", "json"))[:1])


@case
def a_suback_for_another_packet_is_mqtt_error_not_a_refusal(h):
    p, client, server = h.make()
    server.then(SUBSCRIBE, send(suback(99)))
    err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "subscribe" in str(err) and "SUBACK" not in str(err), str(err)


@case
def a_malformed_puback_is_mqtt_error_not_a_refusal(h):
    p, client, server = h.make()
    server.then(PUBLISH, send(b"\x40\x03\x00\x03\x00"))
    err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "publish" in str(err) and "SUBACK" not in str(err), str(err)


@case
def an_unanswered_subscribe_is_mqtt_error_at_the_mqtt_timeout(h):
    p, client, server = h.make(mqtt_timeout_ms=50)
    server.then(SUBSCRIBE, silence)
    err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "subscribe" in str(err) and "ETIMEDOUT" in str(err), str(err)


@case
def an_unacknowledged_publish_is_mqtt_error_at_the_mqtt_timeout(h):
    p, client, server = h.make(mqtt_timeout_ms=50)
    server.then(PUBLISH, silence)
    err = expect(fleetprov.MQTT_ERROR, p.register_thing, "demo", "tok")
    assert "publish" in str(err) and "ETIMEDOUT" in str(err), str(err)


@case
def a_peer_that_stops_reading_is_mqtt_error_at_the_mqtt_timeout(h):
    # a half-open link: the peer's window fills and writes take nothing
    p, client, server = h.make(mqtt_timeout_ms=50)
    client.sock.stall()
    err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "subscribe" in str(err) and "ETIMEDOUT" in str(err), str(err)


@case
def a_peer_that_reads_slowly_still_gets_every_byte(h):
    p, client, server = h.make()
    client.sock.stall(3)  # the first three writes take nothing
    assert p.create_keys_and_certificate().certificate_id == "c" * 64
    assert [pk.kind for pk in server.packets][:3] == [SUBSCRIBE, SUBSCRIBE, PUBLISH]


@case
def each_mqtt_operation_gets_its_own_mqtt_timeout(h):
    # four writes refused per operation: the first three each wait out a
    # 20 ms poll slice, 60 ms of an operation's 150 ms but 180 ms of one
    # budget shared by the three operations
    p, client, server = h.make(mqtt_timeout_ms=150)

    def slow_next_operation(s, sock, packet):
        sock.stall(4)

    client.sock.stall(4)
    server.then(SUBSCRIBE, reply_then(slow_next_operation))
    server.then(SUBSCRIBE, reply_then(slow_next_operation))
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


@case
def after_a_timeout_the_unsubscribes_get_a_slice_not_a_whole_mqtt_timeout(h):
    p, client, server = h.make(timeout_ms=30, mqtt_timeout_ms=5000)
    server.silent = True
    server.then(UNSUBSCRIBE, silence)
    start = runtime.ticks_ms()
    expect(fleetprov.TIMEOUT, p.create_keys_and_certificate)
    elapsed = runtime.ticks_diff(runtime.ticks_ms(), start)
    assert elapsed < 2500, elapsed  # 30 ms, then one 50 ms slice for the silent UNSUBACK
    assert len(server.unsubscribed()) == (1 if h.unsubscribes else 0)


@case
def a_flood_cannot_stretch_the_mqtt_timeout(h):
    p, client, server = h.make(mqtt_timeout_ms=50)
    server.then(SUBSCRIBE, flood)
    err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "subscribe" in str(err) and "ETIMEDOUT" in str(err), str(err)


def cut_answer(server, request):
    answer = server.answer(request)
    return puback(request.pid) + answer[: len(answer) // 2]


@case
def an_answer_cut_short_then_silence_is_mqtt_error_at_the_mqtt_timeout(h):
    p, client, server = h.make(mqtt_timeout_ms=50)
    server.then(PUBLISH, lambda s, sock, request: sock.feed(cut_answer(s, request)))
    err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "reading" in str(err) and "ETIMEDOUT" in str(err), str(err)


@case
def a_link_closed_inside_a_packet_header_is_mqtt_error(h):
    # umqtt indexes the empty read for the length byte (IndexError in 1.3.4)
    p, client, server = h.make()

    def reply(s, sock, request):
        sock.feed(puback(request.pid) + b"\x32")
        sock.hang_up()

    server.then(PUBLISH, reply)
    err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "reading from the server" in str(err) and "reconnect and retry" in str(err), str(err)


@case
def a_link_closed_in_the_middle_of_the_answer_is_mqtt_error(h):
    # umqtt would hand the cut answer on as whole; timedsock raises
    # ECONNRESET instead, so it is a dead link (retried), not BAD_RESPONSE
    p, client, server = h.make()

    def reply(s, sock, request):
        sock.feed(cut_answer(s, request))
        sock.hang_up()

    server.then(PUBLISH, reply)
    err = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "ECONNRESET" in str(err) and "reconnect and retry" in str(err), str(err)


@case
def an_unsubscribe_failing_after_the_answer_keeps_the_credentials(h):
    p, client, server = h.make()
    server.then(UNSUBSCRIBE, break_link(errno.ECONNRESET))
    assert p.create_keys_and_certificate().private_key.startswith("-----BEGIN")
    # after the first failure fleetprov stops: the link is broken
    assert len(server.unsubscribed()) == (1 if h.unsubscribes else 0)


@case
def an_unanswered_unsubscribe_keeps_the_credentials(h):
    p, client, server = h.make(mqtt_timeout_ms=50)
    server.then(UNSUBSCRIBE, silence)
    assert p.create_keys_and_certificate().private_key.startswith("-----BEGIN")
    assert len(server.unsubscribed()) == (1 if h.unsubscribes else 0)


@case
def the_socket_is_handed_back_unwrapped_and_blocking(h):
    p, client, server = h.make(timeout_ms=20, mqtt_timeout_ms=50)
    sock = client.sock
    p.create_keys_and_certificate()
    assert client.sock is sock and sock.blocking
    server.silent = True
    expect(fleetprov.TIMEOUT, p.create_keys_and_certificate)
    assert client.sock is sock and sock.blocking
    server.then(SUBSCRIBE, silence)
    expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert client.sock is sock and sock.blocking


@case
def the_applications_own_callback_error_propagates_unchanged(h):
    class AppBug(Exception):
        pass

    def app(topic, msg):
        raise AppBug(topic)

    p, client, server = h.make(app=app)
    server.answers["keys"] = [(b"app/x", b"1")]  # an application message instead of the answer
    try:
        p.create_keys_and_certificate()
    except AppBug:
        pass
    else:
        raise AssertionError("the application's exception did not reach the caller")
    del server.answers["keys"]
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


# -- re-entrancy and lifecycle -----------------------------------------------------------


@case
def an_operation_started_from_inside_another_is_bad_parameter(h):
    inner = []
    box = []

    def app(topic, msg):
        for call in (lambda: box[0].register_thing("demo", "tok"), lambda: box[0].close()):
            try:
                call()
            except ProvisioningError as exc:
                inner.append(exc)

    p, client, server = h.make(app=app)
    box.append(p)
    client.sock.feed(server.message(b"app/x", b"1"))
    p.create_keys_and_certificate()
    assert [e.status for e in inner] == [fleetprov.BAD_PARAMETER, fleetprov.BAD_PARAMETER]
    assert "in progress" in str(inner[0])
    assert len(server.published()) == 1


@case
def calls_after_close_are_not_initialized_and_close_is_idempotent(h):
    p, client, server = h.make()
    p.close()
    p.close()
    for op in OPS:
        expect(fleetprov.NOT_INITIALIZED, run_op, p, op)
    nothing_sent(client)


@case
def set_callback_failing_is_init_failed(h):
    class Broken(h.client_class):
        def set_callback(self, f):
            raise OSError(5)

    expect(fleetprov.INIT_FAILED, fleetprov.Provisioner, Broken(b"broken", "127.0.0.1"))


# -- argument validation -------------------------------------------------------------

BAD_CONSTRUCTOR_ARGS = (
    ("fmt-xml", {"fmt": "xml"}),
    ("fmt-bytes", {"fmt": b"json"}),
    ("timeout_ms-0", {"timeout_ms": 0}),
    ("timeout_ms-negative", {"timeout_ms": -5}),
    ("timeout_ms-float", {"timeout_ms": 1.5}),
    ("timeout_ms-bool", {"timeout_ms": True}),
    ("rx_size-0", {"rx_size": 0}),
    ("rx_size-str", {"rx_size": "6144"}),
    ("mqtt_timeout_ms-0", {"mqtt_timeout_ms": 0}),
    ("mqtt_timeout_ms-none", {"mqtt_timeout_ms": None}),
)


def invalid_constructor_argument_is_bad_parameter(kwargs):
    def run(h):
        client = h.client(h.server())
        expect(fleetprov.BAD_PARAMETER, fleetprov.Provisioner, client, **kwargs)
        assert client.cb is None  # refused before it touched the client

    return run


for _name, _kwargs in BAD_CONSTRUCTOR_ARGS:
    add("invalid_constructor_argument_is_bad_parameter-" + _name,
        invalid_constructor_argument_is_bad_parameter(_kwargs))

SURFACE = ("set_callback", "subscribe", "publish", "check_msg")


class _Partial:
    pass


def a_client_without_the_umqtt_surface_is_bad_parameter(missing):
    def run(h):
        client = _Partial()
        for name in SURFACE:
            if name != missing:
                setattr(client, name, lambda *a: None)
        err = expect(fleetprov.BAD_PARAMETER, fleetprov.Provisioner, client)
        assert missing in str(err), str(err)

    return run


for _missing in SURFACE:
    add("a_client_without_{}_is_bad_parameter".format(_missing),
        a_client_without_the_umqtt_surface_is_bad_parameter(_missing))


def bad_argument_sends_nothing(call):
    # call(p) must be refused as BAD_PARAMETER before anything goes on the wire
    def run(h):
        p, client, server = h.make()
        expect(fleetprov.BAD_PARAMETER, call, p)
        nothing_sent(client)

    return run


BAD_TEMPLATES = (
    ("empty", ""), ("37-chars", "x" * 37), ("space", "has space"), ("semicolon", "semi;colon"),
    ("slash", "slash/"), ("plus", "plus+"), ("hash", "hash#"), ("non-ascii", "\u00fcn\u00ef"),
    ("none", None), ("int", 5), ("bytes", b"demo"),
)
BAD_TOKENS = (("empty", ""), ("none", None), ("int", 5), ("bytes", b"tok"))
BAD_PARAMETERS = (
    ("list", []), ("str", "a=b"), ("int-value", {"a": 1}), ("int-key", {1: "a"}),
    ("none-value", {"a": None}), ("bytes-value", {"a": b"b"}),
)
BAD_CSRS = (("empty", ""), ("none", None), ("int", 7))
BAD_QOS = (("2", 2), ("negative", -1), ("bool", True), ("str", "1"), ("float", 1.0))
BAD_TIMEOUTS = (("0", 0), ("negative", -1), ("float", 2.5), ("bool", True), ("str", "10"))


def _register_with_template(template):
    return lambda p: p.register_thing(template, "tok")


def _register_with_token(token):
    return lambda p: p.register_thing("demo", token)


def _register_with_parameters(parameters):
    return lambda p: p.register_thing("demo", "tok", parameters)


def _csr(csr):
    return lambda p: p.create_certificate_from_csr(csr)


def _csr_qos(qos):
    return lambda p: p.create_certificate_from_csr(CSR, qos=qos)


def _op_timeout(op, timeout):
    return lambda p: run_op(p, op, timeout_ms=timeout)


for _name, _value in BAD_TEMPLATES:
    add("invalid_template_name_is_bad_parameter-" + _name,
        bad_argument_sends_nothing(_register_with_template(_value)))
for _name, _value in BAD_TOKENS:
    add("an_empty_or_non_text_ownership_token_is_bad_parameter-" + _name,
        bad_argument_sends_nothing(_register_with_token(_value)))
for _name, _value in BAD_PARAMETERS:
    add("parameters_must_map_str_to_str-" + _name,
        bad_argument_sends_nothing(_register_with_parameters(_value)))
for _name, _value in BAD_CSRS:
    add("an_empty_or_non_text_csr_is_bad_parameter-" + _name, bad_argument_sends_nothing(_csr(_value)))
for _name, _value in BAD_QOS:
    add("qos_other_than_0_or_1_is_bad_parameter-" + _name, bad_argument_sends_nothing(_csr_qos(_value)))
for _op in OPS:
    for _name, _value in BAD_TIMEOUTS:
        add("per_call_timeout_must_be_a_positive_int-{}-{}".format(_op, _name),
            bad_argument_sends_nothing(_op_timeout(_op, _value)))


# -- secrets ---------------------------------------------------------------------------


@case
def secrets_never_appear_in_errors_or_reprs(h):
    token = "SECRET-TOKEN-" + "z" * 40
    key = "-----BEGIN RSA PRIVATE KEY-----\nSECRETKEY\n-----END RSA PRIVATE KEY-----\n"
    messages = []
    p, client, server = h.make()
    body = {"certificateId": 5, "certificatePem": "x", "privateKey": key, "certificateOwnershipToken": token}
    server.answers["keys"] = (b"/accepted", h.encode("json", body))
    messages.append(str(expect(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)))
    for bad_token in (token.encode(), 123):
        messages.append(str(expect(fleetprov.BAD_PARAMETER, p.register_thing, "demo", bad_token)))
    p2, client2, server2 = h.make()
    server2.token = token
    keys = p2.create_keys_and_certificate()
    messages += [repr(keys), repr(p2.register_thing("demo", token))]
    for text in messages:
        assert "SECRET" not in text, text
