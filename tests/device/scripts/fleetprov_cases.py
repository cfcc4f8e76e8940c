# fleetprov on the real MicroPython unix port, against the fake umqtt client.
# Prints one "ok <name>" or "FAIL <name>: <detail>" line per case and a final
# "cases: N passed, M failed" line; exits 1 if any case failed.
import json
import sys

import fleetprov
from fakemqtt import AwsResponder, FakeClient, MQTTException

FORMATS = ("json", "cbor")
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
results = [0, 0]


def check(name, fn):
    try:
        fn()
    except Exception as exc:
        results[1] += 1
        print("FAIL {}: {!r}".format(name, exc))
        sys.print_exception(exc)
    else:
        results[0] += 1
        print("ok " + name)


def make(fmt="json", **kw):
    r = AwsResponder(fmt)
    c = FakeClient(r)
    return fleetprov.Provisioner(c, fmt, **kw), c, r


def encode(fmt, obj):
    if fmt == "json":
        return json.dumps(obj).encode()
    import cbor

    return cbor.dumps(obj)


def expect(status, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except fleetprov.ProvisioningError as exc:
        assert exc.status == status, "status {} ({}), wanted {}".format(exc.status, exc, status)
        return exc
    raise AssertionError("no ProvisioningError")


def run_op(p, op):
    if op == "keys":
        return p.create_keys_and_certificate()
    if op == "csr":
        return p.create_certificate_from_csr(CSR)
    return p.register_thing("demo", "tok", {"SerialNumber": "7"})


def nominal(fmt):
    def case():
        p, c, r = make(fmt)
        keys = p.create_keys_and_certificate()
        assert keys.private_key == r.accepted("keys")["privateKey"]
        assert keys.ownership_token == r.token
        cert = p.create_certificate_from_csr(CSR)
        assert cert.private_key is None and cert.certificate_id == "c" * 64
        reg = p.register_thing("demo", keys.ownership_token, {"SerialNumber": "7"})
        assert reg.thing_name == "thing-0001" and reg.device_configuration == {"Fallback": "false"}
        topics = [t for t, _, _, _ in c.published]
        fb = fmt.encode()
        assert topics == [
            b"$aws/certificates/create/" + fb,
            b"$aws/certificates/create-from-csr/" + fb,
            b"$aws/provisioning-templates/demo/provision/" + fb,
        ], topics
        assert c.published[0][1] == (b"{}" if fmt == "json" else b"\xa0")
        assert r.requests[2][1] == {"certificateOwnershipToken": r.token, "parameters": {"SerialNumber": "7"}}

    return case


def rejected(fmt, op):
    def case():
        p, c, r = make(fmt)
        r.override[op] = (b"/rejected", r.rejected(429, "ThrottlingException", "slow down"))
        e = expect(fleetprov.SERVER_REFUSED, run_op, p, op)
        assert (e.status_code, e.error_code, e.error_message) == (429, "ThrottlingException", "slow down")

    return case


def bad_accepted(fmt, op, field, value):
    def case():
        p, c, r = make(fmt)
        body = r.accepted(op)
        if value is None:
            del body[field]
        else:
            body[field] = value
        r.override[op] = (b"/accepted", encode(fmt, body))
        e = expect(fleetprov.BAD_RESPONSE, run_op, p, op)
        assert field in str(e)

    return case


def bad_rejected(fmt, body):
    def case():
        p, c, r = make(fmt)
        r.override["keys"] = (b"/rejected", encode(fmt, body))
        expect(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)

    return case


def bad_config(fmt, config):
    def case():
        p, c, r = make(fmt)
        r.override["register"] = (b"/accepted", encode(fmt, {"deviceConfiguration": config}))
        expect(fleetprov.BAD_RESPONSE, p.register_thing, "demo", "tok")

    return case


def optional_fields(fmt):
    def case():
        p, c, r = make(fmt)
        r.override["register"] = (b"/accepted", encode(fmt, {}))
        reg = p.register_thing("demo", "tok")
        assert reg.thing_name is None and reg.device_configuration == {}

    return case


def malformed(fmt, payload):
    def case():
        p, c, r = make(fmt)
        r.override["keys"] = (b"/accepted", payload)
        expect(fleetprov.BAD_RESPONSE, p.create_keys_and_certificate)

    return case


def timeout():
    p, c, r = make()
    r.silent = True
    expect(fleetprov.TIMEOUT, p.create_keys_and_certificate, 20)


def stray_packets_end_at_the_deadline():
    # check_msg() returning a packet type for ever (a PUBACK flood) still times out
    p, c, r = make(timeout_ms=50)
    r.silent = True
    real = c.check_msg

    def stray():
        real()
        return 0x40

    c.check_msg = stray
    expect(fleetprov.TIMEOUT, p.create_keys_and_certificate)


def early_answer_ignored():
    p, c, r = make()
    c.queue(b"$aws/certificates/create/json/rejected", r.rejected(500, "Stale", "x"))
    assert p.create_keys_and_certificate().certificate_id == "c" * 64


def foreign_topics_to_app():
    r = AwsResponder()
    c = FakeClient(r)
    seen = []
    c.set_callback(lambda t, m: seen.append(t))
    p = fleetprov.Provisioner(c)
    c.queue(b"app/a", b"1")
    p.create_keys_and_certificate()
    p.close()
    assert seen == [b"app/a"], seen
    assert c.cb is not None and c.cb is not p._on_message


def oversize():
    p, c, r = make(rx_size=512)
    e = expect(fleetprov.NO_MEMORY, p.create_keys_and_certificate)
    assert "512" in str(e)


def mqtt_errors():
    for method in ("subscribe", "publish", "check_msg"):
        for exc in (OSError(104), MQTTException(5)):
            p, c, r = make()
            c.fail[method] = exc
            expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)


def dropped_link_by_errno():
    # ESP32 firmware numbers errors as newlib does (ENOTCONN 128 == 0x80, the
    # SUBACK failure code); Linux otherwise. Either way: MQTT_ERROR, named.
    import errno

    import esp32errno
    import timedsock

    try:
        for table in (errno, esp32errno):
            timedsock.errno = table
            for name in ("ETIMEDOUT", "ENOTCONN", "ECONNRESET"):
                n = getattr(table, name)
                for method in ("subscribe", "publish", "check_msg"):
                    p, c, r = make()
                    c.fail[method] = OSError(n)
                    e = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
                    msg = str(e)
                    assert "OSError {} ({})".format(name, n) in msg, msg
                    assert "SUBACK" not in msg and "policy" not in msg, msg
    finally:
        timedsock.errno = errno
    p, c, r = make()
    c.fail["subscribe"] = MQTTException(0x80)  # what umqtt raises for a refusal
    e = expect(fleetprov.MQTT_ERROR, p.create_keys_and_certificate)
    assert "SUBACK 0x80" in str(e) and "iot:Subscribe" in str(e), str(e)


def reentrancy_and_close():
    r = AwsResponder()
    c = FakeClient(r)
    box = []
    errors = []

    def app(t, m):
        try:
            box[0].create_keys_and_certificate()
        except fleetprov.ProvisioningError as exc:
            errors.append(exc.status)

    c.set_callback(app)
    box.append(fleetprov.Provisioner(c))
    c.queue(b"app/x", b"1")
    box[0].register_thing("demo", "tok")
    assert errors == [fleetprov.BAD_PARAMETER], errors
    box[0].close()
    expect(fleetprov.NOT_INITIALIZED, box[0].create_keys_and_certificate)


def validation():
    p, c, r = make()
    for bad in ("", "x" * 37, "a b", "a/b", None):
        expect(fleetprov.BAD_PARAMETER, p.register_thing, bad, "tok")
    expect(fleetprov.BAD_PARAMETER, p.register_thing, "demo", "")
    expect(fleetprov.BAD_PARAMETER, p.register_thing, "demo", "tok", {"a": 1})
    expect(fleetprov.BAD_PARAMETER, p.create_certificate_from_csr, "")
    expect(fleetprov.BAD_PARAMETER, p.create_certificate_from_csr, CSR, 2)
    expect(fleetprov.BAD_PARAMETER, p.create_keys_and_certificate, 0)
    expect(fleetprov.BAD_PARAMETER, fleetprov.Provisioner, FakeClient(), "xml")
    assert c.published == []


def strerror():
    assert fleetprov.strerror(fleetprov.TIMEOUT) == "TIMEOUT"
    assert fleetprov.strerror(99) == "INVALID STATUS"
    assert len(set(fleetprov.strerror(s) for s in range(1, 11))) == 10


for fmt in FORMATS:
    check("nominal-" + fmt, nominal(fmt))
    check("optional-fields-" + fmt, optional_fields(fmt))
    for op in ("keys", "csr", "register"):
        check("rejected-{}-{}".format(op, fmt), rejected(fmt, op))
    wrong = [1, True, [], None] + ([b"bytes"] if fmt == "cbor" else [])
    for op, fields in (("keys", ("certificateId", "certificatePem", "privateKey", "certificateOwnershipToken")),
                       ("csr", ("certificateId", "certificatePem", "certificateOwnershipToken"))):
        for field in fields:
            for value in wrong:
                check("bad-{}-{}-{!r}-{}".format(op, field, value, fmt), bad_accepted(fmt, op, field, value))
    for body in ({}, {"statusCode": "400"}, {"statusCode": 400.5}, {"statusCode": True}, [1]):
        check("bad-rejected-{!r}-{}".format(body, fmt), bad_rejected(fmt, body))
    for config in ([], "x", {"k": 1}, {"k": None}):
        check("bad-config-{!r}-{}".format(config, fmt), bad_config(fmt, config))
    for payload in (b"", b"{", b"\xff", b"\x81" * 100, b"\x7b\xff\xff\xff\xff\xff\xff\xff\xff"):
        check("malformed-{}-{}".format(payload[:4], fmt), malformed(fmt, payload))
for name, fn in (("timeout", timeout), ("stray-packets-end-at-the-deadline", stray_packets_end_at_the_deadline),
                 ("early-answer-ignored", early_answer_ignored),
                 ("foreign-topics-to-app", foreign_topics_to_app), ("oversize", oversize),
                 ("mqtt-errors", mqtt_errors), ("dropped-link-by-errno", dropped_link_by_errno),
                 ("reentrancy-and-close", reentrancy_and_close),
                 ("validation", validation), ("strerror", strerror)):
    check(name, fn)

print("cases: {} passed, {} failed".format(results[0], results[1]))
sys.exit(1 if results[1] else 0)
