"""credstore in PEM mode (Store(pem=True)): the identity CircuitPython's TLS can load.

CircuitPython's ssl parses the certificate and key files as PEM only (it passes
length + 1 to mbedTLS, the terminating NUL of PEM text), so the board keeps the
identity as PEM; the checks and the commit protocol are credstore's own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import credstore
import credwrite
import devicepki
from devicepki import commit
from pem import der_to_pem, pem_to_der
import pytest
from credstore import Store, StoreError
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def pem_files(certificate_id: str) -> tuple[str, str]:
    """The names a committed identity's certificate and key get in PEM mode."""
    stem = credstore.IDENTITY + certificate_id[:16]
    return stem + ".crt.pem", stem + ".key.pem"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(tmp_path)
    return Store("certs", "claim.pem", "claim.key.pem", "ca.pem", pem=True)


@pytest.mark.parametrize(
    "kind,fmt,label",
    [
        ("rsa", "pkcs1", "RSA PRIVATE KEY"),
        ("rsa", "pkcs8", "PRIVATE KEY"),
        ("ec", "sec1", "EC PRIVATE KEY"),
        ("ec", "pkcs8", "PRIVATE KEY"),
    ],
)
def test_pem_mode_writes_pem_files_that_load_back_as_the_same_key_and_certificate(
    store: Store, kind: str, fmt: str, label: str
) -> None:
    ident = devicepki.rsa_identity() if kind == "rsa" else devicepki.ec_identity()
    rec = commit(store, ident.certificate_id, ident.cert_pem, ident.key_pem(fmt), "thing-1")
    cert_name, key_name = pem_files(ident.certificate_id)
    assert rec["files"] == {"cert": cert_name, "key": key_name}
    cert_pem = Path("certs", cert_name).read_bytes()
    key_pem = Path("certs", key_name).read_bytes()
    assert cert_pem.startswith(b"-----BEGIN CERTIFICATE-----\n") and cert_pem.endswith(
        b"-----END CERTIFICATE-----\n"
    )
    assert key_pem.startswith("-----BEGIN {}-----\n".format(label).encode())
    assert max(len(line) for line in key_pem.splitlines()) <= 64
    assert x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER) == ident.cert_der
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.private_numbers() == ident.key.private_numbers()  # type: ignore[attr-defined]
    assert not list(Path("certs").glob("*.der"))
    assert Store("certs", pem=True).load()["certificate_id"] == ident.certificate_id


def test_a_device_made_der_key_is_stored_as_an_ec_pem(store: Store) -> None:
    ident = devicepki.ec_identity()
    commit(store, ident.certificate_id, ident.cert_pem, ident.key_der("sec1"))
    key_name = pem_files(ident.certificate_id)[1]
    assert Path("certs", key_name).read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----\n")


def test_a_tampered_pem_file_is_not_trusted(store: Store) -> None:
    ident = devicepki.ec_identity()
    commit(store, ident.certificate_id, ident.cert_pem, ident.key_pem("sec1"))
    p = Path("certs", pem_files(ident.certificate_id)[1])
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    assert Store("certs", pem=True).load() is None


def test_a_mismatched_key_is_refused_in_pem_mode_and_no_identity_is_written(store: Store) -> None:
    a, b = devicepki.ec_identity(), devicepki.ec_identity()
    with pytest.raises(StoreError, match="does not certify"):
        commit(store, a.certificate_id, a.cert_pem, b.key_pem("sec1"))
    assert not Path("certs/provisioned.json").exists() and not list(Path("certs").glob(credstore.IDENTITY + "*"))


def test_clear_forgets_a_pem_identity_and_keeps_the_claim(store: Store) -> None:
    Path("certs").mkdir()
    Path("certs/claim.pem").write_text("claim")
    ident = devicepki.ec_identity()
    commit(store, ident.certificate_id, ident.cert_pem, ident.key_pem("sec1"))
    credwrite.clear(store)
    assert sorted(p.name for p in Path("certs").iterdir()) == ["claim.pem"]


def test_the_record_holds_no_key_material(store: Store) -> None:
    ident = devicepki.rsa_identity()
    commit(store, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"))
    record = Path("certs/provisioned.json").read_text()
    body = ident.key_pem("pkcs1").splitlines()[1]
    assert body not in record and json.loads(record)["sha256"]["key"]


def test_der_to_pem_round_trips_through_pem_to_der() -> None:
    der = devicepki.rsa_identity().cert_der
    assert pem_to_der(der_to_pem(der, "CERTIFICATE"), "CERTIFICATE") == der


class _NewOnlyHashlib:
    """CircuitPython's hashlib: new(name, data) and nothing else."""

    @staticmethod
    def new(name: str, data: bytes = b"") -> object:
        import hashlib

        assert name == "sha256"
        return hashlib.sha256(data)


def test_digests_work_with_circuitpythons_hashlib(monkeypatch: pytest.MonkeyPatch) -> None:
    import csr
    import runtime

    expected = runtime.sha256(b"abc").digest()
    monkeypatch.setattr(runtime, "hashlib", _NewOnlyHashlib)
    assert runtime.sha256(b"abc").digest() == expected
    key, csr_pem = csr.generate("cp-board")  # signs with runtime.sha256 (p256's HMAC too)
    assert csr_pem.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert x509.load_pem_x509_csr(csr_pem.encode()).is_signature_valid


class _PowerCut(Exception):
    pass


def _fat_rename(real: object) -> object:
    # CIRCUITPY is FAT: rename onto an existing file is refused.
    def rename(a: str, b: str) -> None:
        if os.path.exists(b):
            raise OSError(17, "File exists")
        real(a, b)  # type: ignore[operator]

    return rename


def test_a_power_cut_at_any_write_boundary_leaves_the_old_identity_or_the_new_one_on_fat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "rename", _fat_rename(os.rename))
    old, new = devicepki.ec_identity(), devicepki.rsa_identity()
    steps: list[str] = []
    probe = Store("probe", pem=True, hook=steps.append)
    commit(probe, old.certificate_id, old.cert_pem, old.key_pem("sec1"))
    commit(probe, new.certificate_id, new.cert_pem, new.key_pem("pkcs1"))
    boundaries = steps[len(steps) // 2 :]  # those of the second commit, over an existing identity
    assert boundaries[-2:] == ["provisioned.json", "pending-cleared"]
    for cut in boundaries:
        folder = "certs-" + cut.replace(".", "_")
        commit(Store(folder, pem=True), old.certificate_id, old.cert_pem, old.key_pem("sec1"))

        def hook(step: str, cut: str = cut) -> None:
            if step == cut:
                raise _PowerCut(step)

        with pytest.raises(_PowerCut):
            commit(Store(folder, pem=True, hook=hook), new.certificate_id, new.cert_pem, new.key_pem("pkcs1"))
        rec = Store(folder, pem=True).load()
        # the record is the commit point: the old identity until the new record lands
        assert rec is not None, cut
        new_landed = cut in ("provisioned.json", "pending-cleared")
        assert rec["certificate_id"] == (new if new_landed else old).certificate_id, cut


def test_a_staged_identity_in_pem_mode_is_pem_and_survives_a_power_cut_at_any_write_boundary_on_fat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The boot flow stages the new identity before RegisterThing and commits it after:
    # in PEM mode the staged files are PEM, which the board's TLS loads, and every cut
    # reads "not provisioned" (with the staged identity to resume, once pending.json
    # landed) or the new identity.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "rename", _fat_rename(os.rename))
    ident = devicepki.rsa_identity()
    steps: list[str] = []
    probe = Store("probe", pem=True, hook=steps.append)
    pending = credwrite.stage(probe, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "token", 1.0)
    assert pending["files"] == {"cert": credstore.STAGED_CERT, "key": credstore.STAGED_KEY}
    cert, key = (Path("probe", pending["files"][r]).read_bytes() for r in ("cert", "key"))
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert key.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    loaded = serialization.load_pem_private_key(key, None)
    assert loaded.private_numbers() == ident.key.private_numbers()  # type: ignore[union-attr,attr-defined]
    credwrite.commit(probe, pending, "thing-1")
    assert sorted(os.listdir("probe")) == sorted([*pem_files(ident.certificate_id), "provisioned.json"])
    rec = Store("probe", pem=True).load()
    assert rec is not None and rec["thing_name"] == "thing-1"
    assert rec["files"] == dict(zip(("cert", "key"), pem_files(ident.certificate_id)))
    staged_at = steps.index("pending.json")
    assert steps[-2:] == ["provisioned.json", "pending-cleared"]
    for i, cut in enumerate(steps):
        folder = "certs-" + cut.replace(".", "_")

        def hook(step: str, cut: str = cut) -> None:
            if step == cut:
                raise _PowerCut(step)

        store = Store(folder, pem=True, hook=hook)
        with pytest.raises(_PowerCut):
            pend = credwrite.stage(store, ident.certificate_id, ident.cert_pem, ident.key_pem("pkcs1"), "token", 1.0)
            credwrite.commit(store, pend)
        after = Store(folder, pem=True)
        rec = after.load()
        if i < steps.index("provisioned.json"):
            assert rec is None, cut
            staged = after.load_pending()
            assert (staged is not None) == (i >= staged_at), cut
            if staged is not None:
                assert credwrite.pair(after, staged) == (ident.cert_der, ident.key_der("pkcs1")), cut
        else:
            assert rec is not None and rec["certificate_id"] == ident.certificate_id, cut
            assert after.load_pending() is None and not Path(folder, "pending.json").exists(), cut
        assert not list(Path(folder).glob("*.tmp")) and not list(Path(folder).glob("*.der")), cut
