# First boot: turn the claim certificate into an identity of the device's own.
#
# config.json -> TLS connection with the claim -> fleetprov (create, register)
# -> credential store (record last) -> disconnect -> TLS connection as the
# new thing -> one QoS 1 publish whose PUBACK proves the identity works.
# Every step prints one progress line with the milliseconds since start; no
# key or ownership token is ever printed. A failed attempt is retried on a
# fresh connection with exponential back-off and jitter when the cause can
# pass (TIMEOUT, MQTT_ERROR, 429, 5xx, network); other refusals stop at once
# with the server's message. See docs/first-boot.md.

import gc
import os
import sys
import time

import credstore
import mqttlink

# MicroPython's clock (with timedsock's CPython fallback, the project's one copy)
from timedsock import describe, sleep_ms, ticks_diff, ticks_ms


# AWS deletes a certificate still PENDING_ACTIVATION, and refuses its
# ownership token, one hour after issue; a staged identity older than this
# (less a margin for the clocks) is not registered again.
TOKEN_TTL_S = 3600 - 60


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
    if n <= 0:
        return 0
    return int.from_bytes(os.urandom(4), "big") % (n + 1)


def backoff_ms(attempt, base_ms, max_ms, rand=_rand):
    """Wait before attempt ``attempt + 1``: base_ms * 2**(attempt-1), capped at
    max_ms, with "equal jitter": uniform in [delay/2, delay]."""
    d = base_ms
    for _ in range(attempt - 1):
        d *= 2
        if d >= max_ms:
            break
    if d > max_ms:
        d = max_ms
    half = d // 2
    return d - half + rand(half)


class Progress:
    """Prints one line per step: ``fleetprov <ms> ms  <step>  <detail>``.

    printer: callable(str), default print. hook: callable(step) or None,
    called after each step and at each credential write boundary."""

    def __init__(self, printer=print, hook=None):
        self.t0 = ticks_ms()
        self.printer = printer
        self.hook = hook
        self.heap_peak = 0  # most heap in use seen at a step, before collecting

    def _heap(self):
        alloc = getattr(gc, "mem_alloc", None)  # MicroPython only
        if alloc is not None:
            used = alloc()
            if used > self.heap_peak:
                self.heap_peak = used

    def elapsed(self):
        """Milliseconds since start."""
        return ticks_diff(ticks_ms(), self.t0)

    def step(self, name, detail=""):
        """Report step ``name`` (never pass a secret in ``detail``)."""
        self._heap()
        gc.collect()
        line = "fleetprov {:>6} ms  {}".format(self.elapsed(), name)
        if detail:
            line = line + "  " + detail
        self.printer(line)
        self.mark(name)

    def mark(self, name):
        """A boundary without a line (credential file writes)."""
        if self.hook is not None:
            self.hook(name)


def stop_hook():
    """Test hook: with FLEETPROV_STOP_AT=<step> in the environment (unix port,
    CPython; boards have no environment) the device prints
    ``fleetprov STOP <step>`` at that step and waits on stdin, so a test can
    cut the power at exactly that point. None when not requested."""
    getenv = getattr(os, "getenv", None)
    at = getenv("FLEETPROV_STOP_AT") if getenv is not None else None
    if not at:
        return None

    def hook(step):
        if step == at:
            print("fleetprov STOP " + step)
            sys.stdin.read(1)

    return hook


def hardware_uid():
    """Hex of machine.unique_id(), or None on ports without it."""
    try:
        import machine

        import binascii

        return binascii.hexlify(machine.unique_id()).decode()
    except (ImportError, AttributeError):
        return None


def _token_refused(ex):
    # RegisterThing turned the saved ownership token down: already used (the
    # registration went through, its answer was lost) or expired.
    fleetprov = sys.modules.get("fleetprov")
    return (fleetprov is not None and isinstance(ex, fleetprov.ProvisioningError)
            and ex.error_code == "InvalidCertificateOwnershipToken")


def _classify(ex):
    # -> (retryable, message). Messages name the cause and what to do.
    if isinstance(ex, FirstBootError):
        return ex.retryable, str(ex)
    # (fleetprov is not imported here: if it is not loaded yet, ex cannot be its error.)
    fleetprov = sys.modules.get("fleetprov")
    if fleetprov is not None and isinstance(ex, fleetprov.ProvisioningError):
        if ex.status in (fleetprov.TIMEOUT, fleetprov.MQTT_ERROR):
            return True, str(ex)
        if ex.status == fleetprov.SERVER_REFUSED:
            code = ex.status_code
            # str(ex) carries the status code, error code and the server's message.
            return code == 429 or (code is not None and code >= 500), str(ex)
        return False, str(ex)
    if isinstance(ex, mqttlink.ConnectError):
        # A CONNACK refusal of the claim is final (3 = server unavailable is
        # not); a close before CONNACK may be a glitch and is retried.
        if ex.refused and ex.code is not None and ex.code != 3:
            return False, "{}: check that the claim certificate is active and its policy allows iot:Connect".format(ex)
        return True, str(ex)
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
        self.cfg = cfg
        self.progress = Progress(printer, hook)
        if store is None:
            store = credstore.Store(cfg["cert_dir"], cfg["claim_cert"], cfg["claim_key"], cfg["ca"])
        store.hook = self.progress.mark
        self.store = store
        self._connect = connect or mqttlink.connect
        self._provisioner = provisioner
        self._sleep = sleep_ms
        self._rand = rand
        self._mqtt = mqtt
        self.uid = uid
        self.client_id = None
        self.pending = None  # the staged identity (credstore.load_pending) while provisioning

    # -- identity and names ---------------------------------------------------

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
        if r is None:
            return None
        self._ids()
        return r["thing_name"] or self.client_id

    def topic(self, pattern):
        """``pattern`` with {thing_name}, {client_id} and {uid} filled in, as bytes."""
        self._ids()
        t = pattern.replace("{thing_name}", self.thing_name() or self.client_id)
        return t.replace("{client_id}", self.client_id).replace("{uid}", self.uid).encode()

    # -- steps ------------------------------------------------------------------

    def _open(self, client_id, cert, key, ca):
        cfg = self.cfg
        kw = {}
        if self._mqtt is not None:
            kw["mqtt"] = self._mqtt
        return self._connect(client_id, cfg["endpoint"], cfg["port"], cert, key, ca,
                             server_hostname=cfg["server_hostname"],
                             timeout_ms=cfg["connect_timeout_ms"], **kw)

    def _new_provisioner(self, client):
        cfg = self.cfg
        make = self._provisioner
        if make is None:
            import fleetprov

            make = fleetprov.Provisioner
        return make(client, cfg["format"], cfg["response_timeout_ms"], cfg["rx_size"],
                    cfg["mqtt_timeout_ms"])

    def _csr(self):
        # -> (csr_pem, key_der). A CSR shipped on flash wins (the user chose
        # it); otherwise a P-256 key and CSR are made here, on the device.
        s = self.store
        name = self.cfg["csr"]
        try:
            csr_pem = s.read(name).decode()
        except credstore.StoreError:
            csr_pem = None
        if csr_pem is not None:
            try:
                key = s.read(self.cfg["csr_key"])
            except credstore.StoreError as ex:
                raise FirstBootError("{} is on flash but its key is not: {}".format(s.path(name), ex))
            self.progress.step("csr", "read {} from flash".format(s.path(name)))
            return csr_pem, key
        try:
            import csr
        except ImportError:
            raise FirstBootError(
                'method "csr" needs lib/csr.py (on-device key) or {} and {} on flash'.format(
                    s.path(name), s.path(self.cfg["csr_key"])))
        try:
            key, csr_pem = csr.generate(self.client_id[:64])
        except (ValueError, TypeError, OSError) as ex:
            raise FirstBootError("cannot make a key and CSR on the device: {}".format(ex))
        csr = None
        _unload("csr", "p256")  # about 14 KB of RAM, not needed again
        self.progress.step("keygen", "P-256 key and CSR made on the device")
        return csr_pem, key

    def _attempt(self, claim_cert, claim_key, ca, params, csr_pem, csr_key):
        # One attempt on a fresh claim connection: a new certificate, staged
        # on flash, unless one is staged already; then RegisterThing.
        cfg = self.cfg
        link = self._open(self.client_id, claim_cert, claim_key, ca)
        try:
            self.progress.step("connect-claim", "{}:{} as {}".format(
                cfg["endpoint"], cfg["port"], self.client_id))
            if self.pending is None:
                if csr_pem is None:
                    creds = self._call(link.client, "create_keys_and_certificate")
                    key = creds.private_key
                else:
                    creds = self._call(link.client, "create_certificate_from_csr", csr_pem)
                    key = csr_key
                self.progress.step("certificate", creds.certificate_id)
                self._stage(creds, key)
                creds = key = None  # on flash now: free the RAM before the next answer
                gc.collect()
            reg = self._call(link.client, "register_thing", cfg["template"],
                             self.pending["ownership_token"], params)
            self.progress.step("register", "thing {}".format(reg.thing_name))
        except BaseException:
            link.close()
            raise
        return link, reg

    def _call(self, client, op, *args):
        # One operation on a Provisioner of its own, closed after it: its
        # receive buffer is free again while the answer is staged on flash.
        p = self._new_provisioner(client)
        try:
            return getattr(p, op)(*args)
        finally:
            try:
                p.close()
            except Exception:
                pass

    def _stage(self, creds, key):
        # Store the identity before RegisterThing activates it, so that a cut
        # from here on resumes with it instead of orphaning it.
        try:
            self.pending = self.store.stage(creds.certificate_id, creds.certificate_pem, key,
                                            creds.ownership_token, time.time())
        except credstore.StoreError as ex:
            raise FirstBootError("cannot store the new identity: {}".format(ex))
        except OSError as ex:
            raise FirstBootError("cannot write the new identity to flash: {}".format(ex),
                                 retryable=True)

    def _adopt(self, ca):
        # The staged certificate's token is spent or expired. ACTIVE (it was
        # registered, the answer lost): keep it, thing name unknown. Refused
        # (never activated, or deleted): drop it and start over. Returns the
        # record, or None.
        s = self.store
        pend = self.pending
        cid = pend["certificate_id"]
        # The thing's policy usually admits only client id == thing name, so
        # connect as the name the template gives (config "thing_name").
        name = self.cfg["thing_name"]
        if name:
            name = substitute({"n": name}, self.uid, self.client_id)["n"]
        try:
            cert, key = s.pending_identity(pend)
            link = self._open(name or self.client_id, cert, key, ca)
        except mqttlink.ConnectError as ex:
            if not (ex.refused or ex.handshake):
                raise  # the network: try again later, with the same certificate
            s.drop_pending()
            self.pending = None
            self.progress.step("dropped", "certificate {} is not active; starting over".format(cid))
            return None
        link.close()
        rec = s.commit_pending(pend, name, None, self.cfg["endpoint"])
        self.pending = None
        _unload("fleetprov", "cbor")  # the provisioning protocol is done
        self.progress.step("adopted", "certificate {} is active as thing {}".format(cid, name) if name else
                           "certificate {} is active; its thing name was lost, using the client id "
                           "(set thing_name in config.json)".format(cid))
        return rec

    def provision(self):
        """Provision with the claim and commit the new identity. Returns the
        record. Raises FirstBootError."""
        cfg = self.cfg
        s = self.store
        self._ids()
        try:
            claim_cert, claim_key = s.claim()
            ca = s.ca_der()
        except credstore.StoreError as ex:
            raise FirstBootError(str(ex))
        params = substitute(cfg["parameters"], self.uid, self.client_id)
        csr_pem = csr_key = None
        self.pending = s.load_pending()
        if self.pending is not None:
            self.progress.step("resume", "certificate {} staged {} s ago".format(
                self.pending["certificate_id"], int(time.time() - self.pending["issued"])))
        n = cfg["retry_attempts"]
        attempt = handshakes = 0
        while True:
            attempt += 1
            if self.pending is None and cfg["method"] == "csr" and csr_pem is None:
                csr_pem, csr_key = self._csr()  # made once, kept across attempts
            try:
                pend = self.pending
                if pend is not None and not 0 <= time.time() - pend["issued"] < TOKEN_TTL_S:
                    rec = self._adopt(ca)  # its token has expired: no RegisterThing with it
                    if rec is not None:
                        return rec
                    attempt -= 1  # dropped: start over at once (a CSR first, for csr)
                    continue
                link, reg = self._attempt(claim_cert, claim_key, ca, params, csr_pem, csr_key)
                break
            except Exception as ex:
                if self.pending is not None and _token_refused(ex):
                    try:
                        rec = self._adopt(ca)
                        if rec is not None:
                            return rec
                        attempt -= 1  # start over at once: not a failed attempt
                        continue
                    except Exception as ex2:
                        ex = ex2
                retry, msg = _classify(ex)
                if getattr(ex, "handshake", False):
                    handshakes += 1
                    retry = handshakes < 2  # once may be a glitch; twice, the certificate
                if not retry:
                    raise FirstBootError("provisioning failed: " + msg)
                if attempt >= n:
                    raise FirstBootError(
                        "provisioning failed after {} attempt{}; last: {}".format(
                            n, "" if n == 1 else "s", msg),
                        retryable=True)
                wait = backoff_ms(attempt, cfg["retry_base_ms"], cfg["retry_max_ms"], self._rand)
                self.progress.step("retry", "attempt {}/{} failed: {}; next in {} ms".format(
                    attempt, n, msg, wait))
                self._sleep(wait)
        claim_key = csr_key = csr_pem = None
        _unload("fleetprov", "cbor")  # the provisioning protocol is done
        try:
            try:
                rec = s.commit_pending(self.pending, reg.thing_name, reg.device_configuration,
                                       cfg["endpoint"])
            except OSError as ex:
                raise FirstBootError("cannot write the new identity to flash: {}".format(ex),
                                     retryable=True)
            self.pending = reg = None
            self.progress.step("commit", "{} in {}".format(credstore.RECORD, s.folder or "."))
        finally:
            link.close()
        self.progress.step("disconnect-claim")
        return rec

    def connect_thing(self):
        """Connect as the provisioned thing (retrying what can pass) and return
        a mqttlink.Link. FirstBootError with ``refused`` when the endpoint
        turns the certificate down."""
        cfg = self.cfg
        self._ids()
        try:
            cert, key = self.store.identity()
            ca = self.store.ca_der()
        except credstore.StoreError as ex:
            raise FirstBootError(str(ex))
        n = cfg["retry_attempts"]
        name = self.thing_name()
        last = None
        handshakes = 0
        for attempt in range(1, n + 1):
            try:
                # The thing name as client id: AWS policies commonly allow
                # iot:Connect on client/${iot:Connection.Thing.ThingName}.
                link = self._open(name, cert, key, ca)
                self.progress.step("connect-thing", "as {}".format(name))
                return link
            except mqttlink.ConnectError as ex:
                last = ex
            # CONNACK "bad credentials"/"not authorised" is final; a close
            # before CONNACK may be a glitch, so it is retried first, and so
            # is a closed TLS handshake, once.
            handshakes += last.handshake
            if last.code in (4, 5) or attempt == n or handshakes > 1:
                break
            wait = backoff_ms(attempt, cfg["retry_base_ms"], cfg["retry_max_ms"], self._rand)
            self.progress.step("retry", "attempt {}/{} failed: {}; next in {} ms".format(
                attempt, n, last, wait))
            self._sleep(wait)
        if last.refused:
            raise FirstBootError("device certificate refused: {}".format(last), refused=True)
        raise FirstBootError("cannot connect as {}: {}".format(name, last),
                             retryable=not last.handshake)

    def confirm(self, link):
        """Prove the identity works: a QoS 1 publish that gets its PUBACK."""
        topic = self.topic(self.cfg["app_topic"])
        payload = b'{"event":"provisioned"}'
        try:
            publish_bounded(link, topic, payload, self.cfg["mqtt_timeout_ms"])
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


def publish_bounded(link, topic, payload, timeout_ms):
    """Publish QoS 1 on ``link`` and wait for the PUBACK at most ``timeout_ms``
    (see mqttlink.publish)."""
    mqttlink.publish(link, topic, payload, timeout_ms, 1)


def _unload(*names):
    # MicroPython keeps an imported module's code in RAM (only frozen modules
    # stay in flash): drop what the rest of the boot no longer needs.
    # Harmless for frozen modules; skipped on CPython.
    if sys.implementation.name == "micropython":
        for n in names:
            sys.modules.pop(n, None)
        gc.collect()


def substitute(params, uid, client_id):
    """Return ``params`` with "{uid}" and "{client_id}" replaced in each value.

    Plain replacement, not str.format: other braces in a value stay as they are."""
    out = {}
    for k in params:
        out[k] = params[k].replace("{uid}", uid).replace("{client_id}", client_id)
    return out


def run(app=None, config="config.json", printer=print):
    """Load ``config``, make sure the device is provisioned, connect as its
    thing and call ``app(firstboot, link)``. Returns "ok", "retry" (a later
    boot may succeed) or "fatal" (fix the configuration or the cloud side)."""
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
    fb = FirstBoot(cfg, printer=printer, hook=stop_hook())
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
    detail = ""
    if fb.progress.heap_peak:
        detail = "heap peak {} bytes (sampled at each step)".format(fb.progress.heap_peak)
    fb.progress.step("done", detail)
    return "ok"
