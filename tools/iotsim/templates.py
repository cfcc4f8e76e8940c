"""AWS IoT fleet-provisioning templates: loading, validation and evaluation.

A template is AWS's own JSON format::

    {"Parameters": {"SerialNumber": {"Type": "String"},
                    "Location": {"Type": "String", "Default": "lab"}},
     "Mappings": {"Table": {"lab": {"Url": "https://lab.example"}}},
     "Resources": {
        "thing": {"Type": "AWS::IoT::Thing",
                  "Properties": {"ThingName": {"Fn::Join": ["", ["dev-", {"Ref": "SerialNumber"}]]},
                                 "AttributePayload": {"serial": {"Ref": "SerialNumber"}}},
                  "OverrideSettings": {"AttributePayload": "MERGE"}},
        "certificate": {"Type": "AWS::IoT::Certificate",
                        "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                                       "Status": "ACTIVE"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "DevicePolicy"}}},
     "DeviceConfiguration": {"Url": {"Fn::FindInMap": ["Table", {"Ref": "Location"}, "Url"]}}}

Intrinsics: ``Ref`` (parameters and ``AWS::IoT::Certificate::Id``), ``Fn::Join``,
``Fn::Select``, ``Fn::FindInMap``, ``Fn::Split``, ``Fn::Sub``. Resources:
``AWS::IoT::Thing``, ``AWS::IoT::Certificate``, ``AWS::IoT::Policy``.

Every refusal is a :class:`TemplateError` carrying the statusCode/errorCode
the service puts in its rejected response. AWS documents the rejected payload's
fields but not the errorCode strings of this API; the codes here are iotsim's
(see docs/iotsim.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import shapes, untrusted

MAX_TEMPLATE_CHARS = 10240
TEMPLATE_NAME = re.compile(r"^[0-9A-Za-z_-]{1,36}\Z")
CERTIFICATE_ID_PARAMETER = "AWS::IoT::Certificate::Id"

THING = "AWS::IoT::Thing"
CERTIFICATE = "AWS::IoT::Certificate"
POLICY = "AWS::IoT::Policy"
RESOURCE_TYPES = (THING, CERTIFICATE, POLICY)
THING_PROPERTIES = ("ThingName", "AttributePayload", "ThingTypeName", "ThingGroups", "BillingGroup")
OVERRIDE_VALUES = ("DO_NOTHING", "REPLACE", "FAIL", "MERGE")
# MERGE only makes sense for the properties that are collections.
MERGEABLE = ("AttributePayload", "ThingGroups")
CERTIFICATE_STATUSES = ("ACTIVE", "INACTIVE")
PARAMETER_TYPES = ("String", "Number")

# errorCode strings used in rejected responses (see the module docstring).
INVALID_PARAMETERS = "InvalidParameters"
RESOURCE_NOT_FOUND = "ResourceNotFound"
INVALID_TEMPLATE = "InvalidTemplate"
RESOURCE_CONFLICT = "ResourceRegistrationFailure"

# Bounds evaluation of hostile templates (deeply nested intrinsics).
_MAX_DEPTH = 32


def _section(body: Mapping[str, Any], name: str) -> Any:
    value = body.get(name)
    return {} if value is None else value


class Rejection(Exception):
    """A provisioning request refused: the fields of its /rejected answer."""

    def __init__(self, status_code: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message


class TemplateError(Rejection):
    """A template cannot be loaded or evaluated (the service answers it as it is)."""


def _invalid_template(message: str) -> TemplateError:
    return TemplateError(400, INVALID_TEMPLATE, message)


def _invalid_parameters(message: str) -> TemplateError:
    return TemplateError(400, INVALID_PARAMETERS, message)


@dataclass
class ThingSpec:
    """The evaluated AWS::IoT::Thing resource."""

    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    thing_type: str | None = None
    groups: list[str] = field(default_factory=list)
    billing_group: str | None = None
    # property -> DO_NOTHING | REPLACE | FAIL | MERGE, applied when the thing exists.
    overrides: dict[str, str] = field(default_factory=dict)


def check_thing(spec: ThingSpec) -> None:
    """Every value of a thing as AWS's model constrains it (shapes.ShapeError otherwise).

    The attribute count is checked against what the spec sets; the registry checks
    the merged result again."""
    shapes.check(shapes.THING_NAME, spec.name, "thingName")
    shapes.check_attributes(spec.attributes, spec.thing_type is not None)
    if spec.thing_type is not None:
        shapes.check(shapes.THING_TYPE_NAME, spec.thing_type, "thingTypeName")
    for group in spec.groups:
        shapes.check(shapes.THING_GROUP_NAME, group, "thingGroupName")
    if spec.billing_group is not None:
        shapes.check(shapes.BILLING_GROUP_NAME, spec.billing_group, "billingGroupName")


@dataclass
class PolicySpec:
    """The evaluated AWS::IoT::Policy resource: a named policy or an inline document."""

    name: str
    document: str | None = None


@dataclass
class Provisioning:
    """What RegisterThing must do: the result of evaluating a template."""

    thing: ThingSpec | None
    certificate_status: str
    policies: list[PolicySpec]
    device_configuration: dict[str, str]
    parameters: dict[str, str]


class Template:
    """A validated provisioning template; :meth:`evaluate` applies it to a request."""

    def __init__(self, name: str, body: Mapping[str, Any]) -> None:
        self.name = name
        self.body = body
        self.parameters: Mapping[str, Any] = _section(body, "Parameters")
        self.mappings: Mapping[str, Any] = _section(body, "Mappings")
        self.resources: Mapping[str, Any] = _section(body, "Resources")
        self.device_configuration: Mapping[str, Any] = _section(body, "DeviceConfiguration")
        self._validate()

    @classmethod
    def from_json(cls, name: str, text: str) -> Template:
        """Parse a template body (at most 10,240 characters, as AWS allows)."""
        if len(text) > MAX_TEMPLATE_CHARS:
            raise _invalid_template(
                "template {!r} is {} characters; AWS allows at most {}".format(
                    name, len(text), MAX_TEMPLATE_CHARS
                )
            )
        try:
            body = untrusted.loads(text)
        except ValueError as exc:
            raise _invalid_template("template {!r} is not valid JSON: {}".format(name, exc)) from exc
        if not isinstance(body, dict):
            raise _invalid_template("template {!r} must be a JSON object".format(name))
        return cls(name, body)

    # -- validation (what AWS checks when the template is created) -------------

    def _validate(self) -> None:
        name = self.name
        known = {"Parameters", "Mappings", "Resources", "DeviceConfiguration", "Description"}
        for key in self.body:
            if key not in known:
                raise _invalid_template(
                    "template {!r}: section {!r} is not supported by iotsim; use {}".format(
                        name, key, ", ".join(sorted(known))
                    )
                )
        for section in ("Parameters", "Mappings", "Resources", "DeviceConfiguration"):
            if not isinstance(_section(self.body, section), dict):
                raise _invalid_template("template {!r}: {} must be an object".format(name, section))
        for pname, decl in self.parameters.items():
            if not isinstance(decl, dict):
                raise _invalid_template(
                    "template {!r}: parameter {!r} must be an object with a Type".format(name, pname)
                )
            ptype = decl.get("Type", "String")
            if ptype not in PARAMETER_TYPES:
                raise _invalid_template(
                    "template {!r}: parameter {!r} has Type {!r}; use one of {}".format(
                        name, pname, ptype, ", ".join(PARAMETER_TYPES)
                    )
                )
            if "Default" in decl and not isinstance(decl["Default"], (str, int, float)):
                raise _invalid_template(
                    "template {!r}: parameter {!r} Default must be a string".format(name, pname)
                )
        for mname, table in self.mappings.items():
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                raise _invalid_template(
                    "template {!r}: mapping {!r} must be an object of objects".format(name, mname)
                )
        things = 0
        for rname, res in self.resources.items():
            if not isinstance(res, dict):
                raise _invalid_template("template {!r}: resource {!r} must be an object".format(name, rname))
            rtype = res.get("Type")
            if rtype not in RESOURCE_TYPES:
                raise _invalid_template(
                    "template {!r}: resource {!r} has Type {!r}; iotsim supports {}".format(
                        name, rname, rtype, ", ".join(RESOURCE_TYPES)
                    )
                )
            props = res.get("Properties", {})
            if not isinstance(props, dict):
                raise _invalid_template(
                    "template {!r}: resource {!r} Properties must be an object".format(name, rname)
                )
            if rtype == THING:
                things += 1
                if "ThingName" not in props:
                    raise _invalid_template(
                        "template {!r}: thing resource {!r} needs a ThingName".format(name, rname)
                    )
                for key in props:
                    if key not in THING_PROPERTIES:
                        raise _invalid_template(
                            "template {!r}: thing resource {!r} has unknown property {!r}".format(
                                name, rname, key
                            )
                        )
                overrides = res.get("OverrideSettings", {})
                if not isinstance(overrides, dict):
                    raise _invalid_template(
                        "template {!r}: OverrideSettings of {!r} must be an object".format(name, rname)
                    )
                for prop, value in overrides.items():
                    if prop not in THING_PROPERTIES or value not in OVERRIDE_VALUES:
                        raise _invalid_template(
                            "template {!r}: OverrideSettings {!r}: {!r} is not one of {}".format(
                                name, prop, value, ", ".join(OVERRIDE_VALUES)
                            )
                        )
                    if value == "MERGE" and prop not in MERGEABLE:
                        raise _invalid_template(
                            "template {!r}: MERGE applies only to {}, not {!r}".format(
                                name, " and ".join(MERGEABLE), prop
                            )
                        )
            elif rtype == POLICY:
                if ("PolicyName" in props) == ("PolicyDocument" in props):
                    raise _invalid_template(
                        "template {!r}: policy resource {!r} needs exactly one of PolicyName "
                        "or PolicyDocument".format(name, rname)
                    )
            elif rtype == CERTIFICATE:
                if "CertificateId" not in props:
                    raise _invalid_template(
                        "template {!r}: certificate resource {!r} needs CertificateId "
                        '({{"Ref": "{}"}})'.format(name, rname, CERTIFICATE_ID_PARAMETER)
                    )
        if things > 1:
            raise _invalid_template("template {!r}: at most one AWS::IoT::Thing resource".format(name))

    # -- evaluation ------------------------------------------------------------

    def resolve_parameters(self, given: Mapping[str, Any], certificate_id: str) -> dict[str, str]:
        """Merge the request's parameters with the declared defaults.

        A declared parameter without a Default that the request does not give is
        a 400. Undeclared request parameters stay available to ``Ref`` (AWS
        passes them on to the pre-provisioning hook as well).
        """
        values: dict[str, str] = {}
        for key, value in given.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise _invalid_parameters(
                    "parameters must map strings to strings; got {!r}: {!r}".format(key, type(value).__name__)
                )
            try:  # the bounds of the RegisterThing API's parameters
                shapes.check(shapes.PARAMETER_KEY, key, "parameters")
                shapes.check(shapes.PARAMETER_VALUE, value, "parameters.{}".format(key[:64]))
            except shapes.ShapeError as exc:
                raise _invalid_parameters(str(exc)) from None
            values[key] = value
        for pname, decl in self.parameters.items():
            if pname == CERTIFICATE_ID_PARAMETER:
                continue
            if pname not in values:
                if "Default" not in decl:
                    raise _invalid_parameters(
                        "Parameter {} is required by template {} but was not provided; add "
                        '"{}" to the RegisterThing parameters'.format(pname, self.name, pname)
                    )
                values[pname] = str(decl["Default"])
            if decl.get("Type", "String") == "Number":
                try:
                    float(values[pname])
                except ValueError:
                    raise _invalid_parameters(
                        "Parameter {} of template {} must be a Number, got {!r}".format(
                            pname, self.name, values[pname]
                        )
                    ) from None
        values[CERTIFICATE_ID_PARAMETER] = certificate_id
        return values

    def evaluate(self, given: Mapping[str, Any], certificate_id: str) -> Provisioning:
        """Apply the template to a RegisterThing request's parameters."""
        params = self.resolve_parameters(given, certificate_id)
        ev = _Evaluator(self, params)
        thing: ThingSpec | None = None
        status = "ACTIVE"
        policies: list[PolicySpec] = []
        for rname, res in self.resources.items():
            rtype = res["Type"]
            props = res.get("Properties", {})
            if rtype == THING:
                thing = self._thing(ev, rname, props, res.get("OverrideSettings", {}))
            elif rtype == CERTIFICATE:
                cid = ev.string(props["CertificateId"], "{}.CertificateId".format(rname))
                if cid != certificate_id:
                    raise _invalid_parameters(
                        "certificate resource {!r} names certificate {}, not the one being "
                        'provisioned ({}); use {{"Ref": "{}"}}'.format(
                            rname, cid, certificate_id, CERTIFICATE_ID_PARAMETER
                        )
                    )
                if "Status" in props:
                    status = ev.string(props["Status"], "{}.Status".format(rname)).upper()
                    if status not in CERTIFICATE_STATUSES:
                        raise _invalid_parameters(
                            "certificate resource {!r} Status is {!r}; use ACTIVE or INACTIVE".format(
                                rname, status
                            )
                        )
            elif rtype == POLICY:
                policies.append(self._policy(ev, rname, props))
        config: dict[str, str] = {}
        for key, value in self.device_configuration.items():
            config[str(key)] = ev.string(value, "DeviceConfiguration.{}".format(key))
        return Provisioning(thing, status, policies, config, params)

    def _thing(
        self, ev: _Evaluator, rname: str, props: Mapping[str, Any], overrides: Mapping[str, str]
    ) -> ThingSpec:
        name = ev.string(props["ThingName"], "{}.ThingName".format(rname))
        spec = ThingSpec(name=name, overrides=dict(overrides))
        if "AttributePayload" in props:
            attrs = ev.value(props["AttributePayload"], "{}.AttributePayload".format(rname))
            if not isinstance(attrs, dict):
                raise _invalid_parameters("{}.AttributePayload must be an object".format(rname))
            spec.attributes = {
                str(k): ev.string(v, "{}.AttributePayload.{}".format(rname, k)) for k, v in attrs.items()
            }
        if "ThingTypeName" in props:
            spec.thing_type = ev.string(props["ThingTypeName"], "{}.ThingTypeName".format(rname))
        if "ThingGroups" in props:
            groups = ev.value(props["ThingGroups"], "{}.ThingGroups".format(rname))
            if not isinstance(groups, list):
                raise _invalid_parameters("{}.ThingGroups must be a list".format(rname))
            spec.groups = [ev.string(g, "{}.ThingGroups".format(rname)) for g in groups]
        if "BillingGroup" in props:
            spec.billing_group = ev.string(props["BillingGroup"], "{}.BillingGroup".format(rname))
        try:
            check_thing(spec)
        except shapes.ShapeError as exc:  # what the device's parameters made of the template
            raise _invalid_parameters("{}: {}".format(rname, exc)) from None
        return spec

    def _policy(self, ev: _Evaluator, rname: str, props: Mapping[str, Any]) -> PolicySpec:
        if "PolicyName" in props:
            name = ev.string(props["PolicyName"], "{}.PolicyName".format(rname))
            try:
                shapes.check(shapes.POLICY_NAME, name, "{}.PolicyName".format(rname))
            except shapes.ShapeError as exc:
                raise _invalid_parameters(str(exc)) from None
            return PolicySpec(name=name)
        doc = ev.value(props["PolicyDocument"], "{}.PolicyDocument".format(rname))
        if not isinstance(doc, str):
            doc = json.dumps(doc, sort_keys=True)
        try:
            untrusted.loads(doc)
        except ValueError as exc:
            raise _invalid_template("{}.PolicyDocument is not JSON: {}".format(rname, exc)) from exc
        # AWS names inline policies itself; iotsim uses the template and resource names.
        return PolicySpec(name="{}-{}".format(self.name, rname), document=doc)


class _Evaluator:
    """Evaluates intrinsic functions against resolved parameters."""

    def __init__(self, template: Template, params: Mapping[str, str]) -> None:
        self.t = template
        self.params = params

    def string(self, node: Any, where: str) -> str:
        value = self.value(node, where)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise _invalid_parameters(
                "{} must evaluate to a string, got {}".format(where, type(value).__name__)
            )
        return value

    def value(self, node: Any, where: str, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise _invalid_template("{}: intrinsic functions nested deeper than {}".format(where, _MAX_DEPTH))
        if isinstance(node, list):
            return [self.value(n, where, depth + 1) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((fn, arg),) = node.items()
            if fn == "Ref":
                return self._ref(arg, where)
            handler = _FUNCTIONS.get(fn)
            if handler is not None:
                return handler(self, arg, where, depth + 1)
            if fn.startswith("Fn::"):
                raise _invalid_template("{}: unsupported intrinsic function {}".format(where, fn))
        return {k: self.value(v, where, depth + 1) for k, v in node.items()}

    def _ref(self, name: Any, where: str) -> str:
        if not isinstance(name, str):
            raise _invalid_template("{}: Ref takes a parameter name, got {!r}".format(where, name))
        if name in self.params:
            return self.params[name]
        raise _invalid_parameters(
            "{}: Ref to {!r}, which is neither a template parameter nor given in the request".format(
                where, name
            )
        )

    def _join(self, arg: Any, where: str, depth: int) -> str:
        if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str)):
            raise _invalid_template('{}: Fn::Join takes ["delimiter", [values]]'.format(where))
        items = self.value(arg[1], where, depth)
        if not isinstance(items, list):
            raise _invalid_template("{}: Fn::Join's second argument must be a list".format(where))
        return arg[0].join(self._scalar(i, where, "Fn::Join") for i in items)

    def _select(self, arg: Any, where: str, depth: int) -> Any:
        if not (isinstance(arg, list) and len(arg) == 2):
            raise _invalid_template("{}: Fn::Select takes [index, [values]]".format(where))
        index = self.value(arg[0], where, depth)
        items = self.value(arg[1], where, depth)
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise _invalid_template(
                "{}: Fn::Select index {!r} is not an integer".format(where, index)
            ) from None
        if not isinstance(items, list):
            raise _invalid_template("{}: Fn::Select needs a list".format(where))
        if not 0 <= i < len(items):
            raise _invalid_parameters(
                "{}: Fn::Select index {} is out of range for {} values".format(where, i, len(items))
            )
        return items[i]

    def _find_in_map(self, arg: Any, where: str, depth: int) -> Any:
        if not (isinstance(arg, list) and len(arg) == 3):
            raise _invalid_template("{}: Fn::FindInMap takes [map, top key, second key]".format(where))
        mname, top, second = (self._scalar(self.value(a, where, depth), where, "Fn::FindInMap") for a in arg)
        table = self.t.mappings.get(mname)
        if table is None:
            raise _invalid_template("{}: Fn::FindInMap: no mapping {!r}".format(where, mname))
        row = table.get(top)
        if row is None or second not in row:
            raise _invalid_parameters(
                "{}: Fn::FindInMap: mapping {!r} has no entry [{!r}][{!r}]".format(where, mname, top, second)
            )
        return row[second]

    def _split(self, arg: Any, where: str, depth: int) -> list[str]:
        if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and arg[0]):
            raise _invalid_template('{}: Fn::Split takes ["delimiter", "string"]'.format(where))
        source = self._scalar(self.value(arg[1], where, depth), where, "Fn::Split")
        return source.split(arg[0])

    def _sub(self, arg: Any, where: str, depth: int) -> str:
        variables: dict[str, str] = {}
        if isinstance(arg, list):
            if len(arg) != 2 or not isinstance(arg[0], str) or not isinstance(arg[1], dict):
                raise _invalid_template('{}: Fn::Sub takes "string" or ["string", {{vars}}]'.format(where))
            text = arg[0]
            for key, node in arg[1].items():
                variables[key] = self._scalar(self.value(node, where, depth), where, "Fn::Sub")
        elif isinstance(arg, str):
            text = arg
        else:
            raise _invalid_template('{}: Fn::Sub takes "string" or ["string", {{vars}}]'.format(where))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"  # ${!Literal} stays literal, as in CloudFormation
            if name in variables:
                return variables[name]
            return self._ref(name, where)

        return re.sub(r"\$\{([^}]*)\}", replace, text)

    @staticmethod
    def _scalar(value: Any, where: str, fn: str) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _invalid_template("{}: {} needs strings, got {}".format(where, fn, type(value).__name__))


_FUNCTIONS = {
    "Fn::Join": _Evaluator._join,
    "Fn::Select": _Evaluator._select,
    "Fn::FindInMap": _Evaluator._find_in_map,
    "Fn::Split": _Evaluator._split,
    "Fn::Sub": _Evaluator._sub,
}


class TemplateStore:
    """Templates as files ``<folder>/<name>.json``; re-read when a file changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._cache: dict[str, tuple[tuple[int, int], Template]] = {}

    def path(self, name: str) -> Path:
        return self.folder / "{}.json".format(name)

    def get(self, name: str) -> Template:
        """Return template ``name``; 404 when there is none, 400 when it is invalid."""
        if not TEMPLATE_NAME.match(name):
            raise TemplateError(
                400,
                INVALID_PARAMETERS,
                "template name {!r} is invalid: 1-36 characters of [0-9A-Za-z_-]".format(name),
            )
        path = self.path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise TemplateError(
                404,
                RESOURCE_NOT_FOUND,
                "The provisioning template {} does not exist; create {}".format(name, path),
            ) from None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        template = Template.from_json(name, path.read_text(encoding="utf-8"))
        self._cache[name] = (stamp, template)
        return template

    def put(self, name: str, body: Mapping[str, Any] | str) -> Template:
        """Validate and store a template (as ``aws iot create-provisioning-template`` would)."""
        text = body if isinstance(body, str) else json.dumps(body, indent=2)
        if not TEMPLATE_NAME.match(name):
            raise _invalid_template(
                "template name {!r} is invalid: 1-36 characters of [0-9A-Za-z_-]".format(name)
            )
        template = Template.from_json(name, text)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(name).with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path(name))
        return template

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json"))


DEMO_TEMPLATE_NAME = "FleetprovDemo"
ROTATION_TEMPLATE_NAME = "FleetprovRotation"
# The templates iotsim's demo runs and tools.awssetup deploys, by name: the files' own names.
BUILTIN_TEMPLATES = {
    DEMO_TEMPLATE_NAME: Path(__file__).with_name("templates") / "demo.json",
    ROTATION_TEMPLATE_NAME: Path(__file__).with_name("templates") / "rotation.json",
}
DEMO_TEMPLATE_PATH = BUILTIN_TEMPLATES[DEMO_TEMPLATE_NAME]


def builtin_template_text(name: str) -> str:
    return BUILTIN_TEMPLATES[name].read_text(encoding="utf-8")


def demo_template_text() -> str:
    return builtin_template_text(DEMO_TEMPLATE_NAME)
