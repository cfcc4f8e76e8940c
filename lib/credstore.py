# The device's credential store: the claim files it was shipped with, and the
# identity it obtains at first boot (and each time it rotates).
#
# Power-loss safety rests on three rules:
#   1. every file is written under a temporary name, flushed, closed, synced,
#      and renamed over its final name (POSIX rename(2) and littlefs v2's
#      lfs_rename replace the target atomically);
#   2. the provisioning record (provisioned.json) is written LAST and names
#      every credential file with its SHA-256, so it is the commit point: a cut
#      before it leaves the identity the old record names (or none), a cut
#      after it leaves the complete new identity;
#   3. load() trusts nothing the record does not vouch for: a missing, torn or
#      corrupt record, a missing file or a digest mismatch all mean "not
#      provisioned", and leftover files (*.tmp, identity and staged files no
#      record can use) are deleted, never read.
# A new identity is staged before RegisterThing activates it: the key and the
# certificate as they came (pending.key, pending.crt), then pending.json
# (certificate id, ownership token, when it was issued, the files' SHA-256)
# last, under the same rules. A boot cut short after that resumes with the same
# certificate instead of orphaning it. Committing converts and checks the
# staged pair, writes it as identity files named after the certificate (so the
# identity the current record names is never overwritten), then the record,
# then removes pending.json, the staged files and the identity it replaced.
#
# This module reads, verifies and tidies; lib/credwrite.py writes (rules 1 and
# 2) and is loaded only when there is something to write, so a provisioned boot
# never holds it. The claim certificate and key are only ever opened for reading.

import binascii
import json
import os

from runtime import sha256

RECORD = "provisioned.json"
PENDING = "pending.json"
STAGED_CERT = "pending.crt"  # PEM, as the server sent it
STAGED_KEY = "pending.key"  # as it came: PEM from the server, DER made on the device
# Beside a claim put on the board for one provisioning (tools/trustedclaim.py):
# that claim is deleted once the device has its own identity.
TEMPORARY_CLAIM = "claim.temporary"
# Identity files: IDENTITY + the certificate id's first 16 hex digits + ".crt.der" /
# ".key.der" (".pem" in PEM mode).
IDENTITY = "device-"
UID = "uid"
# AWS deletes a certificate still PENDING_ACTIVATION, and refuses its
# ownership token, one hour after issue; a staged identity older than this
# (less a margin for the clocks) is not registered again.
TOKEN_TTL_S = 3600 - 60
TMP = ".tmp"
VERSION = 1
_STAGED = (PENDING, STAGED_CERT, STAGED_KEY)


def written_by_device(name):
    """True for a file the device writes into its certificate folder itself
    (never copied onto it from a host)."""
    return name.startswith(IDENTITY) or name in (RECORD, PENDING, STAGED_CERT, STAGED_KEY, UID)


class StoreError(Exception):
    """A credential could not be read, converted, checked or written."""


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    """Delete ``path`` if it is there."""
    try:
        os.remove(path)
    except OSError:
        pass


def read_file(path):
    """The bytes of ``path`` (OSError if it cannot be read)."""
    # stat first: on firmware 1.22's unix port a failed open() leaves a file
    # object holding fd 0 that closes fd 0 when collected, whatever owns it
    # by then (here: the claim connection's socket). Fixed in 1.23.
    os.stat(path)
    with open(path, "rb") as f:
        return f.read()


def digest(data):
    """SHA-256 of ``data`` as 64 hex digits (what a record holds)."""
    return binascii.hexlify(sha256(data).digest()).decode()


def sync():
    """Flush the filesystem to flash (MicroPython); CPython's os.sync() syncs
    every disk on the machine, and fsync per file is enough there."""
    s = getattr(os, "sync", None)
    if s is not None and getattr(os, "fsync", None) is None:
        s()


class Store:
    """Credentials in one folder of the device's flash.

    ``folder``: the certificate folder (``cert_dir``), relative to the current
    directory (the board's flash root) or absolute. ``claim_cert``,
    ``claim_key``, ``ca``: the file names of the shipped files in it.
    ``hook``: optional callable(step) called at each write boundary (tests
    use it to cut power at exactly that point). ``pem``: the identity files
    are PEM text instead of DER, for TLS stacks that load only PEM files
    (CircuitPython); same checks, same commit protocol."""

    def __init__(self, folder="certs", claim_cert="claim.der", claim_key="claim.key.der",
                 ca="ca.der", hook=None, pem=False):
        self.folder = folder
        self.claim_cert = claim_cert
        self.claim_key = claim_key
        self.ca = ca
        self.hook = hook
        self.pem = pem
        self.record = None  # the verified record, or None
        self.pending = None  # the staged identity load() found beside it (a rotation under way)

    def path(self, name):
        """Path of ``name`` inside the store's folder."""
        return name if not self.folder else self.folder + "/" + name

    def mark(self, name):
        """A write boundary named ``name``: the hook's moment."""
        if self.hook is not None:
            self.hook(name)

    def read(self, name):
        """Bytes of a file in the store's folder; StoreError naming it if absent."""
        p = self.path(name)
        try:
            return read_file(p)
        except OSError as ex:
            raise StoreError("cannot read {} ({}); copy it to the board".format(p, ex))

    def claim(self):
        """Return ``(cert_der, key_der)`` of the claim identity."""
        return self.read(self.claim_cert), self.read(self.claim_key)

    def ca_der(self):
        """Return the CA certificate (DER) that verifies the endpoint."""
        return self.read(self.ca)

    def shipped(self, name):
        """True for the claim and CA files, which the store never writes or deletes."""
        return name in (self.claim_cert, self.claim_key, self.ca)

    def identity_names(self, certificate_id):
        """(certificate file, key file) of the identity of ``certificate_id``."""
        ext = ".pem" if self.pem else ".der"
        stem = IDENTITY + certificate_id[:16]
        return stem + ".crt" + ext, stem + ".key" + ext

    def load(self):
        """Verify what the store holds. Returns the record (dict) or None.

        A record counts only when it parses, has every field, and every file
        it names exists with the SHA-256 it records. Leftovers go first:
        temporary files, identity files that neither the record nor a staged
        identity can use, and a staged identity the record already holds."""
        self.record = self.pending = None
        rec = self.read_record(RECORD)
        pend = self.load_pending()
        if rec is not None and pend is not None and pend["certificate_id"] == rec["certificate_id"]:
            self.drop_staged()  # a cut after the record landed, before pending.json went
            pend = None
        keep = []
        for r in (rec, pend):
            if r is not None:
                keep.extend(r["files"].values())
        if pend is not None:
            keep.append(PENDING)
            keep.extend(self.identity_names(pend["certificate_id"]))
        self.cleanup(keep)
        if rec is None or not (
                isinstance(rec.get("device_configuration"), dict)
                and "thing_name" in rec and (rec["thing_name"] is None or isinstance(rec["thing_name"], str))):
            return None
        self.record = rec
        self.pending = pend
        return rec

    def read_record(self, name):
        """The record in file ``name`` (provisioned.json or pending.json) when
        it parses, has a certificate id, and the files it names hold the
        SHA-256 it records; else None."""
        try:
            rec = json.loads(read_file(self.path(name)))
            if rec["version"] == VERSION and isinstance(rec["certificate_id"], str) and self._verified(rec):
                return rec
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def _verified(self, rec):
        # True when rec's files exist with the digests it records.
        files = rec["files"]
        for role in ("cert", "key"):
            if not isinstance(files[role], str) or "/" in files[role]:
                return False
            if digest(read_file(self.path(files[role]))) != rec["sha256"][role]:
                return False
        return True

    def load_pending(self):
        """The staged identity (dict: certificate_id, ownership_token, issued,
        files, sha256) when pending.json and the files it names check out;
        else None."""
        rec = self.read_record(PENDING)
        if rec is not None and isinstance(rec.get("ownership_token"), str) and isinstance(
                rec.get("issued"), (int, float)):
            return rec
        return None

    def identity(self):
        """Return ``(cert_der, key_der)`` of the provisioned identity."""
        if self.record is None:
            raise StoreError("not provisioned: no verified identity to connect with")
        f = self.record["files"]
        return self.read(f["cert"]), self.read(f["key"])

    def cleanup(self, keep=()):
        """Delete leftovers: temporary files (an interrupted write), and
        identity and staged files whose names are not in ``keep`` (a key
        staged before its pending.json landed is of no use). Returns their names."""
        gone = []
        try:
            names = os.listdir(self.folder or ".")
        except OSError:
            return gone
        for n in names:
            if n.endswith(TMP) or ((n.startswith(IDENTITY) or n in _STAGED) and n not in keep):
                remove(self.path(n))
                gone.append(n)
        return gone

    def drop_staged(self):
        """Forget the staged identity: pending.json first, then its files."""
        remove(self.path(PENDING))
        sync()
        remove(self.path(STAGED_CERT))
        remove(self.path(STAGED_KEY))
        sync()

    def temporary_claim(self):
        """What the marker of a temporary claim says ("<id> valid until <time>"),
        or None for a factory claim."""
        try:
            return read_file(self.path(TEMPORARY_CLAIM)).decode().strip() or TEMPORARY_CLAIM
        except (OSError, ValueError):
            return None

    def retire_temporary_claim(self):
        """Delete a temporary claim (provisioning by trusted user: the marker
        TEMPORARY_CLAIM sits beside it) once the device has its own identity;
        a factory claim, without the marker, is never touched. The marker goes
        last, so a cut halfway is finished at the next call. True if deleted."""
        marker = self.path(TEMPORARY_CLAIM)
        if not exists(marker):
            return False
        remove(self.path(self.claim_cert))
        remove(self.path(self.claim_key))
        sync()
        remove(marker)
        sync()
        return True

    def uid(self):
        """The random device id kept in the store (for ports without
        machine.unique_id; credwrite.create_uid makes it), or None."""
        try:
            v = read_file(self.path(UID)).decode().strip()
            if len(v) == 16:
                int(v, 16)
                return v
        except (OSError, ValueError):
            pass
        return None

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
