# First boot: make sure the device holds an identity of its own, then connect as its thing.
#
# config.json -> provisioned? -> TLS connection as the thing. Not provisioned:
# lib/provision.py (loaded only then, dropped after) turns the claim into an
# identity; then one QoS 1 publish whose PUBACK proves it works. Every step
# prints one progress line with the milliseconds since start; no key or
# ownership token is ever printed. Every connection runs under one retry
# policy (FirstBoot.retrying, _classify): what can pass (TIMEOUT, MQTT_ERROR,
# 429, 5xx, the network, CONNACK 3) is retried on a fresh connection with
# exponential back-off and jitter; other refusals stop at once with the
# server's message. See docs/first-boot.md.

import gc
import os
import sys

# MicroPython's clock (with timedsock's CPython fallback, the project's one copy)
from timedsock import describe, sleep_ms, ticks_ms

# Imported when the flow starts, after run() read the config: devconfig then
# comes and goes in an empty heap, leaving one block for this code, not holes
# (a provisioned boot needs ~4 KB less; TLS wants 3 KB in one piece).
credstore = mqttlink = Progress = None


def _import_flow():
    global credstore, mqttlink, Progress
    import credstore
    import mqttlink
    from progress import Progress


class FirstBootError(Exception):
    """First boot could not finish. ``retryable``: a later attempt (or boot)
    may succeed; ``refused``: the endpoint turned the device certificate down."""

    def __init__(self, msg, retryable=False, refused=False):
        super().__init__(msg)
        self.retryable = retryable
        self.refused = refused


def _rand(n):
    # Uniform-enough integer in [0, n] from the hardware RNG (no `random`
    # module needed; modulo bias is irrelevant for jitter).
    return int.from_bytes(os.urandom(4), "big") % (n + 1) if n > 0 else 0


def backoff_ms(attempt, base_ms, max_ms, rand=_rand):
    """Wait before attempt ``attempt + 1``: base_ms * 2**(attempt-1), capped at
    max_ms, with "equal jitter": uniform in [delay/2, delay]."""
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


def _classify(ex):
    # -> (retryable, message): the one classification of failures, for the
    # claim connection and the thing connection alike. Messages name the
    # cause and what to do.
    if isinstance(ex, FirstBootError):  # provision.py turns fleetprov's errors into these
        return ex.retryable, str(ex)
    if isinstance(ex, mqttlink.ConnectError):
        # A CONNACK refusal is final, except 3 (server unavailable); a close
        # before CONNACK may be a glitch (or AWS turning a revoked
        # certificate away): retried, and "refused" when it persists.
        return ex.code is None or ex.code == 3, str(ex)
    if isinstance(ex, OSError):
        return True, "network error: " + describe(ex)
    if isinstance(ex, MemoryError):
        return False, "out of memory: {}".format(ex)
    return False, "{}: {}".format(type(ex).__name__, ex)


class FirstBoot:
    """The first-boot flow for one validated config (see devconfig.load).

    store: a credstore.Store (default: from the config). printer, hook: see
    Progress. Injection points for tests: connect (mqttlink.connect's
    signature), provisioner (fleetprov.Provisioner's), sleep_ms, rand(n),
    uid (hardware id), mqtt (the umqtt.simple module)."""

    def __init__(self, cfg, store=None, printer=print, hook=None, connect=None,
                 provisioner=None, sleep_ms=sleep_ms, rand=_rand, uid=None, mqtt=None):
        _import_flow()
        self.cfg = cfg
        self.progress = Progress(printer, hook)
        if store is None:
            store = credstore.Store(cfg["cert_dir"], cfg["claim_cert"], cfg["claim_key"], cfg["ca"])
        store.hook = self.progress.mark
        self.store = store
        self._connect = connect or mqttlink.connect
        self.provisioner = provisioner
        self._sleep = sleep_ms
        self._rand = rand
        self._mqtt = mqtt
        self.uid = uid
        self.client_id = None

    def _ids(self):
        if self.client_id is not None:
            return
        if self.uid is None:
            self.uid = hardware_uid() or self.store.uid()
        self.client_id = self.cfg["client_id"] or self.uid

    def thing_name(self):
        """The provisioned thing's name (falls back to the client id when the
        template creates no thing), or None when not provisioned."""
        r = self.store.record
        self._ids()
        return None if r is None else r["thing_name"] or self.client_id

    def topic(self, pattern):
        """``pattern`` with {thing_name}, {client_id} and {uid} filled in, as bytes."""
        self._ids()
        t = pattern.replace("{thing_name}", self.thing_name() or self.client_id)
        return t.replace("{client_id}", self.client_id).replace("{uid}", self.uid).encode()

    def open(self, client_id, cert, key, ca):
        """A connection with the config's endpoint and time limits (mqttlink.Link)."""
        cfg = self.cfg
        kw = {} if self._mqtt is None else {"mqtt": self._mqtt}
        return self._connect(client_id, cfg["endpoint"], cfg["port"], cert, key, ca,
                             server_hostname=cfg["server_hostname"],
                             timeout_ms=cfg["connect_timeout_ms"], **kw)

    def retrying(self, attempt, what, start_over=(), hint=None):
        """Return ``attempt()``, called again after a failure that can pass,
        with back-off, at most retry_attempts times. ``start_over``: exception
        types that mean "begin again at once" (not a failed attempt; as often
        as retry_attempts). ``hint`` follows a final CONNACK refusal.
        Raises FirstBootError (``refused`` when the endpoint turned the
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
                raise FirstBootError("{} started over {} times".format(what, again), retryable=True)
            except Exception as ex:
                failed += 1
                retry, msg = _classify(ex)
                refused = getattr(ex, "refused", False)
                if getattr(ex, "handshake", False):
                    handshakes += 1
                    retry = handshakes < 2  # once may be a glitch; twice, the certificate
                if not retry:
                    if refused and hint:
                        msg = msg + ": " + hint
                    raise FirstBootError(what + " failed: " + msg, refused=refused)
                if failed >= n:
                    raise FirstBootError("{} failed after {} attempt{}; last: {}".format(
                        what, n, "" if n == 1 else "s", msg), retryable=True, refused=refused)
                wait = backoff_ms(failed, cfg["retry_base_ms"], cfg["retry_max_ms"], self._rand)
                self.progress.step("retry", "attempt {}/{} failed: {}; next in {} ms".format(
                    failed, n, msg, wait))
                self._sleep(wait)

    def provision(self):
        """Provision with the claim (lib/provision.py, loaded for this only)
        and commit the new identity. Returns the record. Raises FirstBootError."""
        self._ids()
        import provision

        try:
            return provision.Provisioning(self).run()
        finally:
            provision = None
            _unload("provision", "fleetprov", "cbor", "csr", "p256")

    def connect_thing(self):
        """Connect as the provisioned thing: a mqttlink.Link. FirstBootError
        (``refused``: the endpoint turned the certificate down)."""
        self._ids()
        try:
            cert, key = self.store.identity()
            ca = self.store.ca_der()
        except credstore.StoreError as ex:
            raise FirstBootError(str(ex))
        # The thing name as client id: AWS policies commonly allow
        # iot:Connect on client/${iot:Connection.Thing.ThingName}.
        name = self.thing_name()
        link = self.retrying(lambda: self.open(name, cert, key, ca), "connecting as " + name)
        self.progress.step("connect-thing", "as {}".format(name))
        return link

    def confirm(self, link):
        """Prove the identity works: a QoS 1 publish that gets its PUBACK."""
        topic = self.topic(self.cfg["app_topic"])
        try:
            mqttlink.publish(link, topic, b'{"event":"provisioned"}', self.cfg["mqtt_timeout_ms"])
        except Exception as ex:
            link.close()
            raise FirstBootError("publish to {} as the new thing failed: {}".format(
                topic.decode(), describe(ex)), retryable=True)
        self.progress.step("confirm", "PUBACK on {}".format(topic.decode()))

    def start(self):
        """Return a Link connected as this device's thing, provisioning first
        when the store holds no verified identity, and again (once) when the
        endpoint refuses the stored certificate. Raises FirstBootError."""
        s = self.store
        rec = s.load()
        if rec is not None:
            self.progress.step("provisioned", "thing {} certificate {}".format(
                rec["thing_name"], rec["certificate_id"]))
            try:
                link = self.connect_thing()
            except FirstBootError as ex:
                if not ex.refused:
                    raise
                # Revoked or deleted: the claim is still there, so start over.
                self.progress.step("refused", "{}; clearing it, provisioning again".format(ex))
                s.clear()
            else:
                self._retire_claim()  # finishes a deletion a power cut interrupted
                return link
        else:
            self.progress.step("not-provisioned", "claim {}".format(s.path(s.claim_cert)))
        self.provision()
        link = self.connect_thing()
        self.confirm(link)
        self._retire_claim()
        return link

    def _retire_claim(self):
        # A temporary claim (provisioning by trusted user) has done its job
        # once the thing's own identity works: no claim stays on the board.
        s = self.store
        try:
            if s.retire_temporary_claim():
                self.progress.step("claim-retired", "temporary claim {} deleted".format(s.path(s.claim_cert)))
        except OSError as ex:  # the identity works; the next boot tries again
            self.progress.step("claim-kept", "cannot delete the temporary claim: {}".format(ex))


def _unload(*names):
    # MicroPython keeps an imported module's code in RAM (only frozen modules
    # stay in flash): drop what the rest of the boot no longer needs.
    # Harmless for frozen modules; skipped on CPython.
    if sys.implementation.name == "micropython":
        for n in names:
            sys.modules.pop(n, None)
        gc.collect()


def run(app=None, config="config.json", printer=print, hook=None):
    """Load ``config``, make sure the device is provisioned, connect as its
    thing and call ``app(firstboot, link)``. Returns "ok", "retry" (a later
    boot may succeed) or "fatal" (fix the configuration or the cloud side).
    ``hook``: see Progress."""
    t0 = ticks_ms()  # the progress clock starts before the config is read
    import devconfig

    try:
        cfg = devconfig.load(config)
    except devconfig.ConfigError as ex:
        printer("fleetprov: " + str(ex))
        return "fatal"
    finally:
        devconfig = None
        _unload("devconfig")  # about 8 KB of RAM, needed only to read the file
    fb = FirstBoot(cfg, printer=printer, hook=hook)
    fb.progress.t0 = t0
    fb.progress.step("config", "{} {} {} template {}".format(
        config, cfg["method"], cfg["format"], cfg["template"]))
    try:
        link = fb.start()
    except FirstBootError as ex:
        printer("fleetprov: " + str(ex))
        return "retry" if ex.retryable else "fatal"
    except OSError as ex:  # flash full or failing, outside the retried steps
        printer("fleetprov: {}: {}".format(type(ex).__name__, ex))
        return "retry"
    try:
        if app is not None:
            app(fb, link)
    finally:
        link.close()
    peak = fb.progress.heap_peak
    fb.progress.step("done", "heap peak {} bytes (sampled at each step)".format(peak) if peak else "")
    return "ok"
