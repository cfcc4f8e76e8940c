"""Example pre-provisioning hooks for ``python -m tools.iotsim up --hook module:function``.

A hook gets AWS's input (``claimCertificateId``, ``certificateId``,
``certificatePem``, ``templateArn``, ``clientId``, ``parameters``) and returns
``{"allowProvisioning": bool, "parameterOverrides": {str: str}}``, like the
Lambda function AWS calls. It may take ``(event)`` or, like a Lambda handler,
``(event, context)`` (context is None). It must answer within 5 seconds;
raising, timing out or not returning ``allowProvisioning: True`` refuses the
request with 403 AccessDenied.
"""

from __future__ import annotations

import os
from typing import Any

ALLOWLIST_ENV = "IOTSIM_ALLOWED_SERIALS"


def allow_all(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Allow every device, changing nothing."""
    return {"allowProvisioning": True}


def allowlist(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Allow only the SerialNumber values listed (comma-separated) in $IOTSIM_ALLOWED_SERIALS.

    Allowed devices are also tagged with ``Location=field`` through
    ``parameterOverrides`` (the demo template maps it to a longer telemetry
    interval), to show how a hook changes parameters.
    """
    allowed = {s.strip() for s in os.environ.get(ALLOWLIST_ENV, "").split(",") if s.strip()}
    serial = event.get("parameters", {}).get("SerialNumber")
    if serial not in allowed:
        return {"allowProvisioning": False}
    return {"allowProvisioning": True, "parameterOverrides": {"Location": "field"}}
