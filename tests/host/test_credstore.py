"""lib/credstore.py and lib/der.py on CPython: PEM to DER, key matching, atomic
commit, and recovery from every kind of damaged file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boot_steps
import credstore
import credwrite
import csr
import der
import p256
from pem import pem_to_der
import pytest
from credstore import Store, StoreError
from cryptography.hazmat.primitives import serialization
from devicepki import ca_der, commit, ec_identity, factory_flash, rsa_identity
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture
def flash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder as the board's flash, with the shipped claim files."""
    monkeypatch.chdir(tmp_path)
    factory_flash(tmp_path)
    return tmp_path


def shipped(flash: Path) -> dict[str, bytes]:
    return {n: (flash / "certs" / n).read_bytes() for n in ("claim.der", "claim.key.der", "ca.der")}


def identity_files(certificate_id: str) -> tuple[str, str]:
    """The names a committed identity's certificate and key get (lib/credstore.py)."""
    stem = credstore.IDENTITY + certificate_id[:16]
    return stem + ".crt.der", stem + ".key.der"


def names_in(flash: Path) -> list[str]:
    return sorted(p.name for p in (flash / "certs").iterdir())


# -- PEM to DER -------------------------------------------------------------------


def test_pem_certificate_converts_to_the_same_der_bytes() -> None:
    ident = rsa_identity()
    assert pem_to_der(ident.cert_pem, "CERTIFICATE") == ident.cert_der


def test_pem_with_crlf_line_ends_converts_like_lf() -> None:
    ident = rsa_identity()
    assert pem_to_der(ident.cert_pem.replace("\n", "\r\n"), "CERTIFICATE") == ident.cert_der


def test_pem_rsa_private_key_block_converts_as_a_private_key() -> None:
    ident = rsa_identity()
    pem = ident.key_pem("pkcs1")
    assert pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert pem_to_der(pem, "PRIVATE KEY") == ident.key_der("pkcs1")


def test_pem_bytes_input_is_accepted() -> None:
    ident = ec_identity()
    assert pem_to_der(ident.cert_pem.encode(), "CERTIFICATE") == ident.cert_der


@pytest.mark.parametrize(
    "mangle, words",
    [
        (lambda p: p.replace("-----BEGIN CERTIFICATE-----", ""), "no '-----BEGIN'"),
        (lambda p: p.replace("-----END CERTIFICATE-----", ""), "no matching"),
        (lambda p: p[:40] + "!" + p[41:], "base64"),
        (lambda p: p[:40] + "\x00\x00\x00\x00" + p[40:], "not base64"),
        (lambda p: p[:60] + p[61:], "base64"),  # one character gone: length no longer a multiple of 4
        (lambda p: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not valid DER"),
        (lambda p: "-----BEGIN CERTIFICATE-----\nMAA=\n-----END", "no matching"),
        (lambda p: "garbage", "no '-----BEGIN'"),
        (lambda p: "", "no '-----BEGIN'"),
        (lambda p: "-----BEGIN CERTIFICATE", "unterminated"),
    ],
)
def test_malformed_pem_is_refused_with_a_clear_error(flash: Path, mangle, words) -> None:
    pem = ec_identity().cert_pem
    with pytest.raises(ValueError, match="^PEM: .*" + words):
        pem_to_der(mangle(pem), "CERTIFICATE")
    with pytest.raises(StoreError, match="^PEM: .*" + words):  # committed, it is the store's error
        commit(Store(), "c" * 64, mangle(pem), ec_identity().key_pem(), "t")


def test_pem_of_the_wrong_kind_is_refused_naming_both_kinds() -> None:
    with pytest.raises(ValueError, match="expected a PRIVATE KEY block, found CERTIFICATE"):
        pem_to_der(ec_identity().cert_pem, "PRIVATE KEY")


def test_pem_whose_der_has_trailing_bytes_is_refused() -> None:
    import base64

    body = base64.b64encode(ec_identity().cert_der + b"\x00\x00\x00").decode()
    with pytest.raises(ValueError, match="not valid DER"):
        pem_to_der(f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")


# -- public key comparison --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pkcs1", "pkcs8"])
def test_rsa_certificate_matches_its_own_key(fmt: str) -> None:
    ident = rsa_identity()
    assert der.same_key(ident.cert_der, ident.key_der(fmt))


@pytest.mark.parametrize("fmt", ["sec1", "pkcs8"])
def test_ec_certificate_matches_its_own_key(fmt: str) -> None:
    ident = ec_identity()
    assert der.same_key(ident.cert_der, ident.key_der(fmt))


def test_rsa_certificate_does_not_match_another_rsa_key() -> None:
    a, b = rsa_identity(), rsa_identity()
    assert not der.same_key(a.cert_der, b.key_der("pkcs1"))


def test_ec_certificate_does_not_match_another_ec_key() -> None:
    assert not der.same_key(ec_identity().cert_der, ec_identity().key_der("sec1"))


def test_rsa_certificate_does_not_match_an_ec_key() -> None:
    assert not der.same_key(rsa_identity().cert_der, ec_identity().key_der())


def test_device_made_sec1_key_matches_a_certificate_for_its_csr() -> None:
    from cryptography import x509
    from devicepki import issue

    key_der, csr_pem = csr.generate("dev-1")
    req = x509.load_pem_x509_csr(csr_pem.encode())
    cert = issue(req.public_key(), "dev-1")
    assert der.same_key(cert.public_bytes(serialization.Encoding.DER), key_der)


def test_ec_key_without_public_key_is_derived_with_p256() -> None:
    ident = ec_identity()
    d = ident.key.private_numbers().private_value  # type: ignore[attr-defined]
    # SEC1 ECPrivateKey with only version and the scalar.
    scalar = d.to_bytes(32, "big")
    bare = bytes([0x30, 37, 0x02, 0x01, 0x01, 0x04, 0x20]) + scalar
    assert der.key_public_key(bare) == (
        "ec",
        b"\x04" + b"".join(v.to_bytes(32, "big") for v in p256.public_key(d)),
    )
    assert der.same_key(ident.cert_der, bare)


def test_certificate_and_key_parsers_read_the_same_rsa_numbers() -> None:
    ident = rsa_identity()
    nums = ident.key.public_key().public_numbers()  # type: ignore[attr-defined]
    kind, n, e = der.cert_public_key(ident.cert_der)
    assert (kind, int.from_bytes(n, "big"), int.from_bytes(e, "big")) == ("rsa", nums.n, nums.e)


@given(st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_random_bytes_never_raise_anything_but_value_error(data: bytes) -> None:
    for parse in (der.cert_public_key, der.key_public_key, der.check_sequence):
        try:
            parse(data)
        except ValueError:
            pass


def test_every_truncation_of_a_certificate_or_key_raises_value_error() -> None:
    ident = rsa_identity()
    for blob, parse in ((ident.cert_der, der.cert_public_key), (ident.key_der("pkcs1"), der.key_public_key)):
        for n in range(0, len(blob), 7):
            with pytest.raises(ValueError):
                parse(blob[:n])


# -- commit and load --------------------------------------------------------------


def test_commit_then_load_reports_the_thing_and_certificate(flash: Path) -> None:
    ident = rsa_identity()
    s = Store()
    commit(s, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "thing-1", {"Mode": "x"})
    t = Store()
    assert t.load() is not None
    assert t.summary() == {
        "provisioned": True,
        "thing_name": "thing-1",
        "certificate_id": ident.certificate_id,
        "device_configuration": {"Mode": "x"},
    }
    assert t.identity() == (ident.cert_der, ident.key_der("pkcs1"))


def test_committed_files_are_der_and_no_temporary_file_remains(flash: Path) -> None:
    ident = rsa_identity()
    commit(Store(), ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "t")
    cert, key = identity_files(ident.certificate_id)
    assert names_in(flash) == sorted(["ca.der", "claim.der", "claim.key.der", cert, key, "provisioned.json"])
    assert (flash / "certs" / cert).read_bytes() == ident.cert_der


def test_summary_and_record_hold_no_key_material(flash: Path) -> None:
    ident = rsa_identity()
    s = Store()
    commit(s, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "t")
    record = (flash / "certs" / "provisioned.json").read_text()
    key_der = ident.key_der("pkcs1")
    for chunk in (key_der[i : i + 16] for i in range(0, len(key_der) - 16, 64)):
        assert chunk.hex() not in record
    assert "PRIVATE" not in record and "PRIVATE" not in repr(s.summary())


def test_an_empty_store_is_not_provisioned(flash: Path) -> None:
    s = Store()
    assert s.load() is None and s.record is None
    assert s.summary() == {"provisioned": False}
    with pytest.raises(StoreError, match="not provisioned"):
        s.identity()


def test_mismatched_certificate_and_key_are_refused_and_no_identity_is_written(flash: Path) -> None:
    a, b = rsa_identity(), rsa_identity()
    before = names_in(flash)
    with pytest.raises(StoreError, match="does not certify this private key"):
        commit(Store(), a.certificate_id, a.cert_pem, b.key_pem("pkcs1"), "t")
    staged = [credstore.PENDING, credstore.STAGED_CERT, credstore.STAGED_KEY]
    assert names_in(flash) == sorted(before + staged)  # only what was staged, as it came
    assert Store().load() is None


def test_unparseable_certificate_is_refused_before_writing(flash: Path) -> None:
    a = rsa_identity()
    with pytest.raises(StoreError, match="cannot compare"):
        commit(Store(), a.certificate_id, b"\x30\x03\x02\x01\x00", a.key_der("pkcs1"), "t")
    assert not (flash / "certs" / identity_files(a.certificate_id)[1]).exists()


def test_shipped_files_cannot_be_overwritten(flash: Path) -> None:
    for name in ("claim.der", "claim.key.der", "ca.der"):
        with pytest.raises(StoreError, match="refusing to overwrite"):
            credwrite.write_atomic(Store(), name, b"x")


def test_clear_keeps_the_claim_and_forgets_the_identity(flash: Path) -> None:
    before = shipped(flash)
    ident = rsa_identity()
    s = Store()
    commit(s, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "t")
    credwrite.clear(s)
    assert Store().load() is None
    assert shipped(flash) == before
    assert names_in(flash) == ["ca.der", "claim.der", "claim.key.der"]


def test_commit_over_an_existing_identity_replaces_it(flash: Path) -> None:
    a, b = rsa_identity(), rsa_identity()
    commit(Store(), a.certificate_id, a.cert_pem, a.key_pem("pkcs1"), "t")
    commit(Store(), b.certificate_id, b.cert_der, b.key_der("pkcs1"), "t")
    s = Store()
    assert s.load()["certificate_id"] == b.certificate_id
    assert s.identity() == (b.cert_der, b.key_der("pkcs1"))
    # the replaced identity's files are gone
    assert names_in(flash) == sorted(["ca.der", "claim.der", "claim.key.der", "provisioned.json",
                                      *identity_files(b.certificate_id)])


# -- damaged files ----------------------------------------------------------------

FILES = ("cert", "key", "provisioned.json")


def _committed(flash: Path) -> dict[str, str]:
    """Commit an identity; the names of its files by role ("cert", "key", "provisioned.json")."""
    ident = rsa_identity()
    commit(Store(), ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "thing-1")
    cert, key = identity_files(ident.certificate_id)
    return {"cert": cert, "key": key, "provisioned.json": "provisioned.json"}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize(
    "damage",
    ["missing", "empty", "truncated", "garbage", "one_byte_flipped", "one_byte_appended"],
)
def test_damaged_file_means_not_provisioned(flash: Path, name: str, damage: str) -> None:
    p = flash / "certs" / _committed(flash)[name]
    data = p.read_bytes()
    if damage == "missing":
        p.unlink()
    elif damage == "empty":
        p.write_bytes(b"")
    elif damage == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        p.write_bytes(os.urandom(len(data)))
    elif damage == "one_byte_flipped":
        p.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    else:
        p.write_bytes(data + b"\n" if name == "provisioned.json" else data + b"\x00")
    s = Store()
    if damage == "one_byte_appended" and name == "provisioned.json":
        # Trailing whitespace leaves the JSON record intact.
        assert s.load() is not None
    else:
        assert s.load() is None


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r.pop("sha256"),
        lambda r: r.pop("files"),
        lambda r: r.__setitem__("version", 2),
        lambda r: r["files"].__setitem__("cert", "../claim.der"),
        lambda r: r["files"].__setitem__("cert", "claim.der"),
        lambda r: r["files"].__setitem__("key", 7),
        lambda r: r.__setitem__("certificate_id", None),
        lambda r: r.__setitem__("thing_name", 5),
        lambda r: r.__setitem__("device_configuration", []),
        lambda r: r["sha256"].__setitem__("key", "0" * 64),
    ],
)
def test_a_record_with_a_bad_field_means_not_provisioned(flash: Path, edit) -> None:
    _committed(flash)
    p = flash / "certs" / "provisioned.json"
    rec = json.loads(p.read_text())
    edit(rec)
    p.write_text(json.dumps(rec))
    assert Store().load() is None


def test_a_record_that_is_not_an_object_means_not_provisioned(flash: Path) -> None:
    _committed(flash)
    (flash / "certs" / "provisioned.json").write_text("[1, 2]")
    assert Store().load() is None


def test_leftover_temporary_files_are_deleted_on_load_and_never_read(flash: Path) -> None:
    names = _committed(flash)
    certs = flash / "certs"
    for n in names.values():
        (certs / (n + ".tmp")).write_bytes(b"partial")
    s = Store()
    assert s.load() is not None
    assert not list(certs.glob("*.tmp"))


@pytest.mark.parametrize("staged", [["pending.key"], ["pending.key", "pending.crt"], ["pending.json"]])
def test_staged_files_no_valid_pending_record_vouches_for_are_deleted_on_load(flash: Path, staged: list[str]) -> None:
    # A cut after the staged key landed but before pending.json: a private key of no use to anyone.
    _committed(flash)
    certs = flash / "certs"
    for n in staged:
        (certs / n).write_bytes(b"-----BEGIN PRIVATE KEY-----\npartial")
    s = Store()
    assert s.load() is not None and s.pending is None
    assert not [n for n in staged if (certs / n).exists()]


class PowerCut(Exception):
    pass


STAGE_STEPS = boot_steps.STAGE_WRITES


def commit_steps(certificate_id: str) -> list[str]:
    cert, key = identity_files(certificate_id)
    return [key + ".tmp", key, cert + ".tmp", cert, "provisioned.json.tmp", "provisioned.json", "pending-cleared"]


def test_a_power_cut_at_any_write_boundary_leaves_old_or_new_state(flash: Path) -> None:
    before = shipped(flash)
    old, new = rsa_identity(), rsa_identity()
    steps: list[str] = []
    commit(Store(hook=steps.append), new.certificate_id, new.cert_pem, new.key_pem("pkcs1"), "new")
    # commit() is stage() then commit_pending(): the first boot's own order
    assert steps == STAGE_STEPS + commit_steps(new.certificate_id)
    for start_provisioned in (False, True):
        for cut in steps:
            if start_provisioned:
                commit(Store(), old.certificate_id, old.cert_pem, old.key_pem("pkcs1"), "old")
            else:
                credwrite.clear(Store())

            def hook(step: str, cut: str = cut) -> None:
                if step == cut:
                    raise PowerCut(step)

            with pytest.raises(PowerCut):
                commit(Store(hook=hook), new.certificate_id, new.cert_pem, new.key_pem("pkcs1"), "new")
            s = Store()
            rec = s.load()
            if cut in ("provisioned.json", "pending-cleared"):
                assert rec is not None and rec["thing_name"] == "new"
                assert s.identity() == (new.cert_der, new.key_der("pkcs1"))
            elif start_provisioned:
                # the record, the commit point, still names the old identity, whole
                assert rec is not None and rec["thing_name"] == "old"
                assert s.identity() == (old.cert_der, old.key_der("pkcs1"))
            else:
                assert rec is None
            assert shipped(flash) == before
            assert not list((flash / "certs").glob("*.tmp"))


def test_rename_onto_an_existing_file_falls_back_where_the_filesystem_refuses(
    flash: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.rename

    def fat_rename(a: str, b: str) -> None:
        if os.path.exists(b):
            raise OSError(17, "EEXIST")
        real(a, b)

    monkeypatch.setattr(credstore.os, "rename", fat_rename)
    a, b = rsa_identity(), rsa_identity()
    commit(Store(), a.certificate_id, a.cert_pem, a.key_pem("pkcs1"), "t")
    commit(Store(), b.certificate_id, b.cert_pem, b.key_pem("pkcs1"), "t")
    s = Store()
    assert s.load()["certificate_id"] == b.certificate_id


def test_uid_is_created_once_and_then_stable(flash: Path) -> None:
    assert Store().uid() is None
    u = credwrite.create_uid(Store())
    assert len(u) == 16 and int(u, 16) >= 0
    assert Store().uid() == u
    (flash / "certs" / "uid").write_text("not hex at all!!")
    assert Store().uid() is None  # not trusted: a new one is made
    v = credwrite.create_uid(Store())
    assert v != u and Store().uid() == v


def test_store_in_an_absolute_nested_folder_is_created_on_first_write(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    ident = ec_identity()
    s = Store(str(folder))
    commit(s, ident.certificate_id, ident.cert_der, ident.key_der("sec1"), None)
    assert Store(str(folder)).load()["thing_name"] is None


# -- the staged identity (pending.json) ----------------------------------------------


def test_stage_then_commit_pending_makes_the_staged_files_the_identity(flash: Path) -> None:
    ident = rsa_identity()
    s = Store()
    pending = credwrite.stage(s, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "TOKEN-xyz", 1234.5)
    assert Store().load() is None  # staged is not provisioned
    again = Store().load_pending()
    assert again == pending and again["ownership_token"] == "TOKEN-xyz" and again["issued"] == 1234.5
    credwrite.commit(s, again, "thing-9", {"Mode": "y"}, "host")
    t = Store()
    assert t.load()["thing_name"] == "thing-9" and t.load_pending() is None
    assert t.identity() == (ident.cert_der, ident.key_der("pkcs1"))
    assert not (flash / "certs" / credstore.PENDING).exists()


def test_a_staged_mismatched_pair_is_refused_when_committed_or_adopted_and_writes_no_identity(flash: Path) -> None:
    a, b = rsa_identity(), rsa_identity()
    s = Store()
    pending = credwrite.stage(s, a.certificate_id, a.cert_pem, b.key_pem("pkcs1"), "T", 1.0)
    with pytest.raises(StoreError, match="does not certify"):
        credwrite.pair(s, pending)
    with pytest.raises(StoreError, match="does not certify"):
        credwrite.commit(s, pending, "t")
    assert names_in(flash) == sorted(
        ["ca.der", "claim.der", "claim.key.der", credstore.PENDING, credstore.STAGED_CERT, credstore.STAGED_KEY]
    )


def test_drop_pending_forgets_the_staged_identity_and_keeps_the_claim(flash: Path) -> None:
    before = shipped(flash)
    ident = ec_identity("dev")
    s = Store()
    credwrite.stage(s, ident.certificate_id, ident.cert_der, ident.key_der(), "T", 1.0)
    credwrite.drop_pending(s)
    assert Store().load_pending() is None
    assert sorted(p.name for p in (flash / "certs").iterdir()) == ["ca.der", "claim.der", "claim.key.der"]
    assert shipped(flash) == before


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r.pop("ownership_token"),
        lambda r: r.update(ownership_token=7),
        lambda r: r.update(certificate_id=None),
        lambda r: r.update(version=99),
        lambda r: r["sha256"].update(key="0" * 64),
        lambda r: r["files"].update(cert="../claim.der"),
        lambda r: r.update(issued="yesterday"),
        lambda r: r.pop("issued"),
    ],
    ids=["no-token", "token-not-text", "no-id", "version", "key-digest", "path", "issued-not-a-number", "no-issued"],
)
def test_a_pending_record_with_a_bad_field_is_not_trusted(flash: Path, edit) -> None:
    ident = rsa_identity()
    rec = credwrite.stage(Store(), ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "T", 1.0)
    edit(rec)
    (flash / "certs" / credstore.PENDING).write_text(json.dumps(rec))
    assert Store().load_pending() is None


def test_a_power_cut_at_any_staging_boundary_leaves_nothing_or_the_staged_identity(flash: Path) -> None:
    before = shipped(flash)
    seen: list[str] = []
    ident = rsa_identity()
    s = Store(hook=seen.append)
    credwrite.commit(s, credwrite.stage(s, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "T", 1.0), "t")
    assert seen == STAGE_STEPS + commit_steps(ident.certificate_id)
    for cut in seen:
        credwrite.clear(Store())

        def hook(step: str, cut: str = cut) -> None:
            if step == cut:
                raise PowerCut(step)

        with pytest.raises(PowerCut):
            t = Store(hook=hook)
            credwrite.commit(t, credwrite.stage(t, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "T", 1.0), "t")
        after = Store()
        rec, pending = after.load(), after.load_pending()
        order = seen.index(cut)
        if order >= seen.index("provisioned.json"):
            assert rec is not None and rec["thing_name"] == "t" and pending is None
            assert not (flash / "certs" / credstore.PENDING).exists()  # load() tidied it
        elif order >= seen.index("pending.json"):
            assert rec is None and pending is not None and pending["certificate_id"] == ident.certificate_id
        else:
            assert rec is None and pending is None
        assert shipped(flash) == before
        assert not list((flash / "certs").glob("*.tmp"))


# -- temporary claims (provisioning by trusted user) ---------------------------------


def test_a_factory_claim_without_the_marker_is_never_retired(flash: Path) -> None:
    before = shipped(flash)
    assert Store("certs").retire_temporary_claim() is False
    assert shipped(flash) == before


def test_a_marked_temporary_claim_is_retired_marker_last_and_the_ca_stays(flash: Path) -> None:
    certs = flash / "certs"
    (certs / credstore.TEMPORARY_CLAIM).write_text("id valid until then\n")
    store = Store("certs")
    steps: list[str] = []
    real_remove = credstore.remove
    credstore.remove = lambda path: (steps.append(os.path.basename(path)), real_remove(path))  # type: ignore[assignment]
    try:
        assert store.retire_temporary_claim() is True
    finally:
        credstore.remove = real_remove  # type: ignore[assignment]
    assert steps == ["claim.der", "claim.key.der", credstore.TEMPORARY_CLAIM]
    assert sorted(p.name for p in certs.iterdir()) == ["ca.der"]
    assert store.retire_temporary_claim() is False  # nothing left to do


def test_a_retirement_cut_before_the_marker_went_is_finished_next_time(flash: Path) -> None:
    certs = flash / "certs"
    (certs / credstore.TEMPORARY_CLAIM).write_text("x")
    (certs / "claim.der").unlink()  # the cut came after the first removal
    assert Store("certs").retire_temporary_claim() is True
    assert sorted(p.name for p in certs.iterdir()) == ["ca.der"]


def test_the_host_tool_writes_the_marker_the_board_looks_for() -> None:
    from tools import trustedclaim

    assert trustedclaim.TEMPORARY_CLAIM == credstore.TEMPORARY_CLAIM
