# The writing half of the credential store: atomic writes (rule 1 of
# lib/credstore.py), staging a new identity, committing it with the record
# last (rule 2), forgetting one. The flows load this module only when there
# is something to write, so a provisioned boot never holds it. Every function
# takes the credstore.Store to write into.

import binascii
import json
import os

from credstore import (
    PENDING, RECORD, STAGED_CERT, STAGED_KEY, TMP, UID, VERSION, StoreError, digest, exists, read_file,
    remove, sync,
)


def write_atomic(store, name, data):
    """Replace ``name`` in ``store`` with ``data`` so that a power cut leaves
    the old content or the new one, never a mix. Refuses the shipped files."""
    if store.shipped(name):
        raise StoreError("refusing to overwrite shipped file {}".format(name))
    _makedirs(store.folder)
    final = store.path(name)
    tmp = final + TMP
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        _fsync(f)
    sync()
    store.mark(name + TMP)
    try:
        os.rename(tmp, final)
    except OSError:
        # FAT (VfsFat) refuses to rename onto an existing file, so it has a
        # window with neither: for the record that means "not provisioned"
        # (docs/first-boot.md). littlefs and POSIX never take this branch.
        remove(final)
        os.rename(tmp, final)
    sync()
    store.mark(name)


def stage(store, certificate_id, cert, key, ownership_token, issued):
    """Store a new, not yet registered identity as it came, pending.json last.
    ``cert``: PEM (str) or DER (bytes); ``key``: PEM (str) or DER (bytes);
    ``issued``: time.time() when the certificate came, to tell an expired
    ownership token. The identity the record names is not touched. Returns
    the pending record."""
    if store.pem and isinstance(key, (bytes, bytearray)):
        key = _pem_key(key)  # PEM mode: every staged file is PEM, as its TLS loads them
    cert = cert.encode() if isinstance(cert, str) else cert
    key = key.encode() if isinstance(key, str) else key
    rec = {
        "version": VERSION,
        "certificate_id": certificate_id,
        "ownership_token": ownership_token,
        "issued": issued,
        "files": {"cert": STAGED_CERT, "key": STAGED_KEY},
        "sha256": {"cert": digest(cert), "key": digest(key)},
    }
    # Nothing may vouch for the staged files while they are rewritten.
    if exists(store.path(PENDING)):
        remove(store.path(PENDING))
        sync()
    write_atomic(store, STAGED_KEY, key)
    write_atomic(store, STAGED_CERT, cert)
    write_atomic(store, PENDING, json.dumps(rec).encode())
    return rec


def commit(store, pending, thing_name=None, device_configuration=None, endpoint=None, retire=None):
    """RegisterThing succeeded: convert and check the staged pair (StoreError
    if the certificate does not certify the key; no identity is written then),
    write it as the identity files, then the provisioning record (the commit
    point), then remove pending.json, the staged files and the identity the
    record named before. ``retire``: the certificate id the new one replaces
    on the same thing, kept in the record until the cloud has retired it.
    Returns the record."""
    import der

    cid = pending["certificate_id"]
    cert, key = pair(store, pending)
    try:
        not_after = der.not_after(cert)
    except ValueError as ex:
        raise StoreError("cannot read certificate {}'s expiry: {}".format(cid, ex))
    if store.pem:
        # re-encoded from the DER just checked, so what lands on flash is
        # exactly what was verified, whatever line ends the server sent
        import pem

        cert, key = pem.der_to_pem(cert, "CERTIFICATE").encode(), _pem_key(key)
    names = store.identity_names(cid)
    old = store.record or store.read_record(RECORD)
    if old is not None and old["certificate_id"] != cid and names[0] in old["files"].values():
        raise StoreError("certificate {} shares its file names with the current one".format(cid))
    write_atomic(store, names[1], key)
    write_atomic(store, names[0], cert)
    rec = {
        "version": VERSION,
        "thing_name": thing_name,
        "certificate_id": cid,
        "endpoint": endpoint,
        "device_configuration": {} if device_configuration is None else device_configuration,
        "files": {"cert": names[0], "key": names[1]},
        "sha256": {"cert": digest(cert), "key": digest(key)},
        "not_after": not_after,
    }
    if retire is not None:
        rec["retire"] = retire
    cert = key = None
    write_atomic(store, RECORD, json.dumps(rec).encode())
    store.record = rec
    store.drop_staged()
    store.mark("pending-cleared")
    if old is not None:
        _remove_files(store, old, names)
    return rec


def retired(store):
    """The cloud has retired the certificate the record names under "retire":
    the record without it."""
    rec = dict(store.record)
    rec.pop("retire", None)
    write_atomic(store, RECORD, json.dumps(rec).encode())
    store.record = rec


def drop_pending(store):
    """Give up the staged identity: pending.json first, then its files."""
    store.drop_staged()
    store.mark("pending-dropped")


def clear(store):
    """Forget the provisioned identity (the record goes first, so a cut
    halfway leaves "not provisioned") and any staged one. The claim files stay."""
    try:
        old = json.loads(read_file(store.path(RECORD)))
    except (OSError, ValueError):
        old = None
    remove(store.path(RECORD))
    sync()
    store.mark("clear")
    store.drop_staged()
    if old is not None:
        _remove_files(store, old)
    store.cleanup()
    store.record = None


def pair(store, pending):
    """(cert DER, key DER) of the staged identity ``pending``, checked to
    belong together. StoreError if they cannot be converted or do not."""
    import der
    import pem

    f = pending["files"]
    cert, key = store.read(f["cert"]), store.read(f["key"])
    try:
        if cert[:1] != b"\x30":  # not a DER SEQUENCE: PEM
            cert = pem.pem_to_der(cert, "CERTIFICATE")
        if key[:1] != b"\x30":
            key = pem.pem_to_der(key, "PRIVATE KEY")
    except ValueError as ex:
        raise StoreError(str(ex))
    try:
        match = der.same_key(cert, key)
    except ValueError as ex:
        raise StoreError("cannot compare certificate and key: {}".format(ex))
    if not match:
        raise StoreError(
            "certificate {} does not certify this private key; refusing to store "
            "them (provision again)".format(pending["certificate_id"])
        )
    return cert, key


def create_uid(store):
    """A new random device id, kept in the store (see Store.uid)."""
    v = binascii.hexlify(os.urandom(8)).decode()
    write_atomic(store, UID, v.encode())
    return v


def _remove_files(store, rec, keep=()):
    # The files ``rec`` names, except ``keep`` and the shipped ones
    # (whatever a torn or hostile record says).
    try:
        names = list(rec["files"].values())
    except (KeyError, TypeError, AttributeError):
        return
    for name in names:
        if isinstance(name, str) and "/" not in name and name not in keep and not store.shipped(name):
            remove(store.path(name))
    sync()


def _pem_key(key):
    import pem

    try:
        return pem.der_to_pem(key, pem.key_label(key)).encode()
    except ValueError as ex:
        raise StoreError("cannot tell the private key's format: {}".format(ex))


def _makedirs(folder):
    path = ""
    for part in folder.split("/"):
        if not part:
            path = "/"
            continue
        path = path + part if path in ("", "/") else path + "/" + part
        if not exists(path):
            os.mkdir(path)


def _fsync(f):
    # CPython: push the file to the disk. MicroPython has no os.fsync; its
    # close() commits the file (littlefs) and os.sync() flushes the block device.
    fs = getattr(os, "fsync", None)
    if fs is not None:
        try:
            fs(f.fileno())
        except (AttributeError, OSError):
            pass
