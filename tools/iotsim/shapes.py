"""AWS IoT's constraints on names and values, read from botocore's own ``iot`` model.

Every value a device or an API caller sends that ends up in the registry (thing
names, attribute names and values, thing types, groups, billing groups, policy
names, certificate ids) is checked here against the pattern and length of its
shape in ``botocore/data/iot/<date>/service-2.json``, as AWS checks it, and
refused with AWS's wording ("1 validation error detected: Value ... at ...
failed to satisfy constraint: ..."). The model writes Java regular
expressions; the ones these shapes use mean the same in Python once ``\\w`` is
ASCII-only (Java's default).
"""

from __future__ import annotations

import functools
import re
from typing import Any

THING_NAME = "ThingName"
ATTRIBUTE_NAME = "AttributeName"
ATTRIBUTE_VALUE = "AttributeValue"
THING_TYPE_NAME = "ThingTypeName"
THING_GROUP_NAME = "ThingGroupName"
BILLING_GROUP_NAME = "BillingGroupName"
POLICY_NAME = "PolicyName"
CERTIFICATE_ID = "CertificateId"
# RegisterThing's parameters (the control-plane operation's Parameters map): the
# MQTT API documents no bound of its own, so iotsim holds a device to these.
PARAMETER_KEY = "Parameter"
PARAMETER_VALUE = "Value"
CSR = "CertificateSigningRequest"

# AWS's registry quota ("AWS IoT Core endpoints and quotas", thing limits): a thing
# without a thing type holds at most 3 attributes, one with a type at most 50.
MAX_ATTRIBUTES_UNTYPED = 3
MAX_ATTRIBUTES_TYPED = 50


class ShapeError(ValueError):
    """A value breaks its shape's constraint; the message is AWS's validation wording."""


@functools.lru_cache(maxsize=None)
def _model() -> Any:
    # botocore loads when a value is first checked: `iotsim --help` runs without it.
    import botocore.loaders
    import botocore.model

    loader = botocore.loaders.Loader()
    return botocore.model.ServiceModel(loader.load_service_model("iot", "service-2"), "iot")


@functools.lru_cache(maxsize=None)
def _constraint(shape: str) -> tuple[int, int | None, re.Pattern[str] | None, str]:
    meta = _model().shape_for(shape).metadata
    pattern = meta.get("pattern")
    compiled = re.compile(pattern.strip("^$"), re.ASCII) if pattern else None
    return int(meta.get("min", 0)), meta.get("max"), compiled, pattern or ""


def _shown(value: str) -> str:
    # The value as AWS shows it, but on one line and bounded.
    text = value if len(value) <= 100 else value[:100] + "..."
    return text.encode("unicode_escape").decode("ascii")


def check(shape: str, value: object, where: str) -> str:
    """``value`` when it satisfies the model's ``shape``; ShapeError naming ``where`` otherwise."""
    low, high, pattern, written = _constraint(shape)
    if not isinstance(value, str):
        raise ShapeError(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: Member must be a "
            "string, got {}".format(where, type(value).__name__)
        )
    if len(value) < low:
        broken = "Member must have length greater than or equal to {}".format(low)
    elif high is not None and len(value) > high:
        broken = "Member must have length less than or equal to {}".format(high)
    elif pattern is not None and not pattern.fullmatch(value):
        broken = "Member must satisfy regular expression pattern: {}".format(written)
    else:
        return value
    raise ShapeError(
        "1 validation error detected: Value '{}' at '{}' failed to satisfy constraint: {}".format(
            _shown(value), where, broken
        )
    )


def check_attributes(attributes: object, typed: bool, where: str = "attributePayload.attributes") -> None:
    """A thing's attributes: names and values as the model says, and no more than AWS allows."""
    if not isinstance(attributes, dict):
        raise ShapeError("1 validation error detected: Value at '{}' must be a map".format(where))
    limit = MAX_ATTRIBUTES_TYPED if typed else MAX_ATTRIBUTES_UNTYPED
    if len(attributes) > limit:
        raise ShapeError(
            "a thing {} a thing type holds at most {} attributes (AWS IoT quota); got {}".format(
                "with" if typed else "without", limit, len(attributes)
            )
        )
    for name, value in attributes.items():
        check(ATTRIBUTE_NAME, name, where)
        check(ATTRIBUTE_VALUE, value, "{}.{}".format(where, name))
