"""What one control-plane connection may cost: iotsim's choices, where AWS documents no number;
and how long the certificates iotsim issues are valid.

Kept apart from the control plane itself so that the CLI can show them in
``up --help`` without loading it (and cryptography) first. See docs/iotsim.md.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUEST_TIMEOUT_S = 20.0
MAX_CONNECTIONS = 64
MAX_BODY = 1 << 20  # the iot model's largest string, a policy document, is 404,600 characters
CERT_DAYS = 365 * 10  # iotsim's choice (AWS's own certificates run to 2049-12-31); `up --cert-days`


@dataclass(frozen=True)
class ApiLimits:
    """What one connection may cost (iotsim's choices; ``up --api-timeout/--api-connections/--api-max-body``)."""

    request_timeout: float = REQUEST_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_body: int = MAX_BODY
