# fleetprov: AWS IoT fleet provisioning ("provisioning by claim") over an
# umqtt.simple-style MQTT client. MicroPython 1.22+ and CPython 3.11+.
#
# The three operations of AWS's "Device provisioning MQTT API", with the
# status vocabulary of the AWS IoT Embedded C provisioning library. fleetprov
# knows nothing of files, Wi-Fi or the application: it takes a connected
# client and returns credentials as strings.

import gc
import json
import sys

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


try:
    from time import ticks_ms, ticks_add, ticks_diff, sleep_ms
except ImportError:  # CPython: the same wrapping millisecond clock as MicroPython
    import time as _time

    _PERIOD = const(1 << 30)

    def ticks_ms():
        return int(_time.monotonic() * 1000) & (_PERIOD - 1)

    def ticks_add(t, delta):
        return (t + delta) & (_PERIOD - 1)

    def ticks_diff(a, b):
        d = (a - b) & (_PERIOD - 1)
        return d - _PERIOD if d >= _PERIOD >> 1 else d

    def sleep_ms(ms):
        _time.sleep(ms / 1000)


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

_NAMES = (
    "SUCCESS",
    "INIT FAILED",
    "NOT INITIALIZED",
    "BAD PARAMETER",
    "NO MEMORY",
    "BAD RESPONSE",
    "TIMEOUT",
    "SERVER REFUSED",
    "INTERNAL FAILURE",
    "MQTT ERROR",
)

_QOS = const(1)  # subscriptions, and the keys and register requests
_POLL_IDLE_MS = const(2)  # rest between empty polls while waiting for the answer
_DRAIN_MAX = const(16)  # stale messages read off before a request is published
_POLL_SLICE_MS = const(20)
_ETIMEDOUT = const(110)  # errno on MicroPython and Linux
_TEMPLATE_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"

_ON_MICROPYTHON = sys.implementation.name == "micropython"
_OP_KEYS = "CreateKeysAndCertificate"
_OP_CSR = "CreateCertificateFromCsr"
_OP_REGISTER = "RegisterThing"
# Topics of this API; a late response on one of them is never the application's.
_PREFIX_CERTS = b"$aws/certificates/"
_PREFIX_TEMPLATES = b"$aws/provisioning-templates/"


def strerror(status):
    """Return a short description of a status value; "INVALID STATUS" otherwise."""
    if isinstance(status, int) and not isinstance(status, bool) and SUCCESS <= status <= MQTT_ERROR:
        return _NAMES[status - 1]
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
    """Result of CreateKeysAndCertificate / CreateCertificateFromCsr (all str;
    private_key is None for the CSR flow)."""

    def __init__(self, certificate_id, certificate_pem, ownership_token, private_key=None):
        self.certificate_id = certificate_id
        self.certificate_pem = certificate_pem
        self.ownership_token = ownership_token
        self.private_key = private_key

    def __repr__(self):  # secrets stay out of logs and tracebacks
        return "<Credentials certificate_id={}>".format(self.certificate_id)


class Registration:
    """Result of RegisterThing: thing_name (str or None), device_configuration (dict)."""

    def __init__(self, thing_name, device_configuration):
        self.thing_name = thing_name
        self.device_configuration = device_configuration

    def __repr__(self):
        return "<Registration thing_name={!r}>".format(self.thing_name)


def _err(op, status, cause):
    return ProvisioningError(status, "{}: {}".format(op, cause))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(op, name, value):
    if not _is_int(value) or value <= 0:
        raise _err(op, BAD_PARAMETER, "{} must be a positive int (ms or bytes), got {!r}".format(name, value))
    return value


def _text(op, name, value):
    if not isinstance(value, str) or not value:
        # the value itself may be a secret: name only its type
        raise _err(op, BAD_PARAMETER, "{} must be a non-empty str, got {}".format(name, type(value).__name__))
    return value


def _decode_json(view):
    try:
        return json.loads(view)  # MicroPython reads any buffer in place
    except TypeError:  # CPython wants bytes
        return json.loads(bytes(view))


class _BoundedSocket:
    # umqtt waits for SUBACK/PUBACK with no limit and puts its socket back into
    # blocking mode after every byte it polls; the TLS socket of MicroPython
    # has no settimeout(). While fleetprov runs, the client's socket is wrapped:
    # the real one stays non-blocking and "blocking" reads and writes wait at
    # most mqtt_timeout_ms (polling), so a dead or half-open link ends in
    # OSError(ETIMEDOUT) instead of a hang.
    def __init__(self, sock, ms):
        import select

        self._sock = sock
        self._ms = ms
        self._blocking = True
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._in = select.POLLIN
        self._out = select.POLLOUT
        sock.setblocking(False)

    def setblocking(self, flag):
        self._blocking = flag

    def _idle(self, deadline, event):
        left = ticks_diff(deadline, ticks_ms())
        if left <= 0:
            raise OSError(_ETIMEDOUT)
        self._poll.modify(self._sock, event)
        # short slices: TLS may hold decrypted bytes the socket's poll cannot see
        self._poll.poll(min(left, _POLL_SLICE_MS))

    def read(self, n=-1):
        if not self._blocking:
            return self._sock.read(n)
        deadline = ticks_add(ticks_ms(), self._ms)
        data = b""
        while len(data) < n:
            chunk = self._sock.read(n - len(data))
            if chunk is None:
                self._idle(deadline, self._in)
            elif not chunk:
                break  # end of stream: umqtt sees the short read
            else:
                data = data + chunk if data else chunk
        return data

    def write(self, buf, n=None):
        view = memoryview(buf)
        end = len(buf) if n is None else n
        done = 0
        deadline = ticks_add(ticks_ms(), self._ms)
        while done < end:
            sent = self._sock.write(view[done:end])
            if sent:
                done += sent
            else:
                self._idle(deadline, self._out)
        return done

    def __getattr__(self, name):
        return getattr(self._sock, name)


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
        (5000), applied through the client's socket when it has one.

    Messages on topics other than the provisioning ones go on to the
    callback the client had; close() restores it.
    """

    def __init__(self, client, fmt="json", timeout_ms=10000, rx_size=6144, mqtt_timeout_ms=5000):
        op = "Provisioner"
        for name in ("set_callback", "subscribe", "publish", "check_msg"):
            if not callable(getattr(client, name, None)):
                raise _err(op, BAD_PARAMETER, "client has no {}(); pass a connected umqtt.simple MQTTClient".format(name))
        if fmt == "json":
            self._dumps = json.dumps
            self._loads = _decode_json
        elif fmt == "cbor":
            try:
                import cbor
            except ImportError:
                raise _err(op, INIT_FAILED, 'fmt="cbor" needs lib/cbor.py on the device')
            self._dumps = cbor.dumps
            self._loads = cbor.loads
        else:
            raise _err(op, BAD_PARAMETER, 'fmt must be "json" or "cbor", got {!r}'.format(fmt))
        self._fmt = fmt.encode()
        self._timeout_ms = _positive(op, "timeout_ms", timeout_ms)
        self._mqtt_ms = _positive(op, "mqtt_timeout_ms", mqtt_timeout_ms)
        _positive(op, "rx_size", rx_size)
        try:
            self._rx = bytearray(rx_size)
        except MemoryError:
            raise _err(op, NO_MEMORY, "cannot allocate the {}-byte receive buffer; lower rx_size".format(rx_size))
        self._view = memoryview(self._rx)
        self._client = client
        self._app_cb = getattr(client, "cb", None)
        self._op = None  # name of the operation in progress
        self._topics = ()  # (accepted, rejected) of the operation in progress
        self._armed = False  # the request is published: answers count from now
        self._got = None  # (topic index 0/1, length) of the answer, or (None, length) if too large
        self._app_exc = None
        self._seen = 0  # messages handled, so _drain can tell "nothing" from "one"
        try:
            client.set_callback(self._on_message)
        except Exception as exc:
            raise _err(op, INIT_FAILED, "client.set_callback() raised {!r}".format(exc))

    # -- public operations ---------------------------------------------------

    def create_keys_and_certificate(self, timeout_ms=None):
        """CreateKeysAndCertificate: AWS makes the key pair.

        timeout_ms: wait for the answer (default: the provisioner's).
        Returns Credentials with certificate_id, certificate_pem, private_key
        and ownership_token (str). Raises ProvisioningError.
        """
        op = _OP_KEYS
        self._check(op, timeout_ms)
        payload = b"\xa0" if self._fmt == b"cbor" else b"{}"
        msg = self._request(op, b"$aws/certificates/create/" + self._fmt, payload, _QOS, timeout_ms)
        return Credentials(
            self._field(op, msg, "certificateId"),
            self._field(op, msg, "certificatePem"),
            self._field(op, msg, "certificateOwnershipToken"),
            self._field(op, msg, "privateKey"),
        )

    def create_certificate_from_csr(self, csr_pem, qos=1, timeout_ms=None):
        """CreateCertificateFromCsr: AWS signs the device's own key.

        csr_pem: the PEM certificate signing request (str).
        qos: 0 or 1 for the request (the answer is the acknowledgement).
        timeout_ms: wait for the answer (default: the provisioner's).
        Returns Credentials (private_key is None). Raises ProvisioningError.
        """
        op = _OP_CSR
        self._check(op, timeout_ms)
        _text(op, "csr_pem", csr_pem)
        if not _is_int(qos) or qos not in (0, 1):
            raise _err(op, BAD_PARAMETER, "qos must be 0 or 1, got {!r}".format(qos))
        payload = self._encode(op, {"certificateSigningRequest": csr_pem})
        msg = self._request(op, b"$aws/certificates/create-from-csr/" + self._fmt, payload, qos, timeout_ms)
        return Credentials(
            self._field(op, msg, "certificateId"),
            self._field(op, msg, "certificatePem"),
            self._field(op, msg, "certificateOwnershipToken"),
        )

    def register_thing(self, template_name, ownership_token, parameters=None, timeout_ms=None):
        """RegisterThing: activate the certificate and create the thing.

        template_name: the provisioning template (1-36 of [0-9A-Za-z_-]).
        ownership_token: certificateOwnershipToken from the create call.
        parameters: dict of str to str for the template, or None.
        timeout_ms: wait for the answer (default: the provisioner's).
        Returns Registration with thing_name (str or None) and
        device_configuration (dict of str to str, {} when absent).
        """
        op = _OP_REGISTER
        self._check(op, timeout_ms)
        if not isinstance(template_name, str) or not 1 <= len(template_name) <= 36:
            raise _err(op, BAD_PARAMETER, "template_name must be a str of 1-36 characters, got {!r}".format(template_name))
        for c in template_name:
            if c not in _TEMPLATE_CHARS:
                raise _err(op, BAD_PARAMETER, "template_name {!r} may hold only 0-9 A-Z a-z _ -".format(template_name))
        _text(op, "ownership_token", ownership_token)
        request = {"certificateOwnershipToken": ownership_token}
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise _err(op, BAD_PARAMETER, "parameters must be a dict of str to str or None")
            for k, v in parameters.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise _err(op, BAD_PARAMETER, "parameters must map str to str; {!r} does not".format(k))
            request["parameters"] = parameters
        payload = self._encode(op, request)
        request = None
        topic = _PREFIX_TEMPLATES + template_name.encode() + b"/provision/" + self._fmt
        msg = self._request(op, topic, payload, _QOS, timeout_ms)
        name = msg.get("thingName")
        if name is not None and not isinstance(name, str):
            raise _err(op, BAD_RESPONSE, "thingName is {}, not a text string".format(type(name).__name__))
        config = msg.get("deviceConfiguration")
        if config is None:
            config = {}
        elif not isinstance(config, dict):
            raise _err(op, BAD_RESPONSE, "deviceConfiguration is {}, not a map".format(type(config).__name__))
        for k, v in config.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise _err(op, BAD_RESPONSE, "deviceConfiguration must map text to text; {!r} does not".format(k))
        return Registration(name, config)

    def close(self):
        """Give the client back: restore its callback. Later calls raise NOT_INITIALIZED."""
        if self._client is None:
            return
        if self._op is not None:
            raise _err("close", BAD_PARAMETER, "{} is in progress".format(self._op))
        client = self._client
        self._client = None
        client.set_callback(self._app_cb)

    # -- internals ---------------------------------------------------------

    def _check(self, op, timeout_ms):
        if self._client is None:
            raise _err(op, NOT_INITIALIZED, "the provisioner is closed; create a new Provisioner")
        if self._op is not None:
            raise _err(op, BAD_PARAMETER, "{} is already in progress on this provisioner".format(self._op))
        if timeout_ms is not None:
            _positive(op, "timeout_ms", timeout_ms)

    def _encode(self, op, obj):
        try:
            data = self._dumps(obj)
        except MemoryError:
            raise _err(op, NO_MEMORY, "no memory to encode the request")
        except Exception as exc:
            raise _err(op, INTERNAL_FAILURE, "cannot encode the request: {}".format(type(exc).__name__))
        return data.encode() if isinstance(data, str) else data

    def _field(self, op, msg, name):
        value = msg.get(name)
        if value is None:
            raise _err(op, BAD_RESPONSE, "the accepted response has no {}".format(name))
        if not isinstance(value, str):
            raise _err(op, BAD_RESPONSE, "{} is {}, not a text string".format(name, type(value).__name__))
        return value

    def _on_message(self, topic, msg):
        self._seen += 1
        topics = self._topics
        if topics and (topic == topics[0] or topic == topics[1]):
            # Answers published before our request, and any after the first, are not ours.
            if self._armed and self._got is None:
                n = len(msg)
                if n > len(self._rx):
                    self._got = (None, n)
                else:
                    self._view[:n] = msg
                    self._got = (0 if topic == topics[0] else 1, n)
            return
        if topic.startswith(_PREFIX_CERTS) or topic.startswith(_PREFIX_TEMPLATES):
            return  # a late answer to an earlier operation
        if self._app_cb is not None:
            try:
                self._app_cb(topic, msg)
            except Exception as exc:
                self._app_exc = exc  # the application's own error: re-raised as is
                raise

    def _mqtt(self, op, what, call, *args):
        # One client call with its failure mapped to the contract's statuses.
        try:
            return call(*args)
        except MemoryError:
            raise _err(op, NO_MEMORY, "out of memory during {}".format(what))
        except Exception as exc:
            if exc is self._app_exc:
                raise
            if exc.args and exc.args[0] == 0x80 and what.startswith("subscribe"):
                cause = "{} refused by the broker (SUBACK 0x80): the claim policy must allow iot:Subscribe on it".format(what)
            else:
                cause = "{} failed: {}: {} - check the connection; reconnect and retry".format(what, type(exc).__name__, exc)
            raise _err(op, MQTT_ERROR, cause)

    def _request(self, op, topic, payload, qos, timeout_ms):
        client = self._client
        sock = getattr(client, "sock", None)
        accepted = topic + b"/accepted"
        rejected = topic + b"/rejected"
        self._op = op
        self._topics = (accepted, rejected)
        self._armed = False
        self._got = None
        self._app_exc = None
        subscribed = 0
        try:
            if sock is not None:
                client.sock = self._mqtt(op, "preparing the socket", _BoundedSocket, sock, self._mqtt_ms)
            for t in self._topics:
                self._mqtt(op, "subscribe to {}".format(t.decode()), client.subscribe, t, _QOS)
                subscribed += 1
            self._drain(op)
            self._armed = True
            self._mqtt(op, "publish to {}".format(topic.decode()), client.publish, topic, payload, False, qos)
            payload = None
            self._wait(op, topic, self._timeout_ms if timeout_ms is None else timeout_ms)
        finally:
            self._finish(subscribed)
            if sock is not None and client.sock is not sock:
                client.sock = sock
                try:
                    sock.setblocking(True)
                except Exception:
                    pass
        return self._parse(op)

    def _drain(self, op):
        # Anything already waiting on the socket was sent before our request.
        # umqtt's check_msg() returns None both for "nothing waiting" and for
        # "one message handled", so count the messages to tell them apart.
        for _ in range(_DRAIN_MAX):
            seen = self._seen
            if self._mqtt(op, "reading pending messages", self._client.check_msg) is None and seen == self._seen:
                return

    def _wait(self, op, topic, timeout_ms):
        deadline = ticks_add(ticks_ms(), timeout_ms)
        check = self._client.check_msg
        while self._got is None:
            if ticks_diff(deadline, ticks_ms()) <= 0:
                # one last look: an answer racing the deadline still counts
                self._mqtt(op, "polling for the answer", check)
                if self._got is None:
                    raise _err(
                        op,
                        TIMEOUT,
                        "no answer on {}/accepted or /rejected within {} ms; check the endpoint, "
                        "the template name and that the claim policy allows iot:Receive".format(topic.decode(), timeout_ms),
                    )
                break
            if self._mqtt(op, "polling for the answer", check) is None and self._got is None:
                sleep_ms(_POLL_IDLE_MS)

    def _finish(self, subscribed):
        self._op = None
        self._armed = False
        unsubscribe = getattr(self._client, "unsubscribe", None)
        if unsubscribe is not None:
            for t in self._topics[:subscribed]:
                try:
                    unsubscribe(t)
                except Exception:
                    # The answer is in hand; a failing link shows on the next call.
                    break
        self._topics = ()

    def _parse(self, op):
        which, n = self._got
        self._got = None
        if which is None:
            raise _err(
                op,
                NO_MEMORY,
                "the {}-byte response does not fit the {}-byte receive buffer; "
                "create the Provisioner with rx_size={} or more".format(n, len(self._rx), (n + 1023) & ~1023),
            )
        try:
            if _ON_MICROPYTHON:
                gc.collect()  # umqtt's copy of the message is garbage now; make room to decode
            msg = self._loads(self._view[:n])
        except MemoryError:
            raise _err(op, NO_MEMORY, "no memory to decode the {}-byte response".format(n))
        except Exception as exc:
            raise _err(op, BAD_RESPONSE, "cannot decode the {}-byte response: {}".format(n, type(exc).__name__))
        if not isinstance(msg, dict):
            raise _err(op, BAD_RESPONSE, "the response is {}, not a map".format(type(msg).__name__))
        if which == 0:
            return msg
        code = msg.get("statusCode")
        if not _is_int(code):
            raise _err(op, BAD_RESPONSE, "the rejected response has no integer statusCode")
        error_code = msg.get("errorCode")
        error_message = msg.get("errorMessage")
        error_code = error_code if isinstance(error_code, str) else None
        error_message = error_message if isinstance(error_message, str) else None
        raise ProvisioningError(
            SERVER_REFUSED,
            "{}: refused by the server: {} {}: {}".format(op, code, error_code, error_message),
            code,
            error_code,
            error_message,
        )
