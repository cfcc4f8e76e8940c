# What every flow of the device shares: the first boot, the provisioning
# flow and the rotation flow each work through one Device.
#
# A Device holds the validated config, the credential store, the device's
# ids, the progress lines, and its connections, all made under one retry
# policy (Device.retrying): a failure that can pass (TIMEOUT, MQTT_ERROR,
# 429, 5xx, the network, CONNACK 3) is retried on a fresh connection with
# exponential back-off and jitter; any other refusal stops at once with the
# server's message. A Board is what the flows use of the hardware and the
# platform; tests and the CircuitPython board give their own.

import os

import credstore
import mqttlink
from progress import Progress
from runtime import release, sleep_ms, ticks_diff, ticks_ms
from timedsock import describe

# AWS IoT accepts one CONNECT per second per client id and closes a second
# one before CONNACK: the device never sends two within this.
CONNECT_GAP_MS = 1000


class FlowError(Exception):
    """A flow could not finish. ``retryable``: a later attempt (or boot) may
    succeed; ``refused``: the endpoint turned the device's certificate down."""

    def __init__(self, msg, retryable=False, refused=False):
        super().__init__(msg)
        self.retryable = retryable
        self.refused = refused


def backoff_ms(attempt, base_ms, max_ms, rand):
    """Wait before attempt ``attempt + 1``: base_ms * 2**(attempt-1), capped at
    max_ms, with "equal jitter": uniform in [delay/2, delay]. ``rand(n)``:
    an integer in [0, n]."""
    d = min(base_ms << min(max(attempt - 1, 0), 20), max_ms)
    half = d // 2
    return d - half + rand(half)


def hardware_uid():
    """Hex of machine.unique_id(), or None on ports without it."""
    try:
        import binascii
        import machine

        return binascii.hexlify(machine.unique_id()).decode()
    except (ImportError, AttributeError):
        return None


class Board:
    """The hardware and platform as the flows use them. Subclass it to run
    the flows elsewhere (tests, CircuitPython); each method is one seam.

    printer: callable(str) for the progress lines. hook: callable(step) or
    None, called after each step and at each credential write boundary."""

    def __init__(self, printer=print, hook=None):
        self.printer = printer
        self.hook = hook

    def uid(self):
        """A stable hardware id (hex), or None to keep a random one on flash."""
        return hardware_uid()

    def store(self, cfg):
        """The credential store for ``cfg``."""
        return credstore.Store(cfg["cert_dir"], cfg["claim_cert"], cfg["claim_key"], cfg["ca"])

    def connect(self, client_id, host, port, cert, key, ca, server_hostname, timeout_ms):
        """An MQTT connection over mutual TLS: a mqttlink.Link (or the same surface)."""
        return mqttlink.connect(client_id, host, port, cert, key, ca, server_hostname=server_hostname,
                                timeout_ms=timeout_ms)

    def provisioner(self, client, cfg, rx_buffer, fmt=None):
        """The MQTT API client (fleetprov.Provisioner) on a connected client,
        receiving its answers in ``rx_buffer`` (a bytearray), in the config's
        format unless ``fmt`` says otherwise."""
        import fleetprov

        return fleetprov.Provisioner(client, fmt or cfg["format"], cfg["response_timeout_ms"], cfg["rx_size"],
                                     cfg["mqtt_timeout_ms"], rx_buffer)

    def tls_identity(self, store, pending):
        """(cert, key) of the staged identity ``pending`` in ``store``, as this
        platform's TLS loads them (DER bytes; CircuitPython: file paths)."""
        import credwrite

        return credwrite.pair(store, pending)

    def sleep_ms(self, ms):
        sleep_ms(ms)

    def rand(self, n):
        """An integer in [0, n] from the hardware RNG (modulo bias does not
        matter for jitter, and no `random` module is needed)."""
        return int.from_bytes(os.urandom(4), "big") % (n + 1) if n > 0 else 0


def _new_uid(store):
    # A port without a hardware id, booting for the first time: the writer
    # is loaded for this one write and let go.
    import credwrite

    try:
        return credwrite.create_uid(store)
    finally:
        credwrite = None
        release("credwrite")


def _classify(ex):
    # -> (retryable, message): the one classification of failures, for every
    # connection a flow makes. Messages name the cause and what to do.
    if isinstance(ex, FlowError):
        return ex.retryable, str(ex)
    if isinstance(ex, mqttlink.ConnectError):
        # A CONNACK refusal is final, except 3 (server unavailable), and so is
        # a server certificate that fails its check (the config names it); a
        # close before CONNACK may be a glitch (or AWS turning a revoked
        # certificate away): retried, and "refused" when it persists.
        return not ex.verify and (ex.code is None or ex.code == 3), str(ex)
    if isinstance(ex, OSError):
        return True, "network error: " + describe(ex)
    if isinstance(ex, MemoryError):
        # a heap too fragmented now may not be after the objects of the
        # failed attempt are gone, or after the reset a "retry" leads to
        return True, "out of memory: {}".format(ex)
    return False, "{}: {}".format(type(ex).__name__, ex)


class Device:
    """This device as the flows see it, for one validated config (see
    devconfig.validate) on ``board`` (default: Board()).

    cfg: the config. store: its credstore.Store. uid, client_id: the device's
    ids. progress: its progress lines (progress.Progress)."""

    def __init__(self, cfg, board=None):
        if board is None:
            board = Board()
        self.cfg = cfg
        self.board = board
        self.progress = Progress(board.printer, board.hook)
        self.store = board.store(cfg)
        self.store.hook = self.progress.mark
        self.uid = board.uid() or self.store.uid() or _new_uid(self.store)
        self.client_id = cfg["client_id"] or self.uid
        self._connected = {}  # client id -> ticks_ms() of its last CONNECT

    def step(self, name, detail=""):
        """One progress line (never pass a secret in ``detail``)."""
        self.progress.step(name, detail)

    def thing_name(self):
        """The provisioned thing's name (the client id when the template
        creates no thing), or None when not provisioned."""
        r = self.store.record
        return None if r is None else r["thing_name"] or self.client_id

    def topic(self, pattern):
        """``pattern`` with {thing_name}, {client_id} and {uid} filled in, as bytes."""
        t = pattern.replace("{thing_name}", self.thing_name() or self.client_id)
        return t.replace("{client_id}", self.client_id).replace("{uid}", self.uid).encode()

    def substitute(self, text):
        """``text`` with "{uid}" and "{client_id}" replaced. Plain replacement,
        not str.format: other braces stay as they are."""
        return text.replace("{uid}", self.uid).replace("{client_id}", self.client_id)

    def open(self, client_id, cert, key, ca):
        """A connection with the config's endpoint and time limits (a mqttlink.Link)."""
        cfg = self.cfg
        last = self._connected.get(client_id)
        if last is not None:
            wait = CONNECT_GAP_MS - ticks_diff(ticks_ms(), last)
            if wait > 0:
                self.board.sleep_ms(wait)
        try:
            return self.board.connect(client_id, cfg["endpoint"], cfg["port"], cert, key, ca,
                                      cfg["server_hostname"], cfg["connect_timeout_ms"])
        finally:
            # counted from the end: the CONNECT went out before it, whenever that was
            self._connected[client_id] = ticks_ms()

    def connect_thing(self):
        """Connect as the provisioned thing, under the retry policy: a
        mqttlink.Link. FlowError (``refused``: the endpoint turned the
        certificate down)."""
        try:
            cert, key = self.store.identity()
            ca = self.store.ca_der()
        except credstore.StoreError as ex:
            raise FlowError(str(ex))
        # The thing name as client id: AWS policies commonly allow
        # iot:Connect on client/${iot:Connection.Thing.ThingName}.
        name = self.thing_name()
        link = self.retrying(lambda: self.open(name, cert, key, ca), "connecting as " + name)
        self.step("connect-thing", "as {}".format(name))
        return link

    def retrying(self, attempt, what, start_over=(), hint=None):
        """Return ``attempt()``, called again after a failure that can pass,
        with back-off, at most retry_attempts times. ``start_over``: exception
        types that mean "begin again at once" (not a failed attempt; as often
        as retry_attempts). ``hint`` follows a final refusal of the
        certificate (CONNACK, or the TLS handshake closed).
        Raises FlowError (``refused`` when the endpoint turned the
        certificate down)."""
        cfg = self.cfg
        n = cfg["retry_attempts"]
        failed = handshakes = again = 0
        while True:
            try:
                return attempt()
            except start_over:
                again += 1
                if again <= n:
                    continue
                raise FlowError("{} started over {} times".format(what, again), retryable=True)
            except Exception as ex:
                failed += 1
                retry, msg = _classify(ex)
                refused = getattr(ex, "refused", False)
                handshake = getattr(ex, "handshake", False)
                if handshake:
                    handshakes += 1
                    retry = handshakes < 2  # once may be a glitch; twice, the certificate
                if not retry:
                    if hint and (refused or handshake):
                        msg = msg + ": " + hint
                    raise FlowError(what + " failed: " + msg, refused=refused)
                if failed >= n:
                    raise FlowError("{} failed after {} attempt{}; last: {}".format(
                        what, n, "" if n == 1 else "s", msg), retryable=True, refused=refused)
                wait = backoff_ms(failed, cfg["retry_base_ms"], cfg["retry_max_ms"], self.board.rand)
                self.step("retry", "attempt {}/{} failed: {}; next in {} ms".format(failed, n, msg, wait))
                self.board.sleep_ms(wait)
