"""iotsim's AWS IoT data plane over HTTP: iot-data Publish, which a Lambda function answers devices with.

Served on the control plane's endpoint from botocore's ``iot-data`` model (signed with service
``iotdata``). The message goes to the broker through the provisioning service's own connection
and reaches every subscriber whose policy allows ``iot:Receive`` on the topic, as a message
AWS IoT publishes does. A topic is held to AWS's topic quotas (256 bytes, seven slashes, no
wildcards) and the payload to AWS's 128 KB; topics under ``$`` (AWS's reserved topics, which
iotsim does not serve over HTTP) and under ``iotsim/`` (iotsim's own plumbing) are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .apimodel import ApiError

MAX_TOPIC = 256  # bytes, AWS IoT's topic quota
MAX_SLASHES = 7
MAX_PAYLOAD = 128 * 1024  # AWS IoT's message size quota


class IotData:
    """``op_Publish`` for one iotsim; ``publisher(topic, payload, qos, retain)`` sends it to the broker."""

    def __init__(self) -> None:
        self.publisher: Callable[[str, bytes, int, bool], None] | None = None

    def op_Publish(self, topic: str, qos: int = 0, retain: bool = False, payload: bytes = b"",
                   **mqtt5: Any) -> dict[str, Any]:
        if mqtt5:
            raise ApiError("InvalidRequestException", "iotsim publishes MQTT 3.1.1 messages, without {}".format(
                ", ".join(sorted(mqtt5))))
        if qos not in (0, 1):
            raise ApiError("InvalidRequestException", "qos must be 0 or 1, got {}".format(qos))
        size = len(topic.encode("utf-8"))
        if not 1 <= size <= MAX_TOPIC or topic.count("/") > MAX_SLASHES or set(topic) & {"+", "#", "\0"}:
            raise ApiError("InvalidRequestException", "topic {!r} is not a topic of at most {} bytes and {} "
                           "slashes without wildcards".format(topic[:300], MAX_TOPIC, MAX_SLASHES))
        if topic.startswith("$") or topic == "iotsim" or topic.startswith("iotsim/"):
            raise ApiError("UnauthorizedException", "iotsim does not publish to {!r} over HTTP".format(topic[:300]))
        if len(payload) > MAX_PAYLOAD:
            raise ApiError("InvalidRequestException", "the payload has {} bytes; AWS IoT allows {}".format(
                len(payload), MAX_PAYLOAD))
        if self.publisher is None:
            raise ApiError("InternalFailureException", "iotsim's broker connection is not up", 500)
        self.publisher(topic, payload, qos, retain)
        return {}
