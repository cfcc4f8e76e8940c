# fleetprov: AWS IoT fleet provisioning ("provisioning by claim") over an
# umqtt.simple-style MQTT client. MicroPython 1.22+ and CPython 3.11+.
#
# The three operations of AWS's "Device provisioning MQTT API", with the
# status vocabulary of the AWS IoT Embedded C provisioning library. fleetprov
# knows nothing of files, Wi-Fi or the application: it takes a connected
# client and returns credentials as strings.

import binascii
import gc
import json
import sys

import awsnames
import timedsock
from runtime import const, sleep_ms, ticks_add, ticks_diff, ticks_ms

# Status values: AwsIotProvisioningError_t.
SUCCESS = const(1)
INIT_FAILED = const(2)
NOT_INITIALIZED = const(3)
BAD_PARAMETER = const(4)
NO_MEMORY = const(5)
BAD_RESPONSE = const(6)
TIMEOUT = const(7)
SERVER_REFUSED = const(8)
INTERNAL_FAILURE = const(9)
MQTT_ERROR = const(10)

# strerror's words, in status order: one string, not ten objects
_NAMES = (
    "SUCCESS,INIT FAILED,NOT INITIALIZED,BAD PARAMETER,NO MEMORY,BAD RESPONSE,TIMEOUT,"
    "SERVER REFUSED,INTERNAL FAILURE,MQTT ERROR"
)

# Failure texts: indexes into fleetprov_texts.TEXTS, which is loaded only on
# failure (see _err). const() names are compiled away on MicroPython.
_NOT_A_CLIENT = const(0)
_SET_CALLBACK_RAISED = const(1)
_NO_CBOR = const(2)
_BAD_FMT = const(3)
_NOT_POSITIVE = const(4)
_NOT_TEXT = const(5)
_NO_RX_MEMORY = const(6)
_BAD_QOS = const(7)
_BAD_TEMPLATE_NAME = const(8)
_BAD_PARAMETERS = const(9)
_IN_PROGRESS = const(10)
_CLOSED = const(11)
_SUBACK_REFUSED = const(12)
_LINK_FAILED = const(13)
_LINK_OUT_OF_MEMORY = const(14)
_NO_ANSWER = const(15)
_CANNOT_ENCODE = const(16)
_CANNOT_DECODE = const(17)
_TOO_LARGE = const(18)
_NOT_A_MAP = const(19)
_FIELD_NOT_TEXT = const(20)
_CONFIGURATION_NOT_TEXT = const(21)
_NO_STATUS_CODE = const(22)
_REFUSED = const(23)
_BAD_BUFFER = const(24)
_BAD_NAME = const(25)
_BAD_REQUEST = const(26)

_QOS = const(1)  # subscriptions, and the keys and register requests
_WAIT_SLICE_MS = const(50)  # longest idle wait between polls for the answer (<= 20 polls/s)
_DRAIN_MS = const(100)  # longest time spent reading stale messages before a request
_MICROPYTHON = sys.implementation.name == "micropython"

# Fields of a CreateKeysAndCertificate answer, in Credentials' order; a
# CreateCertificateFromCsr answer has the first three. (One tuple: its strings
# are objects in RAM, not interned names.)
_CREATED = ("certificateId", "certificatePem", "certificateOwnershipToken", "privateKey")

# Topics of this API; a late answer on one of them is never the application's.
_CERTS = b"$aws/certificates/"
_TEMPLATES = b"$aws/provisioning-templates/"


class _AnswerSocket(timedsock.TimedSocket):
    # The TimedSocket of an operation that also reads the payload of the
    # answer straight into the Provisioner's buffer: umqtt hands its callback
    # a view of the buffer instead of a copy of its own. Every umqtt.simple
    # release, 1.3.4 to 1.8.0, reads a PUBLISH the same way: read(1) the type,
    # read(1) per remaining-length byte, read(2) the topic length,
    # read(topic length), read(2) the packet id at QoS 1, read(size) the
    # payload. _at follows those reads: 0 type, 1 length, 2 topic length,
    # 3 topic, 4 packet id, 5 payload.

    def __init__(self, sock, timeout_ms):
        super().__init__(sock, timeout_ms)
        self.sink = None  # sink(topic, size) -> a memoryview to land the payload in, or None
        self._at = 0
        self._qos = 0
        self._topic = None

    def read(self, n=-1):
        at = self._at
        if at == 5 and self._blocking:
            self._at = 0
            buf = self.sink(self._topic, n) if self.sink is not None else None
            self._topic = None
            if buf is not None:
                if n <= len(buf):
                    self.fill(buf[:n])
                    return buf[:n]
                while n > 0:  # too large: read through the buffer and dropped
                    k = min(n, len(buf))
                    self.fill(buf[:k])
                    n -= k
                return buf[:0]
        data = super().read(n)
        if data:
            if at == 0:
                # one byte read alone at a packet's start: its type (a
                # PUBACK's or PINGRESP's length byte is 2 or 0, never 0x3_)
                if len(data) == 1 and data[0] & 0xF0 == 0x30:
                    self._qos = data[0] & 6
                    self._at = 1
            elif at == 1:
                if data[0] < 0x80:  # the last remaining-length byte
                    self._at = 2
            elif at == 3:
                self._topic = data
                self._at = 4 if self._qos else 5
            elif at != 5:
                self._at = at + 1
        return data


def strerror(status):
    """Return a short description of a status value; "INVALID STATUS" otherwise."""
    if _is_int(status) and SUCCESS <= status <= MQTT_ERROR:
        return _NAMES.split(",")[status - 1]
    return "INVALID STATUS"


class ProvisioningError(Exception):
    """Raised by every fleetprov failure.

    status: one of the status constants. status_code, error_code and
    error_message come from a /rejected response (else None). str(err) is one
    line naming the operation and the cause; it never contains a private key
    or an ownership token.
    """

    def __init__(self, status, message, status_code=None, error_code=None, error_message=None):
        super().__init__(message)
        self.status = status
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message


class Credentials:
    """Result of CreateKeysAndCertificate / CreateCertificateFromCsr:
    certificate_id, certificate_pem, ownership_token and private_key (str;
    private_key is None for the CSR flow). The default repr shows none of
    them, so a logged result leaks no secret."""

    def __init__(self, certificate_id, certificate_pem, ownership_token, private_key=None):
        self.certificate_id = certificate_id
        self.certificate_pem = certificate_pem
        self.ownership_token = ownership_token
        self.private_key = private_key


class Registration:
    """Result of RegisterThing: thing_name (str or None), device_configuration (dict)."""

    def __init__(self, thing_name, device_configuration):
        self.thing_name = thing_name
        self.device_configuration = device_configuration


def _err(op, status, text, *args):
    # ProvisioningError(status, "<op>: <text, args filled in>"). The words
    # live in lib/fleetprov_texts.py, imported on the first failure: a board
    # that never fails never loads them. text: one of the text constants above.
    try:
        import fleetprov_texts

        why = fleetprov_texts.TEXTS[text].format(*args)
    except MemoryError:
        why = "no memory for the text"
    except ImportError:
        why = "text {} {!r}: lib/fleetprov_texts.py is missing".format(text, args)
    return ProvisioningError(status, op + ": " + why)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(op, name, value):
    if _is_int(value) and value > 0:
        return value
    raise _err(op, BAD_PARAMETER, _NOT_POSITIVE, name, value)


def _text(op, name, value):
    if isinstance(value, str) and value:
        return value
    # name only the type: the value may be a secret
    raise _err(op, BAD_PARAMETER, _NOT_TEXT, name, type(value).__name__)


def _text_map(value):
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str) or not isinstance(value[k], str):
                return False
        return True
    return False


class Provisioner:
    """Runs the fleet provisioning operations on a connected MQTT client.

    client: a connected umqtt.simple MQTTClient, or any object with its
        surface (set_callback, subscribe, publish, check_msg, cb; optionally
        sock and unsubscribe).
    fmt: "json" or "cbor" (cbor imports the cbor module only when chosen).
    timeout_ms: default wait for each server answer, in ms (10000).
    rx_size: bytes of the receive buffer, allocated once (6144). A
        CreateKeysAndCertificate answer is about 4 KB.
    mqtt_timeout_ms: bound on each subscribe, publish and unsubscribe, in ms
        (5000), applied to the client's socket (see timedsock) when it has one.
    rx_buffer: a bytearray to receive the answers in, instead of allocating
        rx_size bytes (then ignored): one the caller allocated early, while
        the heap was still in one piece, and may reuse for every Provisioner.

    Messages on topics other than the provisioning ones go on to the
    callback the client had; close() restores it.
    """

    def __init__(self, client, fmt="json", timeout_ms=10000, rx_size=6144, mqtt_timeout_ms=5000, rx_buffer=None):
        op = "Provisioner"
        for name in ("set_callback", "subscribe", "publish", "check_msg"):
            if not callable(getattr(client, name, None)):
                raise _err(op, BAD_PARAMETER, _NOT_A_CLIENT, name)
        if fmt == "json":
            self._dumps = json.dumps
            self._loads = json.loads
        elif fmt == "cbor":
            try:
                import cbor
            except ImportError:
                raise _err(op, INIT_FAILED, _NO_CBOR)
            self._dumps = cbor.dumps
            self._loads = cbor.loads
        else:
            raise _err(op, BAD_PARAMETER, _BAD_FMT, fmt)
        self._fmt = fmt.encode()
        self._timeout_ms = _positive(op, "timeout_ms", timeout_ms)
        self._mqtt_ms = _positive(op, "mqtt_timeout_ms", mqtt_timeout_ms)
        if rx_buffer is not None:
            if not isinstance(rx_buffer, bytearray) or not rx_buffer:
                raise _err(op, BAD_PARAMETER, _BAD_BUFFER, type(rx_buffer).__name__)
            self._rx = rx_buffer
        else:
            try:
                self._rx = bytearray(_positive(op, "rx_size", rx_size))
            except MemoryError:
                raise _err(op, NO_MEMORY, _NO_RX_MEMORY, rx_size)
        self._view = memoryview(self._rx)
        self._client = client
        self._app_cb = getattr(client, "cb", None)
        self._op = None  # name of the operation in progress
        self._topics = ()  # (accepted, rejected) of the operation in progress
        self._armed = False  # the request is published: answers count from now
        self._got = None  # (0 accepted / 1 rejected / None too large, length)
        self._app_exc = None
        self._sock = None  # the TimedSocket while an operation runs
        self._seen = 0  # messages handled, so _drain can tell "nothing" from "one"
        # CRC of the last certificate answer taken: a duplicate of it arriving
        # during the next create (umqtt < 1.7 cannot unsubscribe) is not its answer
        self._last_crc = None
        try:
            client.set_callback(self._on_message)
        except Exception as exc:
            raise _err(op, INIT_FAILED, _SET_CALLBACK_RAISED, exc)

    # -- public operations ---------------------------------------------------

    def create_keys_and_certificate(self, timeout_ms=None):
        """CreateKeysAndCertificate: AWS makes the key pair.

        timeout_ms: wait for the answer (default: the provisioner's).
        Returns Credentials with certificate_id, certificate_pem, private_key
        and ownership_token (str). Raises ProvisioningError.
        """
        op = "CreateKeysAndCertificate"
        self._check(op, timeout_ms)
        msg = self._request(op, _CERTS + b"create/" + self._fmt, {}, _QOS, timeout_ms)
        return Credentials(*self._fields(op, msg, 4))

    def create_certificate_from_csr(self, csr_pem, qos=1, timeout_ms=None):
        """CreateCertificateFromCsr: AWS signs the device's own key.

        csr_pem: the PEM certificate signing request (str).
        qos: 0 or 1 for the request (the answer is the acknowledgement).
        timeout_ms: wait for the answer (default: the provisioner's).
        Returns Credentials (private_key is None). Raises ProvisioningError.
        """
        op = "CreateCertificateFromCsr"
        self._check(op, timeout_ms)
        _text(op, "csr_pem", csr_pem)
        if not (_is_int(qos) and 0 <= qos <= 1):
            raise _err(op, BAD_PARAMETER, _BAD_QOS, qos)
        msg = self._request(op, _CERTS + b"create-from-csr/" + self._fmt, {"certificateSigningRequest": csr_pem},
                            qos, timeout_ms)
        return Credentials(*self._fields(op, msg, 3))

    def register_thing(self, template_name, ownership_token, parameters=None, timeout_ms=None):
        """RegisterThing: activate the certificate and create the thing.

        template_name: the provisioning template (1-36 of [0-9A-Za-z_-]).
        ownership_token: certificateOwnershipToken from the create call.
        parameters: dict of str to str for the template, or None.
        timeout_ms: wait for the answer (default: the provisioner's).
        Returns Registration with thing_name (str or None) and
        device_configuration (dict of str to str, {} when absent).
        """
        op = "RegisterThing"
        self._check(op, timeout_ms)
        if not awsnames.template_name_ok(template_name):
            raise _err(op, BAD_PARAMETER, _BAD_TEMPLATE_NAME, awsnames.TEMPLATE_NAME_RULE, template_name)
        request = {_CREATED[2]: _text(op, "ownership_token", ownership_token)}  # certificateOwnershipToken
        if parameters is not None:
            if not _text_map(parameters):
                raise _err(op, BAD_PARAMETER, _BAD_PARAMETERS)
            request["parameters"] = parameters
        msg = self._request(op, _TEMPLATES + template_name.encode() + b"/provision/" + self._fmt, request, _QOS,
                            timeout_ms)
        name = msg.get("thingName")
        config = msg.get("deviceConfiguration", {})
        if name is not None and not isinstance(name, str):
            raise _err(op, BAD_RESPONSE, _FIELD_NOT_TEXT, "thingName", type(name).__name__)
        if name is not None and not awsnames.thing_name_ok(name):
            # never a client id, a topic or a file's content: refused before anyone stores it
            raise _err(op, BAD_RESPONSE, _BAD_NAME, "thingName", name[:40], awsnames.THING_NAME_RULE)
        if not _text_map(config):
            raise _err(op, BAD_RESPONSE, _CONFIGURATION_NOT_TEXT)
        return Registration(name, config)

    def request(self, topic, message, timeout_ms=None):
        """Any API that answers as these three do, on an MQTT topic of your own:
        publish ``message`` (a dict) on ``topic`` (bytes, without /accepted)
        and wait for the answer on ``topic``/accepted (returned: a dict) or
        ``topic``/rejected (ProvisioningError, SERVER_REFUSED, with its
        statusCode, errorCode and errorMessage). Same format, buffer, time
        limits and rules as the three operations.
        """
        op = "request"
        self._check(op, timeout_ms)
        if not isinstance(topic, bytes) or not topic or not isinstance(message, dict):
            raise _err(op, BAD_PARAMETER, _BAD_REQUEST, type(topic).__name__, type(message).__name__)
        return self._request(op, topic, message, _QOS, timeout_ms)

    def close(self):
        """Give the client back: restore its callback. Later calls raise NOT_INITIALIZED."""
        if self._op is not None:
            raise _err("close", BAD_PARAMETER, _IN_PROGRESS, self._op)
        if self._client is not None:
            self._client.set_callback(self._app_cb)
            self._client = None

    # -- internals ---------------------------------------------------------

    def _check(self, op, timeout_ms):
        if self._client is None:
            raise _err(op, NOT_INITIALIZED, _CLOSED)
        if self._op is not None:
            raise _err(op, BAD_PARAMETER, _IN_PROGRESS, self._op)
        if timeout_ms is not None:
            _positive(op, "timeout_ms", timeout_ms)

    def _fields(self, op, msg, count):
        # the first count of _CREATED, each a str
        out = []
        for name in _CREATED[:count]:
            value = msg.get(name)
            if not isinstance(value, str):
                raise _err(op, BAD_RESPONSE, _FIELD_NOT_TEXT, name, type(value).__name__)
            out.append(value)
        if not awsnames.certificate_id_ok(out[0]):
            raise _err(op, BAD_RESPONSE, _BAD_NAME, _CREATED[0], out[0][:40], awsnames.CERTIFICATE_ID_RULE)
        return out

    def _sink(self, topic, n):
        # _AnswerSocket: the first answer after the request lands in the
        # buffer (no copy of umqtt's); anything else is read as usual.
        if self._armed and self._got is None and topic in self._topics:
            if n > len(self._rx):
                self._got = (None, n)  # read through the buffer and dropped
            return self._view
        return None

    def _on_message(self, topic, msg):
        self._seen += 1
        topics = self._topics
        if topic in topics:
            # Answers published before our request, and any after the first, are not ours.
            if self._armed and self._got is None:
                n = len(msg)
                if n > len(self._rx):
                    self._got = (None, n)
                    return
                which = topics.index(topic)
                if which == 0 and topic.startswith(_CERTS):
                    crc = binascii.crc32(msg)
                    if crc == self._last_crc:
                        return  # the previous certificate again: a late duplicate
                    self._last_crc = crc
                if not isinstance(msg, memoryview):
                    self._view[:n] = msg  # not landed by _AnswerSocket (a client without a socket): copy
                self._got = (which, n)
        elif topic.startswith(_CERTS) or topic.startswith(_TEMPLATES):
            pass  # a late answer to an earlier operation
        elif self._app_cb is not None:
            try:
                self._app_cb(topic, msg)
            except Exception as exc:
                self._app_exc = exc  # the application's own error: re-raised as is
                raise

    def _mqtt(self, what, topic, call, *args):
        # One client call, its failure mapped to the contract's statuses.
        # what (and the topic, bytes or None) name the call in the error.
        if self._sock is not None:
            self._sock.arm()  # each call gets mqtt_timeout_ms, however busy the link
        try:
            return call(*args)
        except MemoryError:
            status, text, cause = NO_MEMORY, _LINK_OUT_OF_MEMORY, None
        except Exception as exc:
            if exc is self._app_exc:
                raise
            status, text, cause = MQTT_ERROR, _LINK_FAILED, timedsock.describe(exc)
            # umqtt raises its MQTTException only for a SUBACK refusal (known
            # by class name: fleetprov does not import umqtt), never an errno
            # (ENOTCONN is 128 == 0x80 on ESP32).
            if type(exc).__name__ == "MQTTException" and what.startswith("sub"):
                text = _SUBACK_REFUSED
        if topic is not None:
            what += " " + topic.decode()
        raise _err(self._op, status, text, what, cause)  # a text without a second {} leaves cause out

    def _convert(self, op, fn, data, status, text, *args):
        # Encode a request or decode an answer, failures mapped to statuses;
        # the cause follows args in the text.
        try:
            return fn(data)
        except MemoryError:
            status, why = NO_MEMORY, "out of memory"
        except Exception as exc:
            why = type(exc).__name__
        raise _err(op, status, text, *args, why)

    def _request(self, op, topic, request, qos, timeout_ms):
        # request: the map to send, encoded here in the provisioner's format
        request = self._convert(op, self._dumps, request, INTERNAL_FAILURE, _CANNOT_ENCODE)
        request = request.encode() if isinstance(request, str) else request
        client = self._client
        sock = None
        self._op = op
        self._topics = (topic + b"/accepted", topic + b"/rejected")
        self._armed = False
        self._got = None
        self._app_exc = None
        subscribed = 0
        try:
            # umqtt has no time limits of its own: see timedsock
            sock = self._mqtt("preparing the socket", None, timedsock.attach, client, self._mqtt_ms,
                              _AnswerSocket)
            if sock is not None:
                self._sock = client.sock
                self._sock.sink = self._sink  # an answer's payload lands in the buffer
            for t in self._topics:
                self._mqtt("subscribe to", t, client.subscribe, t, _QOS)
                subscribed += 1
            self._wait(None, _DRAIN_MS)  # what came before the request is not its answer
            self._armed = True
            self._mqtt("publish to", topic, client.publish, topic, request, False, qos)
            request = None
            self._wait(topic, self._timeout_ms if timeout_ms is None else timeout_ms)
        finally:
            self._finish(subscribed)
            self._sock = None
            timedsock.detach(client, sock)
        return self._parse(op)

    def _wait(self, topic, timeout_ms):
        # Read until the answer or the deadline (topic None: until nothing is
        # waiting, to drain what came before the request). The deadline holds
        # whatever check_msg() returns: umqtt returns the type of any
        # non-PUBLISH packet (and 1.3.4 None for a message handled, hence the
        # count), so a flood of strays is not "idle". When nothing came, rest
        # until the socket is readable or a slice passes: no busy poll, and
        # nothing allocated per idle round.
        deadline = ticks_add(ticks_ms(), timeout_ms)
        check = self._client.check_msg  # one bound method for every poll
        rest = sleep_ms if self._sock is None else self._sock.wait_readable
        while True:
            left = ticks_diff(deadline, ticks_ms())
            seen = self._seen
            # after the deadline, one last look: an answer racing it still counts
            idle = self._mqtt("reading from the server", None, check) is None and seen == self._seen
            if self._got is not None:
                return
            if topic is None:
                if idle or left <= 0:
                    return
            elif left <= 0:
                raise _err(self._op, TIMEOUT, _NO_ANSWER, topic.decode(), timeout_ms)
            elif idle:
                rest(min(left, _WAIT_SLICE_MS))

    def _finish(self, subscribed):
        self._op = None
        self._armed = False
        unsubscribe = getattr(self._client, "unsubscribe", None)
        if self._sock is not None:
            # the unsubscribes share one mqtt_timeout_ms; after a failure (the
            # caller's time is up) one slice
            self._sock.arm(None if self._got else _WAIT_SLICE_MS)
        if unsubscribe is not None:
            for t in self._topics[:subscribed]:
                try:
                    unsubscribe(t)
                except Exception:
                    break  # the answer is in hand; a failing link shows on the next call
        self._topics = ()

    def _parse(self, op):
        which, n = self._got
        self._got = None
        if which is None:
            raise _err(op, NO_MEMORY, _TOO_LARGE, n, len(self._rx), (n + 1023) & ~1023)
        if _MICROPYTHON:
            gc.collect()  # umqtt's copy of the message is garbage now: make room to decode
        # MicroPython decodes straight from the buffer; CPython's json wants bytes
        view = self._view[:n] if _MICROPYTHON else bytes(self._view[:n])
        msg = self._convert(op, self._loads, view, BAD_RESPONSE, _CANNOT_DECODE, n)
        if not isinstance(msg, dict):
            raise _err(op, BAD_RESPONSE, _NOT_A_MAP, type(msg).__name__)
        if which == 0:
            return msg
        code = msg.get("statusCode")
        if not _is_int(code):
            raise _err(op, BAD_RESPONSE, _NO_STATUS_CODE)
        error_code = msg.get("errorCode")
        error_message = msg.get("errorMessage")
        if not isinstance(error_code, str):
            error_code = None
        if not isinstance(error_message, str):
            error_message = None
        exc = _err(op, SERVER_REFUSED, _REFUSED, code, error_code, error_message)
        exc.status_code, exc.error_code, exc.error_message = code, error_code, error_message
        raise exc
