"""iotsim's registry: certificates, things, policies and ownership tokens in SQLite.

The database (``<state>/registry.sqlite3``, WAL mode) is the service's single
source of truth and survives restarts. The broker plugin never opens it: after
every change of a certificate's status the registry rewrites
``<state>/certs.status`` atomically (temporary file, rename), one
``<certificateId> <STATUS>`` line per certificate, and the plugin re-reads that
file when it changes.

certs.status is derived data: every Registry regenerates it from SQLite when
it opens (``python -m tools.iotsim up`` does so before the broker starts), so
it is not fsynced. The rename alone makes each version appear whole to the
broker; a power cut can at worst lose the last versions of the file, never a
committed change, and the next start rewrites it. The registry keeps the
file's lines in memory (a burst activates hundreds of certificates a second,
and re-reading every row from SQLite for each version cost milliseconds per
thousand certificates, under the registry lock); a change committed by another
process (the CLI's ``revoke``) is noticed through SQLite's ``data_version``
and the lines are reloaded from the database before the next write.

Ownership tokens are opaque random strings. Only their SHA-256 is stored, so
neither the database nor any log holds a usable token. A token is single use,
bound to the certificate it was issued with (and to the identity that asked
for it) and expires ``token_ttl`` seconds after issue (AWS: one hour). A
certificate still PENDING_ACTIVATION when its token expires is deleted, as AWS
does (:meth:`Registry.expire_pending`).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .templates import ThingSpec

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"
PENDING_ACTIVATION = "PENDING_ACTIVATION"
REVOKED = "REVOKED"
CLAIM = "CLAIM"
SERVICE = "SERVICE"
STATUSES = (ACTIVE, INACTIVE, PENDING_ACTIVATION, REVOKED, CLAIM, SERVICE)

DEFAULT_TOKEN_TTL = 3600.0
# AWS's tokens are several hundred characters of base64; a similar size keeps
# device buffers honest (the CreateKeys response is about 4 KB with it).
TOKEN_BYTES = 480

STATUS_FILE = "certs.status"
DB_FILE = "registry.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    id TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    certificate_id TEXT NOT NULL,
    owner TEXT,
    issued REAL NOT NULL,
    expires REAL NOT NULL,
    used REAL
);
CREATE INDEX IF NOT EXISTS tokens_by_certificate ON tokens(certificate_id);
CREATE INDEX IF NOT EXISTS certificates_by_id_status ON certificates(id, status);
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY,
    attributes TEXT NOT NULL,
    thing_type TEXT,
    groups TEXT NOT NULL,
    billing_group TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS thing_principals (
    thing TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    PRIMARY KEY (thing, certificate_id)
);
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY,
    document TEXT
);
CREATE TABLE IF NOT EXISTS policy_attachments (
    policy TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    PRIMARY KEY (policy, certificate_id)
);
"""


class TokenError(Exception):
    """An ownership token was refused; the message is AWS-like and never contains the token."""


class ConflictError(Exception):
    """A thing update hit an OverrideSettings FAIL."""


@dataclass(frozen=True)
class Certificate:
    id: str
    pem: str
    status: str
    created: float
    updated: float
    owner: str | None


@dataclass(frozen=True)
class Thing:
    name: str
    attributes: dict[str, str]
    thing_type: str | None
    groups: list[str]
    billing_group: str | None
    created: float
    updated: float
    certificates: list[str] = field(default_factory=list)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Registry:
    """Thread-safe registry over one SQLite connection (guarded by a lock).

    ``clock`` returns seconds (``time.time`` by default); tests inject their own
    to move tokens past their expiry.
    """

    def __init__(
        self,
        state: Path,
        *,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if token_ttl <= 0:
            raise ValueError("token_ttl must be positive seconds, got {}".format(token_ttl))
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.token_ttl = float(token_ttl)
        self.clock = clock
        self.db_path = self.state / DB_FILE
        self.status_path = self.state / STATUS_FILE
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of the process; only a power
        # cut can lose the last transactions. Good enough for a test endpoint.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        # Group commit of the status file: every change bumps _generation; a
        # writer publishes a snapshot and records the generation it covered.
        self._status_cond = threading.Condition()
        self._generation = 0
        self._written = -1
        self._writing = False
        self._closed = False
        # The status file's lines: certificate id -> "<id> <STATUS>\n", with the
        # ids sorted; None until loaded (and after a rolled-back transaction).
        self._lines: dict[str, str] | None = None
        self._ids: list[str] = []
        self._data_version = -1
        self._bump()
        self._flush_status()

    # -- plumbing ----------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the registry in {} is closed".format(self.state))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._lines = None  # the cache may hold a change that did not happen
                raise

    def _set_line(self, certificate_id: str, status: str) -> None:
        """Record a status change for the status file (inside the change's transaction)."""
        lines = self._lines
        if lines is None:
            return  # reloaded from the database before the next write
        if certificate_id not in lines:
            bisect.insort(self._ids, certificate_id)
        lines[certificate_id] = "{} {}\n".format(certificate_id, status)

    def _drop_line(self, certificate_id: str) -> None:
        lines = self._lines
        if lines is not None and lines.pop(certificate_id, None) is not None:
            i = bisect.bisect_left(self._ids, certificate_id)
            del self._ids[i]

    def _status_text(self) -> bytes:
        """certs.status as of now (call with self._lock held)."""
        # data_version changes when another connection (another process) commits.
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if self._lines is None or version != self._data_version:
            rows = self._db.execute("SELECT id, status FROM certificates ORDER BY id").fetchall()
            self._lines = {cid: "{} {}\n".format(cid, status) for cid, status in rows}
            self._ids = [cid for cid, _ in rows]
            self._data_version = version
        lines = self._lines
        return "".join([lines[cid] for cid in self._ids]).encode("ascii")

    def _bump(self) -> None:
        with self._status_cond:
            self._generation += 1

    def _flush_status(self, wait: bool = True) -> None:
        """Return once certs.status reflects every status change made so far.

        ``wait=False``: if another thread is writing the file right now, return
        at once; that writer writes again before it stops, so this change still
        reaches the file, just without the caller waiting for it (for changes the
        broker cannot tell apart from "unknown", like a new PENDING_ACTIVATION).
        """
        with self._status_cond:
            wanted = self._generation
            while self._written < wanted:
                if self._writing:
                    if not wait:
                        return
                    self._status_cond.wait()
                    continue
                self._writing = True
                try:
                    # The writer keeps going until no change is left unwritten,
                    # including changes made by callers that did not wait.
                    while self._written < self._generation:
                        target = self._generation
                        self._status_cond.release()
                        try:
                            self._write_status_file()
                        finally:
                            self._status_cond.acquire()
                        self._written = max(self._written, target)
                        self._status_cond.notify_all()
                finally:
                    self._writing = False
                    self._status_cond.notify_all()

    def _write_status_file(self) -> None:
        # The lock file serialises writers across processes (the running service
        # and a CLI `revoke`): each snapshot is read under the lock after its
        # writer's commit, so the last file written holds every committed change.
        with open(self.state / ".certs.status.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            with self._lock:
                if self._closed:
                    return
                data = self._status_text()
            self._write_data(data)

    def _write_data(self, data: bytes) -> None:
        # No fsync: see the module docstring (the file is regenerated at start).
        tmp = self.status_path.with_name(".{}.{}.tmp".format(STATUS_FILE, secrets.token_hex(4)))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.status_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- certificates ------------------------------------------------------------

    def add_certificate(
        self, certificate_id: str, pem: str, status: str, *, owner: str | None = None
    ) -> None:
        """Record a certificate (or update the status and PEM of a known one)."""
        if status not in STATUSES:
            raise ValueError("unknown certificate status {!r}; use one of {}".format(status, STATUSES))
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO certificates(id, pem, status, created, updated, owner) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET pem=excluded.pem, status=excluded.status, "
                "updated=excluded.updated",
                (certificate_id, pem, status, now, now, owner),
            )
            self._set_line(certificate_id, status)
            self._bump()
        self._flush_status()

    def issue_certificate(self, certificate_id: str, pem: str, *, owner: str | None) -> str:
        """Record a new PENDING_ACTIVATION certificate and return its ownership token.

        ``owner`` is the certificateId of the connection that asked for it
        (the claim); the token only works for that identity.
        """
        token = base64.b64encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii")
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO certificates(id, pem, status, created, updated, owner) VALUES (?,?,?,?,?,?)",
                (certificate_id, pem, PENDING_ACTIVATION, now, now, owner),
            )
            db.execute(
                "INSERT INTO tokens(hash, certificate_id, owner, issued, expires) VALUES (?,?,?,?,?)",
                (_token_hash(token), certificate_id, owner, now, now + self.token_ttl),
            )
            self._set_line(certificate_id, PENDING_ACTIVATION)
            self._bump()
        # PENDING_ACTIVATION and "not listed" both keep the certificate out of
        # the broker, so the reply need not wait for the file.
        self._flush_status(wait=False)
        return token

    def set_status(self, certificate_id: str, status: str) -> None:
        if status not in STATUSES:
            raise ValueError("unknown certificate status {!r}; use one of {}".format(status, STATUSES))
        with self._tx() as db:
            cur = db.execute(
                "UPDATE certificates SET status=?, updated=? WHERE id=?",
                (status, self.clock(), certificate_id),
            )
            if cur.rowcount == 0:
                raise KeyError(
                    "no certificate {} in the registry ({}); `python -m tools.iotsim certs` "
                    "lists them".format(certificate_id, self.db_path)
                )
            self._set_line(certificate_id, status)
            self._bump()
        self._flush_status()

    def revoke(self, certificate_id: str) -> None:
        """Mark a certificate REVOKED: the broker refuses it from its next connection or ACL check."""
        self.set_status(certificate_id, REVOKED)

    def certificate(self, certificate_id: str) -> Certificate | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, pem, status, created, updated, owner FROM certificates WHERE id=?",
                (certificate_id,),
            ).fetchone()
        return Certificate(*row) if row else None

    def status(self, certificate_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM certificates WHERE id=?", (certificate_id,)).fetchone()
        return row[0] if row else None

    def certificates(self) -> list[Certificate]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, pem, status, created, updated, owner FROM certificates ORDER BY created, id"
            ).fetchall()
        return [Certificate(*r) for r in rows]

    # -- ownership tokens -----------------------------------------------------------

    def check_token(self, token: object, *, requester: str | None = None) -> str:
        """Validate a token without using it; return its certificate id or raise TokenError."""
        with self._lock:
            return self._check_token(token, requester)

    def _check_token(self, token: object, requester: str | None) -> str:
        if not isinstance(token, str) or not token:
            raise TokenError("Certificate ownership token cannot be empty.")
        row = self._db.execute(
            "SELECT certificate_id, owner, expires, used FROM tokens WHERE hash=?",
            (_token_hash(token),),
        ).fetchone()
        if row is None:
            raise TokenError("Certificate ownership token is invalid.")
        certificate_id, owner, expires, used = row
        if used is not None:
            raise TokenError(
                "Certificate ownership token has already been used; call CreateKeysAndCertificate "
                "or CreateCertificateFromCsr for a new certificate and token."
            )
        if self.clock() >= expires:
            raise TokenError(
                "Certificate ownership token has expired; call CreateKeysAndCertificate or "
                "CreateCertificateFromCsr for a new certificate and token."
            )
        if requester is not None and owner is not None and requester != owner:
            raise TokenError(
                "Certificate ownership token was not issued to this client's certificate; "
                "RegisterThing must be called by the identity that created the certificate."
            )
        row = self._db.execute("SELECT status FROM certificates WHERE id=?", (certificate_id,)).fetchone()
        if row is None or row[0] != PENDING_ACTIVATION:
            raise TokenError(
                "Certificate ownership token refers to certificate {} which is {}, not "
                "PENDING_ACTIVATION.".format(certificate_id, row[0] if row else "deleted")
            )
        return certificate_id

    def consume_token(self, token: object, *, requester: str | None = None) -> str:
        """Use a token once: mark it used and return its certificate id (TokenError if refused)."""
        with self._tx() as db:
            certificate_id = self._check_token(token, requester)
            db.execute("UPDATE tokens SET used=? WHERE hash=?", (self.clock(), _token_hash(token)))  # type: ignore[arg-type]
        return certificate_id

    def register(
        self,
        token: object,
        *,
        requester: str | None,
        thing: ThingSpec | None,
        certificate_status: str,
        policies: Sequence[tuple[str, str | None]] = (),
        certificate_id: str | None = None,
    ) -> str:
        """RegisterThing's state change in one transaction.

        Consumes the token, creates or updates the thing (OverrideSettings),
        attaches the certificate to it and the policies to the certificate, and
        sets the certificate's status. Returns the certificate id. TokenError,
        ConflictError: nothing changed.
        """
        if certificate_status not in (ACTIVE, INACTIVE):
            raise ValueError(
                "certificate status must be ACTIVE or INACTIVE, got {!r}".format(certificate_status)
            )
        now = self.clock()
        with self._tx() as db:
            cid = self._check_token(token, requester)
            if certificate_id is not None and cid != certificate_id:
                raise TokenError(
                    "Certificate ownership token does not belong to certificate {}.".format(certificate_id)
                )
            db.execute("UPDATE tokens SET used=? WHERE hash=?", (now, _token_hash(token)))  # type: ignore[arg-type]
            if thing is not None:
                self._upsert_thing(db, thing, now)
                db.execute(
                    "INSERT OR IGNORE INTO thing_principals(thing, certificate_id) VALUES (?,?)",
                    (thing.name, cid),
                )
            for name, document in policies:
                db.execute(
                    "INSERT INTO policies(name, document) VALUES (?,?) ON CONFLICT(name) DO UPDATE "
                    "SET document=COALESCE(excluded.document, policies.document)",
                    (name, document),
                )
                db.execute(
                    "INSERT OR IGNORE INTO policy_attachments(policy, certificate_id) VALUES (?,?)",
                    (name, cid),
                )
            db.execute(
                "UPDATE certificates SET status=?, updated=? WHERE id=?", (certificate_status, now, cid)
            )
            self._set_line(cid, certificate_status)
            self._bump()
        self._flush_status()
        return cid

    def expire_pending(self) -> list[str]:
        """Delete certificates still PENDING_ACTIVATION whose tokens have all expired (as AWS)."""
        now = self.clock()
        with self._tx() as db:
            rows = db.execute(
                "SELECT c.id FROM certificates c WHERE c.status=? AND NOT EXISTS "
                "(SELECT 1 FROM tokens t WHERE t.certificate_id=c.id AND t.expires>?)",
                (PENDING_ACTIVATION, now),
            ).fetchall()
            gone = [r[0] for r in rows]
            for cid in gone:
                db.execute("DELETE FROM certificates WHERE id=?", (cid,))
                db.execute("DELETE FROM tokens WHERE certificate_id=?", (cid,))
                self._drop_line(cid)
            if gone:
                self._bump()
        if gone:
            self._flush_status()
        return gone

    # -- things ---------------------------------------------------------------------

    def _upsert_thing(self, db: sqlite3.Connection, spec: ThingSpec, now: float) -> None:
        row = db.execute(
            "SELECT attributes, thing_type, groups, billing_group FROM things WHERE name=?", (spec.name,)
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO things(name, attributes, thing_type, groups, billing_group, created, updated) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    spec.name,
                    json.dumps(spec.attributes, sort_keys=True),
                    spec.thing_type,
                    json.dumps(spec.groups),
                    spec.billing_group,
                    now,
                    now,
                ),
            )
            return
        current = {
            "AttributePayload": json.loads(row[0]),
            "ThingTypeName": row[1],
            "ThingGroups": json.loads(row[2]),
            "BillingGroup": row[3],
        }
        wanted = {
            "AttributePayload": spec.attributes,
            "ThingTypeName": spec.thing_type,
            "ThingGroups": spec.groups,
            "BillingGroup": spec.billing_group,
        }
        result = dict(current)
        for prop, new in wanted.items():
            # AWS leaves an existing thing alone unless OverrideSettings says otherwise.
            rule = spec.overrides.get(prop, "DO_NOTHING")
            if rule == "REPLACE":
                result[prop] = new
            elif rule == "MERGE":
                if prop == "AttributePayload":
                    result[prop] = {**current[prop], **new}
                else:
                    result[prop] = current[prop] + [g for g in new if g not in current[prop]]
            elif rule == "FAIL" and new != current[prop]:
                raise ConflictError(
                    "thing {} already exists with a different {} and the template's OverrideSettings "
                    "say FAIL".format(spec.name, prop)
                )
        db.execute(
            "UPDATE things SET attributes=?, thing_type=?, groups=?, billing_group=?, updated=? WHERE name=?",
            (
                json.dumps(result["AttributePayload"], sort_keys=True),
                result["ThingTypeName"],
                json.dumps(result["ThingGroups"]),
                result["BillingGroup"],
                now,
                spec.name,
            ),
        )

    def thing(self, name: str) -> Thing | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, attributes, thing_type, groups, billing_group, created, updated "
                "FROM things WHERE name=?",
                (name,),
            ).fetchone()
            if row is None:
                return None
            certs = [
                r[0]
                for r in self._db.execute(
                    "SELECT certificate_id FROM thing_principals WHERE thing=? ORDER BY certificate_id",
                    (name,),
                )
            ]
        return Thing(row[0], json.loads(row[1]), row[2], json.loads(row[3]), row[4], row[5], row[6], certs)

    def things(self) -> list[Thing]:
        with self._lock:
            names = [r[0] for r in self._db.execute("SELECT name FROM things ORDER BY created, name")]
        return [t for t in (self.thing(n) for n in names) if t is not None]

    def thing_of(self, certificate_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT thing FROM thing_principals WHERE certificate_id=?", (certificate_id,)
            ).fetchone()
        return row[0] if row else None

    def policies_of(self, certificate_id: str) -> list[tuple[str, str | None]]:
        with self._lock:
            return [
                (r[0], r[1])
                for r in self._db.execute(
                    "SELECT p.name, p.document FROM policy_attachments a JOIN policies p ON p.name=a.policy "
                    "WHERE a.certificate_id=? ORDER BY p.name",
                    (certificate_id,),
                )
            ]


def read_status_file(state: Path) -> dict[str, str]:
    """Parse ``<state>/certs.status`` (what the broker plugin sees)."""
    path = Path(state) / STATUS_FILE
    result: dict[str, str] = {}
    if not path.exists():
        return result
    for line in path.read_text(encoding="ascii").splitlines():
        if line.strip():
            cid, status = line.split()
            result[cid] = status
    return result
