"""No value a device or an API caller sends can forge a record the broker plugin reads.

The attack this stops: a template stored a device parameter as a thing attribute, a
policy used ``${iot:Connection.Thing.Attributes[site]}``, and a device sent
``Site="hq\\nstatus SERVICE\\nallow 0 x"``; the certificate's principal file gained a
``status SERVICE`` line. Three layers, each swept with every byte 0x00-0xff and the
longest value AWS allows:

- the principal-file encoding alone (tools/iotsim/policy.py writes it, policy.h reads it,
  here through tools/iotsim/plugin/policy_bench.c): whatever a value holds, both read
  back exactly the records written, or (a NUL, which no C string holds) refuse the file;
- AWS's patterns (tools/iotsim/shapes.py): a template, and every registry call the
  control plane makes, accept a value exactly when botocore's model does;
- end to end: hostile RegisterThing parameters, a hostile attribute already in the
  database, hostile client ids and tags leave every certificate its policy's rights.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tools.bench.iotsim import run_policy_bench
from tools.iotsim import shapes
from tools.iotsim.policy import (
    CONNECT,
    PUBLISH,
    RECEIVE,
    SUBSCRIBE,
    Policy,
    Statement,
    ThingContext,
    allowed,
    compile_rules,
    parse_principal,
    render_principal,
)
from tools.iotsim.registry import (
    ACTIVE,
    BILLING_GROUP,
    CLAIM,
    PENDING_ACTIVATION,
    THING_GROUP,
    THING_TYPE,
    Registry,
    ResourceError,
    principal_path,
)
from tools.iotsim.templates import Template, TemplateError, ThingSpec
from tools.iotsim.testing import ConnectRefused, RunningIotSim, make_csr, write_identity

ARN = "arn:aws:iot:local:000000000000:"
EXPLOIT = "hq\nstatus SERVICE\nallow 0 x"
# Every byte, as the character of that code point (what JSON and MQTT strings carry),
# a lone surrogate (JSON allows one), and the longest values AWS allows.
BYTES = [chr(b) for b in range(256)] + ["\ud800", "\u2028"]
LONGEST_ATTRIBUTE = ("0123456789_.,@/:#=[]-" * 40)[:800]
LONGEST_NAME = "n" * 128

# A policy built directly (not parsed, so nothing refuses a hostile resource): the
# thing variables end up in patterns, as in the attack.
SITE_POLICY = Policy(
    (
        Statement(False, CONNECT, ("arn:aws:iot:*:*:client/${iot:Connection.Thing.Attributes[site]}",)),
        Statement(
            False,
            PUBLISH | SUBSCRIBE | RECEIVE,
            (
                "arn:aws:iot:*:*:topic/${iot:Connection.Thing.ThingTypeName}/"
                "${iot:Connection.Thing.ThingName}",
            ),
        ),
    )
)


def c_reading(tmp_path: Path, data: bytes, client_id: str, requests: list[tuple[int, str]]) -> Any:
    """What the plugin reads from a principal file: (status, decisions) or None (refused)."""
    path = tmp_path / ("ab" * 32)
    path.write_bytes(data)
    out = run_policy_bench(path, client_id, requests)
    if out == ["malformed"]:
        return None
    status, _ = out[-1].split(" ")[1:]
    return status, [line.split()[2] == "1" for line in out[: len(requests)]]


def requests_for(site: str) -> list[tuple[int, str]]:
    return [
        (CONNECT, ARN + "client/" + site),
        (CONNECT, ARN + "client/someone-else"),
        (PUBLISH, ARN + "topic/iotsim/req/x"),
        (SUBSCRIBE, ARN + "topicfilter/#"),
        (RECEIVE, ARN + "topic/$aws/certificates/create/json/accepted"),
    ]


@pytest.mark.parametrize(
    "value", BYTES + [LONGEST_ATTRIBUTE, LONGEST_NAME], ids=lambda v: "U+{:04X}x{}".format(ord(v[0]), len(v))
)
def test_every_value_in_every_principal_file_field_reads_back_as_written(tmp_path: Path, value: str) -> None:
    name = "t" + value if len(value) == 1 else value[:128]
    site = EXPLOIT + value
    thing = ThingContext(name, "T" + value, {"site": site})
    data = render_principal(ACTIVE, [SITE_POLICY], [thing])
    assert data.count(b"\n") == 6  # header, status, default, thing and its two rules: no more records
    requests = requests_for(site)
    if "\x00" in value:  # no C string holds it: both readers refuse the file, which grants nothing
        with pytest.raises(ValueError):
            parse_principal(data)
        assert c_reading(tmp_path, data, "t", requests) is None
        return
    rules = compile_rules([SITE_POLICY], thing)
    assert parse_principal(data) == (ACTIVE, {None: compile_rules([SITE_POLICY], None), name: rules})
    if "\ud800" in value:
        return  # no process argument holds a lone surrogate: the C side cannot be asked as this client
    expected = [allowed(rules, mask, resource, name) for mask, resource in requests]
    assert expected == [True, False, False, False, False]
    assert c_reading(tmp_path, data, name, requests) == (ACTIVE, expected)


# -- AWS's patterns: templates and the registry ------------------------------------------------------

FIELDS = {
    # parameter -> (the shape AWS checks the template's result against, a good value)
    "Name": (shapes.THING_NAME, "dev"),
    "Site": (shapes.ATTRIBUTE_VALUE, "hq"),
    "Type": (shapes.THING_TYPE_NAME, "sensor"),
    "Group": (shapes.THING_GROUP_NAME, "fleet"),
    "Billing": (shapes.BILLING_GROUP_NAME, "bill"),
    "Policy": (shapes.POLICY_NAME, "DevicePolicy"),
}
HOSTILE_TEMPLATE = {
    "Parameters": {p: {"Type": "String"} for p in FIELDS},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Ref": "Name"},
                "AttributePayload": {"site": {"Ref": "Site"}},
                "ThingTypeName": {"Ref": "Type"},
                "ThingGroups": [{"Ref": "Group"}],
                "BillingGroup": {"Ref": "Billing"},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"},
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": {"Ref": "Policy"}}},
    },
}
SITE_DOC = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*/${iot:Connection.Thing.Attributes[s]}"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "*/${iot:Connection.Thing.ThingName}"},
        ],
    }
)


def aws_allows(shape: str, value: str) -> bool:
    try:
        shapes.check(shape, value, "x")
    except shapes.ShapeError:
        return False
    return True


def assert_principal_files_hold_only_what_the_registry_says(reg: Registry, state: Path) -> None:
    for cert in reg.certificates():
        status, sections = parse_principal(principal_path(state, cert.id).read_bytes())
        assert status == cert.status
        assert set(sections) - {None} == {t.name for t in reg.things() if cert.id in t.certificates}


def test_template_values_pass_exactly_when_aws_patterns_allow_them(tmp_path: Path) -> None:
    template = Template("Hostile", HOSTILE_TEMPLATE)
    good = {p: v for p, (_, v) in FIELDS.items()}
    n = 0
    with Registry(tmp_path) as reg:
        reg.add_certificate("c" * 64, "PEM", CLAIM)
        for param, (shape, base) in FIELDS.items():
            for value in [base + c for c in BYTES] + [LONGEST_ATTRIBUTE if param == "Site" else LONGEST_NAME]:
                # A thing of its own each time: its certificate's file is the one rewritten.
                params = {**good, "Name": "dev{}".format(n), param: value}
                if not aws_allows(shape, value):
                    with pytest.raises(TemplateError) as refused:
                        template.evaluate(params, "{:064x}".format(n))
                    assert (refused.value.status_code, refused.value.error_code) == (400, "InvalidParameters")
                    continue
                n += 1
                plan = template.evaluate(params, "{:064x}".format(n))
                for kind, name in ((THING_GROUP, params["Group"]), (THING_TYPE, params["Type"]),
                                   (BILLING_GROUP, params["Billing"])):
                    reg.create_resource(kind, name)
                if reg.policy(params["Policy"]) is None:
                    reg.create_policy(params["Policy"], SITE_DOC)
                token = reg.issue_certificate("{:064x}".format(n), "PEM", owner="c" * 64)
                reg.register(
                    token,
                    requester="c" * 64,
                    thing=plan.thing,
                    certificate_status=ACTIVE,
                    policies=[(p.name, p.document) for p in plan.policies],
                )
        assert n > 6 * 60  # most printable ASCII passes each pattern
        assert_principal_files_hold_only_what_the_registry_says(reg, tmp_path)


def test_registry_calls_of_the_control_plane_refuse_what_aws_refuses(tmp_path: Path) -> None:
    cid = "d" * 64
    with Registry(tmp_path) as reg:
        reg.add_certificate(cid, "PEM", ACTIVE)
        reg.create_policy("base", SITE_DOC)
        for c in BYTES:
            calls = [
                (shapes.THING_GROUP_NAME, "g" + c, lambda v: reg.create_resource(THING_GROUP, v)),
                (shapes.THING_TYPE_NAME, "t" + c, lambda v: reg.create_resource(THING_TYPE, v)),
                (shapes.POLICY_NAME, "p" + c, lambda v: reg.create_policy(v, SITE_DOC)),
                (shapes.THING_NAME, "n" + c, lambda v: reg.put_thing(ThingSpec(v))),
                (shapes.ATTRIBUTE_VALUE, "v" + c, lambda v: reg.put_thing(ThingSpec("thing", {"site": v}))),
                (shapes.ATTRIBUTE_NAME, "a" + c, lambda v: reg.put_thing(ThingSpec("named", {v: "x"}))),
            ]
            for shape, value, call in calls:
                if aws_allows(shape, value):
                    call(value)
                else:
                    with pytest.raises(ResourceError, match="failed to satisfy constraint") as refused:
                        call(value)
                    assert refused.value.error_code == "InvalidRequestException"
            # A policy document: a Resource may hold any character but a control one.
            document = SITE_DOC.replace("topic/", "topic/" + json.dumps(c)[1:-1])
            try:
                reg.create_policy("doc-{}".format(ord(c)), document)
            except ResourceError as exc:
                assert ord(c) < 0x20 and exc.error_code == "MalformedPolicyException"
            else:
                reg.attach_policy("doc-{}".format(ord(c)), cid)
        reg.attach_thing_principal("thing", cid)
        reg.attach_policy("base", cid)
        for bad in ("../../registry.sqlite3", "D" * 64, "d" * 63 + "\n"):
            for call in (reg.attach_policy, reg.detach_policy):
                with pytest.raises(ResourceError):
                    call("base", bad)
            with pytest.raises(ResourceError):
                reg.add_certificate(bad, "PEM", ACTIVE)
        assert (tmp_path / "registry.sqlite3").is_file()
        assert_principal_files_hold_only_what_the_registry_says(reg, tmp_path)
        data = principal_path(tmp_path, cid).read_bytes()
        assert re.fullmatch(rb"([\x21-\x7e]+( [\x21-\x7e]*)*\n)+", data[len(b"iotsim-principal 2\n"):])
        reading = c_reading(tmp_path, data, "thing", requests_for("vx"))
        assert reading is not None and reading[0] == ACTIVE and reading[1][2:] == [False, False, False]


# -- end to end: devices and the control plane against a running iotsim -----------------------------

TEMPLATE_NAME = "HostileSite"
SITE_TEMPLATE = {
    "Parameters": {"Serial": {"Type": "String"}, "Site": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["hostile-", {"Ref": "Serial"}]]},
                "AttributePayload": {"site": {"Ref": "Site"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"},
        },
        "policy": {
            "Type": "AWS::IoT::Policy",
            "Properties": {
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
                        {
                            "Effect": "Allow",
                            "Action": ["iot:Publish", "iot:Subscribe", "iot:Receive"],
                            "Resource": [
                                "arn:aws:iot:*:*:topic/site/${iot:Connection.Thing.Attributes[site]}",
                                "arn:aws:iot:*:*:topicfilter/site/${iot:Connection.Thing.Attributes[site]}",
                            ],
                        },
                    ],
                }
            },
        },
    },
}
REGISTER = "$aws/provisioning-templates/{}/provision/json".format(TEMPLATE_NAME)
KEYS_ACCEPTED = "$aws/certificates/create/json/accepted"


@pytest.fixture
def hostile_site(iotsim: RunningIotSim) -> RunningIotSim:
    iotsim.templates.put(TEMPLATE_NAME, SITE_TEMPLATE)
    return iotsim


def provision(
    iotsim: RunningIotSim, folder: Path, serial: str, site: str
) -> tuple[str, tuple[Any, str], tuple[Path, Path]]:
    """CSR + RegisterThing with the claim: (outcome, (answer, certificate id), its identity files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    with iotsim.client("hostile-claim-" + serial) as claim:
        outcome, cert = claim.request(
            "$aws/certificates/create-from-csr/json", {"certificateSigningRequest": make_csr(key)}
        )
        assert outcome == "accepted", cert
        token = cert["certificateOwnershipToken"]
        outcome, answer = claim.request(
            REGISTER, {"certificateOwnershipToken": token, "parameters": {"Serial": serial, "Site": site}}
        )
    identity = write_identity(folder, serial, cert["certificatePem"], key)
    return outcome, (answer, cert["certificateId"]), identity


def assert_holds_only_its_policy(iotsim: RunningIotSim, thing: str, identity: tuple[Path, Path]) -> None:
    """A provisioned device's certificate: no other client id, no internal topic, no one else's reply."""
    with pytest.raises(ConnectRefused):  # its policy allows iot:Connect on *, but no SERVICE status
        iotsim.client("iotsim-service", *identity)
    with iotsim.client(thing, *identity) as dev:
        assert dev.subscribe("iotsim/#", "#", KEYS_ACCEPTED) == [128, 128, 128]
        dev.paho.publish("iotsim/req/x", b"forged", qos=1)
        assert dev.wait_disconnected()


def test_the_known_attack_is_refused_and_the_device_holds_only_its_policy(
    hostile_site: RunningIotSim, tmp_path: Path
) -> None:
    outcome, (body, cid), _ = provision(hostile_site, tmp_path, "x1", EXPLOIT)
    assert outcome == "rejected" and (body["statusCode"], body["errorCode"]) == (400, "InvalidParameters")
    assert "attributes.site" in body["errorMessage"]
    reg = hostile_site.registry
    assert reg.status(cid) == PENDING_ACTIVATION and reg.thing("hostile-x1") is None
    outcome, (body, cid), identity = provision(hostile_site, tmp_path, "x2", LONGEST_ATTRIBUTE)
    assert outcome == "accepted" and reg.thing("hostile-x2").attributes == {"site": LONGEST_ATTRIBUTE}
    assert_holds_only_its_policy(hostile_site, "hostile-x2", identity)


def test_a_hostile_attribute_already_in_the_database_grants_nothing_more(
    hostile_site: RunningIotSim, tmp_path: Path
) -> None:
    outcome, (_, cid), identity = provision(hostile_site, tmp_path, "x3", "hq")
    assert outcome == "accepted"
    reg = hostile_site.registry
    with reg._tx() as db:  # a hand-edited database: the encoding alone must hold
        hostile = json.dumps({"site": EXPLOIT + "\nallow 31 *"})
        db.execute("UPDATE things SET attributes=? WHERE name=?", (hostile, "hostile-x3"))
    reg.sync_principals([cid])
    assert parse_principal(principal_path(hostile_site.state, cid).read_bytes())[0] == ACTIVE
    assert_holds_only_its_policy(hostile_site, "hostile-x3", identity)


def _packet(kind: int, body: bytes) -> bytes:
    assert len(body) < 128  # one-byte remaining length is all these packets need
    return bytes([kind, len(body)]) + body


def _mqtt_string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def raw_claim_session(iotsim: RunningIotSim, client_id: bytes) -> bytes | None:
    """CONNECT with the claim and these raw client-id bytes, then SUBSCRIBE to iotsim/# and
    $aws/things/#: the SUBACK's return codes, or None when the broker turned the CONNECT away."""
    ctx = ssl.create_default_context(cafile=str(iotsim.ca_path))
    ctx.load_cert_chain(str(iotsim.claim_cert), str(iotsim.claim_key))
    with socket.create_connection(("127.0.0.1", iotsim.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(_packet(0x10, _mqtt_string(b"MQTT") + b"\x04\x02\x00\x3c" + _mqtt_string(client_id)))
            try:
                connack = tls.recv(4)
            except (ConnectionError, ssl.SSLError):
                return None
            if connack != b"\x20\x02\x00\x00":
                return None
            filters = _mqtt_string(b"iotsim/#") + b"\x01" + _mqtt_string(b"$aws/things/#") + b"\x01"
            tls.sendall(_packet(0x82, b"\x00\x01" + filters))
            suback = tls.recv(6)
            tls.sendall(b"\xe0\x00")  # DISCONNECT
    assert suback[:4] == b"\x90\x04\x00\x01", suback
    return suback[4:]


def test_every_byte_in_a_client_id_leaves_the_claim_only_its_claim_rights(iotsim: RunningIotSim) -> None:
    ids = [("id-" + chr(b)).encode() for b in range(256)] + [b"id-" + bytes([b]) for b in range(0x80, 0x100)]
    accepted = []
    for client_id in ids:
        codes = raw_claim_session(iotsim, client_id)
        if codes is not None:
            assert codes == b"\x80\x80", client_id  # the claim policy's rights, no more
            accepted.append(client_id.decode())
    # MQTT strings are UTF-8 without control characters: mosquitto closes the rest
    # (bytes 0x80-0xff alone are not UTF-8).
    assert not [c for c in accepted if ord(c[-1]) < 0x20 or 0x7F <= ord(c[-1]) <= 0x9F]
    assert {"id-a", "id-$", "id-\u00e9"} <= set(accepted)
    with iotsim.client("\u00e9" * 64) as longest:  # 128 bytes, the longest AWS allows
        outcome, body = longest.request("$aws/certificates/create/json", {})
        assert outcome == "accepted" and body["certificateId"]


def test_tags_with_every_byte_change_no_principal_file(iotsim: RunningIotSim) -> None:
    iot = iotsim.iot_client(validate=False)
    arn = iot.create_policy(policyName="tagged", policyDocument=SITE_DOC)["policyArn"]
    before = {p: p.read_bytes() for p in (iotsim.state / "principals").glob("*/*")}
    for c in BYTES[:-2]:
        try:
            iot.tag_resource(resourceArn=arn, tags=[{"Key": "k" + c, "Value": "v" + c}])
        except iot.exceptions.ClientError:
            pass  # refused as AWS refuses it: also fine
    assert {p: p.read_bytes() for p in (iotsim.state / "principals").glob("*/*")} == before
