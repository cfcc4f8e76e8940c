# The device's credential store: the claim files it was shipped with, and the
# identity it obtains at first boot.
#
# Power-loss safety rests on three rules:
#   1. every file is written under a temporary name, flushed, closed, synced,
#      and renamed over its final name (POSIX rename(2) and littlefs v2's
#      lfs_rename replace the target atomically);
#   2. the provisioning record (provisioned.json) is written LAST and names
#      every credential file with its SHA-256, so it is the commit point: a cut
#      before it leaves "not provisioned", a cut after it leaves the complete
#      new identity;
#   3. load() trusts nothing the record does not vouch for: a missing, torn or
#      corrupt record, a missing file or a digest mismatch all mean "not
#      provisioned", and leftover *.tmp files are deleted, never read.
# A new identity is staged before RegisterThing activates it: certificate and
# key, then the pending record (pending.json: certificate id, ownership token,
# when it was issued, the files' SHA-256) last, under the same three rules. A
# boot cut short after that resumes with the same certificate instead of
# orphaning it; commit_pending() writes the provisioning record naming the
# staged files, then removes pending.json.
# The claim certificate and key are only ever opened for reading.

import binascii
import hashlib
import json
import os
import sys

RECORD = "provisioned.json"
PENDING = "pending.json"
# Beside a claim put on the board for one provisioning (tools/trustedclaim.py):
# that claim is deleted once the device has its own identity.
TEMPORARY_CLAIM = "claim.temporary"
DEVICE_CERT = "device.crt.der"
DEVICE_KEY = "device.key.der"
# PEM-mode names (Store(pem=True)): CircuitPython's TLS loads PEM files only.
DEVICE_CERT_PEM = "device.crt.pem"
DEVICE_KEY_PEM = "device.key.pem"
UID = "uid"
_TMP = ".tmp"
_VERSION = 1


class StoreError(Exception):
    """A credential could not be converted, checked or written."""


def _pem():
    # PEM/DER conversion and the DER walker are needed only while a new
    # identity is converted and checked: imported then and dropped after
    # (_drop_pem), about 5 KB of RAM on a board that a provisioned boot never pays.
    import pem

    return pem


def _drop_pem():
    if sys.implementation.name == "micropython":
        sys.modules.pop("pem", None)
        sys.modules.pop("der", None)


def _join(folder, name):
    return name if not folder else folder + "/" + name


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _read(path):
    # stat first: on firmware 1.22's unix port a failed open() leaves a file
    # object holding fd 0 that closes fd 0 when collected, whatever owns it
    # by then (here: the claim connection's socket). Fixed in 1.23.
    os.stat(path)
    with open(path, "rb") as f:
        return f.read()


def _digest(data):
    return binascii.hexlify(sha256(data).digest()).decode()


def sha256(data):
    """hashlib.sha256(data) on MicroPython and CPython; CircuitPython's hashlib
    has only new(name, data)."""
    make = getattr(hashlib, "sha256", None)
    if make is not None:
        return make(data)
    return getattr(hashlib, "new")("sha256", data)  # not in MicroPython's hashlib


def _makedirs(folder):
    path = ""
    for part in folder.split("/"):
        if not part:
            path = "/"
            continue
        path = path + part if path in ("", "/") else path + "/" + part
        if not _exists(path):
            os.mkdir(path)


class Store:
    """Credentials in one folder of the device's flash.

    ``folder``: the certificate folder (``cert_dir``), relative to the current
    directory (the board's flash root) or absolute. ``claim_cert``,
    ``claim_key``, ``ca``: the file names of the shipped files in it.
    ``hook``: optional callable(step) called at each write boundary (tests
    use it to cut power at exactly that point). ``pem``: store the identity
    as PEM text (device.crt.pem, device.key.pem) instead of DER, for TLS
    stacks that load only PEM files (CircuitPython); same checks, same
    commit protocol."""

    def __init__(self, folder="certs", claim_cert="claim.der", claim_key="claim.key.der",
                 ca="ca.der", hook=None, pem=False):
        self.folder = folder
        self.claim_cert = claim_cert
        self.claim_key = claim_key
        self.ca = ca
        self.hook = hook
        self.pem = pem
        self.record = None  # the verified record, or None

    def path(self, name):
        """Path of ``name`` inside the store's folder."""
        return _join(self.folder, name)

    def _step(self, name):
        if self.hook is not None:
            self.hook(name)

    def read(self, name):
        """Bytes of a file in the store's folder; StoreError naming it if absent."""
        p = self.path(name)
        try:
            return _read(p)
        except OSError as ex:
            raise StoreError("cannot read {} ({}); copy it to the board".format(p, ex))

    def claim(self):
        """Return ``(cert_der, key_der)`` of the claim identity."""
        return self.read(self.claim_cert), self.read(self.claim_key)

    def retire_temporary_claim(self):
        """Delete a temporary claim (provisioning by trusted user: the marker
        TEMPORARY_CLAIM sits beside it) once the device has its own identity;
        a factory claim, without the marker, is never touched. The marker goes
        last, so a cut halfway is finished at the next call. True if deleted."""
        marker = self.path(TEMPORARY_CLAIM)
        if not _exists(marker):
            return False
        _remove(self.path(self.claim_cert))
        _remove(self.path(self.claim_key))
        _sync()
        _remove(marker)
        _sync()
        return True

    def ca_der(self):
        """Return the CA certificate (DER) that verifies the endpoint."""
        return self.read(self.ca)

    def cleanup(self):
        """Delete leftover temporary files (an interrupted write). Returns their names."""
        gone = []
        try:
            names = os.listdir(self.folder or ".")
        except OSError:
            return gone
        for n in names:
            if n.endswith(_TMP):
                _remove(self.path(n))
                gone.append(n)
        return gone

    def write_atomic(self, name, data):
        """Replace ``name`` with ``data`` so that a power cut leaves the old
        content or the new one, never a mix. Refuses the claim file names."""
        if name in (self.claim_cert, self.claim_key, self.ca):
            raise StoreError("refusing to overwrite shipped file {}".format(name))
        _makedirs(self.folder)
        final = self.path(name)
        tmp = final + _TMP
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            _fsync(f)
        _sync()
        self._step(name + _TMP)
        try:
            os.rename(tmp, final)
        except OSError:
            # FAT (VfsFat) refuses to rename onto an existing file. The record
            # is always removed before credentials are rewritten, so the
            # window between remove and rename is covered by the record's
            # digests; littlefs and POSIX never take this branch.
            _remove(final)
            os.rename(tmp, final)
        _sync()
        self._step(name)

    def load(self):
        """Verify what the store holds. Returns the record (dict) or None.

        A record counts only when it parses, has every field, and every file
        it names exists with the SHA-256 it records and the certificate
        matches the key. Removes leftover temporary files first."""
        self.record = None
        self.cleanup()
        try:
            rec = json.loads(_read(self.path(RECORD)))
        except (OSError, ValueError):
            return None
        try:
            if rec["version"] != _VERSION:
                return None
            if not self._verified(rec):
                return None
            if not isinstance(rec["certificate_id"], str) or not isinstance(
                rec["device_configuration"], dict
            ):
                return None
            if not (rec["thing_name"] is None or isinstance(rec["thing_name"], str)):
                return None
        except (KeyError, TypeError, OSError):
            return None
        self.record = rec
        # a cut after the record landed, before pending.json went: done, drop it
        _remove(self.path(PENDING))
        return rec

    def _verified(self, rec):
        # True when rec's files exist with the digests it records.
        files = rec["files"]
        for role in ("cert", "key"):
            if not isinstance(files[role], str) or "/" in files[role]:
                return False
            if _digest(_read(self.path(files[role]))) != rec["sha256"][role]:
                return False
        return True

    def load_pending(self):
        """The staged identity (dict: certificate_id, ownership_token, issued,
        files, sha256) when pending.json and the files it names check out;
        else None. Call after load() found no record."""
        try:
            rec = json.loads(_read(self.path(PENDING)))
            if (rec["version"] == _VERSION and isinstance(rec["certificate_id"], str)
                    and isinstance(rec["ownership_token"], str)
                    and isinstance(rec["issued"], (int, float)) and self._verified(rec)):
                return rec
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def stage(self, certificate_id, cert, key, ownership_token, issued):
        """Store a new, not yet registered identity; pending.json last. ``cert``
        and ``key``: PEM (str) or DER (bytes), converted to DER and checked to
        belong together (StoreError otherwise, nothing written). ``issued``: time.time() when the certificate
        came, to tell an expired ownership token. Returns the pending record."""
        names, cert, key = self._encoded(certificate_id, cert, key)
        rec = {
            "version": _VERSION,
            "certificate_id": certificate_id,
            "ownership_token": ownership_token,
            "issued": issued,
            "files": {"cert": names[0], "key": names[1]},
            "sha256": {"cert": _digest(cert), "key": _digest(key)},
        }
        # Nothing may vouch for the files while they are rewritten.
        for name in (RECORD, PENDING):
            if _exists(self.path(name)):
                _remove(self.path(name))
                _sync()
        self.write_atomic(names[1], key)
        self.write_atomic(names[0], cert)
        self.write_atomic(PENDING, json.dumps(rec).encode())
        return rec

    def commit_pending(self, pending, thing_name=None, device_configuration=None, endpoint=None):
        """RegisterThing succeeded: write the provisioning record naming the
        staged files (the commit point), then drop pending.json. Returns the record."""
        rec = {
            "version": _VERSION,
            "thing_name": thing_name,
            "certificate_id": pending["certificate_id"],
            "endpoint": endpoint,
            "device_configuration": {} if device_configuration is None else device_configuration,
            "files": pending["files"],
            "sha256": pending["sha256"],
        }
        self.write_atomic(RECORD, json.dumps(rec).encode())
        self.record = rec
        _remove(self.path(PENDING))
        _sync()
        self._step("pending-cleared")
        return rec

    def drop_pending(self):
        """Give up the staged identity: pending.json first, then its files."""
        _remove(self.path(PENDING))
        _sync()
        self._step("pending-dropped")
        self._remove_identity_files()

    def identity(self):
        """Return ``(cert_der, key_der)`` of the provisioned identity."""
        if self.record is None:
            raise StoreError("not provisioned: no verified identity to connect with")
        return self.pending_identity(self.record)

    def pending_identity(self, pending):
        """Return ``(cert, key)`` of the staged identity ``pending`` (from
        load_pending or stage), in the form identity() returns them."""
        f = pending["files"]
        return self.read(f["cert"]), self.read(f["key"])

    def clear(self):
        """Forget the provisioned identity (the record goes first, so a cut
        halfway leaves "not provisioned"). The claim files stay."""
        _remove(self.path(RECORD))
        _remove(self.path(PENDING))
        _sync()
        self._step("clear")
        self._remove_identity_files()
        self.cleanup()
        self.record = None

    def _remove_identity_files(self):
        for name in (DEVICE_CERT, DEVICE_KEY, DEVICE_CERT_PEM, DEVICE_KEY_PEM):
            _remove(self.path(name))

    def _encoded(self, certificate_id, cert, key):
        # -> ((cert name, key name), cert, key) as they go to flash: DER, or
        # PEM in PEM mode, re-encoded from the DER just checked so what lands
        # on flash is exactly what was verified, whatever line ends AWS sent.
        codec = _pem()
        try:
            cert, key = self._pair(codec, certificate_id, cert, key)
            if not self.pem:
                return (DEVICE_CERT, DEVICE_KEY), cert, key
            try:
                key = codec.der_to_pem(key, codec.key_label(key)).encode()
            except ValueError as ex:
                raise StoreError("cannot tell the private key's format: {}".format(ex))
            return (DEVICE_CERT_PEM, DEVICE_KEY_PEM), codec.der_to_pem(cert, "CERTIFICATE").encode(), key
        finally:
            codec = None
            _drop_pem()

    def _pair(self, codec, certificate_id, cert, key):
        # (cert DER, key DER) from PEM or DER, checked to belong together.
        if not isinstance(cert, (bytes, bytearray)):
            cert = codec.pem_to_der(cert, "CERTIFICATE")
        if not isinstance(key, (bytes, bytearray)):
            key = codec.pem_to_der(key, "PRIVATE KEY")
        try:
            match = codec.walker().same_key(cert, key)
        except ValueError as ex:
            raise StoreError("cannot compare certificate and key: {}".format(ex))
        if not match:
            raise StoreError(
                "certificate {} does not certify this private key; refusing to store "
                "them (provision again)".format(certificate_id)
            )
        return cert, key

    def uid(self):
        """A random device id kept in the store (for ports without
        machine.unique_id): created once, then the same on every boot."""
        p = self.path(UID)
        try:
            v = _read(p).decode().strip()
            if len(v) == 16:
                int(v, 16)
                return v
        except (OSError, ValueError):
            pass
        v = binascii.hexlify(os.urandom(8)).decode()
        self.write_atomic(UID, v.encode())
        return v

    def summary(self):
        """What the store holds, safe to print (no key material)."""
        r = self.record
        if r is None:
            return {"provisioned": False}
        return {
            "provisioned": True,
            "thing_name": r["thing_name"],
            "certificate_id": r["certificate_id"],
            "device_configuration": r["device_configuration"],
        }


def _fsync(f):
    # CPython: push the file to the disk. MicroPython has no os.fsync; its
    # close() commits the file (littlefs) and os.sync() flushes the block device.
    fs = getattr(os, "fsync", None)
    if fs is not None:
        try:
            fs(f.fileno())
        except (AttributeError, OSError):
            pass


def _sync():
    s = getattr(os, "sync", None)
    # CPython's os.sync() syncs every disk on the machine; fsync above is enough there.
    if s is not None and getattr(os, "fsync", None) is None:
        s()
