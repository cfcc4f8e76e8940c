# The rotation flow: a provisioned device renews its own identity, with no
# claim and no downtime.
#
# Over its thing connection, under the identity it has: a new P-256 key and
# CSR made here, CreateCertificateFromCsr, the new identity staged on flash,
# RegisterThing with the rotation template (whose pre-provisioning hook
# admits only a certificate of the same thing). Then the device connects with
# the new identity, commits it (the record names it, and the certificate it
# replaces), and asks the cloud, over the new connection, to retire the old
# one. At every instant a power cut leaves an identity that connects: the old
# one until the record names the new one, which has connected by then. A boot
# finishes what a cut interrupted (bootflow: a staged rotation, a retirement
# not yet confirmed). See docs/rotation.md.

import time

import credstore
import credwrite
import mqttlink
from credstore import TOKEN_TTL_S
from device import FlowError
from runtime import release

# The MQTT API client serves one connection at a time: loaded for the old
# identity's requests and released when that connection closes, loaded again
# for the retire request over the new one.
_API = ("fleetprov", "fleetprov_texts", "awsnames")


def rotate(dev, link):
    """Rotate the identity of ``dev`` (a device.Device, provisioned), or finish
    a rotation a power cut interrupted, over ``link``, its thing connection,
    which this closes. Returns a link connected as the thing: with the new
    identity, committed, when the rotation succeeded; else, after a progress
    line that says why, with the identity the device still has."""
    try:
        return _Rotation(dev).run(link)
    except Exception as ex:  # whatever it was, the device carries on with the identity it has
        failure = _failure(ex)
    link.close()
    release(*_API)
    dev.step("rotation-failed", failure)
    return dev.connect_thing()


def renew(dev, link, due):
    """What the boot does once the identity connects over ``link``: retire
    the certificate the last rotation replaced, then finish a staged rotation
    or rotate when ``due`` (the certificate expires soon). Returns the link to use."""
    if dev.store.record.get("retire") is not None:
        try:
            retire(dev, link)
        except Exception as ex:
            dev.step("retire-later", _failure(ex))
            return link  # one rotation at a time: the thing keeps at most two certificates
    if dev.store.pending is not None or due:
        return rotate(dev, link)
    return link


def _failure(ex):
    # The progress line's words for a failed rotation or retirement.
    return str(ex) if isinstance(ex, FlowError) else "rotation: {}: {}".format(type(ex).__name__, ex)


def _api_error(what, ex):
    # fleetprov's error as the flow's: str(ex) names the operation and the cause.
    import fleetprov

    return FlowError("{}: {}".format(what, ex), retryable=ex.status in (fleetprov.TIMEOUT, fleetprov.MQTT_ERROR))


def retire(dev, link):
    """Ask the cloud, over ``link`` (connected with the new identity), to
    retire the certificate the record names under "retire" (the identity a
    rotation replaced). Done, or done before: the record forgets it. Raises
    FlowError when the cloud refuses or does not answer; the next boot asks again."""
    old = dev.store.record.get("retire")
    if old is None:
        return
    import fleetprov

    # JSON whatever the provisioning format: the retire rule reads JSON
    p = dev.board.provisioner(link.client, dev.cfg, bytearray(1024), "json")  # the answer is a few names
    try:
        p.request(dev.topic(dev.cfg["retire_topic"]), {"certificateId": old})
    except fleetprov.ProvisioningError as ex:
        if ex.status_code != 404:  # 404: no longer on the thing, retired before
            raise _api_error("retiring certificate {}".format(old), ex)
    finally:
        p.close()
    credwrite.retired(dev.store)
    dev.step("retired", "certificate {} deactivated and detached".format(old))


class _Rotation:
    def __init__(self, dev):
        self.dev = dev
        self.cfg = dev.cfg
        self.store = dev.store
        self.old = dev.store.record["certificate_id"]
        self.name = dev.thing_name()

    def run(self, link):
        dev = self.dev
        if not self.cfg["rotation_template"]:
            raise FlowError("rotation needs `rotation_template` in config.json (docs/rotation.md)")
        pend = self.store.pending
        if pend is None or 0 <= time.time() - pend["issued"] < TOKEN_TTL_S:
            # the flow's largest block first, while the heap is in one piece
            rx = bytearray(self.cfg["rx_size"])
            if pend is None:
                pend = self._new_certificate(link, rx)
            else:
                dev.step("resume-rotation", "certificate {} staged".format(pend["certificate_id"]))
                self._register(link, rx, pend)
            rx = None
        link.close()
        release(*_API)
        new = self._connect_new(pend)
        dev.step("connect-new", "as {} with certificate {}".format(self.name, pend["certificate_id"]))
        try:
            credwrite.commit(self.store, pend, self.name, self.store.record["device_configuration"],
                             self.cfg["endpoint"], retire=self.old)
        except (credstore.StoreError, OSError) as ex:
            new.close()
            raise FlowError("rotation: cannot store the new identity: {}".format(ex), retryable=True)
        finally:
            release("pem", "der")  # the commit's conversions are done
        self.store.pending = None
        dev.step("rotated", "{} -> {}".format(self.old, pend["certificate_id"]))
        try:
            retire(dev, new)
        except Exception as ex:  # committed: the next boot asks again
            dev.step("retire-later", _failure(ex))
        return new

    def _new_certificate(self, link, rx):
        # A key and CSR made here, the certificate under the current identity,
        # the new identity staged before RegisterThing activates it.
        dev = self.dev
        import csr

        try:
            key, request = csr.generate(self.name[:64])
        except (ValueError, TypeError, OSError, MemoryError) as ex:
            raise FlowError("rotation: cannot make a key and CSR on the device: {}: {}".format(
                type(ex).__name__, ex))
        finally:
            csr = None
            release("csr", "p256")  # made once per rotation
        dev.step("keygen", "P-256 key and CSR made on the device")
        import fleetprov

        p = dev.board.provisioner(link.client, self.cfg, rx)
        try:
            made = p.create_certificate_from_csr(request)
        except fleetprov.ProvisioningError as ex:
            raise _api_error("rotation", ex)
        finally:
            p.close()
        p = request = None
        dev.step("certificate", made.certificate_id)
        try:
            pend = credwrite.stage(self.store, made.certificate_id, made.certificate_pem, key,
                                   made.ownership_token, time.time())
        except (credstore.StoreError, OSError) as ex:
            raise FlowError("rotation: cannot store the new identity: {}".format(ex), retryable=True)
        made = key = None
        self.store.pending = pend
        self._register(link, rx, pend)
        return pend

    def _register(self, link, rx, pend):
        # RegisterThing with the rotation template puts the new certificate
        # on this thing. A spent token: registered before a cut, its answer
        # lost; connecting with the certificate tells whether it is active.
        dev = self.dev
        import fleetprov

        p = dev.board.provisioner(link.client, self.cfg, rx)
        try:
            reg = p.register_thing(self.cfg["rotation_template"], pend["ownership_token"],
                                   {"ThingName": self.name})
        except fleetprov.ProvisioningError as ex:
            if ex.error_code != "InvalidCertificateOwnershipToken":
                raise _api_error("rotation", ex)
            return
        finally:
            p.close()
        dev.step("register", "certificate {} on thing {}".format(pend["certificate_id"], reg.thing_name))

    def _connect_new(self, pend):
        # A connection with the staged identity. Refused (never activated, or
        # refused by the hook): the staged identity is dropped and the old
        # one stays; the network: it stays staged for the next boot.
        dev = self.dev
        s = self.store
        try:
            cert, key = dev.board.tls_identity(s, pend)
            return dev.open(self.name, cert, key, s.ca_der())
        except (mqttlink.ConnectError, credstore.StoreError) as ex:
            if isinstance(ex, mqttlink.ConnectError) and not (ex.refused or ex.handshake):
                raise FlowError("rotation: cannot connect with the new certificate ({}); the next boot "
                                "tries again".format(ex), retryable=True)
            credwrite.drop_pending(s)
            s.pending = None
            raise FlowError("rotation: certificate {} cannot connect ({}); it is dropped and {} stays".format(
                pend["certificate_id"], ex, self.old))
