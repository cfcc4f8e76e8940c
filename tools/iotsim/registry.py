"""iotsim's registry: certificates, things, policies, groups and ownership tokens in SQLite.

The database (``<state>/registry.sqlite3``, WAL mode) is the service's single
source of truth and survives restarts. The broker plugin never opens it: after
every change that concerns a certificate (its status, its policies, the things
it is attached to) the registry rewrites that certificate's *principal file*,
``<state>/principals/<2 chars>/<certificateId>`` (status plus compiled policy rules, see
tools/iotsim/policy.py), atomically (temporary file, rename). One change
rewrites one small file, so its cost does not depend on how many certificates
the registry holds.

Principal files are derived data and are not fsynced. The certificates a
transaction changes are recorded in the table ``principal_dirty`` inside that
transaction and removed once their files are written; every Registry writes
the files still listed there when it opens (``python -m tools.iotsim up``
does so before the broker starts), and all of them when the folder is missing.
A crash between a commit and its file write therefore never leaves a stale
file behind.

Ownership tokens are opaque random strings. Only their SHA-256 is stored, so
neither the database nor any log holds a usable token. A token expires
``token_ttl`` seconds after issue (AWS: one hour); a certificate still
PENDING_ACTIVATION when its token expires is deleted, as AWS does
(:meth:`Registry.expire_pending`). Whether a token is single use and whether
it is bound to the identity that asked for it are switches (AWS documents
neither; see docs/iotsim.md).

The resource functions (``create_resource``, ``create_policy``, ``put_thing``, ...)
are the control plane: the CLI and the HTTP API (controlplane.py) call them. Every
name and value they take, and every thing RegisterThing writes, is checked
against AWS's model first (shapes.py): ResourceError InvalidRequestException.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import policy as policy_mod
from . import shapes
from .templates import ThingSpec, check_thing

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

PRINCIPALS_DIR = "principals"
DB_FILE = "registry.sqlite3"
CLAIM_POLICY = "iotsim-claim-policy"

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
CREATE INDEX IF NOT EXISTS certificates_by_status ON certificates(status);
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
CREATE INDEX IF NOT EXISTS policy_attachments_by_certificate ON policy_attachments(certificate_id);
CREATE INDEX IF NOT EXISTS thing_principals_by_certificate ON thing_principals(certificate_id);
CREATE TABLE IF NOT EXISTS principal_dirty (
    certificate_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    properties TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
"""

# The control plane's additions (tools/iotsim/controlplane.py): temporary claims made by
# CreateProvisioningClaim and when the broker must stop accepting them.
_CONTROL_PLANE_SCHEMA = """
CREATE TABLE IF NOT EXISTS provisioning_claims (
    certificate_id TEXT PRIMARY KEY,
    template TEXT NOT NULL,
    expires REAL NOT NULL
);
"""

# Registry resources that must exist before a template may name them (AWS:
# CreateThingGroup, CreateThingType, CreateBillingGroup; policies have their own table).
THING_GROUP = "thing-group"
THING_TYPE = "thing-type"
BILLING_GROUP = "billing-group"
RESOURCE_KINDS = (THING_GROUP, THING_TYPE, BILLING_GROUP)
_NAME_SHAPES = {
    THING_GROUP: shapes.THING_GROUP_NAME,
    THING_TYPE: shapes.THING_TYPE_NAME,
    BILLING_GROUP: shapes.BILLING_GROUP_NAME,
}
# The certificate ids iotsim makes (lower-case SHA-256 hex): the only names a
# principal file may have, so no id can reach outside principals/.
_FILE_ID = re.compile(r"[0-9a-f]{64}\Z")


class TokenError(Exception):
    """An ownership token was refused; the message is AWS-like and never contains the token."""


class ConflictError(Exception):
    """A thing update hit an OverrideSettings FAIL."""


class ResourceError(Exception):
    """A control-plane request was refused; ``error_code`` is AWS's exception name."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code

    @property
    def message(self) -> str:
        return str(self)


def _new_certificate_id(certificate_id: object) -> None:
    if not isinstance(certificate_id, str) or not _FILE_ID.match(certificate_id):
        raise ResourceError(
            "InvalidRequestException",
            "a new certificate's id must be its SHA-256 in 64 lower-case hex characters, got {!r}".format(
                str(certificate_id)[:80]
            ),
        )


def _checked(shape: str, value: object, where: str) -> str:
    """``value`` if AWS's model allows it, else ResourceError InvalidRequestException."""
    try:
        return shapes.check(shape, value, where)
    except shapes.ShapeError as exc:
        raise ResourceError("InvalidRequestException", str(exc)) from None


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
    to move tokens past their expiry. ``single_use_tokens`` and
    ``tokens_bound_to_requester`` are iotsim's choices where AWS documents
    nothing (both on by default; ``up --token-reuse``/``--token-unbound``).
    """

    def __init__(
        self,
        state: Path,
        *,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        clock: Callable[[], float] = time.time,
        single_use_tokens: bool = True,
        tokens_bound_to_requester: bool = True,
    ) -> None:
        if token_ttl <= 0:
            raise ValueError("token_ttl must be positive seconds, got {}".format(token_ttl))
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.token_ttl = float(token_ttl)
        self.clock = clock
        self.single_use_tokens = single_use_tokens
        self.tokens_bound_to_requester = tokens_bound_to_requester
        self.db_path = self.state / DB_FILE
        self.principals_dir = self.state / PRINCIPALS_DIR
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of the process; only a power
        # cut can lose the last transactions. Good enough for a test endpoint.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # 32 MiB of page cache (default 2 MiB): a registry of 100k certificates
        # keeps its B-tree interior pages in memory, so a provision's lookups do
        # not go to the file whatever the registry's size.
        self._db.execute("PRAGMA cache_size=-32768")
        self._db.executescript(_SCHEMA)
        self._db.executescript(_CONTROL_PLANE_SCHEMA)
        self._closed = False
        self._parsed: dict[str, policy_mod.Policy] = {}  # policy document -> parsed
        if not self.principals_dir.is_dir():
            self.principals_dir.mkdir(parents=True, exist_ok=True)
            with self._tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO principal_dirty(certificate_id) SELECT id FROM certificates"
                )
        self.sync_principals()

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
                raise

    @staticmethod
    def _dirty(db: sqlite3.Connection, certificate_ids: Iterable[str]) -> None:
        """Record, inside the change's transaction, whose principal files must be rewritten."""
        db.executemany(
            "INSERT OR IGNORE INTO principal_dirty(certificate_id) VALUES (?)",
            [(c,) for c in certificate_ids],
        )

    def _parsed_policy(self, document: str) -> policy_mod.Policy | None:
        parsed = self._parsed.get(document)
        if parsed is None:
            try:
                parsed = policy_mod.parse_policy(document)
            except policy_mod.PolicyError:
                return None  # refused when created; a hand-edited database grants nothing
            if len(self._parsed) > 10000:
                self._parsed.clear()
            self._parsed[document] = parsed
        return parsed

    def principal_text(self, certificate_id: str) -> bytes | None:
        """The principal file for a certificate as of now; None when it does not exist."""
        with self._lock:
            row = self._db.execute("SELECT status FROM certificates WHERE id=?", (certificate_id,)).fetchone()
            if row is None:
                return None
            docs = [
                r[0]
                for r in self._db.execute(
                    "SELECT p.document FROM policy_attachments a JOIN policies p ON p.name=a.policy "
                    "WHERE a.certificate_id=? ORDER BY p.name",
                    (certificate_id,),
                )
                if r[0]
            ]
            things = [
                policy_mod.ThingContext(r[0], r[1], json.loads(r[2]))
                for r in self._db.execute(
                    "SELECT t.name, t.thing_type, t.attributes FROM thing_principals p JOIN things t "
                    "ON t.name=p.thing WHERE p.certificate_id=? ORDER BY t.name",
                    (certificate_id,),
                )
            ]
        policies = [p for p in (self._parsed_policy(d) for d in docs) if p is not None]
        return policy_mod.render_principal(row[0], policies, things)

    def sync_principals(self, certificate_ids: Iterable[str] | None = None) -> int:
        """Write the principal files of ``certificate_ids`` (None: every dirty one); returns how many."""
        # The lock file serialises writers across processes (the running service
        # and a CLI command): each file is rendered under the lock after its
        # writer's commit, so the last file written holds every committed change.
        with open(self.state / ".principals.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            with self._lock:
                if self._closed:
                    return 0
                if certificate_ids is None:
                    ids = [r[0] for r in self._db.execute("SELECT certificate_id FROM principal_dirty")]
                else:
                    ids = list(certificate_ids)
                for cid in ids:
                    if not _FILE_ID.match(cid):
                        continue  # never a certificate of iotsim's: no file to write
                    data = self.principal_text(cid)
                    path = principal_path(self.state, cid)
                    if data is None:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                    else:
                        self._write_file(path, data)
                self._db.executemany(
                    "DELETE FROM principal_dirty WHERE certificate_id=?", [(c,) for c in ids]
                )
        return len(ids)

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        # No fsync: see the module docstring (principal_dirty covers a crash).
        tmp = path.with_name(".{}.{}.tmp".format(path.name, secrets.token_hex(4)))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # the first certificate of its sub-folder
            path.parent.mkdir(exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
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
        _new_certificate_id(certificate_id)
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO certificates(id, pem, status, created, updated, owner) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET pem=excluded.pem, status=excluded.status, "
                "updated=excluded.updated",
                (certificate_id, pem, status, now, now, owner),
            )
            self._dirty(db, [certificate_id])
        self.sync_principals([certificate_id])

    def issue_certificate(self, certificate_id: str, pem: str, *, owner: str | None) -> str:
        """Record a new PENDING_ACTIVATION certificate and return its ownership token.

        ``owner`` is the certificateId of the connection that asked for it
        (the claim); the token only works for that identity.
        """
        token = base64.b64encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii")
        now = self.clock()
        row = (_token_hash(token), certificate_id, owner, now, now + self.token_ttl)
        self._new_certificate(
            certificate_id, pem, PENDING_ACTIVATION, owner,
            "INSERT INTO tokens(hash, certificate_id, owner, issued, expires) VALUES (?,?,?,?,?)", row,
        )
        return token

    def _new_certificate(
        self, certificate_id: str, pem: str, status: str, owner: str | None, also: str, row: tuple[object, ...]
    ) -> None:
        """Insert a certificate and, in the same transaction, ``also`` with ``row``."""
        _new_certificate_id(certificate_id)
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO certificates(id, pem, status, created, updated, owner) VALUES (?,?,?,?,?,?)",
                (certificate_id, pem, status, now, now, owner),
            )
            db.execute(also, row)
            self._dirty(db, [certificate_id])
        self.sync_principals([certificate_id])

    def set_status(self, certificate_id: str, status: str) -> None:
        if status not in STATUSES:
            raise ValueError("unknown certificate status {!r}; use one of {}".format(status, STATUSES))
        _checked(shapes.CERTIFICATE_ID, certificate_id, "certificateId")
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
            self._dirty(db, [certificate_id])
        self.sync_principals([certificate_id])

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
        if used is not None and self.single_use_tokens:
            raise TokenError(
                "Certificate ownership token has already been used; call CreateKeysAndCertificate "
                "or CreateCertificateFromCsr for a new certificate and token."
            )
        if self.clock() >= expires:
            raise TokenError(
                "Certificate ownership token has expired; call CreateKeysAndCertificate or "
                "CreateCertificateFromCsr for a new certificate and token."
            )
        if (
            self.tokens_bound_to_requester
            and requester is not None
            and owner is not None
            and requester != owner
        ):
            raise TokenError(
                "Certificate ownership token was not issued to this client's certificate; "
                "RegisterThing must be called by the identity that created the certificate."
            )
        row = self._db.execute("SELECT status FROM certificates WHERE id=?", (certificate_id,)).fetchone()
        reusable = used is not None and row is not None and row[0] in (ACTIVE, INACTIVE)
        if row is None or (row[0] != PENDING_ACTIVATION and not reusable):
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
            dirty = [cid]
            if thing is not None:
                db.execute(
                    "INSERT OR IGNORE INTO thing_principals(thing, certificate_id) VALUES (?,?)",
                    (thing.name, cid),
                )
                dirty += self._write_thing(db, thing, now)
            for name, document in policies:
                if document is None:
                    if db.execute("SELECT 1 FROM policies WHERE name=?", (name,)).fetchone() is None:
                        raise ResourceError(
                            "ResourceNotFoundException",
                            "Policy {} does not exist; create it first (python -m tools.iotsim "
                            "create-policy {} FILE)".format(name, name),
                        )
                else:
                    try:
                        policy_mod.parse_policy(document)
                    except policy_mod.PolicyError as exc:
                        raise ResourceError(exc.error_code, "policy {}: {}".format(name, exc)) from None
                    row = db.execute("SELECT document FROM policies WHERE name=?", (name,)).fetchone()
                    if row is None:
                        db.execute("INSERT INTO policies(name, document) VALUES (?,?)", (name, document))
                    elif row[0] != document:
                        # A template's inline policy changed: every certificate it is
                        # attached to gets the new rules (the usual case, the same
                        # document again, rewrites nothing).
                        db.execute("UPDATE policies SET document=? WHERE name=?", (document, name))
                        dirty += [
                            r[0]
                            for r in db.execute(
                                "SELECT certificate_id FROM policy_attachments WHERE policy=?", (name,)
                            )
                        ]
                db.execute(
                    "INSERT OR IGNORE INTO policy_attachments(policy, certificate_id) VALUES (?,?)",
                    (name, cid),
                )
            db.execute(
                "UPDATE certificates SET status=?, updated=? WHERE id=?", (certificate_status, now, cid)
            )
            dirty = list(dict.fromkeys(dirty))
            self._dirty(db, dirty)
        self.sync_principals(dirty)
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
            self._dirty(db, gone)
        if gone:
            self.sync_principals(gone)
        return gone

    # -- control plane: resources that must exist -------------------------------------

    def _check_thing_resources(self, db: sqlite3.Connection, thing: ThingSpec) -> None:
        """AWS refuses a thing that names a group, type or billing group that does not exist."""
        wanted = [(THING_GROUP, g) for g in thing.groups]
        if thing.thing_type:
            wanted.append((THING_TYPE, thing.thing_type))
        if thing.billing_group:
            wanted.append((BILLING_GROUP, thing.billing_group))
        for kind, name in wanted:
            if db.execute("SELECT 1 FROM resources WHERE kind=? AND name=?", (kind, name)).fetchone() is None:
                raise ResourceError(
                    "ResourceNotFoundException",
                    "The {} {} does not exist; create it first (python -m tools.iotsim create-{} {})".format(
                        kind.replace("-", " "), name, kind, name
                    ),
                )

    def create_resource(self, kind: str, name: str, properties: dict[str, object] | None = None) -> bool:
        """CreateThingGroup / CreateThingType / CreateBillingGroup; False when it already existed."""
        if kind not in RESOURCE_KINDS:
            raise ValueError("unknown resource kind {!r}; use one of {}".format(kind, RESOURCE_KINDS))
        _checked(_NAME_SHAPES[kind], name, _NAME_SHAPES[kind][0].lower() + _NAME_SHAPES[kind][1:])
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO resources(kind, name, properties, created) VALUES (?,?,?,?)",
                (kind, name, json.dumps(properties or {}, sort_keys=True), self.clock()),
            )
            return cur.rowcount == 1

    def resources(self, kind: str) -> list[str]:
        with self._lock:
            return [
                r[0]
                for r in self._db.execute("SELECT name FROM resources WHERE kind=? ORDER BY name", (kind,))
            ]

    def create_policy(self, name: str, document: str) -> None:
        """CreatePolicy: a named policy (ResourceError if it exists or is malformed)."""
        _checked(shapes.POLICY_NAME, name, "policyName")
        try:
            policy_mod.parse_policy(document)
        except policy_mod.PolicyError as exc:
            raise ResourceError(exc.error_code, str(exc)) from None
        with self._tx() as db:
            if db.execute("SELECT 1 FROM policies WHERE name=?", (name,)).fetchone() is not None:
                raise ResourceError("ResourceAlreadyExistsException", "Policy {} already exists".format(name))
            db.execute("INSERT INTO policies(name, document) VALUES (?,?)", (name, document))

    def attach_policy(self, name: str, certificate_id: str) -> None:
        """AttachPolicy to a certificate; the broker applies it from the connection's next check."""
        self._link("policy", name, certificate_id, attach=True)

    def detach_policy(self, name: str, certificate_id: str) -> None:
        self._link("policy", name, certificate_id, attach=False)

    # (kind) -> (table of the named resource, link table, its column, what AWS calls it)
    _LINKS = {
        "policy": ("policies", "policy_attachments", "policy", "Policy"),
        "thing": ("things", "thing_principals", "thing", "Thing"),
    }

    def _link(self, kind: str, name: str, certificate_id: str, *, attach: bool) -> None:
        """Attach (or detach) a certificate to a policy or a thing; both must exist."""
        owners, table, column, label = self._LINKS[kind]
        _checked(shapes.POLICY_NAME if kind == "policy" else shapes.THING_NAME, name, column + "Name")
        _checked(shapes.CERTIFICATE_ID, certificate_id, "certificateId")
        with self._tx() as db:
            for sql, value, what in (
                ("SELECT 1 FROM {} WHERE name=?".format(owners), name, "{} {}".format(label, name)),
                ("SELECT 1 FROM certificates WHERE id=?", certificate_id, "Certificate " + certificate_id),
            ):
                if db.execute(sql, (value,)).fetchone() is None:
                    raise ResourceError("ResourceNotFoundException", "{} does not exist".format(what))
            if attach:
                sql = "INSERT OR IGNORE INTO {}({}, certificate_id) VALUES (?,?)"
            else:
                sql = "DELETE FROM {} WHERE {}=? AND certificate_id=?"
            db.execute(sql.format(table, column), (name, certificate_id))
            self._dirty(db, [certificate_id])
        self.sync_principals([certificate_id])

    def policies(self) -> list[tuple[str, str | None, int]]:
        """(name, document, number of certificates it is attached to), by name."""
        with self._lock:
            return [
                (r[0], r[1], r[2])
                for r in self._db.execute(
                    "SELECT p.name, p.document, (SELECT COUNT(*) FROM policy_attachments a WHERE a.policy=p.name) "
                    "FROM policies p ORDER BY p.name"
                )
            ]

    # -- things ---------------------------------------------------------------------

    def put_thing(self, spec: ThingSpec) -> None:
        """CreateThing / UpdateThing: the thing as ``spec`` says (OverrideSettings apply to
        an existing one); the certificates attached to it see the new attributes."""
        now = self.clock()
        with self._tx() as db:
            dirty = self._write_thing(db, spec, now)
        self.sync_principals(dirty)

    def _write_thing(self, db: sqlite3.Connection, spec: ThingSpec, now: float) -> list[str]:
        """Check, create or update a thing; the certificates whose principal files it changes."""
        try:
            check_thing(spec)
        except shapes.ShapeError as exc:
            raise ResourceError("InvalidRequestException", str(exc)) from None
        self._check_thing_resources(db, spec)
        self._upsert_thing(db, spec, now)
        # The thing's attributes may have changed: every certificate attached
        # to it sees them through the thing policy variables.
        rows = db.execute("SELECT certificate_id FROM thing_principals WHERE thing=?", (spec.name,))
        dirty = [r[0] for r in rows]
        self._dirty(db, dirty)
        return dirty

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
        try:  # a MERGE may add up to more attributes than AWS allows
            shapes.check_attributes(result["AttributePayload"], result["ThingTypeName"] is not None)
        except shapes.ShapeError as exc:
            raise ResourceError("InvalidRequestException", str(exc)) from None
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

    # -- control plane API (tools/iotsim/controlplane.py) -------------------------------

    def resource(self, kind: str, name: str) -> tuple[dict[str, object], float] | None:
        """(properties, creation time) of a thing group / thing type / billing group, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT properties, created FROM resources WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def delete_resource(self, kind: str, name: str) -> bool:
        """DeleteThingGroup / DeleteThingType; False when it did not exist."""
        with self._tx() as db:
            return db.execute("DELETE FROM resources WHERE kind=? AND name=?", (kind, name)).rowcount == 1

    def policy(self, name: str) -> str | None:
        """A named policy's document, None when there is no such policy."""
        with self._lock:
            row = self._db.execute("SELECT document FROM policies WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def delete_policy(self, name: str) -> None:
        """DeletePolicy: AWS refuses while the policy is attached (DeleteConflictException)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM policies WHERE name=?", (name,)).fetchone() is None:
                raise ResourceError("ResourceNotFoundException", "Policy {} does not exist".format(name))
            if db.execute("SELECT 1 FROM policy_attachments WHERE policy=?", (name,)).fetchone():
                raise ResourceError(
                    "DeleteConflictException",
                    "The policy cannot be deleted as the policy is attached to one or more principals "
                    "(name={})".format(name),
                )
            db.execute("DELETE FROM policies WHERE name=?", (name,))

    def delete_certificate(self, certificate_id: str, *, force: bool = False) -> None:
        """DeleteCertificate: AWS wants it INACTIVE (or REVOKED) and, unless forced, unattached."""
        _checked(shapes.CERTIFICATE_ID, certificate_id, "certificateId")
        with self._tx() as db:
            row = db.execute("SELECT status FROM certificates WHERE id=?", (certificate_id,)).fetchone()
            if row is None:
                raise ResourceError(
                    "ResourceNotFoundException", "Certificate {} does not exist".format(certificate_id)
                )
            if row[0] not in (INACTIVE, REVOKED, PENDING_ACTIVATION):
                raise ResourceError(
                    "CertificateStateException",
                    "Certificate must be deactivated (not ACTIVE) before deletion. Id: {}".format(
                        certificate_id
                    ),
                )
            things = db.execute(
                "SELECT 1 FROM thing_principals WHERE certificate_id=?", (certificate_id,)
            ).fetchone()
            policies = db.execute(
                "SELECT 1 FROM policy_attachments WHERE certificate_id=?", (certificate_id,)
            ).fetchone()
            if (things or policies) and not force:
                raise ResourceError(
                    "DeleteConflictException",
                    "Certificate {} is attached to {}; detach it or use forceDelete".format(
                        certificate_id, "things" if things else "policies"
                    ),
                )
            for table in ("thing_principals", "policy_attachments", "tokens", "provisioning_claims"):
                db.execute("DELETE FROM {} WHERE certificate_id=?".format(table), (certificate_id,))
            db.execute("DELETE FROM certificates WHERE id=?", (certificate_id,))
            self._dirty(db, [certificate_id])
        self.sync_principals([certificate_id])

    def attach_thing_principal(self, thing: str, certificate_id: str) -> None:
        self._link("thing", thing, certificate_id, attach=True)

    def detach_thing_principal(self, thing: str, certificate_id: str) -> None:
        self._link("thing", thing, certificate_id, attach=False)

    def delete_thing(self, name: str) -> bool:
        """DeleteThing; AWS refuses while principals are attached. False when it did not exist."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM things WHERE name=?", (name,)).fetchone() is None:
                return False
            if db.execute("SELECT 1 FROM thing_principals WHERE thing=?", (name,)).fetchone():
                raise ResourceError(
                    "InvalidRequestException",
                    "Cannot delete. Thing {} is still attached to one or more principals".format(name),
                )
            db.execute("DELETE FROM things WHERE name=?", (name,))
        return True

    def add_provisioning_claim(self, certificate_id: str, pem: str, template: str, expires: float) -> None:
        """A temporary claim (CreateProvisioningClaim): status CLAIM until ``expires``."""
        self._new_certificate(
            certificate_id, pem, CLAIM, None,
            "INSERT INTO provisioning_claims(certificate_id, template, expires) VALUES (?,?,?)",
            (certificate_id, template, expires),
        )

    def provisioning_claim(self, certificate_id: str) -> tuple[str, float] | None:
        """(template, expiry) of a temporary claim, None for any other certificate."""
        with self._lock:
            row = self._db.execute(
                "SELECT template, expires FROM provisioning_claims WHERE certificate_id=?", (certificate_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def expire_provisioning_claims(self) -> list[str]:
        """Set temporary claims past their expiry INACTIVE: the broker refuses them from then on."""
        now = self.clock()
        with self._tx() as db:
            gone = [
                r[0]
                for r in db.execute(
                    "SELECT p.certificate_id FROM provisioning_claims p JOIN certificates c "
                    "ON c.id=p.certificate_id WHERE p.expires<=? AND c.status=?",
                    (now, CLAIM),
                )
            ]
            for cid in gone:
                db.execute("UPDATE certificates SET status=?, updated=? WHERE id=?", (INACTIVE, now, cid))
            self._dirty(db, gone)
        if gone:
            self.sync_principals(gone)
        return gone


def principal_path(state: Path, certificate_id: str) -> Path:
    """``<state>/principals/<first two characters>/<certificateId>``.

    256 sub-folders: creating and renaming a file in one folder of 100,000
    entries costs the file system twice what it costs in a small folder, so a
    flat folder would make every status change dearer as the registry grows.
    ValueError for anything but 64 lower-case hex characters.
    """
    if not _FILE_ID.match(certificate_id):
        raise ValueError("{!r} is not a certificate id (64 lower-case hex)".format(certificate_id[:80]))
    return Path(state) / PRINCIPALS_DIR / certificate_id[:2] / certificate_id


def read_status_file(state: Path) -> dict[str, str]:
    """Every certificate's status as the broker plugin sees it (its principal files)."""
    folder = Path(state) / PRINCIPALS_DIR
    result: dict[str, str] = {}
    if not folder.is_dir():
        return result
    for path in folder.glob("*/*"):
        if path.name.startswith("."):
            continue
        with contextlib.suppress(OSError, ValueError):
            result[path.name] = policy_mod.parse_principal(path.read_bytes())[0]
    return result
