# The boot flow: make sure the device holds an identity of its own, then
# connect as its thing.
#
# Provisioned? -> TLS connection as the thing. Not provisioned: the
# provisioning flow (lib/provisioning.py, loaded only then and released after)
# turns the claim into an identity; then one QoS 1 publish whose PUBACK proves
# it works. Every step prints one progress line with the milliseconds since
# start; no key or ownership token is ever printed. Every connection runs
# under the Device's one retry policy. lib/firstboot.py starts it on
# MicroPython, circuitpython/lib/cpboard.py on CircuitPython.
# See docs/first-boot.md.

import time

from device import Device, FlowError
from mqttlink import publish
from runtime import release
from timedsock import describe

# What the provisioning and rotation flows load, released together when one
# returns: a provisioned boot with nothing to renew never holds any of it.
_FLOW_CODE = ("provisioning", "rotation", "fleetprov", "fleetprov_texts", "awsnames", "credwrite", "cbor",
              "pem", "der", "csr", "p256", "linkfail")


class FirstBoot(Device):
    """The first boot of one validated config (see devconfig.validate) on
    ``board`` (device.Board; tests and CircuitPython give their own).
    ``link``: the connection as the thing, once the boot has made it."""

    link = None

    def start(self):
        """Return a Link connected as this device's thing, provisioning first
        when the store holds no verified identity, and again (once) when the
        endpoint refuses the stored certificate. Raises FlowError."""
        s = self.store
        rec = s.load()
        if rec is not None:
            self.step("provisioned", "thing {} certificate {}".format(rec["thing_name"], rec["certificate_id"]))
            try:
                link = self.connect_thing()
            except FlowError as ex:
                if not ex.refused:
                    raise
                # Revoked or deleted: the claim is still there, so start over.
                self.step("refused", "{}; clearing it, provisioning again".format(ex))
                import credwrite

                credwrite.clear(s)
            else:
                self._retire_claim()  # finishes a deletion a power cut interrupted
                return self._renew(link)
        else:
            self.step("not-provisioned", "claim {}".format(s.path(s.claim_cert)))
        self.provision()
        link = self.connect_thing()
        self.confirm(link)
        self._retire_claim()
        return link

    def provision(self):
        """Run the provisioning flow and commit the new identity; its code is
        released when it returns. Returns the record. Raises FlowError."""
        import provisioning

        try:
            return provisioning.run(self)
        finally:
            provisioning = None
            release(*_FLOW_CODE)

    def rotate(self, link):
        """Rotate the device's identity now, over ``link`` (connected as the
        thing), as the boot does when the certificate nears its expiry
        (docs/rotation.md). Returns a link connected as the thing: with the
        new identity when the rotation succeeded (the progress lines say why not).
        The boot closes that link when the application returns."""
        import rotation

        try:
            self.link = rotation.rotate(self, link)
            return self.link
        finally:
            rotation = None
            release(*_FLOW_CODE)

    def _renew(self, link):
        # Once the identity connects: a rotation a power cut interrupted, a
        # retirement one left, or a certificate that expires within
        # rotate_days. Only then is the rotation flow loaded.
        s = self.store
        rec = s.record
        cfg = self.cfg
        not_after = rec.get("not_after")
        due = (cfg["rotation_template"] and cfg["rotate_days"] and isinstance(not_after, int)
               and time.time() > not_after - cfg["rotate_days"] * 86400)
        if s.pending is None and rec.get("retire") is None and not due:
            return link
        import rotation

        try:
            return rotation.renew(self, link, due)
        finally:
            rotation = None
            release(*_FLOW_CODE)

    def confirm(self, link):
        """Prove the identity works: a QoS 1 publish that gets its PUBACK."""
        topic = self.topic(self.cfg["app_topic"])
        try:
            publish(link, topic, b'{"event":"provisioned"}', self.cfg["mqtt_timeout_ms"])
        except Exception as ex:
            link.close()
            raise FlowError("publish to {} as the new thing failed: {}".format(
                topic.decode(), describe(ex)), retryable=True)
        self.step("confirm", "PUBACK on {}".format(topic.decode()))

    def _retire_claim(self):
        # A temporary claim (provisioning by trusted user) has done its job
        # once the thing's own identity works: no claim stays on the board.
        s = self.store
        try:
            if s.retire_temporary_claim():
                self.step("claim-retired", "temporary claim {} deleted".format(s.path(s.claim_cert)))
        except OSError as ex:  # the identity works; the next boot tries again
            self.step("claim-kept", "cannot delete the temporary claim: {}".format(ex))


def boot(cfg, board, app=None, t0=None, source="config.json"):
    """The first boot of a validated ``cfg`` on ``board`` (a device.Board),
    then ``app(firstboot, link)``. ``t0``: ticks_ms() when the boot began;
    ``source``: where the config came from (for the progress line). Returns
    "ok", "retry" (a later boot may succeed) or "fatal" (fix the configuration
    or the cloud side)."""
    printer = board.printer
    try:
        fb = FirstBoot(cfg, board)
        if t0 is not None:
            fb.progress.t0 = t0
        fb.step("config", "{} {} {} template {}".format(source, cfg["method"], cfg["format"], cfg["template"]))
        fb.link = fb.start()
    except FlowError as ex:
        printer("fleetprov: " + str(ex))
        return "retry" if ex.retryable else "fatal"
    except OSError as ex:  # flash full or failing, outside the retried steps
        printer("fleetprov: {}: {}".format(type(ex).__name__, ex))
        return "retry"
    try:
        if app is not None:
            app(fb, fb.link)
    finally:
        fb.link.close()  # the one the application ends with (FirstBoot.rotate replaces it)
    peak = fb.progress.heap_peak
    fb.step("done", "heap peak {} bytes (sampled at each step)".format(peak) if peak else "")
    return "ok"
