"""The policy engine alone: policy documents (tools/iotsim/policy.py) and the C decision (policy.h).

The C side is run through tools/iotsim/plugin/policy_bench.c, which prints each
decision; Hypothesis compares it with the Python reference on random patterns
and resources (wildcards, escapes, client ids with glob characters).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.bench.iotsim import run_policy_bench
from tools.iotsim.policy import (
    CONNECT,
    PUBLISH,
    RECEIVE,
    RETAIN_PUBLISH,
    SUBSCRIBE,
    PolicyError,
    ThingContext,
    allowed,
    compile_rules,
    parse_policy,
    render_principal,
)

ARN = "arn:aws:iot:local:000000000000:"


def doc(*statements: dict, version: str = "2012-10-17") -> str:
    return json.dumps({"Version": version, "Statement": list(statements)})


def c_decisions(
    tmp_path: Path, principal: bytes, client_id: str, requests: list[tuple[int, str]]
) -> list[bool]:
    path = tmp_path / ("ab" * 32)
    path.write_bytes(principal)
    out = run_policy_bench(path, client_id, requests)
    decisions = [line.split()[2] == "1" for line in out if not line.startswith(("stat ", "parsed "))]
    assert len(decisions) == len(requests)
    return decisions


# -- documents ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document, message",
    [
        ("not json", "not JSON"),
        ("[]", "must be a JSON object"),
        (doc(version="2020-01-01"), "Version must be"),
        (json.dumps({"Version": "2012-10-17"}), "Statement must be"),
        (doc({"Effect": "Allow", "Action": "iot:*"}), "needs Action and Resource"),
        (doc({"Effect": "allow", "Action": "iot:*", "Resource": "*"}), "Effect must be Allow or Deny"),
        (doc({"Effect": "Allow", "NotAction": "iot:*", "Resource": "*"}), "does not support NotAction"),
        (doc({"Effect": "Allow", "Action": "Publish", "Resource": "*"}), "service:Action"),
        (doc({"Effect": "Allow", "Action": [], "Resource": "*"}), "non-empty list"),
        (
            doc({"Effect": "Allow", "Action": "iot:*", "Resource": "${iot:Foo}"}),
            "does not support the policy variable",
        ),
        (doc({"Effect": "Allow", "Action": "iot:*", "Resource": "a${iot:ClientId"}), "unterminated"),
        (doc({"Effect": "Allow", "Action": "iot:*", "Resource": "a\nb"}), "control character"),
        (
            doc(
                {
                    "Effect": "Allow",
                    "Action": "iot:*",
                    "Resource": "*",
                    "Condition": {"IpAddress": {"x": "y"}},
                }
            ),
            "condition operator IpAddress",
        ),
        (
            doc(
                {
                    "Effect": "Allow",
                    "Action": "iot:*",
                    "Resource": "*",
                    "Condition": {"Bool": {"aws:SecureTransport": "true"}},
                }
            ),
            "condition key aws:SecureTransport",
        ),
        (doc({"Effect": "Allow", "Action": "iot:*", "Resource": "x" * 2100}), "2048"),
    ],
)
def test_malformed_or_unsupported_documents_are_refused_by_name(document: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(document)


def test_actions_with_wildcards_map_to_the_mqtt_actions() -> None:
    def mask(action: str) -> int:
        return parse_policy(doc({"Effect": "Allow", "Action": action, "Resource": "*"})).statements[0].actions

    assert mask("iot:*") == mask("*") == CONNECT | PUBLISH | SUBSCRIBE | RECEIVE | RETAIN_PUBLISH
    assert mask("iot:Pub*") == PUBLISH
    assert mask("iot:*Publish") == PUBLISH | RETAIN_PUBLISH
    assert mask("IOT:publish") == PUBLISH  # action names are case-insensitive
    assert mask("iot:GetThingShadow") == 0  # valid, concerns no MQTT action
    assert mask("greengrass:*") == 0


def test_thing_variables_resolve_only_for_an_attached_thing_named_like_the_client() -> None:
    policy = parse_policy(
        doc(
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": "arn:aws:iot:*:*:topic/${iot:Connection.Thing.ThingTypeName}/"
                "${iot:Connection.Thing.Attributes[room]}/${iot:Connection.Thing.ThingName}",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": "*",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
        )
    )
    thing = ThingContext("t1", "sensor", {"room": "lab"})
    rules = compile_rules([policy], thing)
    assert allowed(rules, PUBLISH, ARN + "topic/sensor/lab/t1", "t1")
    assert not allowed(rules, PUBLISH, ARN + "topic/sensor/lab/t2", "t1")
    assert allowed(rules, CONNECT, ARN + "client/t1", "t1")
    # No thing (client id names none): the variables and IsAttached do not resolve.
    assert compile_rules([policy], None) == []
    # A thing without a type or without the attribute: that resource matches nothing.
    assert not allowed(compile_rules([policy], ThingContext("t1")), PUBLISH, ARN + "topic///t1", "t1")


def test_unresolved_condition_keys_never_grant_but_still_deny() -> None:
    policy = parse_policy(
        doc(
            {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
            {
                "Effect": "Deny",
                "Action": "iot:Publish",
                "Resource": "*",
                "Condition": {"StringEquals": {"iot:Connection.Thing.ThingTypeName": "locked"}},
            },
        )
    )
    assert not allowed(compile_rules([policy], None), PUBLISH, ARN + "topic/x", "c")
    assert allowed(compile_rules([policy], ThingContext("t", "open")), PUBLISH, ARN + "topic/x", "t")
    assert not allowed(compile_rules([policy], ThingContext("t", "locked")), PUBLISH, ARN + "topic/x", "t")


def test_client_id_is_substituted_literally() -> None:
    policy = parse_policy(
        doc(
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"}
        )
    )
    rules = compile_rules([policy], None)
    assert allowed(rules, CONNECT, ARN + "client/a*", "a*")
    assert not allowed(rules, CONNECT, ARN + "client/abc", "a*")  # the client's '*' is no wildcard


# -- the C decision agrees with the reference ----------------------------------------------------------


def test_c_decisions_match_the_reference_on_known_cases(tmp_path: Path) -> None:
    policy = parse_policy(
        doc(
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}",
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": "arn:aws:iot:*:*:topic/a/?/c*",
            },
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/a/x/c/secret"},
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": "arn:aws:iot:*:*:topicfilter/lit${*}${?}",
            },
        )
    )
    principal = render_principal("ACTIVE", [policy], [])
    requests = [
        (CONNECT, ARN + "client/we?rd*"),
        (CONNECT, ARN + "client/weXrdZ"),
        (PUBLISH, ARN + "topic/a/x/c"),
        (PUBLISH, ARN + "topic/a/x/c/deep/er"),
        (PUBLISH, ARN + "topic/a/xx/c"),
        (PUBLISH, ARN + "topic/a/x/c/secret"),
        (RECEIVE, ARN + "topic/a/x/c/secret"),
        (SUBSCRIBE, ARN + "topicfilter/lit*?"),
        (SUBSCRIBE, ARN + "topicfilter/litab"),
    ]
    expected = [True, False, True, True, False, False, True, True, False]
    rules = compile_rules([policy], None)
    assert [allowed(rules, m, r, "we?rd*") for m, r in requests] == expected
    assert c_decisions(tmp_path, principal, "we?rd*", requests) == expected


_segment = st.text(alphabet="ab/*?\\$", min_size=0, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    patterns=st.lists(st.tuples(st.booleans(), _segment), min_size=1, max_size=4),
    resources=st.lists(st.text(alphabet="ab/*?\\", max_size=8), min_size=1, max_size=6),
    client=st.text(alphabet="ab*?\\", min_size=1, max_size=4),
)
def test_c_decisions_match_the_reference_on_random_patterns(
    tmp_path_factory: pytest.TempPathFactory,
    patterns: list[tuple[bool, str]],
    resources: list[str],
    client: str,
) -> None:
    statements = [
        {
            "Effect": "Deny" if deny else "Allow",
            "Action": "iot:Publish",
            "Resource": "arn:aws:iot:*:*:topic/" + pattern.replace("$", "${iot:ClientId}"),
        }
        for deny, pattern in patterns
    ]
    policy = parse_policy(doc(*statements))
    rules = compile_rules([policy], None)
    requests = [(PUBLISH, ARN + "topic/" + r) for r in resources]
    expected = [allowed(rules, m, r, client) for m, r in requests]
    folder = tmp_path_factory.mktemp("engine")
    assert c_decisions(folder, render_principal("ACTIVE", [policy], []), client, requests) == expected
