# The provisioning path of the first boot: claim connection -> fleetprov
# (create, stage on flash, RegisterThing) -> commit. firstboot.py imports this
# module only when the store holds no identity and drops it (with fleetprov,
# cbor, csr and p256; credstore drops pem and der) once the identity is
# committed, so a provisioned boot never loads any of them. See docs/first-boot.md.

import gc
import time

import credstore
import mqttlink
from firstboot import FirstBootError, _unload

# AWS deletes a certificate still PENDING_ACTIVATION, and refuses its
# ownership token, one hour after issue; a staged identity older than this
# (less a margin for the clocks) is not registered again.
TOKEN_TTL_S = 3600 - 60


class _StartOver(Exception):
    # The staged certificate was dropped: begin again at once (a new
    # certificate), which is not a failed attempt.
    pass


def substitute(params, uid, client_id):
    """Return ``params`` with "{uid}" and "{client_id}" replaced in each value.

    Plain replacement, not str.format: other braces in a value stay as they are."""
    out = {}
    for k in params:
        out[k] = params[k].replace("{uid}", uid).replace("{client_id}", client_id)
    return out


def _close(provisioner):
    if provisioner is not None:
        try:
            provisioner.close()
        except Exception:
            pass


def _flash_failed(ex):
    # Writing to flash failed (full, or failing): a later boot may pass.
    return FirstBootError("cannot write the new identity to flash: {}".format(ex), retryable=True)


def _token_refused(ex):
    # RegisterThing turned the saved ownership token down: already used (the
    # registration went through, its answer was lost) or expired.
    return getattr(ex, "error_code", None) == "InvalidCertificateOwnershipToken"


class Provisioning:
    """One provisioning run for a FirstBoot ``fb`` (its config, store,
    progress and injection points)."""

    def __init__(self, fb):
        self.fb = fb
        self.cfg = fb.cfg
        self.store = fb.store
        self.step = fb.progress.step
        self.pending = None  # the staged identity (credstore.load_pending)
        self.csr_pem = self.csr_key = None

    def run(self):
        """Provision with the claim and commit the new identity. Returns the
        record. Raises FirstBootError."""
        fb = self.fb
        s = self.store
        self.pending = s.load_pending()
        if self.pending is None and self.cfg["method"] == "csr":
            # first: the key's big-int garbage is gone before anything
            # long-lived (the connection) is placed among it
            self._csr()
        self._claim()  # a missing claim file stops the boot here, before any connection
        self.params = substitute(self.cfg["parameters"], fb.uid, fb.client_id)
        if self.pending is not None:
            self.step("resume", "certificate {} staged {} s ago".format(
                self.pending["certificate_id"], int(time.time() - self.pending["issued"])))
        got = fb.retrying(self._attempt, "provisioning", _StartOver,
                          "check that the claim certificate is active and its policy allows iot:Connect")
        if got[0] is None:
            return got[1]  # adopted
        link, reg = got
        self.csr_key = self.csr_pem = None
        try:
            try:
                rec = s.commit_pending(self.pending, reg.thing_name, reg.device_configuration,
                                       self.cfg["endpoint"])
            except OSError as ex:
                raise _flash_failed(ex)
            self.pending = reg = None
            self.step("commit", "{} in {}".format(credstore.RECORD, s.folder or "."))
        finally:
            link.close()
        self.step("disconnect-claim")
        return rec

    def _attempt(self):
        # One attempt on a fresh claim connection: a new certificate, staged
        # on flash, unless one is staged already; then RegisterThing.
        # -> (link, RegisterThing answer), or (None, record) when adopted.
        if self.pending is None and self.cfg["method"] == "csr" and self.csr_pem is None:
            self._csr()  # made once, kept across attempts
        pend = self.pending
        if pend is not None and not 0 <= time.time() - pend["issued"] < TOKEN_TTL_S:
            return None, self._adopt()  # its token has expired: no RegisterThing with it
        fb = self.fb
        cfg = self.cfg
        cert, key, ca = self._claim()
        link = fb.open(fb.client_id, cert, key, ca)
        cert = key = ca = None  # read again for another attempt: not held while the answers come
        try:
            self.step("connect-claim", "{}:{} as {}".format(cfg["endpoint"], cfg["port"], fb.client_id))
            if self.pending is None:
                if self.csr_pem is None:
                    cid, pem, key, token = self._call(link.client, "create_keys_and_certificate")
                else:
                    cid, pem, key, token = self._call(link.client, "create_certificate_from_csr", self.csr_pem)
                    key = self.csr_key
                self.step("certificate", cid)
                # fleetprov's code (7-10 KB) out of RAM while the answer is
                # converted and checked (pem, der) and staged: the peak of a
                # first boot. RegisterThing imports it again.
                _unload("fleetprov", "cbor")
                self._stage(cid, pem, key, token)
                # on flash now (the CSR is not needed again either): free the
                # RAM before the next answer
                pem = key = token = self.csr_pem = self.csr_key = None
                gc.collect()
            reg = self._call(link.client, "register_thing", cfg["template"],
                             self.pending["ownership_token"], self.params)
            self.step("register", "thing {}".format(reg.thing_name))
        except BaseException as ex:
            link.close()
            if self.pending is not None and _token_refused(ex):
                return None, self._adopt()
            raise
        return link, reg

    def _claim(self):
        # (claim cert, claim key, CA) as DER, read from flash for each connection
        try:
            cert, key = self.store.claim()
            return cert, key, self.store.ca_der()
        except credstore.StoreError as ex:
            raise FirstBootError(str(ex))

    def _call(self, client, op, *args):
        # One operation on a Provisioner of its own, closed after it: its
        # receive buffer is free again while the answer is staged on flash.
        import fleetprov  # here, not at the top: loaded after the key and the connection

        cfg = self.cfg
        make = self.fb.provisioner or fleetprov.Provisioner
        p = None
        try:
            p = make(client, cfg["format"], cfg["response_timeout_ms"], cfg["rx_size"],
                     cfg["mqtt_timeout_ms"])
            got = getattr(p, op)(*args)
            if op == "register_thing":
                return got
            # plain values: a Credentials would keep fleetprov's module alive
            return got.certificate_id, got.certificate_pem, got.private_key, got.ownership_token
        except fleetprov.ProvisioningError as ex:
            if _token_refused(ex):
                raise  # _attempt adopts or drops the staged certificate
            # For firstboot's retry policy: what can pass is a lost answer or
            # link, throttling, a server error (str(ex) carries the status
            # code, error code and the server's message).
            code = ex.status_code
            raise FirstBootError(str(ex), retryable=ex.status in (fleetprov.TIMEOUT, fleetprov.MQTT_ERROR) or (
                ex.status == fleetprov.SERVER_REFUSED and code is not None and (code == 429 or code >= 500)))
        finally:
            _close(p)

    def _csr(self):
        # A CSR shipped on flash wins (the user chose it); otherwise a P-256
        # key and CSR are made here, on the device.
        s = self.store
        name = self.cfg["csr"]
        key_name = self.cfg["csr_key"]
        try:
            self.csr_pem = s.read(name).decode()
        except credstore.StoreError:
            self.csr_pem = None
        if self.csr_pem is not None:
            try:
                self.csr_key = s.read(key_name)
            except credstore.StoreError as ex:
                raise FirstBootError("{} is on flash but its key is not: {}".format(s.path(name), ex))
            self.step("csr", "read {} from flash".format(s.path(name)))
            return
        try:
            import csr
        except ImportError:
            raise FirstBootError('method "csr" needs lib/csr.py (on-device key) or {} and {} on flash'.format(
                s.path(name), s.path(key_name)))
        try:
            self.csr_key, self.csr_pem = csr.generate(self.fb.client_id[:64])
        except (ValueError, TypeError, OSError) as ex:
            raise FirstBootError("cannot make a key and CSR on the device: {}".format(ex))
        csr = None
        _unload("csr", "p256")  # about 14 KB of RAM, not needed again
        # The key and CSR were made among p256's garbage and above its code:
        # copies made now sit in the room the modules left, and the originals'
        # room joins the free space above, where the 6 KB receive buffer and
        # the connection go next (6 KB less heap for a CSR first boot).
        self.csr_key = bytes(bytearray(self.csr_key))
        self.csr_pem = self.csr_pem.encode().decode()
        gc.collect()
        self.step("keygen", "P-256 key and CSR made on the device")

    def _stage(self, certificate_id, cert_pem, key, token):
        # Store the identity before RegisterThing activates it, so that a cut
        # from here on resumes with it instead of orphaning it.
        try:
            self.pending = self.store.stage(certificate_id, cert_pem, key, token, time.time())
        except credstore.StoreError as ex:
            raise FirstBootError("cannot store the new identity: {}".format(ex))
        except OSError as ex:
            raise _flash_failed(ex)

    def _adopt(self):
        # The staged certificate's token is spent or expired. ACTIVE (it was
        # registered, the answer lost): keep it, thing name unknown. Refused
        # (never activated, or deleted): drop it and start over (_StartOver).
        s = self.store
        pend = self.pending
        cid = pend["certificate_id"]
        fb = self.fb
        # The thing's policy usually admits only client id == thing name, so
        # connect as the name the template gives (config "thing_name").
        name = self.cfg["thing_name"]
        if name:
            name = substitute({"n": name}, fb.uid, fb.client_id)["n"]
        try:
            cert, key = s.pending_identity(pend)
            link = fb.open(name or fb.client_id, cert, key, s.ca_der())
        except mqttlink.ConnectError as ex:
            cert = key = None
            if not (ex.refused or ex.handshake):
                raise  # the network: try again later, with the same certificate
            s.drop_pending()
            self.pending = None
            self.step("dropped", "certificate {} is not active; starting over".format(cid))
            raise _StartOver()
        cert = key = None
        link.close()
        rec = s.commit_pending(pend, name, None, self.cfg["endpoint"])
        self.pending = None
        self.step("adopted", "certificate {} is active as thing {}".format(cid, name) if name else
                  "certificate {} is active; its thing name was lost, using the client id "
                  "(set thing_name in config.json)".format(cid))
        return rec
