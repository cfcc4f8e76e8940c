"""AWS Lambda functions of fleetprov's certificate rotation (docs/rotation.md).

``hook_handler`` is the rotation template's pre-provisioning hook: it allows a
RegisterThing only when the certificate the request came in on
(``claimCertificateId``) is attached to the thing the request names
(``parameters.ThingName``), so a thing's own certificate, and nothing else,
registers a new certificate on that thing.

``retire_handler`` is the action of the topic rule on ``fleetprov/+/retire``
(``SELECT certificateId, principal() AS principal, topic(2) AS thingName,
topic() AS topic``). It deactivates and detaches the certificate the request
names only when the request came over a certificate attached to the same thing
that is newer than the one it retires, and answers on the request's topic plus
``/accepted`` (``{"certificateId", "status"}``) or ``/rejected``
(``{"statusCode", "errorCode", "errorMessage"}``, as AWS's MQTT APIs answer).

This one file is the deployment package (tools/awssetup/lambdas/__init__.py):
standard library and boto3 only, as the Lambda Python runtime has them. iotsim
runs this same file in-process for a function whose package is byte-identical,
with a context whose ``client()`` gives clients on iotsim's own endpoint.
"""

import json
import os
import re

# botocore's iot model: ThingName [a-zA-Z0-9:_-]{1,128}, CertificateId 64 hex digits.
THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}\Z")
CERTIFICATE_ID = re.compile(r"^[0-9a-fA-F]{64}\Z")
MAX_TOPIC = 256  # AWS IoT's topic size quota, in bytes
MAX_PAGES = 100  # of ListThingPrincipals: a thing with more certificates is refused, not walked for ever
RETIRED = ("INACTIVE", "REVOKED")


class Refusal(Exception):
    """A retire request refused with AWS's error shape."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.body = {"statusCode": status, "errorCode": code, "errorMessage": message}


def _client(context, service):
    make = getattr(context, "client", None)
    if make is not None:
        return make(service)
    import boto3  # the Lambda runtime's

    if service == "iot-data":
        # iot-data's default endpoint is the legacy one; the account's ATS endpoint is set by awssetup.
        return boto3.client(service, endpoint_url="https://" + os.environ["IOT_DATA_ENDPOINT"])
    return boto3.client(service)


def _error_code(exc):
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def certificates_of(iot, thing):
    """The ids of the certificates attached to ``thing`` (none when the thing does not exist)."""
    ids, token = [], None
    for _ in range(MAX_PAGES):
        args = {"thingName": thing}
        if token:
            args["nextToken"] = token
        try:
            page = iot.list_thing_principals(**args)
        except Exception as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                return []
            raise
        ids += [p.rsplit("/", 1)[1].lower() for p in page.get("principals") or () if ":cert/" in p]
        token = page.get("nextToken")
        if not token:
            return ids
    raise RuntimeError("thing {} has more principals than {} pages".format(thing, MAX_PAGES))


def allow_rotation(event, iot):
    """The hook's answer: allowed only for a certificate attached to the thing it registers on."""
    event = event if isinstance(event, dict) else {}
    parameters = event.get("parameters")
    thing = parameters.get("ThingName") if isinstance(parameters, dict) else None
    requester = event.get("claimCertificateId")
    if not (isinstance(thing, str) and THING_NAME.match(thing)
            and isinstance(requester, str) and CERTIFICATE_ID.match(requester)):
        return {"allowProvisioning": False}
    return {"allowProvisioning": requester.lower() in certificates_of(iot, thing)}


def hook_handler(event, context):
    return allow_rotation(event, _client(context, "iot"))


def _checked_id(value, what, status, code):
    if not isinstance(value, str) or not CERTIFICATE_ID.match(value):
        raise Refusal(status, code, "{} must be a certificate id (64 hex digits)".format(what))
    return value.lower()


def _retire(event, thing, iot):
    target = _checked_id(event.get("certificateId"), "certificateId", 400, "InvalidRequestException")
    requester = _checked_id(event.get("principal"), "the request's principal", 403, "ForbiddenException")
    attached = certificates_of(iot, thing)
    # Whether the target is on the thing is told only to a certificate of that thing.
    if requester not in attached:
        raise Refusal(403, "ForbiddenException", "the request's certificate is not attached to thing " + thing)
    if target == requester:
        raise Refusal(403, "ForbiddenException", "a certificate cannot retire itself")
    if target not in attached:
        raise Refusal(404, "ResourceNotFoundException",
                      "certificate {} is not attached to thing {}".format(target, thing))
    mine = iot.describe_certificate(certificateId=requester)["certificateDescription"]
    old = iot.describe_certificate(certificateId=target)["certificateDescription"]
    if not mine["creationDate"] > old["creationDate"]:
        raise Refusal(403, "ForbiddenException",
                      "certificate {} is not newer than {}: only a newer certificate retires an older "
                      "one".format(requester, target))
    status = old["status"]
    if status not in RETIRED:  # deactivated first: a retry after a failed detach finds it still attached
        iot.update_certificate(certificateId=target, newStatus="INACTIVE")
        status = "INACTIVE"
    iot.detach_thing_principal(thingName=thing, principal=old["certificateArn"])
    return {"certificateId": target, "status": status}


def retire(event, iot, data):
    """Retire the certificate the request names, answer on its topic; returns the answer (None: no topic)."""
    event = event if isinstance(event, dict) else {}
    thing, topic = event.get("thingName"), event.get("topic")
    if not (isinstance(thing, str) and THING_NAME.match(thing) and isinstance(topic, str)
            and len(topic.encode("utf-8")) <= MAX_TOPIC - len("/rejected")):
        return None  # no thing to act for, or no topic to answer on
    try:
        body, outcome = _retire(event, thing, iot), "accepted"
    except Refusal as exc:
        body, outcome = exc.body, "rejected"
    except Exception as exc:  # an AWS call failed: the device asks again at a later boot
        body = {"statusCode": 500, "errorCode": "InternalFailureException",
                "errorMessage": "retiring failed: {}".format(_error_code(exc) or type(exc).__name__)}
        outcome = "rejected"
    data.publish(topic="{}/{}".format(topic, outcome), qos=1, payload=json.dumps(body).encode("utf-8"))
    return body


def retire_handler(event, context):
    return retire(event, _client(context, "iot"), _client(context, "iot-data"))
