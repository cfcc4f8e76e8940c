"""iotsim's registry: persistence, principal files, ownership tokens, things and resources."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from tools.iotsim.registry import (
    ACTIVE,
    BILLING_GROUP,
    CLAIM,
    PRINCIPALS_DIR,
    THING_GROUP,
    THING_TYPE,
    INACTIVE,
    PENDING_ACTIVATION,
    REVOKED,
    ConflictError,
    Registry,
    ResourceError,
    TokenError,
    principal_path,
    read_status_file,
)
from tools.iotsim.policy import CONNECT, PUBLISH, allowed, parse_principal
from tools.iotsim.templates import ThingSpec

# Connect as the thing; publish under the thing's attribute "a".
DOC = (
    '{"Version": "2012-10-17", "Statement": ['
    '{"Effect": "Allow", "Action": "iot:Connect", '
    '"Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"}, '
    '{"Effect": "Allow", "Action": "iot:Publish", '
    '"Resource": "arn:aws:iot:*:*:topic/t/${iot:Connection.Thing.Attributes[a]}/*"}]}'
)

CLAIM_ID = "c1" * 32
OTHER_CLAIM = "c2" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def cid(n: int) -> str:
    return "{:064x}".format(n)


def provision(reg: Registry, n: int, thing: ThingSpec | None, document: str = DOC, policy: str = "P") -> str:
    """Certificate cid(n), issued to the claim and registered ACTIVE with that thing and
    policy; returns its (now used) ownership token."""
    token = reg.issue_certificate(cid(n), "PEM-{}".format(n), owner=CLAIM_ID)
    reg.register(token, requester=CLAIM_ID, thing=thing, certificate_status=ACTIVE, policies=[(policy, document)])
    return token


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(tmp_path: Path, clock: Clock) -> Registry:
    r = Registry(tmp_path, token_ttl=3600, clock=clock)
    yield r
    r.close()


def test_registry_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    with Registry(tmp_path, clock=clock) as r:
        r.add_certificate(CLAIM_ID, "PEM-claim", CLAIM)
        token = provision(r, 1, ThingSpec("t1", {"a": "1"}))
    with Registry(tmp_path, clock=clock) as again:
        assert again.status(cid(1)) == ACTIVE
        assert again.status(CLAIM_ID) == CLAIM
        thing = again.thing("t1")
        assert thing is not None and thing.attributes == {"a": "1"} and thing.certificates == [cid(1)]
        assert again.policies_of(cid(1)) == [("P", DOC)]
        with pytest.raises(TokenError, match="already been used"):
            again.consume_token(token)


def test_status_file_lists_every_certificate_after_each_change(reg: Registry, tmp_path: Path) -> None:
    reg.add_certificate(CLAIM_ID, "PEM", CLAIM)
    assert read_status_file(tmp_path) == {CLAIM_ID: CLAIM}
    token = reg.issue_certificate(cid(1), "PEM-1", owner=CLAIM_ID)
    assert read_status_file(tmp_path)[cid(1)] == PENDING_ACTIVATION
    reg.register(token, requester=CLAIM_ID, thing=None, certificate_status=ACTIVE)
    assert read_status_file(tmp_path)[cid(1)] == ACTIVE
    reg.revoke(cid(1))
    assert read_status_file(tmp_path)[cid(1)] == REVOKED


def principal(tmp_path: Path, certificate_id: str) -> tuple[str, dict]:
    return parse_principal(principal_path(tmp_path, certificate_id).read_bytes())


def test_principal_file_holds_the_status_and_the_compiled_policy_per_thing(
    reg: Registry, tmp_path: Path
) -> None:
    reg.add_certificate(cid(2), "PEM", ACTIVE)
    assert principal_path(tmp_path, cid(2)) == tmp_path / PRINCIPALS_DIR / cid(2)[:2] / cid(2)
    assert principal_path(tmp_path, cid(2)).read_text() == "iotsim-principal 2\nstatus ACTIVE\ndefault\n"
    provision(reg, 1, ThingSpec("t1", {"a": "x"}))
    status, sections = principal(tmp_path, cid(1))
    assert status == ACTIVE
    assert sections[None] == []  # thing variables unresolved: nothing is allowed
    rules = sections["t1"]
    assert allowed(rules, CONNECT, "arn:aws:iot:local:000000000000:client/t1", "t1")
    assert not allowed(rules, CONNECT, "arn:aws:iot:local:000000000000:client/t2", "t2")
    assert allowed(rules, PUBLISH, "arn:aws:iot:local:000000000000:topic/t/x/y", "t1")
    assert not allowed(rules, PUBLISH, "arn:aws:iot:local:000000000000:topic/t/z/y", "t1")
    assert not [p for p in (tmp_path / PRINCIPALS_DIR).glob("*/*") if p.name.endswith(".tmp")]


def test_a_status_change_rewrites_one_file_whatever_the_registry_size(reg: Registry) -> None:
    for n in range(300):
        reg.add_certificate(cid(n), "PEM", ACTIVE)
    written: list[Path] = []
    write = reg._write_file

    def counting(path: Path, data: bytes) -> None:
        written.append(path)
        write(path, data)

    reg._write_file = counting  # type: ignore[method-assign]
    reg.revoke(cid(7))
    assert [p.name for p in written] == [cid(7)]


def test_registering_with_an_unchanged_inline_policy_rewrites_one_file(reg: Registry) -> None:
    def register(n: int, document: str) -> None:
        provision(reg, n, ThingSpec("t{}".format(n)), document, "Inline")

    for n in range(40):
        register(n, DOC)
    written: list[str] = []
    write = reg._write_file

    def counting(path: Path, data: bytes) -> None:
        written.append(path.name)
        write(path, data)

    reg._write_file = counting  # type: ignore[method-assign]
    register(40, DOC)
    assert written == [cid(40), cid(40)]  # issued (PENDING_ACTIVATION), then registered
    written.clear()
    changed = DOC.replace("iot:Publish", "iot:Receive")
    register(41, changed)  # a changed document reaches every certificate it is attached to
    assert len(set(written)) == 42


def test_a_file_lost_between_commit_and_write_is_written_at_the_next_open(
    tmp_path: Path, clock: Clock
) -> None:
    with Registry(tmp_path, clock=clock) as r:
        r.add_certificate(cid(1), "PEM", ACTIVE)

        def crash(path: Path, data: bytes) -> None:
            raise OSError("simulated crash before the file was written")

        r._write_file = crash  # type: ignore[method-assign]
        with pytest.raises(OSError):
            r.revoke(cid(1))
        assert r.status(cid(1)) == REVOKED
        assert read_status_file(tmp_path)[cid(1)] == ACTIVE  # stale, but recorded as dirty
    with Registry(tmp_path, clock=clock):
        assert read_status_file(tmp_path)[cid(1)] == REVOKED


def test_a_missing_principals_folder_is_regenerated_whole(tmp_path: Path, clock: Clock) -> None:
    with Registry(tmp_path, clock=clock) as r:
        r.add_certificate(cid(1), "PEM", ACTIVE)
        r.add_certificate(cid(2), "PEM", CLAIM)
    shutil.rmtree(tmp_path / PRINCIPALS_DIR)
    with Registry(tmp_path, clock=clock):
        assert read_status_file(tmp_path) == {cid(1): ACTIVE, cid(2): CLAIM}


def test_a_second_registry_on_the_same_state_sees_and_publishes_a_revoke(
    tmp_path: Path, clock: Clock
) -> None:
    # The CLI's `revoke` opens its own Registry while the service runs.
    with Registry(tmp_path, clock=clock) as service, Registry(tmp_path, clock=clock) as cli:
        service.add_certificate(cid(1), "PEM", ACTIVE)
        cli.revoke(cid(1))
        assert read_status_file(tmp_path)[cid(1)] == REVOKED
        service.add_certificate(cid(2), "PEM", ACTIVE)  # the service rewrites the file
        assert read_status_file(tmp_path) == {cid(1): REVOKED, cid(2): ACTIVE}


def test_concurrent_status_changes_all_reach_the_status_file(reg: Registry, tmp_path: Path) -> None:
    def work(base: int) -> None:
        for i in range(25):
            reg.add_certificate(cid(base + i), "PEM", ACTIVE)

    threads = [threading.Thread(target=work, args=(b * 100,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(read_status_file(tmp_path)) == 100


def test_revoking_an_unknown_certificate_names_it(reg: Registry) -> None:
    with pytest.raises(KeyError, match=cid(9)):
        reg.revoke(cid(9))


def test_token_is_opaque_long_and_single_use(reg: Registry) -> None:
    token = reg.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
    assert len(token) >= 400 and cid(1) not in token
    assert reg.consume_token(token, requester=CLAIM_ID) == cid(1)
    with pytest.raises(TokenError, match="already been used"):
        reg.consume_token(token, requester=CLAIM_ID)


def test_token_is_not_stored_in_the_database(reg: Registry, tmp_path: Path) -> None:
    token = reg.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
    reg.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert token.encode() not in blob
    assert token[:40].encode() not in blob


@pytest.mark.parametrize("bad", [None, "", 5, "not-a-token"])
def test_missing_empty_wrong_type_or_unknown_tokens_are_refused(reg: Registry, bad: object) -> None:
    reg.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
    with pytest.raises(TokenError) as err:
        reg.consume_token(bad, requester=CLAIM_ID)
    expected = "cannot be empty" if bad in (None, "", 5) else "invalid"
    assert expected in str(err.value)


def test_token_expires_after_its_ttl(reg: Registry, clock: Clock) -> None:
    token = reg.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
    clock.now += 3599
    assert reg.check_token(token, requester=CLAIM_ID) == cid(1)
    clock.now += 1
    with pytest.raises(TokenError, match="expired"):
        reg.consume_token(token, requester=CLAIM_ID)


def test_token_ttl_is_configurable(tmp_path: Path, clock: Clock) -> None:
    with Registry(tmp_path, token_ttl=5, clock=clock) as r:
        token = r.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
        clock.now += 5
        with pytest.raises(TokenError, match="expired"):
            r.check_token(token)


def test_token_is_bound_to_the_identity_that_created_the_certificate(reg: Registry) -> None:
    token = reg.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
    with pytest.raises(TokenError, match="not issued to this client"):
        reg.consume_token(token, requester=OTHER_CLAIM)
    assert reg.consume_token(token, requester=CLAIM_ID) == cid(1)


def test_token_is_bound_to_its_certificate(reg: Registry) -> None:
    token1 = reg.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
    reg.issue_certificate(cid(2), "PEM", owner=CLAIM_ID)
    with pytest.raises(TokenError, match=cid(2)):
        reg.register(token1, requester=CLAIM_ID, thing=None, certificate_status=ACTIVE, certificate_id=cid(2))
    assert reg.status(cid(2)) == PENDING_ACTIVATION
    assert reg.register(token1, requester=CLAIM_ID, thing=None, certificate_status=ACTIVE) == cid(1)
    assert reg.status(cid(1)) == ACTIVE and reg.status(cid(2)) == PENDING_ACTIVATION


def test_token_of_a_revoked_certificate_is_refused(reg: Registry) -> None:
    token = reg.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
    reg.revoke(cid(1))
    with pytest.raises(TokenError, match="REVOKED"):
        reg.consume_token(token)


def test_expired_pending_certificates_are_deleted_as_aws_does(
    reg: Registry, clock: Clock, tmp_path: Path
) -> None:
    stale = reg.issue_certificate(cid(1), "PEM", owner=CLAIM_ID)
    used = reg.issue_certificate(cid(2), "PEM", owner=CLAIM_ID)
    reg.register(used, requester=CLAIM_ID, thing=None, certificate_status=INACTIVE)
    clock.now += 3600
    assert reg.expire_pending() == [cid(1)]
    assert reg.certificate(cid(1)) is None
    assert reg.status(cid(2)) == INACTIVE
    assert cid(1) not in read_status_file(tmp_path)
    with pytest.raises(TokenError):
        reg.consume_token(stale)


def register_thing(reg: Registry, n: int, spec: ThingSpec) -> None:
    for group in spec.groups:
        reg.create_resource(THING_GROUP, group)
    if spec.thing_type:
        reg.create_resource(THING_TYPE, spec.thing_type)
    token = reg.issue_certificate(cid(n), "PEM", owner=CLAIM_ID)
    reg.register(token, requester=CLAIM_ID, thing=spec, certificate_status=ACTIVE)


def test_existing_thing_is_left_alone_without_override_settings(reg: Registry) -> None:
    register_thing(reg, 1, ThingSpec("t", {"a": "1"}, "typeA", ["g1"]))
    register_thing(reg, 2, ThingSpec("t", {"b": "2"}, "typeB", ["g2"]))
    thing = reg.thing("t")
    assert thing is not None
    assert (thing.attributes, thing.thing_type, thing.groups) == ({"a": "1"}, "typeA", ["g1"])
    assert thing.certificates == [cid(1), cid(2)]


def test_override_settings_merge_and_replace(reg: Registry) -> None:
    register_thing(reg, 1, ThingSpec("t", {"a": "1", "k": "old"}, "typeA", ["g1"]))
    overrides = {"AttributePayload": "MERGE", "ThingGroups": "MERGE", "ThingTypeName": "REPLACE"}
    register_thing(reg, 2, ThingSpec("t", {"k": "new"}, "typeB", ["g2"], overrides=overrides))
    thing = reg.thing("t")
    assert thing is not None
    assert thing.attributes == {"a": "1", "k": "new"}
    assert thing.groups == ["g1", "g2"]
    assert thing.thing_type == "typeB"


def test_override_fail_refuses_a_change_and_leaves_the_token_usable(reg: Registry) -> None:
    register_thing(reg, 1, ThingSpec("t", {"a": "1"}))
    token = reg.issue_certificate(cid(2), "PEM", owner=CLAIM_ID)
    spec = ThingSpec("t", {"a": "2"}, overrides={"AttributePayload": "FAIL"})
    with pytest.raises(ConflictError, match="AttributePayload"):
        reg.register(token, requester=CLAIM_ID, thing=spec, certificate_status=ACTIVE)
    assert reg.status(cid(2)) == PENDING_ACTIVATION
    assert reg.check_token(token) == cid(2)


def test_things_lists_every_thing_with_its_certificates(reg: Registry) -> None:
    register_thing(reg, 1, ThingSpec("one"))
    register_thing(reg, 2, ThingSpec("two"))
    assert [(t.name, t.certificates) for t in reg.things()] == [("one", [cid(1)]), ("two", [cid(2)])]
    assert reg.thing_of(cid(2)) == "two"


def test_principal_files_equal_the_database_after_mixed_changes(
    reg: Registry, clock: Clock, tmp_path: Path
) -> None:
    tokens = {n: reg.issue_certificate(cid(n), "PEM", owner=CLAIM_ID) for n in (7, 3, 9, 1, 5)}
    reg.register(tokens[3], requester=CLAIM_ID, thing=None, certificate_status=ACTIVE)
    reg.revoke(cid(9))
    reg.add_certificate(cid(4), "PEM", CLAIM)
    clock.now += 3600
    assert sorted(reg.expire_pending()) == [cid(1), cid(5), cid(7)]
    files = {p.name: p.read_bytes() for p in (tmp_path / PRINCIPALS_DIR).glob("*/*")}
    assert read_status_file(tmp_path) == {cid(3): ACTIVE, cid(4): CLAIM, cid(9): REVOKED}
    assert files == {c: reg.principal_text(c) for c in (cid(3), cid(4), cid(9))}


def test_a_rolled_back_status_change_never_reaches_a_principal_file(reg: Registry, tmp_path: Path) -> None:
    reg.add_certificate(cid(1), "PEM", ACTIVE)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with reg._tx() as db:
            db.execute("UPDATE certificates SET status=? WHERE id=?", (REVOKED, cid(1)))
            reg._dirty(db, [cid(1)])
            raise Boom
    reg.sync_principals()
    assert read_status_file(tmp_path) == {cid(1): ACTIVE}


def test_resources_must_exist_before_a_thing_names_them(reg: Registry) -> None:
    for n, (spec, missing) in enumerate(
        (
            (ThingSpec("t", groups=["g"]), "thing group g"),
            (ThingSpec("t", thing_type="ty"), "thing type ty"),
            (ThingSpec("t", billing_group="b"), "billing group b"),
        )
    ):
        token = reg.issue_certificate(cid(n), "PEM", owner=CLAIM_ID)
        with pytest.raises(ResourceError, match=missing + " does not exist"):
            reg.register(token, requester=CLAIM_ID, thing=spec, certificate_status=ACTIVE)
        assert reg.status(cid(n)) == PENDING_ACTIVATION and reg.thing("t") is None
    assert reg.create_resource(THING_GROUP, "g") is True
    assert reg.create_resource(THING_GROUP, "g") is False  # idempotent, as AWS for equal properties
    assert reg.create_resource(BILLING_GROUP, "b") is True
    assert reg.resources(THING_GROUP) == ["g"]
    with pytest.raises(ResourceError, match="failed to satisfy constraint"):
        reg.create_resource(THING_GROUP, "bad name")


def test_named_policies_are_validated_and_unique(reg: Registry) -> None:
    reg.create_policy("P", DOC)
    with pytest.raises(ResourceError, match="already exists"):
        reg.create_policy("P", DOC)
    with pytest.raises(ResourceError, match="Effect must be Allow or Deny"):
        reg.create_policy(
            "Bad",
            json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}
            ),
        )
    with pytest.raises(ResourceError, match="does not support the policy variable"):
        reg.create_policy(
            "Var",
            json.dumps(
                {
                    "Statement": {
                        "Effect": "Allow",
                        "Action": "iot:*",
                        "Resource": "${iot:Certificate.Subject.CommonName}",
                    }
                }
            ),
        )
    with pytest.raises(ResourceError, match="Policy Missing does not exist"):
        reg.attach_policy("Missing", cid(1))
    assert [(name, n) for name, _, n in reg.policies()] == [("P", 0)]
