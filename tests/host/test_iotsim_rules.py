"""iotsim's rules engine (tools/iotsim/rules.py) and iot-data Publish (tools/iotsim/dataplane.py).

The SQL iotsim evaluates is refused outright where it would differ from AWS's; a rule's Lambda
action runs only while the rule is enabled and the function's resource policy names the rule;
what a function publishes through iot-data reaches subscribers the broker lets receive it, and
a topic AWS or iotsim reserves is refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tools.awssetup import lambdas
from tools.iotsim.rules import Message, SqlError, parse_sql
from tools.iotsim.testing import Device, RunningIotSim

PRINCIPAL = "ab" * 32


def error_of(call: Callable[[], Any]) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    return info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]


def event(sql: str, payload: bytes, topic: str = "fleetprov/t1/retire") -> dict[str, Any] | None:
    return parse_sql(sql).evaluate(Message(topic, payload, PRINCIPAL, "t1"), "000000000000", 1.5)


# -- the SQL ---------------------------------------------------------------------------------------


def test_the_retire_rules_statement_gives_the_request_key_the_publisher_the_thing_and_the_topic() -> None:
    assert event(lambdas.RETIRE_SQL, b'{"certificateId": "x", "other": 1}') == {
        "certificateId": "x", "principal": PRINCIPAL, "thingName": "t1", "topic": "fleetprov/t1/retire"
    }
    assert parse_sql(lambdas.RETIRE_SQL).topic_filter == "fleetprov/+/retire"


def test_a_key_selected_by_name_wins_over_the_payloads_own() -> None:
    sql = "SELECT principal() AS principal, * FROM 'a/#'"
    assert event(sql, b'{"principal": "forged", "k": 1}', "a/b") == {"principal": PRINCIPAL, "k": 1}


def test_paths_missing_keys_and_topic_levels_are_aws_s() -> None:
    sql = "select a.b AS deep, missing, topic(3) AS third, topic(9) AS none, clientid() AS c, " \
          "timestamp() AS ts, accountid() AS acct from 'x/+/z'"
    assert event(sql, b'{"a": {"b": [1]}}', "x/y/z") == {
        "deep": [1], "third": "z", "c": "t1", "ts": 1500, "acct": "000000000000"
    }


@pytest.mark.parametrize("payload", [b"not json", b"", b"\xff", b"[" * 100_000, b"{'single': 'quotes'}"])
def test_a_payload_that_is_not_json_fails_a_rule_that_names_json_keys(payload: bytes) -> None:
    assert event(lambdas.RETIRE_SQL, payload) is None
    assert event("SELECT * FROM 'fleetprov/#'", payload) is None
    assert event("SELECT topic() AS t FROM 'fleetprov/#'", payload) == {"t": "fleetprov/t1/retire"}


@pytest.mark.parametrize("payload", [b"[1]", b"7", b'"certificateId"', b"null"])
def test_json_that_is_not_an_object_has_no_keys_and_fails_a_rule_that_selects_star(payload: bytes) -> None:
    assert event(lambdas.RETIRE_SQL, payload) == {
        "principal": PRINCIPAL, "thingName": "t1", "topic": "fleetprov/t1/retire"
    }
    assert event("SELECT * FROM 'fleetprov/#'", payload) is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM 'a' WHERE x > 1",
        "SELECT VALUE x FROM 'a'",
        "SELECT upper(x) AS y FROM 'a'",
        "SELECT principal() FROM 'a'",
        "SELECT * AS everything FROM 'a'",
        "SELECT topic(0) AS t FROM 'a'",
        "SELECT principal(1) AS p FROM 'a'",
        "SELECT x FROM 'a/#/b'",
        "SELECT x FROM 'a+'",
        "SELECT x FROM ''",
        "SELECT x FROM '" + "a" * 257 + "'",
        "SELECT FROM 'a'",
        "DELETE FROM 'a'",
        "SELECT x, FROM 'a'",
        "SELECT 'x' AS y FROM 'a'",
    ],
)
def test_sql_iotsim_would_evaluate_differently_is_refused(sql: str) -> None:
    assert pytest.raises(SqlError, parse_sql, sql).value.code == "SqlParseException"


# -- the API ---------------------------------------------------------------------------------------

RULE_SQL = "SELECT certificateId, principal() AS principal, topic(2) AS thingName, topic() AS topic FROM 'probe/+/retire'"


def payload(sql: str = RULE_SQL, disabled: bool = False, **extra: Any) -> dict[str, Any]:
    return {"sql": sql, "ruleDisabled": disabled, "awsIotSqlVersion": "2016-03-23", "actions": [
        {"lambda": {"functionArn": "arn:aws:lambda:local:000000000000:function:" + lambdas.RETIRE_FUNCTION}}], **extra}


@pytest.mark.parametrize(
    "bad, code",
    [
        (payload(sql="SELECT * FROM 'a' WHERE b = 1"), ("SqlParseException", 400)),
        ({**payload(), "actions": [{"republish": {"topic": "x", "roleArn": "arn:aws:iam::000000000000:role/r"}}]},
         ("NotImplementedException", 501)),
        (payload(errorAction={"lambda": {"functionArn": "arn:aws:lambda:local:000000000000:function:x"}}),
         ("NotImplementedException", 501)),
        (payload(awsIotSqlVersion="2099-01-01"), ("InvalidRequestException", 400)),
    ],
    ids=["where", "republish", "error-action", "sql-version"],
)
def test_a_rule_iotsim_cannot_run_as_aws_would_is_refused_and_not_stored(
    iotsim: RunningIotSim, bad: dict[str, Any], code: tuple[str, int]
) -> None:
    iot = iotsim.iot_client()
    assert error_of(lambda: iot.create_topic_rule(ruleName="Refused", topicRulePayload=bad)) == code
    assert "Refused" not in [r["ruleName"] for r in iot.list_topic_rules()["rules"]]


def test_a_rule_is_created_once_listed_replaced_tagged_and_deleted(iotsim: RunningIotSim) -> None:
    iot = iotsim.iot_client()
    iot.create_topic_rule(ruleName="Probe_A", topicRulePayload=payload(), tags="owner=test&empty=")
    assert error_of(lambda: iot.create_topic_rule(ruleName="Probe_A", topicRulePayload=payload())) == (
        "ResourceAlreadyExistsException", 409
    )
    got = iot.get_topic_rule(ruleName="Probe_A")
    assert got["ruleArn"] == "arn:aws:iot:local:000000000000:rule/Probe_A"
    assert (got["rule"]["sql"], got["rule"]["ruleDisabled"]) == (RULE_SQL, False)
    listed = iot.list_topic_rules(topic="probe/+/retire")["rules"]
    assert [(r["ruleName"], r["topicPattern"]) for r in listed] == [("Probe_A", "probe/+/retire")]
    assert iot.list_tags_for_resource(resourceArn=got["ruleArn"])["tags"] == [
        {"Key": "empty", "Value": ""}, {"Key": "owner", "Value": "test"}
    ]
    iot.replace_topic_rule(ruleName="Probe_A", topicRulePayload=payload(disabled=True))
    assert iot.get_topic_rule(ruleName="Probe_A")["rule"]["ruleDisabled"] is True
    iot.delete_topic_rule(ruleName="Probe_A")
    assert error_of(lambda: iot.get_topic_rule(ruleName="Probe_A")) == ("UnauthorizedException", 401)
    assert error_of(lambda: iot.list_tags_for_resource(resourceArn=got["ruleArn"]))[1] == 404


def test_a_rules_lambda_runs_only_while_the_rule_is_enabled_and_the_function_lets_that_rule_invoke_it(
    iotsim: RunningIotSim, tmp_path: Path
) -> None:
    iot, lam = iotsim.iot_client(), iotsim.iot_client(service="lambda")
    with iotsim.client("rules-claim") as claim:
        dev = Device(iotsim, claim, tmp_path, uuid.uuid4().hex[:12])
    if iotsim.registry.policy("ProbeTopics") is None:
        iotsim.registry.create_policy("ProbeTopics", json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/probe/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/probe/*"}]}))
    iotsim.registry.attach_policy("ProbeTopics", dev.certificate_id)
    iot.create_topic_rule(ruleName="Probe_B", topicRulePayload=payload())
    topic = "probe/{}/retire".format(dev.thing)
    try:
        with dev.client() as c:
            assert c.subscribe(topic + "/accepted", topic + "/rejected") == [1, 1]

            def ask(n: str) -> None:
                c.publish(topic, json.dumps({"certificateId": n * 64}))

            ask("1")  # FleetprovRetire lets only the rule FleetprovRetire invoke it
            lam.add_permission(FunctionName=lambdas.RETIRE_FUNCTION, StatementId="probe-b",
                               Action="lambda:InvokeFunction", Principal="iot.amazonaws.com",
                               SourceArn="arn:aws:iot:local:000000000000:rule/Probe_B")
            ask("2")
            first = json.loads(c.expect()[1])
            iot.replace_topic_rule(ruleName="Probe_B", topicRulePayload=payload(disabled=True))
            ask("3")
            iot.replace_topic_rule(ruleName="Probe_B", topicRulePayload=payload())
            ask("4")
            second = json.loads(c.expect()[1])
    finally:
        iot.delete_topic_rule(ruleName="Probe_B")
        lam.remove_permission(FunctionName=lambdas.RETIRE_FUNCTION, StatementId="probe-b")
    # Each answer is a 404 naming the certificate it was asked about: 1 and 3 never ran.
    assert (first["statusCode"], "2" * 64 in first["errorMessage"]) == (404, True)
    assert (second["statusCode"], "4" * 64 in second["errorMessage"]) == (404, True)


# -- iot-data Publish ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code",
    [
        ({"topic": "$aws/things/t/shadow/update"}, ("UnauthorizedException", 401)),
        ({"topic": "iotsim/reply/74/1/fleetprov/t/x"}, ("UnauthorizedException", 401)),
        ({"topic": "iotsim"}, ("UnauthorizedException", 401)),
        ({"topic": "fleetprov/+/x"}, ("InvalidRequestException", 400)),
        ({"topic": "a/b/c/d/e/f/g/h/i"}, ("InvalidRequestException", 400)),
        ({"topic": "x" * 257}, ("InvalidRequestException", 400)),
        ({"topic": "fleetprov/t/x", "qos": 2}, ("InvalidRequestException", 400)),
        ({"topic": "fleetprov/t/x", "payload": b"x" * (128 * 1024 + 1)}, ("InvalidRequestException", 400)),
    ],
    ids=["aws", "iotsim-reply", "iotsim", "wildcard", "slashes", "long", "qos2", "payload"],
)
def test_iot_data_publish_refuses_reserved_and_oversized_topics_and_messages(
    iotsim: RunningIotSim, tmp_path: Path, args: dict[str, Any], code: tuple[str, int]
) -> None:
    data = iotsim.iot_client(service="iot-data")
    with iotsim.client("data-claim") as claim:
        dev = Device(iotsim, claim, tmp_path, uuid.uuid4().hex[:12])
    with dev.client() as c:
        assert c.subscribe("fleetprov/{}/#".format(dev.thing)) == [1]
        assert error_of(lambda: data.publish(**{"payload": b"refused", **args})) == code
        data.publish(topic="fleetprov/{}/ok".format(dev.thing), qos=1, payload=b"\x00\xffbinary")
        assert c.expect() == ("fleetprov/{}/ok".format(dev.thing), b"\x00\xffbinary")  # the first to arrive


def test_iot_data_publish_reaches_only_subscribers_allowed_to_receive_it(iotsim: RunningIotSim, tmp_path: Path) -> None:
    data = iotsim.iot_client(service="iot-data")
    with iotsim.client("data-claim-2") as claim:
        a = Device(iotsim, claim, tmp_path, uuid.uuid4().hex[:12])
        b = Device(iotsim, claim, tmp_path, uuid.uuid4().hex[:12])
    if iotsim.registry.policy("SubscribeAll") is None:  # subscribe to every thing's topics, receive only its own
        iotsim.registry.create_policy("SubscribeAll", json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/fleetprov/#"}]}))
    iotsim.registry.attach_policy("SubscribeAll", b.certificate_id)
    with a.client() as ca, b.client() as cb:
        assert ca.subscribe("fleetprov/{}/news".format(a.thing)) == [1]
        assert cb.subscribe("fleetprov/#") == [1]
        data.publish(topic="fleetprov/{}/news".format(a.thing), qos=1, payload=b"for a")
        data.publish(topic="fleetprov/{}/news".format(b.thing), qos=1, payload=b"for b")
        assert ca.expect() == ("fleetprov/{}/news".format(a.thing), b"for a")
        assert cb.expect() == ("fleetprov/{}/news".format(b.thing), b"for b")  # a's was not delivered to b
