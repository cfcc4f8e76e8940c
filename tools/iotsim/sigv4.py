"""Signature Version 4 checks for iotsim's control plane, as AWS makes them.

Every request must carry an ``Authorization: AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/
aws4_request, SignedHeaders=..., Signature=...`` header made with the access key iotsim
wrote at ``up`` (tools/iotsim/localaws.py). The signature is recomputed with botocore's own
signer (``botocore.auth.SigV4Auth``, which boto3 and the AWS CLI sign with) over exactly the
headers the request says it signed, and compared in constant time. As AWS
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_aws-signing.html): the ``host``
header must be signed, the request must arrive within five minutes of its ``X-Amz-Date``, the
credential scope names the date, region and service, and a signed ``X-Amz-Content-SHA256``
must be the body's digest.

Refusals carry AWS's error codes (the common errors of AWS's APIs, e.g.
https://docs.aws.amazon.com/IAM/latest/APIReference/CommonErrors.html), in the spelling of
each protocol: rest-json services (AWS IoT) add ``Exception`` and answer an unknown key with
``UnrecognizedClientException`` and a wrong signature with ``InvalidSignatureException``, as
users report AWS IoT doing (aws/amazon-freertos#841); query services (IAM) answer
``InvalidClientTokenId`` and ``SignatureDoesNotMatch``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials as BotoCredentials

from .apimodel import ApiError

MAX_SKEW_S = 300.0  # AWS: "a request must reach AWS within five minutes of the time stamp"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_INVALID_TOKEN = "The security token included in the request is invalid."
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
# failure kind -> (rest-json code, query code, HTTP status)
_CODES = {
    "missing": ("MissingAuthenticationTokenException", "MissingAuthenticationToken", 403),
    "incomplete": ("IncompleteSignatureException", "IncompleteSignature", 400),
    "unknown-key": ("UnrecognizedClientException", "InvalidClientTokenId", 403),
    "mismatch": ("InvalidSignatureException", "SignatureDoesNotMatch", 403),
}


@dataclass(frozen=True)
class Credentials:
    """An access key pair (AWS's forms: ``AKIA`` + 16 of [A-Z2-7]; a 40-character secret)."""

    access_key: str
    secret_key: str

    @classmethod
    def new(cls) -> Credentials:
        key = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
        return cls(key, secrets.token_urlsafe(30))


class AuthFailure(Exception):
    """A request iotsim refuses before any operation runs; :meth:`error` is AWS's answer."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def error(self, protocol: str) -> ApiError:
        rest_json, query, status = _CODES[self.kind]
        return ApiError(rest_json if protocol == "rest-json" else query, self.message, status)


class _Verifier(SigV4Auth):
    """botocore's signer, signing exactly the headers the request names (none added or dropped)."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed: Sequence[str]) -> None:
        super().__init__(BotoCredentials(credentials.access_key, credentials.secret_key), service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        chosen = HTTPHeaders()
        for name in self._signed:
            for value in request.headers.get_all(name) or ():
                chosen[name] = value
        return chosen


def _authorization(header: str) -> dict[str, str]:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        raise AuthFailure("incomplete", "Unsupported signing algorithm {!r}".format(algorithm[:40]))
    fields = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields[key] = value
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if missing:
        raise AuthFailure(
            "incomplete",
            "Authorization header requires {} parameter(s). Authorization={}".format(
                ", ".join(repr(m) for m in missing), header[:200]
            ),
        )
    return fields


def verify(
    method: str,
    target: str,
    headers: Mapping[str, str] | HTTPHeaders,
    body: bytes,
    *,
    credentials: Credentials,
    regions: Mapping[str, Sequence[str]],
    now: float,
) -> str:
    """The service (``iot``, ``iam``) a correctly signed request is for; AuthFailure otherwise.

    ``target`` is the request line's path and query as sent; ``regions`` maps each service
    iotsim serves to the regions a credential scope may name for it."""
    if not isinstance(headers, Message):  # header names are case-insensitive
        given, headers = headers, HTTPHeaders()
        for name, value in given.items():
            headers[name] = value
    header = headers.get("Authorization")
    if not header:
        raise AuthFailure("missing", "Missing Authentication Token")
    fields = _authorization(header)
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise AuthFailure("incomplete", "Credential {!r} is not KEY/DATE/REGION/SERVICE/aws4_request".format(
            fields["Credential"][:200]))
    key, day, region, service, _ = scope
    if not hmac.compare_digest(key.encode(), credentials.access_key.encode()):
        raise AuthFailure("unknown-key", _INVALID_TOKEN)
    if service not in regions:
        raise AuthFailure(
            "mismatch", "Credential should be scoped to correct service: one of {}.".format(", ".join(regions))
        )
    if region not in regions[service]:
        raise AuthFailure("mismatch", "Credential should be scoped to a valid region, not {!r}.".format(region))
    amz_date = headers.get("X-Amz-Date") or ""
    try:
        stamp = dt.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        raise AuthFailure("incomplete", "X-Amz-Date {!r} is not YYYYMMDDTHHMMSSZ".format(amz_date[:40])) from None
    if day != amz_date[:8]:
        raise AuthFailure(
            "mismatch",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            "{!r} != {!r}".format(day, amz_date[:8]),
        )
    if abs(now - stamp) > MAX_SKEW_S:
        when = "expired" if stamp < now else "not yet current"
        raise AuthFailure("mismatch", "Signature {}: {} is more than 5 min. from {}".format(
            when, amz_date, dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime(_AMZ_DATE)))
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed:
        raise AuthFailure("mismatch", "'Host' must be a 'SignedHeader' in the AWS Authorization.")
    if signed != sorted(set(signed)) or any(headers.get(h) is None for h in signed):
        raise AuthFailure("mismatch", _MISMATCH)
    digest = headers.get("X-Amz-Content-SHA256")
    if "x-amz-content-sha256" in signed and digest != hashlib.sha256(body).hexdigest():
        raise AuthFailure("mismatch", "The provided 'x-amz-content-sha256' header does not match the body.")
    request = AWSRequest(method=method, url="http://{}{}".format(headers.get("Host"), target), data=body)
    for name in signed:
        for value in headers.get_all(name) or ():
            request.headers[name] = value
    request.context["timestamp"] = amz_date
    signer = _Verifier(credentials, service, region, signed)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise AuthFailure("mismatch", _MISMATCH)
    return service
