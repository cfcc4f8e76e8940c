# AWS IoT Core's side of fleet provisioning, over a ScriptedSocket
# (tests/fakes/scriptsock.py): acknowledges what the client sends, as a broker
# does, and answers the three requests as AWS does, on the request topic plus
# /accepted or /rejected, in the request's format, as a QoS 1 PUBLISH the
# client must acknowledge. A test changes the answers per operation and
# scripts what happens to the next packet of a kind instead of the usual reply
# (silence, a refusal, a broken link, a flood).
#
# Runs on CPython and on the MicroPython unix port.

import json

from fakemqtt import AwsAnswers
from scriptsock import PUBLISH, STRAY_PUBACK, SUBSCRIBE, UNSUBSCRIBE, publish, puback, suback, unsuback

CERTS = b"$aws/certificates/"
TEMPLATES = b"$aws/provisioning-templates/"


def request_topic(op, fmt, template="demo"):
    """The topic an operation ("keys", "csr", "register") publishes to."""
    if op == "keys":
        return CERTS + b"create/" + fmt.encode()
    if op == "csr":
        return CERTS + b"create-from-csr/" + fmt.encode()
    return TEMPLATES + template.encode() + b"/provision/" + fmt.encode()


def default_dumps(fmt):
    if fmt == "cbor":
        import cbor

        return cbor.dumps
    return lambda obj: json.dumps(obj).encode()


# Scripted replies for AwsServer.then(): each takes (server, sock, packet).


def usual(server, sock, packet):
    """The usual reply (so that a later packet of the kind can be scripted)."""
    server.reply(sock, packet)


def silence(server, sock, packet):
    """No reply at all."""


def refuse(server, sock, packet):
    """SUBACK 0x80: the claim policy does not allow the subscription."""
    sock.feed(suback(packet.pid, 0x80))


def hang_up(server, sock, packet):
    """The server closes the connection instead of replying."""
    sock.hang_up()


def break_link(error):
    """The link breaks instead of the reply: OSError(error), or error() for a class."""

    def reply(server, sock, packet):
        sock.fail(error)

    return reply


def flood(server, sock, packet):
    """Stray PUBACKs without end instead of the reply."""
    sock.flood(STRAY_PUBACK)


def send(data):
    """These bytes instead of the reply."""

    def reply(server, sock, packet):
        sock.feed(data)

    return reply


def ack_then(action):
    """PUBACK for a request, then action instead of the answer."""

    def reply(server, sock, packet):
        server.answer(packet)  # counted as a request, answered by action alone
        sock.feed(puback(packet.pid))
        action(server, sock, packet)

    return reply


def reply_then(action):
    """The usual reply, then action."""

    def reply(server, sock, packet):
        server.reply(sock, packet)
        action(server, sock, packet)

    return reply


class AwsServer(AwsAnswers):
    """Answers fleet provisioning like AWS IoT Core.

    fmt: "json" or "cbor". dumps: encodes an answer (default: json, or
    lib/cbor.py). Change answers per operation with .answers[op] (op is
    "keys", "csr" or "register"): a (topic, payload) pair, a list of them
    (several answers, or [] for none), or a function (server, op) returning
    such a list; a topic starting with "/" is appended to the request topic.
    .silent = True answers no request (PUBACKs still go out).
    .answer_first sends the answer before the PUBACK; .answer_qos is the
    answers' QoS (1, as AWS delivers to a QoS 1 subscription).

    Records: packets (everything the client sent, on every socket), requests
    ((op, request payload) in order).
    """

    def __init__(self, fmt="json", dumps=None):
        self.fmt = fmt
        self.dumps = default_dumps(fmt) if dumps is None else dumps
        self.thing_name = "thing-0001"
        self.device_configuration = {"Fallback": "false"}
        self.token = "T" * 700
        self.key_size = 1700
        self.answers = {}
        self.silent = False
        self.answer_first = False
        self.answer_qos = 1
        self.packets = []
        self.requests = []
        self._pid = 0
        self._next = {}

    def then(self, kind, action):
        """The next packet of kind (PUBLISH, SUBSCRIBE, UNSUBSCRIBE) not yet
        scripted gets action instead of the usual reply."""
        self._next.setdefault(kind, []).append(action)

    # -- what the client sent ------------------------------------------------

    def of_kind(self, kind):
        return [p for p in self.packets if p.kind == kind]

    def subscribed(self):
        return [t for p in self.of_kind(SUBSCRIBE) for t in p.topics]

    def unsubscribed(self):
        return [t for p in self.of_kind(UNSUBSCRIBE) for t in p.topics]

    def published(self):
        return self.of_kind(PUBLISH)

    # -- answering -------------------------------------------------------------

    def handle(self, sock, packet):
        self.packets.append(packet)
        queue = self._next.get(packet.kind)
        if queue:
            queue.pop(0)(self, sock, packet)
        else:
            self.reply(sock, packet)

    def reply(self, sock, packet):
        """What a broker and AWS send back for packet."""
        if packet.kind == SUBSCRIBE:
            sock.feed(suback(packet.pid, min(packet.topics[0][1], 1)))
        elif packet.kind == UNSUBSCRIBE:
            sock.feed(unsuback(packet.pid))
        elif packet.kind == PUBLISH:
            ack = puback(packet.pid) if packet.qos == 1 else b""
            answer = self.answer(packet)
            sock.feed(answer + ack if self.answer_first else ack + answer)

    def operation(self, topic):
        fmt = self.fmt.encode()
        if topic == CERTS + b"create/" + fmt:
            return "keys"
        if topic == CERTS + b"create-from-csr/" + fmt:
            return "csr"
        if topic.startswith(TEMPLATES) and topic.endswith(b"/provision/" + fmt):
            return "register"
        if topic.startswith(b"fleetprov/") and topic.endswith(b"/retire"):
            return "request"  # an API of the user's own (Provisioner.request)
        return None

    def answer(self, packet):
        """The PUBLISH packets answering a request (b"" for other publishes)."""
        op = self.operation(packet.topic)
        if op is None:
            return b""
        self.requests.append((op, packet.payload))
        if self.silent:
            return b""
        messages = self.answers.get(op)
        if messages is None:
            messages = [(b"/accepted", self.dumps(self.accepted(op)))]
        elif callable(messages):
            messages = messages(self, op)
        elif isinstance(messages, tuple):
            messages = [messages]
        out = b""
        for topic, payload in messages:
            out += self.message(packet.topic + topic if topic[:1] == b"/" else topic, payload)
        return out

    def message(self, topic, payload, qos=None):
        """A PUBLISH to the client with the server's next packet id."""
        self._pid = self._pid % 0xFFFF + 1
        return publish(topic, payload, self.answer_qos if qos is None else qos, self._pid)

