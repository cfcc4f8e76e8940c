"""AWS IoT policy documents: validation, and compilation into the broker plugin's rules.

iotsim evaluates policies the way AWS IoT Core does (explicit Deny wins,
otherwise any Allow grants, otherwise deny). The expensive part — parsing JSON,
resolving thing policy variables and Conditions — happens here, once per
certificate change; the broker plugin (tools/iotsim/plugin/policy.h) only
matches resource ARNs against the compiled patterns, per request.

A certificate's *principal file* (``<state>/principals/<xx>/<certificateId>``,
written by the registry) holds its status and one rule section per context:

- ``default``: a client id that names no thing attached to the certificate
  (thing policy variables are unresolved, IsAttached is "false");
- ``thing <name>``: the client id is ``<name>`` and that thing is attached to
  the certificate (AWS: "the value of clientId ... must exactly match the thing
  name").

The file is a list of records, one a line, each a fixed number of fields
separated by one space; every field is percent-encoded (:func:`encode_field`),
so no value, whatever bytes it holds, can end a field or a line and start a
record of its own (tools/iotsim/plugin/policy.h reads the same format).

Supported, as AWS documents them: ``Effect`` Allow/Deny; ``Action`` with
``iot:Connect``, ``iot:Publish``, ``iot:RetainPublish``, ``iot:Subscribe``,
``iot:Receive`` and wildcards (``iot:*``, ``*``; other actions are valid but do not concern MQTT);
``Resource`` ARNs with ``*`` and ``?``; the variables ``${iot:ClientId}``,
``${iot:Connection.Thing.ThingName}``, ``.ThingTypeName``,
``.Attributes[name]``, ``.IsAttached`` and the escapes ``${*}``, ``${?}``,
``${$}``; Conditions ``Bool``, ``StringEquals``, ``StringNotEquals``,
``StringLike``, ``StringNotLike`` on the thing variables. Anything else
(``NotAction``, ``NotResource``, other variables or condition keys) is refused
with a :class:`PolicyError` naming it, rather than silently ignored.

A resource whose variable cannot be resolved matches nothing (AWS: "this
variable won't be resolved and will result in an access denied error"). A
Condition on an unresolved key: an Allow does not apply, a Deny does (iotsim's
choice: never kinder than AWS).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import untrusted

CONNECT, PUBLISH, SUBSCRIBE, RECEIVE, RETAIN_PUBLISH = 1, 2, 4, 8, 16
MQTT_ACTIONS = {
    "iot:Connect": CONNECT,
    "iot:Publish": PUBLISH,
    "iot:Subscribe": SUBSCRIBE,
    "iot:Receive": RECEIVE,
    # AWS: a retained publish (and a retained Will) needs iot:RetainPublish as well as
    # iot:Publish ("Retained message policy examples", AWS IoT developer guide).
    "iot:RetainPublish": RETAIN_PUBLISH,
}
ALL_ACTIONS = CONNECT | PUBLISH | SUBSCRIBE | RECEIVE | RETAIN_PUBLISH
VERSIONS = ("2012-10-17", "2008-10-17")
MAX_DOCUMENT_BYTES = 2048  # AWS: a policy document holds at most 2048 characters (spaces excluded)

CLIENT_ID_VAR = "${iot:ClientId}"
THING_PREFIX = "iot:Connection.Thing."
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_ATTRIBUTE = re.compile(r"^iot:Connection\.Thing\.Attributes\[([^\]]+)\]\Z")
_CONDITION_OPERATORS = ("Bool", "StringEquals", "StringNotEquals", "StringLike", "StringNotLike")
HEADER = "iotsim-principal 2"
# Record kind -> its number of fields (the kind included); see policy.h.
_RECORD_FIELDS = {"status": 2, "default": 1, "thing": 2, "allow": 3, "deny": 3}


class PolicyError(ValueError):
    """The policy document is malformed or uses what iotsim does not support.

    AWS answers CreatePolicy with MalformedPolicyException for a malformed
    document; the message says what is wrong.
    """

    error_code = "MalformedPolicyException"


@dataclass(frozen=True)
class Statement:
    deny: bool
    actions: int  # MQTT action mask (0: the statement concerns no MQTT action)
    resources: tuple[str, ...]
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (operator, key, values)


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class ThingContext:
    """What thing policy variables resolve to when the client id is this thing."""

    name: str
    thing_type: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


def _strings(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise PolicyError("{} must be a string or a non-empty list of strings".format(what))


def _action_mask(action: str) -> int:
    if ":" not in action and action != "*":
        raise PolicyError("action {!r} is not of the form service:Action (e.g. iot:Publish)".format(action))
    pattern = action.lower()
    return sum(bit for name, bit in MQTT_ACTIONS.items() if fnmatch.fnmatchcase(name.lower(), pattern))


def _check_variables(text: str, where: str) -> None:
    if "${" in text and text.count("${") != len(_VARIABLE.findall(text)):
        raise PolicyError("{}: unterminated policy variable in {!r}".format(where, text))
    for name in _VARIABLE.findall(text):
        if name in ("*", "?", "$", "iot:ClientId"):
            continue
        if name in (THING_PREFIX + "ThingName", THING_PREFIX + "ThingTypeName", THING_PREFIX + "IsAttached"):
            continue
        if _ATTRIBUTE.match(name):
            continue
        raise PolicyError(
            "{}: iotsim does not support the policy variable ${{{}}}; supported: ${{iot:ClientId}}, "
            "${{iot:Connection.Thing.ThingName}}, .ThingTypeName, .Attributes[name], .IsAttached".format(
                where, name
            )
        )


def _is_thing_key(key: str) -> bool:
    return key in (
        THING_PREFIX + "ThingName",
        THING_PREFIX + "ThingTypeName",
        THING_PREFIX + "IsAttached",
    ) or bool(_ATTRIBUTE.match(key))


def parse_policy(document: str | bytes | Mapping[str, Any]) -> Policy:
    """Validate an AWS IoT policy document (JSON text or parsed) and return it parsed."""
    if isinstance(document, (str, bytes)):
        text = document.decode("utf-8") if isinstance(document, bytes) else document
        if len("".join(text.split())) > MAX_DOCUMENT_BYTES:
            raise PolicyError(
                "the policy document has more than {} characters (whitespace excluded), AWS's limit".format(
                    MAX_DOCUMENT_BYTES
                )
            )
        try:
            data = untrusted.loads(text)
        except ValueError as exc:
            raise PolicyError("the policy document is not JSON: {}".format(exc)) from None
    else:
        data = document
    if not isinstance(data, Mapping):
        raise PolicyError("the policy document must be a JSON object")
    version = data.get("Version", "2008-10-17")
    if version not in VERSIONS:
        raise PolicyError("Version must be one of {}, got {!r}".format(", ".join(VERSIONS), version))
    raw = data.get("Statement")
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise PolicyError("Statement must be an object or a non-empty list of objects")
    statements = []
    for i, st in enumerate(raw):
        where = "Statement[{}]".format(i)
        if not isinstance(st, Mapping):
            raise PolicyError("{} must be an object".format(where))
        for unsupported in ("NotAction", "NotResource", "NotPrincipal", "Principal"):
            if unsupported in st:
                raise PolicyError("{}: iotsim does not support {}".format(where, unsupported))
        unknown = set(st) - {"Sid", "Effect", "Action", "Resource", "Condition"}
        if unknown:
            raise PolicyError("{}: unknown element(s) {}".format(where, ", ".join(sorted(unknown))))
        effect = st.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError("{}.Effect must be Allow or Deny, got {!r}".format(where, effect))
        if "Action" not in st or "Resource" not in st:
            raise PolicyError("{} needs Action and Resource".format(where))
        mask = 0
        for action in _strings(st["Action"], where + ".Action"):
            mask |= _action_mask(action)
        resources = _strings(st["Resource"], where + ".Resource")
        for res in resources:
            if any(ord(ch) < 0x20 for ch in res):
                raise PolicyError("{}.Resource {!r} contains a control character".format(where, res))
            _check_variables(res, where + ".Resource")
        conditions = []
        cond = st.get("Condition", {})
        if not isinstance(cond, Mapping):
            raise PolicyError("{}.Condition must be an object".format(where))
        for op, tests in cond.items():
            if op not in _CONDITION_OPERATORS:
                raise PolicyError(
                    "{}: iotsim does not support the condition operator {}; supported: {}".format(
                        where, op, ", ".join(_CONDITION_OPERATORS)
                    )
                )
            if not isinstance(tests, Mapping) or not tests:
                raise PolicyError("{}.Condition.{} must be a non-empty object".format(where, op))
            for key, values in tests.items():
                if not _is_thing_key(key):
                    raise PolicyError(
                        "{}: iotsim does not support the condition key {}; supported: the "
                        "iot:Connection.Thing.* variables".format(where, key)
                    )
                conditions.append(
                    (op, key, tuple(_strings(values, "{}.Condition.{}.{}".format(where, op, key))))
                )
        statements.append(Statement(effect == "Deny", mask, tuple(resources), tuple(conditions)))
    return Policy(tuple(statements))


def _escape(text: str) -> str:
    """A literal for the plugin's patterns: '*', '?' and '\\' lose their meaning."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def _thing_value(key: str, thing: ThingContext | None) -> str | None:
    if key == THING_PREFIX + "IsAttached":
        return "true" if thing is not None else "false"
    if thing is None:
        return None
    if key == THING_PREFIX + "ThingName":
        return thing.name
    if key == THING_PREFIX + "ThingTypeName":
        return thing.thing_type
    m = _ATTRIBUTE.match(key)
    if m:
        return thing.attributes.get(m.group(1))
    return None


def _compile_resource(resource: str, thing: ThingContext | None) -> str | None:
    """The plugin pattern for one resource in one context; None when a variable is unresolved."""
    out = []
    pos = 0
    for m in _VARIABLE.finditer(resource):
        out.append(_escape_literal_keep_wildcards(resource[pos : m.start()]))
        name = m.group(1)
        if name in ("*", "?", "$"):
            out.append(_escape(name))
        elif name == "iot:ClientId":
            out.append(CLIENT_ID_VAR)  # the plugin substitutes it per connection
        else:
            value = _thing_value(name, thing)
            if value is None:
                return None
            out.append(_escape(value))
        pos = m.end()
    out.append(_escape_literal_keep_wildcards(resource[pos:]))
    return "".join(out)


def _escape_literal_keep_wildcards(text: str) -> str:
    # In a policy, '*' and '?' are wildcards; only the plugin's escape char needs escaping.
    return text.replace("\\", "\\\\")


def _condition_holds(
    op: str, key: str, values: Sequence[str], thing: ThingContext | None, deny: bool
) -> bool:
    actual = _thing_value(key, thing)
    if actual is None:
        return deny  # unresolved: an Allow does not apply, a Deny does
    if op == "Bool":
        return actual.lower() in [v.lower() for v in values]
    if op == "StringEquals":
        return actual in values
    if op == "StringNotEquals":
        return actual not in values
    if op == "StringLike":
        return any(fnmatch.fnmatchcase(actual, v) for v in values)
    return not any(fnmatch.fnmatchcase(actual, v) for v in values)  # StringNotLike


def compile_rules(policies: Iterable[Policy], thing: ThingContext | None) -> list[tuple[bool, int, str]]:
    """(deny, action mask, pattern) rules for one context: deny rules first."""
    rules: list[tuple[bool, int, str]] = []
    for policy in policies:
        for st in policy.statements:
            if not st.actions:
                continue
            if not all(
                _condition_holds(op, key, values, thing, st.deny) for op, key, values in st.conditions
            ):
                continue
            for res in st.resources:
                pattern = _compile_resource(res, thing)
                if pattern is not None:
                    rules.append((st.deny, st.actions, pattern))
    rules.sort(key=lambda r: not r[0])
    return rules


def encode_field(value: str) -> str:
    """``value`` as one principal-file field: UTF-8, every byte outside 0x21-0x7e and
    every '%' written as %XX, so a field never holds a space, a line break or a NUL."""
    raw = value.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else "%{:02X}".format(b) for b in raw)


def decode_field(field: str) -> str:
    """The value of one field; ValueError for anything :func:`encode_field` never writes."""
    out = bytearray()
    i = 0
    while i < len(field):
        ch = field[i]
        if not "\x21" <= ch <= "\x7e":
            raise ValueError("raw byte {!r} in a principal-file field".format(ch))
        if ch == "%":
            pair = field[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789ABCDEF" for c in pair) or pair == "00":
                raise ValueError("bad escape {!r} in a principal-file field".format(field[i : i + 3]))
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(ord(ch))
            i += 1
    return out.decode("utf-8", "surrogatepass")


def _record(*fields: str) -> str:
    return " ".join(encode_field(f) for f in fields)


def _rule_records(rules: Iterable[tuple[bool, int, str]]) -> list[str]:
    return [_record("deny" if deny else "allow", str(mask), pattern) for deny, mask, pattern in rules]


def render_principal(status: str, policies: Sequence[Policy], things: Sequence[ThingContext]) -> bytes:
    """The principal file the broker plugin reads for one certificate."""
    lines = [HEADER, _record("status", status), _record("default")]
    lines += _rule_records(compile_rules(policies, None))
    for thing in things:
        lines.append(_record("thing", thing.name))
        lines += _rule_records(compile_rules(policies, thing))
    return ("\n".join(lines) + "\n").encode("ascii")


def parse_principal(data: bytes) -> tuple[str, dict[str | None, list[tuple[bool, int, str]]]]:
    """Read a principal file back as the plugin does: (status, {None or thing name: rules}).

    ValueError when it is malformed in any way the plugin would refuse (the plugin
    then grants the certificate nothing)."""
    text = data.decode("ascii")
    if not text.endswith("\n"):
        raise ValueError("a principal file ends with a line break")
    lines = text[:-1].split("\n")
    if lines[0] != HEADER or len(lines) < 3:
        raise ValueError("not an iotsim principal file (header {!r})".format(HEADER))
    records = []
    for line in lines[1:]:
        fields = [decode_field(f) for f in line.split(" ")]
        if _RECORD_FIELDS.get(fields[0]) != len(fields):
            raise ValueError("malformed principal record {!r}".format(line[:80]))
        records.append(fields)
    if records[0][0] != "status" or records[1] != ["default"]:
        raise ValueError("a principal file starts with its status and its default section")
    sections: dict[str | None, list[tuple[bool, int, str]]] = {None: []}
    current = sections[None]
    for fields in records[2:]:
        if fields[0] == "thing" and fields[1] not in sections:
            current = sections[fields[1]] = []
        elif fields[0] in ("allow", "deny") and fields[1].isdigit() and int(fields[1]) <= ALL_ACTIONS:
            current.append((fields[0] == "deny", int(fields[1]), fields[2]))
        else:
            raise ValueError("malformed principal record {!r}".format(" ".join(fields)[:80]))
    return records[0][1], sections


def allowed(rules: Sequence[tuple[bool, int, str]], action: int, resource: str, client_id: str) -> bool:
    """The plugin's decision, in Python (tests compare the two)."""
    granted = False
    for deny, mask, pattern in rules:
        if not mask & action:
            continue
        expanded = pattern.replace(CLIENT_ID_VAR, _escape(client_id))
        if _glob(expanded, resource):
            if deny:
                return False
            granted = True
    return granted


def _glob(pattern: str, text: str) -> bool:
    regex = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        regex.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(regex), text, re.DOTALL) is not None


THING_POLICY = "FleetprovThingPolicy"
ROTATION_TEMPLATE = "FleetprovRotation"
_THING = "${iot:Connection.Thing.ThingName}"


def _topic_statements(arn: str, effect: str, topics: Sequence[str], **extra: Any) -> list[dict[str, Any]]:
    """Publish and Receive on ``topic/<t>``, Subscribe on ``topicfilter/<t>``, for each of topics."""
    return [
        {"Effect": effect, "Action": ["iot:Publish", "iot:Receive"], "Resource": [arn + "topic/" + t for t in topics],
         **extra},
        {"Effect": effect, "Action": "iot:Subscribe", "Resource": [arn + "topicfilter/" + t for t in topics],
         **extra},
    ]


def claim_policy_document(
    region: str = "*", account: str = "*", templates: str = "*", deny_templates: Sequence[str] = ()
) -> str:
    """AWS's documented claim policy for fleet provisioning (docs/aws-setup.md, step 5).

    ``deny_templates``: templates the claim must never use even when ``templates`` is
    ``*`` (the rotation template: only a thing's own certificate may register with it)."""
    arn = "arn:aws:iot:{}:{}:".format(region, account)
    topics = [
        "$aws/certificates/create/*",
        "$aws/certificates/create-from-csr/*",
        "$aws/provisioning-templates/{}/provision/*".format(templates),
    ]
    statements: list[dict[str, Any]] = [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]
    statements += _topic_statements(arn, "Allow", topics)
    if deny_templates:
        denied = ["$aws/provisioning-templates/{}/*".format(t) for t in deny_templates]
        statements += _topic_statements(arn, "Deny", denied)
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, indent=2)


def thing_policy_document(region: str = "*", account: str = "*", rotation_template: str = ROTATION_TEMPLATE) -> str:
    """The policy of every fleetprov thing's certificate (docs/rotation.md).

    Connect only as the thing, its own ``fleetprov/<thing>/*`` topics (the retire
    request and its answers included), and, while connected as a thing attached to
    the certificate, the two reserved topic sets of a rotation: CreateCertificateFromCsr
    and the rotation template's RegisterThing ("Thing policy variables", AWS IoT
    developer guide: the variables resolve only when the client id is the thing's name)."""
    arn = "arn:aws:iot:{}:{}:".format(region, account)
    own = ["fleetprov/{}/*".format(_THING)]
    rotation = [
        "$aws/certificates/create-from-csr/*",
        "$aws/provisioning-templates/{}/provision/*".format(rotation_template),
    ]
    attached = {"Condition": {"Bool": {THING_PREFIX + "IsAttached": "true"}}}
    statements: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": arn + "client/" + _THING}
    ]
    statements += _topic_statements(arn, "Allow", own) + _topic_statements(arn, "Allow", rotation, **attached)
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, indent=2)
