"""AWS IoT's control-plane wire format, taken from botocore's own ``iot`` service model.

The model (``botocore/data/iot/<date>/service-2.json``, shipped in the botocore
package) says for every operation its HTTP method and request URI, where each
input member travels (URI label, query string, header or JSON body) and the
shape of the output; AWS's SDKs and CLI are generated from the same file. This
module turns it into a router (:meth:`ApiModel.route`), a request parser
(:meth:`ApiModel.parse`) and a response serializer (:meth:`ApiModel.serialize`)
for the ``rest-json`` protocol, so tools/iotsim/controlplane.py writes no URL
or JSON layout by hand.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import botocore.loaders
import botocore.model


class ApiError(Exception):
    """An AWS error: ``code`` is the exception shape's name (ResourceNotFoundException, ...)."""

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


class ApiModel:
    """botocore's model of one rest-json service (default: AWS IoT's control plane)."""

    def __init__(self, service: str = "iot") -> None:
        loader = botocore.loaders.Loader()
        self.model = botocore.model.ServiceModel(loader.load_service_model(service, "service-2"), service)
        if self.model.protocol != "rest-json":
            raise ValueError("{} speaks {}, not rest-json".format(service, self.model.protocol))
        routes = []
        for name in self.model.operation_names:
            http = self.model.operation_model(name).http
            pattern, literal_query, literal = _compile(http["requestUri"])
            routes.append(_Route(name, http["method"], pattern, literal_query, literal))
        routes.sort(key=lambda r: (-r.literal_chars, -len(r.literal_query)))
        self._routes = routes

    def operation(self, name: str) -> botocore.model.OperationModel:
        return self.model.operation_model(name)

    def route(self, method: str, path: str, query: Mapping[str, list[str]]) -> tuple[str, dict[str, str]]:
        """(operation name, URI labels) for a request; ApiError when no operation matches."""
        raw_path = path
        matched_path = False
        for r in self._routes:
            m = r.pattern.match(raw_path)
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
        raise ApiError("UnknownOperationException", "no AWS IoT operation is {} {}".format(method, path), 404)

    # -- requests ---------------------------------------------------------------------

    def parse(
        self,
        operation: str,
        labels: Mapping[str, str],
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> dict[str, Any]:
        """The operation's input as a dict of member names (what boto3 was called with)."""
        shape = self.operation(operation).input_shape
        if shape is None:
            return {}
        params: dict[str, Any] = {}
        doc: Any = {}
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise ApiError(
                    "SerializationException", "the request body is not JSON: {}".format(exc), 400
                ) from None
            if not isinstance(doc, dict):
                raise ApiError("SerializationException", "the request body must be a JSON object", 400)
        lowered = {k.lower(): v for k, v in headers.items()}
        payload = shape.serialization.get("payload")
        for name, member in shape.members.items():
            where = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if where == "uri":
                if wire in labels:
                    params[name] = self._check(member, self._scalar(member, labels[wire], name), name)
            elif where == "querystring":
                if member.type_name == "list":
                    if wire in query:
                        params[name] = [self._scalar(member.member, v, name) for v in query[wire]]
                elif member.type_name != "map" and wire in query:
                    params[name] = self._check(member, self._scalar(member, query[wire][-1], name), name)
            elif where == "header":
                if wire.lower() in lowered:
                    params[name] = self._scalar(member, lowered[wire.lower()], name)
            elif payload == name:
                if doc:
                    params[name] = self._check(member, doc, name)
            elif wire in doc and doc[wire] is not None:
                params[name] = self._check(member, doc[wire], name)
        missing = [m for m in shape.required_members if m not in params]
        if missing:
            raise ApiError(
                "InvalidRequestException",
                "{} is missing required parameter(s): {}".format(operation, ", ".join(missing)),
            )
        return params

    @staticmethod
    def _scalar(shape: botocore.model.Shape, text: str, where: str) -> Any:
        t = shape.type_name
        try:
            if t in ("integer", "long"):
                return int(text)
            if t == "boolean":
                if text not in ("true", "false"):
                    raise ValueError(text)
                return text == "true"
            if t in ("double", "float"):
                return float(text)
        except ValueError:
            raise ApiError(
                "InvalidRequestException", "{} must be a {}, got {!r}".format(where, t, text)
            ) from None
        return text

    def _check(self, shape: botocore.model.Shape, value: Any, where: str, depth: int = 0) -> Any:
        """The JSON value if it has the shape's type (and enum), else InvalidRequestException."""
        if depth > 20:
            raise ApiError("InvalidRequestException", "{} is nested too deeply".format(where))
        t = shape.type_name
        ok = {
            "string": lambda v: isinstance(v, str),
            "boolean": lambda v: isinstance(v, bool),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "double": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "timestamp": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "blob": lambda v: isinstance(v, str),
            "structure": lambda v: isinstance(v, dict),
            "list": lambda v: isinstance(v, list),
            "map": lambda v: isinstance(v, dict),
        }.get(t, lambda v: True)
        if not ok(value):
            raise ApiError(
                "InvalidRequestException", "{} must be a {}, got {}".format(where, t, type(value).__name__)
            )
        if t in ("string", "list", "map"):
            # The model's length bounds (botocore checks them before sending; other clients may not).
            low, high = shape.metadata.get("min"), shape.metadata.get("max")
            if (low is not None and len(value) < low) or (high is not None and len(value) > high):
                raise ApiError(
                    "InvalidRequestException",
                    "{} has length {}; it must be {}-{}".format(where, len(value), low or 0, high or "any"),
                )
        if t == "string" and shape.enum and value not in shape.enum:
            raise ApiError(
                "InvalidRequestException",
                "{} must be one of {}, got {!r}".format(where, ", ".join(shape.enum), value),
            )
        if t == "structure":
            out = {}
            by_wire = {m.serialization.get("name", n): (n, m) for n, m in shape.members.items()}
            for key, v in value.items():
                if key in by_wire and v is not None:
                    n, m = by_wire[key]
                    out[n] = self._check(m, v, "{}.{}".format(where, n), depth + 1)
            return out
        if t == "list":
            return [self._check(shape.member, v, "{}[]".format(where), depth + 1) for v in value]
        if t == "map":
            return {
                str(k): self._check(shape.value, v, "{}.{}".format(where, k), depth + 1)
                for k, v in value.items()
            }
        return value

    # -- responses --------------------------------------------------------------------

    def serialize(self, operation: str, result: Mapping[str, Any]) -> bytes:
        shape = self.operation(operation).output_shape
        if shape is None:
            return b"{}"
        return json.dumps(self._value(shape, result)).encode()

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

    def error_status(self, code: str) -> int:
        """The HTTP status AWS uses for an exception shape (400 when the model names none)."""
        try:
            shape = self.model.shape_for(code)
        except botocore.model.NoShapeFoundError:
            return 400
        return int(shape.metadata.get("error", {}).get("httpStatusCode", 400))
