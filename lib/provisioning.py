# The provisioning flow: turn the claim into an identity of the device's own.
#
# One attempt is one claim connection: CreateKeysAndCertificate (or
# CreateCertificateFromCsr with a key made on the device), the new identity
# staged on flash, RegisterThing, the provisioning record committed. A
# power cut after staging resumes with the same certificate instead of
# orphaning it; a staged certificate whose ownership token is spent or
# expired is adopted when it connects, else dropped. The first boot loads
# this module only when the store holds no identity, and releases it (with
# fleetprov and the codecs) once the flow returns. See docs/first-boot.md.

import time

import credstore
import mqttlink
from credstore import TOKEN_TTL_S
from device import FlowError
from runtime import release


class _StartOver(Exception):
    # The staged certificate was dropped: begin again at once (a new
    # certificate), which is not a failed attempt.
    pass


class _TokenSpent(Exception):
    # RegisterThing refused the staged certificate's ownership token: adopt
    # the certificate or drop it (_Flow._adopt).
    pass


def _token_refused(ex):
    # Already used (the registration went through, its answer was lost) or expired.
    return ex.error_code == "InvalidCertificateOwnershipToken"


def _flow_error(ex, fleetprov):
    # fleetprov's error for the retry policy: what can pass is a lost answer
    # or link, throttling, a server error. str(ex) names the operation, the
    # status code, the error code and the server's message.
    code = ex.status_code
    retryable = ex.status in (fleetprov.TIMEOUT, fleetprov.MQTT_ERROR) or (
        ex.status == fleetprov.SERVER_REFUSED and code is not None and (code == 429 or code >= 500))
    return FlowError(str(ex), retryable=retryable)


def _flash_failed(ex):
    # Writing to flash failed (full, or failing): a later boot may pass.
    return FlowError("cannot write the new identity to flash: {}".format(ex), retryable=True)


def run(device):
    """Provision ``device`` (a device.Device) with its claim and commit the
    new identity. Returns the provisioning record. Raises FlowError."""
    return _Flow(device).run()


class _Flow:
    def __init__(self, device):
        self.dev = device
        self.cfg = device.cfg
        self.store = device.store
        self.pending = None  # the staged identity (credstore.load_pending)
        self.csr = None  # (key DER, CSR PEM) made for this boot, kept across attempts
        self.params = None
        self.rx = None  # the one receive buffer of every attempt

    def run(self):
        dev = self.dev
        self._buffer()  # the flow's largest block, made before any of its other objects
        self.pending = self.store.load_pending()
        self._claim()  # a missing claim file stops the boot here, before any connection
        params = self.cfg["parameters"]
        self.params = {k: dev.substitute(params[k]) for k in params}
        if self.pending is not None:
            dev.step("resume", "certificate {} staged {} s ago".format(
                self.pending["certificate_id"], int(time.time() - self.pending["issued"])))
        marker = self.store.temporary_claim()
        if marker is None:
            hint = "check that the claim certificate is active and its policy allows iot:Connect"
        else:
            hint = ("the temporary claim ({}) lasts five minutes and has expired, or was never accepted: "
                    "run `make claim` again".format(marker))
        return dev.retrying(self._attempt, "provisioning", _StartOver, hint)

    def _attempt(self):
        # One attempt; returns the committed record.
        pend = self.pending
        if pend is not None and not 0 <= time.time() - pend["issued"] < TOKEN_TTL_S:
            return self._adopt()  # its token has expired: no RegisterThing with it
        if pend is None and self.csr is None and self.cfg["method"] == "csr":
            self.csr = self._csr()  # before the connection; kept until a certificate is staged
        try:
            return self._on_claim_connection()
        except _TokenSpent:
            return self._adopt()

    def _on_claim_connection(self):
        dev = self.dev
        cfg = self.cfg
        link = dev.open(dev.client_id, *self._claim())
        try:
            dev.step("connect-claim", "{}:{} as {}".format(cfg["endpoint"], cfg["port"], dev.client_id))
            thing_name, device_configuration = self._register(link.client)
        finally:
            link.close()
            # The MQTT API client lives as long as the claim connection: the
            # commit and any later attempt's connection never need it loaded.
            release("fleetprov", "fleetprov_texts", "awsnames")
        self.rx = None  # registered: no answer is awaited any more
        dev.step("disconnect-claim")
        return self._commit(thing_name, device_configuration)

    def _buffer(self):
        # The receive buffer every Provisioner of the flow shares, kept until
        # RegisterThing has answered (made again only for an attempt after that).
        if self.rx is None:
            try:
                self.rx = bytearray(self.cfg["rx_size"])
            except MemoryError:
                raise FlowError("out of memory for the {}-byte receive buffer (config rx_size)".format(
                    self.cfg["rx_size"]))
        return self.rx

    def _commit(self, thing_name, device_configuration):
        # The staged identity becomes the device's: checked, converted, and
        # recorded (credstore.commit_pending). A pair that does not belong
        # together is of no use to anyone: dropped, so the next boot starts over.
        import credwrite

        s = self.store
        try:
            rec = credwrite.commit(s, self.pending, thing_name, device_configuration, self.cfg["endpoint"])
        except credstore.StoreError as ex:
            credwrite.drop_pending(s)
            self.pending = None
            raise FlowError("cannot store the new identity: {}".format(ex))
        except OSError as ex:
            raise _flash_failed(ex)
        self.pending = None
        self.dev.step("commit", "{} in {}".format(credstore.RECORD, s.folder or "."))
        return rec

    def _register(self, client):
        # One MQTT API client for the connection, with the flow's receive
        # buffer: it takes the certificate's answer, then RegisterThing's.
        # Returns the thing name and device configuration RegisterThing gave.
        # The MQTT API client loads here, with the first connection up: it is
        # not in the heap while the connection is made.
        import fleetprov

        p = None
        try:
            p = self.dev.board.provisioner(client, self.cfg, self._buffer())
            if self.pending is None:
                if self.cfg["method"] == "keys":
                    made = p.create_keys_and_certificate()
                    key = made.private_key
                else:
                    made = p.create_certificate_from_csr(self.csr[1])
                    key = self.csr[0]
                self.dev.step("certificate", made.certificate_id)
                self._stage(made, key)
                made = key = self.csr = None  # on flash now: the answer's room is free for the next
            reg = p.register_thing(self.cfg["template"], self.pending["ownership_token"], self.params)
        except fleetprov.ProvisioningError as ex:
            if self.pending is not None and _token_refused(ex):
                raise _TokenSpent()
            raise _flow_error(ex, fleetprov)
        finally:
            if p is not None:
                p.close()  # gives the client its callback back
        self.dev.step("register", "thing {}".format(reg.thing_name))
        return reg.thing_name, reg.device_configuration

    def _claim(self):
        # (claim cert, claim key, CA) as DER, read from flash for each
        # connection: not held while the answers come
        s = self.store
        try:
            cert, key = s.claim()
            return cert, key, s.ca_der()
        except credstore.StoreError as ex:
            raise FlowError(str(ex))

    def _csr(self):
        # -> (key DER, CSR PEM). A CSR shipped on flash wins (the user chose
        # it); otherwise a P-256 key and CSR are made here, on the device.
        s = self.store
        name = self.cfg["csr"]
        key_name = self.cfg["csr_key"]
        try:
            pem = s.read(name).decode()
        except credstore.StoreError:
            pem = None
        if pem is not None:
            try:
                key = s.read(key_name)
            except credstore.StoreError as ex:
                raise FlowError("{} is on flash but its key is not: {}".format(s.path(name), ex))
            self.dev.step("csr", "read {} from flash".format(s.path(name)))
            return key, pem
        try:
            import csr
        except ImportError:
            raise FlowError('method "csr" needs lib/csr.py (on-device key) or {} and {} on flash'.format(
                s.path(name), s.path(key_name)))
        try:
            made = csr.generate(self.dev.client_id[:64])
        except (ValueError, TypeError, OSError) as ex:
            raise FlowError("cannot make a key and CSR on the device: {}".format(ex))
        finally:
            csr = None
            release("csr", "p256")  # the key is made once per boot: its code is not needed again
        self.dev.step("keygen", "P-256 key and CSR made on the device")
        return made

    def _stage(self, made, key):
        # Store the identity before RegisterThing activates it, so that a cut
        # from here on resumes with it instead of orphaning it.
        import credwrite

        try:
            self.pending = credwrite.stage(self.store, made.certificate_id, made.certificate_pem, key,
                                           made.ownership_token, time.time())
        except credstore.StoreError as ex:
            raise FlowError("cannot store the new identity: {}".format(ex))
        except OSError as ex:
            raise _flash_failed(ex)

    def _adopt(self):
        # The staged certificate's token is spent or expired, so RegisterThing
        # cannot say whether it went through: commit the certificate and try
        # it. It connects (registered, the answer lost): kept, its thing name
        # from the config. Refused (never activated, or deleted): forgotten,
        # and the flow starts over with a new one (_StartOver).
        dev = self.dev
        s = self.store
        cid = self.pending["certificate_id"]
        # The thing's policy usually admits only client id == thing name, so
        # connect as the name the template gives (config "thing_name").
        name = self.cfg["thing_name"]
        if name:
            name = dev.substitute(name)
        rec = self._commit(name, None)
        try:
            cert, key = s.identity()
            link = dev.open(name or dev.client_id, cert, key, s.ca_der())
        except mqttlink.ConnectError as ex:
            if not (ex.refused or ex.handshake):
                return rec  # the network: the boot connects with it, under its retry policy
            import credwrite

            credwrite.clear(s)
            dev.step("dropped", "certificate {} cannot connect ({}); starting over".format(cid, ex))
            raise _StartOver()
        cert = key = None
        link.close()
        dev.step("adopted", "certificate {} is active as thing {}".format(cid, name) if name else
                 "certificate {} is active; its thing name was lost, using the client id "
                 "(set thing_name in config.json)".format(cid))
        return rec
