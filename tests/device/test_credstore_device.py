"""lib/credstore.py and lib/der.py on the MicroPython unix port: the same store
code a board runs, on a scratch folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import credstore
from devicepki import ec_identity, factory_flash, rsa_identity

COMMIT = """
import credstore, credwrite
s = credstore.Store()
with open("in/cert.pem") as f:
    cert = f.read()
with open("in/key.pem") as f:
    key = f.read()
try:
    credwrite.commit(s, credwrite.stage(s, "{cid}", cert, key, "token", 0), "thing-1", {{"Mode": "x"}})
    print("committed")
except credstore.StoreError as ex:
    print("refused:", ex)
"""

LOAD = """
import credstore
s = credstore.Store()
rec = s.load()
print("summary", repr(s.summary()))
if rec is not None:
    cert, key = s.identity()
    print("identity", len(cert), len(key))
"""


@pytest.fixture
def flash(tmp_path: Path) -> Path:
    factory_flash(tmp_path)
    (tmp_path / "in").mkdir()
    return tmp_path


def put(flash: Path, cert_pem: str, key_pem: str) -> None:
    # CRLF on purpose: the device must handle either line end.
    (flash / "in" / "cert.pem").write_text(cert_pem.replace("\n", "\r\n"))
    (flash / "in" / "key.pem").write_text(key_pem)


def identity_file(flash: Path, certificate_id: str, role: str) -> Path:
    """A committed identity's certificate ("crt") or key ("key") file, named after the certificate."""
    return flash / "certs" / "{}{}.{}.der".format(credstore.IDENTITY, certificate_id[:16], role)


def run(micropython: Any, flash: Path, code: str) -> str:
    return micropython.run(code, cwd=flash).stdout


def test_the_device_commits_aws_pem_and_reads_it_back_as_der(micropython: Any, flash: Path) -> None:
    ident = rsa_identity()
    put(flash, ident.cert_pem, ident.key_pem("pkcs1"))
    assert run(micropython, flash, COMMIT.format(cid=ident.certificate_id)).strip() == "committed"
    assert identity_file(flash, ident.certificate_id, "crt").read_bytes() == ident.cert_der
    assert identity_file(flash, ident.certificate_id, "key").read_bytes() == ident.key_der("pkcs1")
    out = run(micropython, flash, LOAD)
    assert "'thing_name': 'thing-1'" in out and "'provisioned': True" in out
    assert "identity {} {}".format(len(ident.cert_der), len(ident.key_der("pkcs1"))) in out


def test_the_device_replaces_an_identity_and_removes_the_old_ones_files(
    micropython: Any, flash: Path
) -> None:
    a, b = rsa_identity(), rsa_identity()
    put(flash, a.cert_pem, a.key_pem("pkcs1"))
    run(micropython, flash, COMMIT.format(cid=a.certificate_id))
    put(flash, b.cert_pem, b.key_pem("pkcs1"))
    assert run(micropython, flash, COMMIT.format(cid=b.certificate_id)).strip() == "committed"
    assert identity_file(flash, b.certificate_id, "crt").read_bytes() == b.cert_der
    assert not identity_file(flash, a.certificate_id, "crt").exists()
    assert (
        json.loads((flash / "certs" / "provisioned.json").read_text())["certificate_id"] == b.certificate_id
    )


def test_the_device_refuses_a_certificate_for_another_key(micropython: Any, flash: Path) -> None:
    a, b = rsa_identity(), rsa_identity()
    put(flash, a.cert_pem, b.key_pem("pkcs1"))
    out = run(micropython, flash, COMMIT.format(cid=a.certificate_id))
    assert out.startswith("refused:") and "does not certify this private key" in out
    assert not identity_file(flash, a.certificate_id, "key").exists()


def test_the_device_refuses_pem_with_garbage(micropython: Any, flash: Path) -> None:
    ident = rsa_identity()
    put(flash, ident.cert_pem[:100] + "#$%" + ident.cert_pem[103:], ident.key_pem("pkcs1"))
    out = run(micropython, flash, COMMIT.format(cid=ident.certificate_id))
    assert out.startswith("refused: PEM: CERTIFICATE block")


@pytest.mark.parametrize("name", ["crt", "key", "provisioned.json"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "flipped"])
def test_the_device_treats_a_damaged_file_as_not_provisioned(
    micropython: Any, flash: Path, name: str, damage: str
) -> None:
    ident = ec_identity()
    put(flash, ident.cert_pem, ident.key_pem("sec1"))
    run(micropython, flash, COMMIT.format(cid=ident.certificate_id))
    p = flash / "certs" / name if name.endswith(".json") else identity_file(flash, ident.certificate_id, name)
    data = p.read_bytes()
    if damage == "missing":
        p.unlink()
    elif damage == "truncated":
        p.write_bytes(data[: len(data) - 5])
    elif damage == "garbage":
        p.write_bytes(os.urandom(len(data)))
    else:
        p.write_bytes(data[:-1] + bytes([data[-1] ^ 0x40]))
    (flash / "certs" / "pending.key.tmp").write_bytes(b"half a key")
    out = run(micropython, flash, LOAD)
    assert "summary {'provisioned': False}" in out
    assert not (flash / "certs" / "pending.key.tmp").exists()


def test_the_device_derives_a_missing_ec_public_key_to_compare(micropython: Any, flash: Path) -> None:
    ident = ec_identity()
    d = ident.key.private_numbers().private_value  # type: ignore[attr-defined]
    bare = bytes([0x30, 37, 0x02, 0x01, 0x01, 0x04, 0x20]) + d.to_bytes(32, "big")
    (flash / "in" / "cert.der").write_bytes(ident.cert_der)
    (flash / "in" / "bare.der").write_bytes(bare)
    other = ec_identity()
    (flash / "in" / "other.der").write_bytes(other.cert_der)
    code = """
import der
rd = lambda n: open("in/" + n, "rb").read()
print(der.same_key(rd("cert.der"), rd("bare.der")), der.same_key(rd("other.der"), rd("bare.der")))
"""
    assert run(micropython, flash, code).strip() == "True False"


def test_the_device_keeps_its_random_uid_across_boots(micropython: Any, flash: Path) -> None:
    code = "import credstore, credwrite\ns = credstore.Store()\nprint(s.uid() or credwrite.create_uid(s))\n"
    first = run(micropython, flash, code).strip()
    assert len(first) == 16 and int(first, 16) >= 0
    assert run(micropython, flash, code).strip() == first
