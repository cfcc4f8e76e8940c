"""AWS's control-plane wire formats, taken from botocore's own service models.

A model (``botocore/data/<service>/<date>/service-2.json``, shipped in the
botocore package) says for every operation its HTTP method and request URI,
where each input member travels (URI label, query string, header, JSON body
or form field), every value's type, pattern, length and enum, and the shape
of the output; AWS's SDKs and CLI are generated from the same file. This
module turns it into request parsing (:meth:`ApiModel.request`), input
checking and answer serializing (:meth:`ApiModel.answer`,
:meth:`ApiModel.error`) for the two protocols iotsim serves: ``rest-json``
(AWS IoT) and ``query`` with XML answers (IAM). tools/iotsim/controlplane.py
writes no URL, JSON or XML layout by hand.

Every value a caller sends is checked against its shape before an operation
sees it, as AWS's front end does: type, enum, pattern (the model's Java
regular expressions, run with the ``regex`` module, which knows Unicode
property classes such as ``\\p{L}``), length bounds and integer ranges. A
value outside them is ``InvalidRequestException`` (rest-json) or
``ValidationError`` (query; AWS's common error for "the input fails to
satisfy the constraints": https://docs.aws.amazon.com/IAM/latest/APIReference/CommonErrors.html).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import botocore.loaders
import botocore.model
import regex

from . import untrusted

MAX_NESTING = 20  # deeper input is refused before it is walked (no AWS shape nests this deep)


class ApiError(Exception):
    """An AWS error: ``code`` is the error code (ResourceNotFoundException, NoSuchEntity, ...)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class _Route:
    operation: str
    method: str
    pattern: re.Pattern[str]
    literal_query: tuple[tuple[str, str | None], ...]
    literal_chars: int  # more literal characters: a more specific route, tried first


def _compile(uri: str) -> tuple[re.Pattern[str], tuple[tuple[str, str | None], ...], int]:
    path, _, query = uri.partition("?")
    literal = 0
    out = ""
    for piece in re.split(r"(\{[^}]+\})", path):
        if piece.startswith("{") and piece.endswith("}"):
            name = piece[1:-1]
            if name.endswith("+"):
                out += "(?P<{}>.+)".format(name[:-1])
            else:
                out += "(?P<{}>[^/]+)".format(name)
        else:
            literal += len(piece)
            out += re.escape(piece)
    literal_query = tuple(
        (k, v if sep else None) for k, sep, v in (q.partition("=") for q in query.split("&") if q)
    )
    return re.compile("^" + out + r"\Z"), literal_query, literal


# Java's POSIX classes are ASCII-only (java.util.regex.Pattern); the regex module's are Unicode.
_JAVA_POSIX = {
    r"\p{Graph}": r"\x21-\x7e",
    r"\p{Upper}": "A-Z",
    r"\p{Digit}": "0-9",
    r"\p{Cntrl}": r"\x00-\x1f\x7f",
}
# How the lambda model's ARN patterns spell an AWS region ("eu-west-1"); iotsim's own region
# name ("local" unless `up --region`) is accepted there too, or no ARN of iotsim would pass.
_AWS_REGION = r"[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}"
_PATTERNS: dict[tuple[str, str], Any] = {}


def _pattern(java: str, region: str = "") -> Any:
    """The model's pattern (Java syntax) compiled; it must match the whole value."""
    compiled = _PATTERNS.get((java, region))
    if compiled is None:
        text = java
        for posix, ascii_class in _JAVA_POSIX.items():
            text = text.replace(posix, ascii_class)
        if region:
            text = text.replace(_AWS_REGION, "(?:{}|{})".format(_AWS_REGION, regex.escape(region)))
        compiled = _PATTERNS[(java, region)] = regex.compile(text, regex.V0)
    return compiled


# What a service answers a value outside its model with, where it is not InvalidRequestException:
# AWS Lambda's "1 validation error detected" errors are ValidationException.
_INVALID = {"lambda": "ValidationException"}

_TYPES = {
    "string": (str,),
    "blob": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "long": (int,),
    "double": (int, float),
    "float": (int, float),
    "timestamp": (int, float),
    "structure": (dict,),
    "list": (list,),
    "map": (dict,),
}


class ApiModel:
    """botocore's model of one service (``iot``: rest-json; ``iam``: query with XML answers)."""

    def __init__(self, service: str = "iot", region: str = "") -> None:
        loader = botocore.loaders.Loader()
        self.service = service
        self.region = region  # iotsim's, accepted where a pattern spells out AWS's region names
        self.model = botocore.model.ServiceModel(loader.load_service_model(service, "service-2"), service)
        self.protocol = self.model.protocol
        if self.protocol not in ("rest-json", "query"):
            raise ValueError("{} speaks {}, which iotsim does not serve".format(service, self.protocol))
        # The query protocol's input errors have other names than rest-json's, and Lambda's its own.
        self.invalid = {"query": "ValidationError"}.get(self.protocol, _INVALID.get(service, "InvalidRequestException"))
        self._status: dict[str, int] = {}
        for name in self.model.shape_names:
            shape = self.model.shape_for(name)
            if shape.metadata.get("exception"):
                error = shape.metadata.get("error", {})
                self._status[error.get("code", name)] = int(error.get("httpStatusCode", 400))
        routes = []
        if self.protocol == "rest-json":
            for name in self.model.operation_names:
                http = self.model.operation_model(name).http
                pattern, literal_query, literal = _compile(http["requestUri"])
                routes.append(_Route(name, http["method"], pattern, literal_query, literal))
        routes.sort(key=lambda r: (-r.literal_chars, -len(r.literal_query)))
        self._routes = routes

    def operation(self, name: str) -> botocore.model.OperationModel:
        return self.model.operation_model(name)

    def success_status(self, name: str) -> int:
        """The HTTP status of an operation's answer (201 for Lambda's CreateFunction, ...)."""
        return int(self.operation(name).http.get("responseCode", 200))

    # -- requests ---------------------------------------------------------------------

    def request(
        self, method: str, path: str, query_text: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[str, dict[str, Any]]:
        """(operation name, its input checked against the model) for one HTTP request."""
        query = urllib.parse.parse_qs(query_text, keep_blank_values=True)
        if self.protocol == "query":
            return self._query_request(method, query, headers, body)
        operation, labels = self.route(method, path, query)
        return operation, self.parse(operation, labels, query, headers, body)

    def route(self, method: str, path: str, query: Mapping[str, list[str]]) -> tuple[str, dict[str, str]]:
        """(operation name, URI labels) for a rest-json request; ApiError when none matches."""
        matched_path = False
        for r in self._routes:
            m = r.pattern.match(path)
            if m is None:
                continue
            if any(k not in query or (v is not None and v not in query[k]) for k, v in r.literal_query):
                continue
            matched_path = True
            if r.method != method:
                continue
            labels = {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
            return r.operation, labels
        if matched_path:
            raise ApiError("MethodNotAllowedException", "{} is not allowed on {}".format(method, path), 405)
        raise ApiError(
            "UnknownOperationException", "no {} operation is {} {}".format(self.service, method, path), 404
        )

    def parse(
        self,
        operation: str,
        labels: Mapping[str, str],
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> dict[str, Any]:
        """A rest-json operation's input as a dict of member names (what boto3 was called with)."""
        shape = self.operation(operation).input_shape
        if shape is None:
            return {}
        payload = shape.serialization.get("payload")
        raw = payload is not None and shape.members[payload].type_name in ("blob", "string")
        doc: Any = {}
        if body.strip() and not raw:
            try:
                doc = untrusted.loads(body)
            except untrusted.NestedTooDeep as exc:
                raise ApiError("SerializationException", "the request body {}".format(exc), 400) from None
            except ValueError as exc:
                raise ApiError(
                    "SerializationException", "the request body is not JSON: {}".format(exc), 400
                ) from None
            if not isinstance(doc, dict):
                raise ApiError("SerializationException", "the request body must be a JSON object", 400)
        lowered = {k.lower(): v for k, v in headers.items()}
        params: dict[str, Any] = {}
        for name, member in shape.members.items():
            where = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if where == "uri":
                if wire in labels:
                    params[name] = self._check(member, self._scalar(member, labels[wire], name), name)
            elif where == "querystring":
                if member.type_name == "list":
                    if wire in query:
                        values = [self._scalar(member.member, v, name) for v in query[wire]]
                        params[name] = self._check(member, values, name)
                elif member.type_name != "map" and wire in query:
                    params[name] = self._check(member, self._scalar(member, query[wire][-1], name), name)
            elif where == "header":
                if wire.lower() in lowered:
                    params[name] = self._check(member, self._scalar(member, lowered[wire.lower()], name), name)
            elif payload == name and raw:
                params[name] = body  # the body itself (iot-data Publish's message)
            elif payload == name:
                if doc:
                    params[name] = self._check(member, doc, name)
            elif wire in doc and doc[wire] is not None:
                params[name] = self._check(member, doc[wire], name)
        self._required(operation, shape, params)
        return params

    def _query_request(
        self, method: str, query: dict[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> tuple[str, dict[str, Any]]:
        fields = dict(query)
        if method == "POST" and body:
            try:
                form = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
            except (UnicodeDecodeError, ValueError):
                raise ApiError("MalformedQueryString", "the request body is not a form", 404) from None
            fields.update(form)
        flat = {k: v[-1] for k, v in fields.items()}
        action = flat.pop("Action", "")
        flat.pop("Version", None)
        if not action:
            raise ApiError("MissingAction", "the request has no Action", 400)
        if action not in self.model.operation_names:
            raise ApiError("InvalidAction", "{} is not an {} action".format(action, self.service), 400)
        shape = self.operation(action).input_shape
        if shape is None:
            return action, {}
        return action, self._check(shape, self._from_form(shape, "", flat, 0), action)

    def _from_form(self, shape: botocore.model.Shape, prefix: str, flat: Mapping[str, str], depth: int) -> Any:
        """The query protocol's flattened fields (``Tags.member.1.Key=...``) as a JSON-like value."""
        if depth > MAX_NESTING:
            raise ApiError(self.invalid, "{} is nested too deeply".format(prefix))
        dotted = prefix + "." if prefix else ""
        t = shape.type_name
        if t == "structure":
            out = {}
            for name, member in shape.members.items():
                wire = member.serialization.get("name", name)
                value = self._from_form(member, dotted + wire, flat, depth + 1)
                if value is not None:
                    out[wire] = value
            return out if out or not prefix else None
        if t in ("list", "map"):
            if flat.get(prefix) == "":
                return [] if t == "list" else {}
            base = prefix if shape.serialization.get("flattened") else dotted + (
                shape.member.serialization.get("name", "member") if t == "list" else "entry"
            )
            index = re.compile(re.escape(base) + r"\.(\d{1,4})(?:\.|\Z)")
            indices = sorted({int(m.group(1)) for m in map(index.match, flat) if m})
            if t == "list":
                return [self._from_form(shape.member, "{}.{}".format(base, i), flat, depth + 1) for i in indices] or None
            return {
                flat.get("{}.{}.key".format(base, i), ""): self._from_form(
                    shape.value, "{}.{}.value".format(base, i), flat, depth + 1
                )
                for i in indices
            } or None
        if prefix not in flat:
            return None
        return self._scalar(shape, flat[prefix], prefix)

    def _required(self, operation: str, shape: botocore.model.Shape, params: Mapping[str, Any]) -> None:
        missing = [m for m in shape.required_members if m not in params]
        if missing:
            raise ApiError(
                self.invalid, "{} is missing required parameter(s): {}".format(operation, ", ".join(missing))
            )

    def _scalar(self, shape: botocore.model.Shape, text: str, where: str) -> Any:
        t = shape.type_name
        try:
            if t in ("integer", "long"):
                if not re.fullmatch(r"-?\d{1,19}", text):
                    raise ValueError(text)
                return int(text)
            if t == "boolean":
                if text not in ("true", "false"):
                    raise ValueError(text)
                return text == "true"
            if t in ("double", "float"):
                return float(text)
        except ValueError:
            raise ApiError(self.invalid, "{} must be a {}, got {!r}".format(where, t, text)) from None
        return text

    def _check(self, shape: botocore.model.Shape, value: Any, where: str, depth: int = 0) -> Any:
        """The value if its shape allows it (type, enum, pattern, length, range), else the model's error."""
        if depth > MAX_NESTING:
            raise ApiError(self.invalid, "{} is nested too deeply".format(where))
        t = shape.type_name
        if not isinstance(value, _TYPES.get(t, (object,))) or (isinstance(value, bool) and t != "boolean"):
            raise ApiError(self.invalid, "{} must be a {}, got {}".format(where, t, type(value).__name__))
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        size = len(value) if t in ("string", "list", "map") else value if t in ("integer", "long") else None
        if size is not None and ((low is not None and size < low) or (high is not None and size > high)):
            what = "has length {}".format(size) if t != "integer" and t != "long" else "is {}".format(size)
            raise ApiError(
                self.invalid,
                "{} {}; it must be {}-{}".format(where, what, low if low is not None else 0, high or "any"),
            )
        if t == "string":
            if shape.enum and value not in shape.enum:
                raise ApiError(
                    self.invalid, "{} must be one of {}, got {!r}".format(where, ", ".join(shape.enum), value)
                )
            pattern = shape.metadata.get("pattern")
            if pattern is not None and _pattern(pattern, self.region).fullmatch(value) is None:
                raise ApiError(
                    self.invalid,
                    "{} {!r} does not match the pattern {}".format(where, value[:200], pattern),
                )
        if t == "structure":
            out = {}
            by_wire = {m.serialization.get("name", n): (n, m) for n, m in shape.members.items()}
            for key, v in value.items():
                if key in by_wire and v is not None:
                    n, m = by_wire[key]
                    out[n] = self._check(m, v, "{}.{}".format(where, n), depth + 1)
            self._required(where, shape, out)
            return out
        if t == "list":
            return [self._check(shape.member, v, "{}[]".format(where), depth + 1) for v in value]
        if t == "map":
            return {
                self._check(shape.key, k, "{} key".format(where), depth + 1): self._check(
                    shape.value, v, "{}.{}".format(where, k), depth + 1
                )
                for k, v in value.items()
            }
        return value

    # -- answers ----------------------------------------------------------------------

    @property
    def content_type(self) -> str:
        return "application/json" if self.protocol == "rest-json" else "text/xml"

    def answer(self, operation: str, result: Mapping[str, Any], request_id: str) -> bytes:
        shape = self.operation(operation).output_shape
        if self.protocol == "rest-json":
            return json.dumps(self._value(shape, result) if shape is not None else {}).encode()
        root = ET.Element(operation + "Response", xmlns=self.model.metadata["xmlNamespace"])
        if shape is not None:
            wrapper = ET.SubElement(root, shape.serialization.get("resultWrapper", operation + "Result"))
            self._xml_members(wrapper, shape, result)
        ET.SubElement(ET.SubElement(root, "ResponseMetadata"), "RequestId").text = request_id
        return ET.tostring(root, encoding="utf-8", xml_declaration=False)

    def error(self, exc: ApiError, request_id: str) -> tuple[int, bytes]:
        """(HTTP status, body) of an error as this protocol's SDKs parse it."""
        status = exc.status or self._status.get(exc.code, 400)
        if self.protocol == "rest-json":
            return status, json.dumps({"message": exc.message}).encode()
        root = ET.Element("ErrorResponse", xmlns=self.model.metadata["xmlNamespace"])
        error = ET.SubElement(root, "Error")
        ET.SubElement(error, "Type").text = "Sender" if status < 500 else "Receiver"
        ET.SubElement(error, "Code").text = exc.code
        ET.SubElement(error, "Message").text = exc.message
        ET.SubElement(root, "RequestId").text = request_id
        return status, ET.tostring(root, encoding="utf-8")

    def error_status(self, code: str) -> int:
        """The HTTP status AWS uses for an error code (400 when the model names none)."""
        return self._status.get(code, 400)

    def _value(self, shape: botocore.model.Shape, value: Any) -> Any:
        t = shape.type_name
        if t == "structure":
            out = {}
            for name, member in shape.members.items():
                if member.serialization.get("location"):
                    continue  # no header/status outputs in the operations iotsim serves
                v = value.get(name) if isinstance(value, Mapping) else None
                if v is not None:
                    out[member.serialization.get("name", name)] = self._value(member, v)
            return out
        if t == "list":
            return [self._value(shape.member, v) for v in value]
        if t == "map":
            return {k: self._value(shape.value, v) for k, v in value.items()}
        if t == "timestamp":
            return float(value)  # rest-json's default timestamp format: epoch seconds
        return value

    def _xml_members(self, parent: ET.Element, shape: botocore.model.Shape, value: Mapping[str, Any]) -> None:
        for name, member in shape.members.items():
            v = value.get(name)
            if v is not None:
                self._xml(parent, member.serialization.get("name", name), member, v)

    def _xml(self, parent: ET.Element, name: str, shape: botocore.model.Shape, value: Any) -> None:
        t = shape.type_name
        if t == "list" and shape.serialization.get("flattened"):
            for v in value:
                self._xml(parent, name, shape.member, v)
            return
        node = ET.SubElement(parent, name)
        if t == "structure":
            self._xml_members(node, shape, value)
        elif t == "list":
            for v in value:
                self._xml(node, shape.member.serialization.get("name", "member"), shape.member, v)
        elif t == "map":
            for k, v in value.items():
                entry = ET.SubElement(node, "entry")
                ET.SubElement(entry, "key").text = str(k)
                self._xml(entry, "value", shape.value, v)
        elif t == "timestamp":
            node.text = dt.datetime.fromtimestamp(float(value), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif t == "boolean":
            node.text = "true" if value else "false"
        else:
            node.text = str(value)
