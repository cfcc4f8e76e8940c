"""lib/p256.py and lib/csr.py on CPython, checked against `cryptography` and `openssl`."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import csr
import p256
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

N = p256.N

# RFC 6979 appendix A.2.5, P-256 with SHA-256.
RFC6979_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC6979_PUB = (
    0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6,
    0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299,
)
RFC6979_VECTORS = {
    b"sample": (
        0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60,
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    ),
    b"test": (
        0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0,
        0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
        0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083,
    ),
}

scalars = st.integers(min_value=1, max_value=N - 1)


def crypto_public(d: int) -> tuple[int, int]:
    numbers = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
    return numbers.x, numbers.y


def verify_signature(pub: tuple[int, int], rs: tuple[int, int], message: bytes) -> None:
    key = ec.EllipticCurvePublicNumbers(pub[0], pub[1], ec.SECP256R1()).public_key()
    key.verify(encode_dss_signature(*rs), message, ec.ECDSA(hashes.SHA256()))


def check_csr(pem: str, common_name: str) -> x509.CertificateSigningRequest:
    req = x509.load_pem_x509_csr(pem.encode())
    assert req.is_signature_valid
    assert req.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
    assert isinstance(req.public_key(), ec.EllipticCurvePublicKey)
    assert req.public_key().curve.name == "secp256r1"
    return req


def openssl_verify(path: Path) -> bool:
    """`openssl req -verify` on a PEM CSR file: True only when OpenSSL says "verify OK".

    OpenSSL 3.0 exits 0 even when it prints "self-signature verify failure", so
    the exit code alone proves nothing: both it and the message are checked.
    """
    result = subprocess.run(
        ["openssl", "req", "-verify", "-noout", "-in", str(path)], capture_output=True, text=True, timeout=30
    )
    output = result.stdout + result.stderr
    return result.returncode == 0 and "verify OK" in output and "failure" not in output


# --- RFC 6979 ----------------------------------------------------------------


def test_rfc6979_key_has_the_documented_public_key() -> None:
    assert p256.public_key(RFC6979_KEY) == RFC6979_PUB


@pytest.mark.parametrize("message", sorted(RFC6979_VECTORS))
def test_rfc6979_nonce_and_signature_match_the_published_vectors(message: bytes) -> None:
    k, r, s = RFC6979_VECTORS[message]
    digest = hashlib.sha256(message).digest()
    assert next(p256.nonces(RFC6979_KEY, digest)) == k
    assert p256.sign(RFC6979_KEY, digest) == (r, s)
    verify_signature(RFC6979_PUB, (r, s), message)


def test_hmac_sha256_on_hashlib_matches_the_hmac_module() -> None:
    import hmac

    for key, msg in ((b"k" * 32, b""), (bytes(range(64)), b"abc" * 100), (b"", b"x")):
        assert p256._hmac(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


def reference_nonces(d: int, digest: bytes, count: int) -> list[int]:
    """RFC 6979 section 3.2 with Python's hmac, candidates taken as they come (no range check)."""
    import hmac

    def mac(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    x = d.to_bytes(32, "big")
    h = (int.from_bytes(digest, "big") % N).to_bytes(32, "big")
    v, k = b"\x01" * 32, b"\x00" * 32
    k = mac(k, v + b"\x00" + x + h)
    v = mac(k, v)
    k = mac(k, v + b"\x01" + x + h)
    v = mac(k, v)
    out = []
    for _ in range(count):
        v = mac(k, v)
        out.append(int.from_bytes(v, "big"))
        k = mac(k, v + b"\x00")
        v = mac(k, v)
    return out


def test_later_rfc6979_candidates_follow_the_rfc_retry_step() -> None:
    digest = hashlib.sha256(b"sample").digest()
    got = list(itertools.islice(p256.nonces(RFC6979_KEY, digest), 4))
    assert got == reference_nonces(RFC6979_KEY, digest, 4)
    assert got[0] == RFC6979_VECTORS[b"sample"][0]


def test_a_nonce_giving_r_zero_is_skipped_for_the_next_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(b"sample").digest()
    real = p256.mul_base
    calls: list[int] = []

    def first_gives_r_zero(k: int) -> tuple[int, int] | None:
        calls.append(k)
        return (N, 1) if len(calls) == 1 else real(k)  # x = n, so r = x mod n = 0

    monkeypatch.setattr(p256, "mul_base", first_gives_r_zero)
    rs = p256.sign(RFC6979_KEY, digest)
    assert calls == reference_nonces(RFC6979_KEY, digest, 2)
    assert rs != RFC6979_VECTORS[b"sample"][1:]
    verify_signature(RFC6979_PUB, rs, b"sample")


def test_a_nonce_giving_s_zero_is_skipped_for_the_next_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    real = p256._inv
    calls: list[int] = []

    def first_gives_zero(a: int, m: int) -> int:
        if m != N:  # the field inversion inside mul_base
            return real(a, m)
        calls.append(a)  # k^-1 mod n: zero makes s zero
        return 0 if len(calls) == 1 else real(a, m)

    monkeypatch.setattr(p256, "_inv", first_gives_zero)
    rs = p256.sign(RFC6979_KEY, hashlib.sha256(b"test").digest())
    assert calls == reference_nonces(RFC6979_KEY, hashlib.sha256(b"test").digest(), 2)
    verify_signature(RFC6979_PUB, rs, b"test")


def test_signing_gives_up_after_a_bounded_number_of_rejected_nonces(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a group order of 2 every 256-bit candidate is out of range.
    monkeypatch.setattr(p256, "N", 2)
    with pytest.raises(RuntimeError, match="no usable nonce in 8 candidates"):
        p256.sign(1, hashlib.sha256(b"x").digest())


def test_a_faulty_scalar_multiplication_never_yields_a_public_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p256, "mul_base", lambda k: (p256.GX, p256.GY + 1))
    with pytest.raises(RuntimeError, match="not on curve"):
        p256.public_key(5)
    monkeypatch.setattr(p256, "mul_base", lambda k: None)
    with pytest.raises(RuntimeError, match="not on curve"):
        p256.public_key(5)


# --- scalar validation and key generation ------------------------------------


@pytest.mark.parametrize("bad", [0, -1, N, N + 1, 2**256])
def test_out_of_range_private_scalars_are_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        p256.check_scalar(bad)
    with pytest.raises(ValueError):
        p256.public_key(bad)
    with pytest.raises(ValueError):
        p256.sign(bad, bytes(32))


@pytest.mark.parametrize("bad", [1.0, "1", None, True, b"\x01"])
def test_a_private_scalar_that_is_not_an_int_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="must be an int"):
        p256.check_scalar(bad)


def test_range_error_does_not_reveal_the_rejected_value() -> None:
    with pytest.raises(ValueError) as err:
        p256.check_scalar(N + 12345)
    assert str(N + 12345) not in str(err.value) and hex(N + 12345) not in str(err.value)


def test_edge_scalars_one_and_n_minus_one_are_valid_keys() -> None:
    p256.check_scalar(1)
    p256.check_scalar(N - 1)
    assert p256.public_key(1) == (p256.GX, p256.GY)
    assert p256.public_key(N - 1) == (p256.GX, p256.P - p256.GY)


class ScriptedRandom:
    """A stand-in for os.urandom that returns scripted draws and counts calls."""

    def __init__(self, draws: list[bytes]) -> None:
        self.draws = list(draws)
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        assert n == 32
        self.calls += 1
        return self.draws.pop(0)


def test_an_all_zero_draw_is_rejected_and_the_next_good_one_used() -> None:
    good = (12345).to_bytes(32, "big")
    rng = ScriptedRandom([bytes(32), good])
    assert p256.generate_key(rng) == 12345
    assert rng.calls == 2


@pytest.mark.parametrize("bad", [bytes(32), N.to_bytes(32, "big"), (N + 1).to_bytes(32, "big"), b"\xff" * 32])
def test_draws_outside_one_to_n_minus_one_are_redrawn(bad: bytes) -> None:
    rng = ScriptedRandom([bad, bad, (N - 1).to_bytes(32, "big")])
    assert p256.generate_key(rng) == N - 1
    assert rng.calls == 3


def test_a_random_source_that_never_gives_a_valid_scalar_fails_after_a_bounded_number_of_draws() -> None:
    rng = ScriptedRandom([bytes(32)] * 100)
    with pytest.raises(OSError, match="no valid P-256 scalar"):
        p256.generate_key(rng)
    assert rng.calls == 16


def test_a_random_source_returning_short_reads_is_an_error() -> None:
    with pytest.raises(OSError, match="returned 31 bytes"):
        p256.generate_key(lambda n: bytes(31))


def test_generated_keys_are_in_range_and_differ() -> None:
    keys = {p256.generate_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(1 <= d < N for d in keys)


# --- point arithmetic ----------------------------------------------------------


def test_n_times_g_is_the_point_at_infinity() -> None:
    assert p256.mul_base(N) is None
    assert p256.mul_base(0) is None


def test_known_small_multiples_of_g_match_cryptography() -> None:
    for k in (1, 2, 3, 4, 5, 15, 16, 17, 2**64, 2**64 + 1, 2**192 + 2**128 + 2**64 + 1):
        assert p256.mul_base(k) == crypto_public(k), k


def test_multiples_past_n_wrap_around_the_group() -> None:
    assert p256.mul_base(N + 1) == (p256.GX, p256.GY)
    assert p256.mul_base(N + 2) == crypto_public(2)
    assert p256.mul_base(2**256 - 1) == crypto_public((2**256 - 1) % N)


@pytest.mark.parametrize("bad", [-1, 2**256])
def test_scalars_outside_256_bits_are_refused_by_mul_base(bad: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        p256.mul_base(bad)


def test_the_embedded_comb_tables_are_the_ones_derived_from_g() -> None:
    for table, shift in ((p256._table(0), 0), (p256._table(1), 32)):
        assert len(table) == 16
        assert table[0] == 1 << 256  # infinity (0 : 1 : 0)
        for i in range(1, 16):
            k = sum(((i >> j) & 1) << (64 * j + shift) for j in range(4))
            x, y = crypto_public(k % N)
            assert table[i] == x | y << 256 | 1 << 512, (shift, i)


def test_every_comb_column_and_tooth_is_used_with_the_right_weight() -> None:
    # One bit at a time, at every position: catches a wrong column/table pairing.
    for bit in range(256):
        assert p256.mul_base(1 << bit) == crypto_public((1 << bit) % N), bit


def test_complete_formulas_handle_doubling_inverse_and_infinity_inputs() -> None:
    g = (p256.GX, p256.GY, 1)
    inf = (0, 1, 0)
    neg_g = (p256.GX, p256.P - p256.GY, 1)

    def affine(pt: tuple[int, int, int]) -> tuple[int, int] | None:
        x, y, z = pt
        if z % p256.P == 0:
            return None
        zi = pow(z, -1, p256.P)
        return x * zi % p256.P, y * zi % p256.P

    assert affine(p256._add(*g, *g)) == crypto_public(2)  # P + P through the addition law
    assert affine(p256._double(*g)) == crypto_public(2)
    assert affine(p256._add(*g, *neg_g)) is None
    assert affine(p256._add(*inf, *g)) == (p256.GX, p256.GY)
    assert affine(p256._add(*g, *inf)) == (p256.GX, p256.GY)
    assert affine(p256._double(*inf)) is None


def trace_lines(func, *args: object) -> list[tuple[str, int]]:
    """The sequence of (function, line) executed inside lib/p256.py while func runs."""
    seen: list[tuple[str, int]] = []

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        if frame.f_code.co_filename != p256.__file__:
            return None
        if event == "line":
            seen.append((frame.f_code.co_name, frame.f_lineno))
        return tracer

    previous = sys.gettrace()  # coverage.py's tracer, when it runs: put it back after
    sys.settrace(tracer)
    try:
        func(*args)
    finally:
        sys.settrace(previous)
    return seen


def test_scalar_multiplication_executes_the_same_line_sequence_for_every_scalar() -> None:
    # Constant shape, checked: no branch, early exit or loop count depends on the scalar.
    scalars = [1, 2, 3, N - 1, N - 2, 2**255, 2**64 - 1, (N - 1) // 3, 0x5555 << 200] + [
        p256.generate_key() for _ in range(4)
    ]
    reference = trace_lines(p256.mul_base, scalars[0])
    assert len(reference) > 32 * 100  # really traced the whole ladder
    for k in scalars[1:]:
        assert trace_lines(p256.mul_base, k) == reference, hex(k)


def test_the_fallback_for_ports_without_three_argument_pow_inverts_like_pow() -> None:
    for a in (1, 2, p256.GX, p256.P - 1, 0):
        assert p256._pow_mod(a, p256.P - 2, p256.P) == pow(a, p256.P - 2, p256.P)
        assert p256._pow_mod(a, p256.N - 2, p256.N) == pow(a, p256.N - 2, p256.N)
    assert p256._pow_mod(p256.GX, 0, p256.P) == 1


def test_on_curve_accepts_g_and_rejects_off_curve_or_out_of_range_points() -> None:
    assert p256.on_curve(p256.GX, p256.GY)
    assert not p256.on_curve(p256.GX, p256.GY + 1)
    assert not p256.on_curve(p256.GX + p256.P, p256.GY)
    assert not p256.on_curve(-1, p256.GY)


def test_digest_of_the_wrong_size_or_type_is_refused() -> None:
    for bad in (b"", bytes(31), bytes(33), "a" * 32, None):
        with pytest.raises(ValueError, match="digest must be 32 bytes"):
            p256.sign(1, bad)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=scalars, message=st.binary(max_size=200))
def test_public_keys_and_signatures_agree_with_cryptography_for_random_keys(d: int, message: bytes) -> None:
    pub = p256.public_key(d)
    assert pub == crypto_public(d)
    rs = p256.sign(d, hashlib.sha256(message).digest())
    assert 1 <= rs[0] < N and 1 <= rs[1] < N
    verify_signature(pub, rs, message)


def test_a_signature_does_not_verify_for_another_message() -> None:
    rs = p256.sign(RFC6979_KEY, hashlib.sha256(b"sample").digest())
    with pytest.raises(InvalidSignature):
        verify_signature(RFC6979_PUB, rs, b"samplf")


# --- DER and CSR -----------------------------------------------------------------


def test_private_key_der_loads_in_cryptography_with_the_same_scalar_and_public_key() -> None:
    d = p256.generate_key()
    pub = p256.public_key(d)
    der = csr.private_key_der(d, pub)
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.private_numbers().private_value == d
    numbers = key.public_key().public_numbers()
    assert (numbers.x, numbers.y) == pub
    # SEC1 as OpenSSL writes it ("traditional" format), byte for byte.
    assert der == key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def test_small_private_scalars_are_written_as_32_bytes() -> None:
    der = csr.private_key_der(1, (p256.GX, p256.GY))
    assert serialization.load_der_private_key(der, None).private_numbers().private_value == 1  # type: ignore[union-attr]
    assert len(der) == 121


def test_public_key_info_matches_cryptography() -> None:
    d = p256.generate_key()
    expected = (
        ec.derive_private_key(d, ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert csr.public_key_info(p256.public_key(d)) == expected


def test_generated_csr_verifies_and_carries_the_public_key_of_the_generated_private_key(
    tmp_path: Path,
) -> None:
    for i in range(5):
        name = "device-%04d" % i
        key_der, pem = csr.generate(name)
        req = check_csr(pem, name)
        key = serialization.load_der_private_key(key_der, password=None)
        assert req.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
        path = tmp_path / ("%d.csr" % i)
        path.write_text(pem)
        assert openssl_verify(path), path.read_text()


def test_csr_pem_has_the_standard_armour_and_64_column_lines() -> None:
    _, pem = csr.generate("abc")
    lines = pem.splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE REQUEST-----"
    assert lines[-1] == "-----END CERTIFICATE REQUEST-----"
    assert all(len(line) <= 64 for line in lines[1:-1])
    assert pem.endswith("\n")
    req = x509.load_pem_x509_csr(pem.encode())
    assert list(req.attributes) == []
    assert len(req.extensions) == 0


def test_csr_for_a_given_key_and_name_is_deterministic() -> None:
    assert csr.build(RFC6979_KEY, "same") == csr.build(RFC6979_KEY, "same")
    assert csr.build(RFC6979_KEY, "same") != csr.build(RFC6979_KEY, "other")


def test_csr_with_the_rfc6979_key_verifies_with_openssl(tmp_path: Path) -> None:
    path = tmp_path / "r.csr"
    path.write_text(csr.build(RFC6979_KEY, "rfc6979"))
    assert openssl_verify(path)
    check_csr(path.read_text(), "rfc6979")


def test_a_tampered_csr_fails_openssl_verification(tmp_path: Path) -> None:
    der = bytearray(csr.request_der(RFC6979_KEY, "tamper-me"))
    at = der.index(b"tamper-me")
    der[at] ^= 0x01  # "uamper-me": the signed info changes, the signature does not
    path = tmp_path / "bad.csr"
    path.write_text(csr.pem(bytes(der), "CERTIFICATE REQUEST"))
    assert not openssl_verify(path)
    assert not x509.load_pem_x509_csr(path.read_bytes()).is_signature_valid


@pytest.mark.parametrize("name", ["a", "x" * 64, "thing_01-AB", "d\u00e9vice-\u00fc"])
def test_common_names_of_one_to_64_characters_including_non_ascii_are_encoded(name: str) -> None:
    check_csr(csr.build(RFC6979_KEY, name), name)


@pytest.mark.parametrize("name", ["", "x" * 65])
def test_common_names_that_are_empty_or_too_long_are_refused_with_the_length(name: str) -> None:
    with pytest.raises(ValueError, match="got %d" % len(name)):
        csr.generate(name)


@pytest.mark.parametrize("name", [b"dev", None, 123])
def test_common_names_that_are_not_str_are_a_type_error(name: object) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        csr.generate(name)  # type: ignore[arg-type]


def test_der_integers_are_minimal_with_a_leading_zero_when_the_high_bit_is_set() -> None:
    assert csr._uint(0) == b"\x02\x01\x00"
    assert csr._uint(0x80) == b"\x02\x02\x00\x80"
    assert csr._uint(0x7F) == b"\x02\x01\x7f"
    assert csr._uint(2**255) == b"\x02\x21\x00\x80" + bytes(31)
    assert csr._uint(0x0100) == b"\x02\x02\x01\x00"


def test_der_lengths_use_long_form_above_127_bytes() -> None:
    assert csr._tlv(0x04, bytes(127))[:2] == b"\x04\x7f"
    assert csr._tlv(0x04, bytes(128))[:3] == b"\x04\x81\x80"
    assert csr._tlv(0x04, bytes(300))[:4] == b"\x04\x82\x01\x2c"
