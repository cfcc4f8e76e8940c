"""iotsim's AWS IoT rules engine: topic rules that invoke Lambda functions.

Create/Get/Replace/Delete/List TopicRule are served on the control plane (botocore's ``iot``
model) and kept in ``<state>/controlplane/rules.json``. Every message a device publishes on a
topic outside ``$aws/`` reaches the provisioning service with its publisher's identity
(the broker plugin forwards a copy on ``iotsim/rule/<hex client id>/<connection>/<certificateId>/
<topic>``); the rules whose ``FROM`` filter matches it are evaluated, and each Lambda action is
invoked asynchronously, as AWS IoT invokes a rule's Lambda action ("Lambda rule action", AWS
IoT developer guide), with the function's resource policy checked (tools/iotsim/functions.py).

The SQL iotsim evaluates is a subset of AWS IoT SQL ("AWS IoT SQL reference"): ``SELECT``
items ``*``, a JSON key or dotted path (``a.b``), and the functions ``principal()`` (the
publisher's certificate id, its "X.509 certificate thumbprint"), ``clientid()``, ``topic()``,
``topic(n)`` (1 is the first level), ``timestamp()`` and ``accountid()``, each with an
optional ``AS name`` (functions need one); ``FROM '<topic filter>'``; nothing after it. A rule
using anything else is refused with ``SqlParseException`` when it is created, rather than run
differently. A payload that is not JSON fails a rule that names JSON keys (AWS's "binary
payloads": a Lambda action takes JSON only), and one that is not a JSON object fails a rule
that selects ``*`` (iotsim's choice); the action is then not invoked. A key the payload lacks
is left out of the event (AWS: Undefined); a key selected by name wins over the same key of
``*`` (iotsim's choice: AWS documents no order). Actions other than
``lambda``, and ``errorAction``, are refused (501 NotImplementedException).
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from . import untrusted
from .apimodel import ApiError
from .store import JsonFile

log = logging.getLogger("iotsim.rules")

SQL_VERSIONS = ("2015-10-08", "2016-03-23", "beta")
DEFAULT_SQL_VERSION = "2015-10-08"  # AWS's default when a rule names none
MAX_TOPIC = 256  # AWS IoT's topic quota (bytes): a filter is a topic too
MAX_PENDING = 256  # iotsim's choice: rule invocations waiting at once; more are dropped and logged
WORKERS = 4
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_STATEMENT = re.compile(r"^\s*select\s+(?P<items>.+?)\s+from\s+'(?P<filter>[^']*)'\s*(?P<rest>.*?)\s*\Z",
                        re.I | re.S)
_ITEM = re.compile(r"^(?P<expr>.+?)(?:\s+as\s+(?P<name>{0}))?\Z".format(_IDENTIFIER), re.I | re.S)
_FUNCTION = re.compile(r"^(?P<fn>[a-z_]+)\(\s*(?P<arg>\d{0,3})\s*\)\Z", re.I)
_PATH = re.compile(r"^{0}(?:\.{0})*\Z".format(_IDENTIFIER))
_FUNCTIONS = ("principal", "clientid", "topic", "timestamp", "accountid")
_UNDEFINED = object()


class SqlError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__("SqlParseException", message)


@dataclass(frozen=True)
class Message:
    """What a device published, as the rules engine sees it."""

    topic: str
    payload: bytes
    principal: str  # the publisher's certificate id
    client_id: str


@dataclass(frozen=True)
class Item:
    kind: str  # "*", "path" or the function's name
    key: str  # the event key it fills ("" for *)
    path: tuple[str, ...] = ()
    level: int = 0  # topic(n)


@dataclass(frozen=True)
class Query:
    items: tuple[Item, ...]
    topic_filter: str

    def evaluate(self, msg: Message, account: str, now: float) -> dict[str, Any] | None:
        """The event a Lambda action gets; None when the rule fails for this message."""
        try:
            doc = untrusted.loads(msg.payload)
        except ValueError:  # not JSON, or nested deeper than iotsim parses
            doc = _UNDEFINED
        # AWS: a binary payload fails a statement that names JSON keys; iotsim: * wants an object.
        kinds = {i.kind for i in self.items}
        if (doc is _UNDEFINED and "path" in kinds) or ("*" in kinds and not isinstance(doc, dict)):
            return None
        event: dict[str, Any] = {}
        # * first: a key selected by name (principal() AS principal) wins over the payload's own.
        for item in sorted(self.items, key=lambda i: i.kind != "*"):
            value = self._value(item, doc, msg, account, now)
            if item.kind == "*":
                event.update(value)
            elif value is not _UNDEFINED:
                event[item.key] = value
        return event

    @staticmethod
    def _value(item: Item, doc: Any, msg: Message, account: str, now: float) -> Any:
        if item.kind == "*":
            return doc
        if item.kind == "path":
            value = doc
            for key in item.path:
                if not isinstance(value, dict) or key not in value:
                    return _UNDEFINED
                value = value[key]
            return value
        if item.kind == "topic":
            levels = msg.topic.split("/")
            if not item.level:
                return msg.topic
            return levels[item.level - 1] if item.level <= len(levels) else _UNDEFINED
        return {"principal": msg.principal, "clientid": msg.client_id, "accountid": account,
                "timestamp": int(now * 1000)}[item.kind]


def _split_items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def _item(text: str) -> Item:
    m = _ITEM.match(text)
    if m is None or not m.group("expr").strip():
        raise SqlError("cannot read the SELECT item {!r}".format(text[:100]))
    expr, name = m.group("expr").strip(), m.group("name")
    if expr == "*":
        if name:
            raise SqlError("iotsim's rules engine cannot name * (SELECT * AS ...)")
        return Item("*", "")
    fn = _FUNCTION.match(expr)
    if fn is not None:
        kind, arg = fn.group("fn").lower(), fn.group("arg")
        if kind not in _FUNCTIONS or (arg and kind != "topic"):
            raise SqlError("iotsim's rules engine knows the functions {}() and topic(n), not {}".format(
                "(), ".join(_FUNCTIONS), expr[:60]))
        if not name:
            raise SqlError("give {} a name with AS (iotsim's rules engine names no function itself)".format(expr))
        level = int(arg or 0)
        if arg and level < 1:
            raise SqlError("topic(n) counts topic levels from 1")
        return Item(kind, name, level=level)
    if _PATH.match(expr):
        path = tuple(expr.split("."))
        return Item("path", name or path[-1], path=path)
    raise SqlError("iotsim's rules engine selects *, JSON keys and the functions {}(), not {!r}".format(
        "(), ".join(_FUNCTIONS), expr[:60]))


def _check_filter(topic_filter: str) -> None:
    levels = topic_filter.split("/")
    bad = (
        not topic_filter
        or len(topic_filter.encode("utf-8")) > MAX_TOPIC
        or "\0" in topic_filter
        or any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels)
        or "#" in levels[:-1]
    )
    if bad:
        raise SqlError("FROM {!r} is not an MQTT topic filter of at most {} bytes".format(topic_filter[:300], MAX_TOPIC))


def parse_sql(sql: str) -> Query:
    """A rule's SQL statement as iotsim evaluates it; SqlError (SqlParseException) otherwise."""
    m = _STATEMENT.match(sql)
    if m is None:
        raise SqlError("expected SELECT <items> FROM '<topic filter>', got {!r}".format(sql[:200]))
    if m.group("rest"):
        raise SqlError("iotsim's rules engine evaluates SELECT ... FROM '...' only, not {!r}".format(
            m.group("rest")[:100]))
    if re.match(r"value\s", m.group("items"), re.I):
        raise SqlError("iotsim's rules engine does not evaluate SELECT VALUE")
    items = tuple(_item(text) for text in _split_items(m.group("items")))
    _check_filter(m.group("filter"))
    return Query(items, m.group("filter"))


class TopicRules:
    """The topic rules of one iotsim; ``invoke(function_arn, event, source_arn)`` runs a Lambda action."""

    def __init__(self, state: Path, region: str, account: str, clock: Callable[[], float],
                 invoke: Callable[..., Any]) -> None:
        self.file = JsonFile(Path(state) / "controlplane" / "rules.json", {"rules": {}})
        self.region, self.account, self.clock = region, account, clock
        self.invoke = invoke
        self._lock = threading.Lock()
        self._pending = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._cache: tuple[float, list[tuple[str, Query, list[str]]]] | None = None

    def arn(self, name: str) -> str:
        return "arn:aws:iot:{}:{}:rule/{}".format(self.region, self.account, name)

    # -- the API (run under the control plane's lock) ------------------------------------

    def _payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The rule as stored, once its SQL and actions are ones iotsim runs."""
        parse_sql(payload["sql"])
        version = payload.get("awsIotSqlVersion") or DEFAULT_SQL_VERSION
        if version not in SQL_VERSIONS:
            raise ApiError("InvalidRequestException", "awsIotSqlVersion must be one of {}".format(", ".join(SQL_VERSIONS)))
        if payload.get("errorAction"):
            raise ApiError("NotImplementedException", "iotsim does not run a rule's errorAction", 501)
        for action in payload["actions"]:
            if set(action) != {"lambda"}:
                raise ApiError("NotImplementedException", "iotsim runs lambda actions only, not {}".format(
                    ", ".join(sorted(set(action) - {"lambda"})) or "an empty action"), 501)
        return {
            "sql": payload["sql"], "description": payload.get("description", ""), "actions": payload["actions"],
            "ruleDisabled": bool(payload.get("ruleDisabled", False)), "awsIotSqlVersion": version,
        }

    def _rule(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        found = data["rules"].get(name)
        if found is None:
            # AWS's answer for a rule that does not exist, as terraform-provider-aws records it
            # (internal/service/iot/topic_rule.go, findTopicRuleByName).
            raise ApiError("UnauthorizedException", "Access to topic rule '{}' was denied".format(name))
        return found

    def exists(self, name: str) -> bool:
        return name in self.file.load()["rules"]

    def create(self, name: str, payload: dict[str, Any]) -> None:
        rule = self._payload(payload)
        data = self.file.load()
        if name in data["rules"]:
            raise ApiError("ResourceAlreadyExistsException", "Rule {} already exists".format(name))
        data["rules"][name] = {**rule, "ruleName": name, "createdAt": self.clock()}
        self._save(data)

    def replace(self, name: str, payload: dict[str, Any]) -> None:
        data = self.file.load()
        created = self._rule(data, name)["createdAt"]
        data["rules"][name] = {**self._payload(payload), "ruleName": name, "createdAt": created}
        self._save(data)

    def get(self, name: str) -> dict[str, Any]:
        return {"ruleArn": self.arn(name), "rule": self._rule(self.file.load(), name)}

    def delete(self, name: str) -> None:
        data = self.file.load()
        self._rule(data, name)
        del data["rules"][name]
        self._save(data)

    def list(self, topic: str | None, disabled: bool | None) -> list[dict[str, Any]]:
        out = []
        for name, rule in sorted(self.file.load()["rules"].items()):
            query = parse_sql(rule["sql"])
            if (topic is not None and query.topic_filter != topic) or (
                    disabled is not None and rule["ruleDisabled"] != disabled):
                continue
            out.append({"ruleArn": self.arn(name), "ruleName": name, "topicPattern": query.topic_filter,
                        "createdAt": rule["createdAt"], "ruleDisabled": rule["ruleDisabled"]})
        return out

    def _save(self, data: dict[str, Any]) -> None:
        self.file.save(data)
        with self._lock:
            self._cache = None

    # -- what devices publish ---------------------------------------------------------------

    def _enabled(self) -> list[tuple[str, Query, list[str]]]:
        """(rule name, query, Lambda ARNs) of every enabled rule; reread when the file changed."""
        try:
            stamp = self.file.path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        rules = [
            (name, parse_sql(rule["sql"]), [a["lambda"]["functionArn"] for a in rule["actions"]])
            for name, rule in sorted(self.file.load()["rules"].items())
            if not rule["ruleDisabled"]
        ]
        with self._lock:
            self._cache = (stamp, rules)
        return rules

    def dispatch(self, topic: str, payload: bytes, principal: str, client_id: str) -> int:
        """Start the actions of every rule a device's message matches; the number started."""
        try:
            return self._dispatch(Message(topic, payload, principal, client_id))
        except Exception:  # a message must never take the service down
            log.exception("rules engine: the message on %s failed", topic)
            return 0

    def _dispatch(self, msg: Message) -> int:
        started = 0
        for name, query, functions in self._enabled():
            if not mqtt.topic_matches_sub(query.topic_filter, msg.topic):
                continue
            event = query.evaluate(msg, self.account, time.time())
            if event is None:
                log.warning("rule %s: the message on %s is not a JSON object; its actions are not invoked",
                            name, msg.topic)
                continue
            for arn in functions:
                started += self._submit(name, arn, event)
        return started

    def _submit(self, name: str, arn: str, event: dict[str, Any]) -> int:
        with self._lock:
            if self._pending >= MAX_PENDING:
                log.warning("rule %s: %d invocations already wait; this one is dropped", name, MAX_PENDING)
                return 0
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="iotsim-rule")
            self._pending += 1
            pool = self._pool
        try:
            pool.submit(self._run, name, arn, event)
        except RuntimeError:  # shutting down
            self._done()
            return 0
        return 1

    def _run(self, name: str, arn: str, event: dict[str, Any]) -> None:
        try:
            self.invoke(arn, event, source_arn=self.arn(name))
        except Exception as exc:  # AWS logs a failed action; so does iotsim
            log.warning("rule %s: its action %s failed: %s", name, arn, exc)
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
