# An in-process stand-in for umqtt.simple's MQTTClient, for unit tests on
# CPython and on the MicroPython unix port (so: no typing, no dataclasses).
#
# Observable behaviour copied from umqtt.simple 1.3.4: the callback gets
# (topic, msg) as bytes; check_msg() handles at most one message and returns
# None whether or not one was pending; subscribe() asserts a callback is set
# and, like the real one waiting for SUBACK, handles messages that are already
# queued before it returns; publish(qos=1) likewise handles queued messages
# while "waiting for PUBACK".
#
# A responder decides what the "server" answers to each publish; the scripted
# AWS responder below answers the three fleet-provisioning requests.

import json


class MQTTException(Exception):
    pass


class FakeClient:
    def __init__(self, responder=None, with_unsubscribe=True):
        self.cb = None
        self.sock = None
        self.responder = responder
        self.inbox = []  # (topic, msg) waiting to be read by the client
        self.subscribed = []  # (topic, qos) in order
        self.unsubscribed = []
        self.published = []  # (topic, msg, retain, qos)
        self.fail = {}  # method name -> exception raised by the next call
        self.check_calls = 0
        self.deliver_during_publish = False
        if not with_unsubscribe:
            self.unsubscribe = None

    # -- umqtt surface ---------------------------------------------------------

    def set_callback(self, f):
        self.cb = f

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "Subscribe callback is not set"
        self._maybe_fail("subscribe")
        self.subscribed.append((topic, qos))
        # while waiting for SUBACK, umqtt handles whatever arrives first
        self._flush()

    def unsubscribe(self, topic):
        self._maybe_fail("unsubscribe")
        self.unsubscribed.append(topic)

    def publish(self, topic, msg, retain=False, qos=0):
        self._maybe_fail("publish")
        self.published.append((topic, msg, retain, qos))
        if self.responder is not None:
            self.responder(self, topic, msg)
        if qos == 1 and self.deliver_during_publish:
            self._flush()

    def check_msg(self):
        self.check_calls += 1
        self._maybe_fail("check_msg")
        if self.inbox:
            topic, msg = self.inbox.pop(0)
            self.cb(topic, msg)
        return None

    # -- test controls ---------------------------------------------------------

    def queue(self, topic, msg):
        self.inbox.append((topic, msg))

    def subscribed_topics(self):
        return [t for t, _ in self.subscribed]

    def _flush(self):
        while self.inbox:
            topic, msg = self.inbox.pop(0)
            self.cb(topic, msg)

    def _maybe_fail(self, name):
        exc = self.fail.pop(name, None)
        if exc is not None:
            raise exc


def _encoder(fmt):
    if fmt == "cbor":
        import cbor

        return cbor.dumps, cbor.loads
    return (lambda obj: json.dumps(obj).encode()), (lambda b: json.loads(b))


class AwsAnswers:
    """AWS IoT Core's answers to the three fleet-provisioning requests, for
    the fakes that play it (AwsResponder here, scriptaws.AwsServer). Uses the
    subclass's token, key_size, thing_name, device_configuration and dumps."""

    def accepted(self, op):
        """AWS's accepted answer for op ("keys", "csr", "register"), as a dict."""
        if op == "request":
            return {"certificateId": "c" * 64, "status": "INACTIVE"}
        if op == "register":
            out = {"deviceConfiguration": self.device_configuration}
            if self.thing_name is not None:
                out["thingName"] = self.thing_name
            return out
        out = {
            "certificateId": "c" * 64,
            "certificatePem": "-----BEGIN CERTIFICATE-----\n" + "A" * 1200 + "\n-----END CERTIFICATE-----\n",
            "certificateOwnershipToken": self.token,
        }
        if op == "keys":
            out["privateKey"] = "-----BEGIN RSA PRIVATE KEY-----\n" + "K" * self.key_size + "\n-----END RSA PRIVATE KEY-----\n"
        return out

    def rejected(self, status_code=400, error_code="InvalidPayload", error_message="bad"):
        """AWS's rejected answer, encoded (error_code / error_message None: left out)."""
        out = {"statusCode": status_code}
        if error_code is not None:
            out["errorCode"] = error_code
        if error_message is not None:
            out["errorMessage"] = error_message
        return self.dumps(out)


class AwsResponder(AwsAnswers):
    """Answers fleet-provisioning requests like AWS IoT Core.

    fmt: "json" or "cbor". Set .override[op] = (suffix, payload_bytes) to
    answer an operation ("keys", "csr", "register") with a scripted payload
    instead; .silent = True answers nothing (a lost response).
    """

    def __init__(self, fmt="json", thing_name="thing-0001", device_configuration=None, key_size=1700):
        self.fmt = fmt
        self.dumps, self.loads = _encoder(fmt)
        self.thing_name = thing_name
        self.device_configuration = {"Fallback": "false"} if device_configuration is None else device_configuration
        self.override = {}
        self.silent = False
        self.requests = []  # (op, decoded request)
        self.key_size = key_size
        self.token = "T" * 700

    def __call__(self, client, topic, msg):
        fmt = self.fmt.encode()
        if topic == b"$aws/certificates/create/" + fmt:
            op = "keys"
        elif topic == b"$aws/certificates/create-from-csr/" + fmt:
            op = "csr"
        elif topic.startswith(b"$aws/provisioning-templates/") and topic.endswith(b"/provision/" + fmt):
            op = "register"
        else:
            return
        self.requests.append((op, self.loads(msg) if msg else None))
        if self.silent:
            return
        if op in self.override:
            suffix, payload = self.override[op]
            client.queue(topic + suffix, payload)
            return
        client.queue(topic + b"/accepted", self.dumps(self.accepted(op)))

