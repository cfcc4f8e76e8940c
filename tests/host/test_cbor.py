"""lib/cbor.py on CPython, with cbor2 as the oracle in both directions."""

from __future__ import annotations

import math
import random
import struct
import tracemalloc
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cbor

MAX_DEPTH = 16


# --- helpers -------------------------------------------------------------------------------------


def norm(x: Any) -> Any:
    """A form that compares exactly: types kept apart, NaN equal to NaN, -0.0 apart from 0.0."""
    if x is None or isinstance(x, bool):
        return (type(x).__name__, x)
    if isinstance(x, int):
        return ("int", x)
    if isinstance(x, float):
        return ("float", "nan" if math.isnan(x) else struct.pack(">d", x))
    if isinstance(x, (bytes, str)):
        return (type(x).__name__, x)
    if isinstance(x, (list, tuple)):
        return ("list", [norm(i) for i in x])
    if isinstance(x, dict):
        return ("dict", [(norm(k), norm(v)) for k, v in x.items()])
    raise AssertionError("unexpected type {}".format(type(x)))


def depth(x: Any) -> int:
    if isinstance(x, (list, tuple)):
        return 1 + max((depth(i) for i in x), default=0)
    if isinstance(x, dict):
        return 1 + max((max(depth(k), depth(v)) for k, v in x.items()), default=0)
    return 0


def nested_list(levels: int) -> bytes:
    return b"\x81" * levels + b"\x00"


def head(major: int, n: int) -> bytes:
    """A shortest-form head, written independently of the codec under test."""
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise AssertionError(n)


def chunks(data: bytes | str, rnd: random.Random) -> list[bytes | str]:
    cuts = sorted(rnd.sample(range(len(data) + 1), k=min(3, len(data) + 1)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def encode_indefinite(x: Any, rnd: random.Random) -> bytes:
    """Encodes x with indefinite-length strings, arrays and maps chosen at random."""
    indef = rnd.random() < 0.6
    if isinstance(x, str) and not indef:
        return head(3, len(x.encode())) + x.encode()
    if isinstance(x, str):
        # Chunks split between characters: each chunk must be valid UTF-8 on its own.
        parts = [head(3, len(c.encode())) + c.encode() for c in chunks(x, rnd)]
        return b"\x7f" + b"".join(parts) + b"\xff"
    if isinstance(x, bytes) and not indef:
        return head(2, len(x)) + x
    if isinstance(x, bytes):
        return b"\x5f" + b"".join(head(2, len(c)) + c for c in chunks(x, rnd)) + b"\xff"
    if isinstance(x, list):
        body = b"".join(encode_indefinite(i, rnd) for i in x)
        return (b"\x9f" + body + b"\xff") if indef else head(4, len(x)) + body
    if isinstance(x, dict):
        body = b"".join(encode_indefinite(k, rnd) + encode_indefinite(v, rnd) for k, v in x.items())
        return (b"\xbf" + body + b"\xff") if indef else head(5, len(x)) + body
    return cbor2.dumps(x)


ints64 = st.integers(min_value=-(2**64), max_value=2**64 - 1)
keys = st.one_of(st.text(max_size=8), ints64, st.binary(max_size=8))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    ints64,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
)
documents = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(keys, inner, max_size=6),
    ),
    max_leaves=30,
)


def assert_same(got: Any, want: Any) -> None:
    assert norm(got) == norm(want)


# --- property tests against cbor2 -----------------------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_loads_decodes_what_cbor2_encodes(doc: Any) -> None:
    assume(depth(doc) <= MAX_DEPTH)
    assert_same(cbor.loads(cbor2.dumps(doc)), doc)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_dumps_writes_the_same_bytes_as_cbor2_and_cbor2_reads_them_back(doc: Any) -> None:
    assume(depth(doc) <= MAX_DEPTH)
    encoded = cbor.dumps(doc)
    assert isinstance(encoded, bytes)
    assert encoded == cbor2.dumps(doc)
    assert_same(cbor2.loads(encoded), doc)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.randoms(use_true_random=False))
def test_loads_decodes_indefinite_length_encodings_built_by_hand(doc: Any, rnd: random.Random) -> None:
    assume(depth(doc) <= MAX_DEPTH)
    encoded = encode_indefinite(doc, rnd)
    assert_same(cbor2.loads(encoded), doc)  # the hand encoder itself is right
    assert_same(cbor.loads(encoded), doc)


@given(st.floats(width=16, allow_nan=False))
def test_loads_decodes_half_floats_written_by_cbor2_canonical(x: float) -> None:
    encoded = cbor2.dumps(x, canonical=True)
    assert encoded[0] == 0xF9
    assert_same(cbor.loads(encoded), x)


@given(st.floats(width=32, allow_nan=False))
def test_loads_decodes_single_floats_written_by_cbor2_canonical(x: float) -> None:
    encoded = cbor2.dumps(x, canonical=True)
    assert encoded[0] in (0xF9, 0xFA)
    assert_same(cbor.loads(encoded), x)


def test_every_half_float_decodes_as_struct_e_does() -> None:
    for bits in range(1 << 16):
        got = cbor.loads(b"\xf9" + bits.to_bytes(2, "big"))
        (want,) = struct.unpack(">e", bits.to_bytes(2, "big"))
        assert isinstance(got, float)
        if math.isnan(want):
            assert math.isnan(got), hex(bits)
        else:
            assert struct.pack(">d", got) == struct.pack(">d", want), hex(bits)


@given(st.integers(min_value=0, max_value=2**64 - 1), documents)
def test_a_tag_is_dropped_and_its_value_kept(tag: int, value: Any) -> None:
    assume(depth(value) < MAX_DEPTH)
    encoded = cbor2.dumps(cbor2.CBORTag(tag, value))
    assert_same(cbor.loads(encoded), value)


@given(documents, st.binary(min_size=1))
def test_bytes_after_the_first_item_are_ignored(doc: Any, trailing: bytes) -> None:
    assume(depth(doc) <= MAX_DEPTH)
    assert_same(cbor.loads(cbor2.dumps(doc) + trailing), doc)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_every_strict_prefix_of_a_valid_encoding_is_refused_as_truncated(doc: Any) -> None:
    assume(depth(doc) <= MAX_DEPTH)
    encoded = cbor2.dumps(doc)
    for end in range(len(encoded)):
        with pytest.raises(ValueError):
            cbor.loads(encoded[:end])


@settings(max_examples=3000)
@given(st.binary(max_size=64))
def test_random_bytes_give_a_value_or_value_error_and_nothing_else(data: bytes) -> None:
    try:
        cbor.loads(data)
    except ValueError:
        pass


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_valid_encodings_give_a_value_or_value_error_and_nothing_else(
    doc: Any, edits: list[tuple[int, int]]
) -> None:
    assume(depth(doc) <= MAX_DEPTH)
    data = bytearray(cbor2.dumps(doc))
    for where, byte in edits:
        data[where % len(data)] = byte
    try:
        cbor.loads(bytes(data))
    except ValueError:
        pass


# --- examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_in", "want"),
    [
        ("00", 0),
        ("17", 23),
        ("1818", 24),
        ("1903e8", 1000),
        ("1bffffffffffffffff", 2**64 - 1),
        ("20", -1),
        ("3bffffffffffffffff", -(2**64)),
        ("f4", False),
        ("f5", True),
        ("f6", None),
        ("f7", None),  # undefined
        ("f93c00", 1.0),
        ("f98000", -0.0),
        ("f97bff", 65504.0),
        ("f90001", 2.0**-24),
        ("f9fc00", -math.inf),
        ("fa47c35000", 100000.0),
        ("fb3ff199999999999a", 1.1),
        ("4401020304", b"\x01\x02\x03\x04"),
        ("6449455446", "IETF"),
        ("62c3bc", "\u00fc"),
        ("5f42010243030405ff", b"\x01\x02\x03\x04\x05"),
        ("7f657374726561646d696e67ff", "streaming"),
        ("5fff", b""),
        ("7fff", ""),
        ("9fff", []),
        ("bfff", {}),
        ("9f018202039f0405ffff", [1, [2, 3], [4, 5]]),
        ("bf61610161629f0203ffff", {"a": 1, "b": [2, 3]}),
        ("a26161016162820203", {"a": 1, "b": [2, 3]}),
        ("c074323031332d30332d32315432303a30343a30305a", "2013-03-21T20:04:00Z"),
        ("d82076687474703a2f2f7777772e6578616d706c652e636f6d", "http://www.example.com"),
        ("c249010000000000000000", b"\x01" + b"\x00" * 8),
    ],
)
def test_rfc_8949_appendix_a_examples_decode(hex_in: str, want: Any) -> None:
    assert_same(cbor.loads(bytes.fromhex(hex_in)), want)


def test_nan_decodes_from_half_single_and_double() -> None:
    for hex_in in ("f97e00", "fa7fc00000", "fb7ff8000000000000"):
        got = cbor.loads(bytes.fromhex(hex_in))
        assert isinstance(got, float) and math.isnan(got)


def test_nan_and_infinities_encode_as_half_floats_like_cbor2() -> None:
    assert cbor.dumps(math.nan) == b"\xf9\x7e\x00" == cbor2.dumps(math.nan)
    assert cbor.dumps(math.inf) == b"\xf9\x7c\x00" == cbor2.dumps(math.inf)
    assert cbor.dumps(-math.inf) == b"\xf9\xfc\x00" == cbor2.dumps(-math.inf)


def test_finite_floats_encode_as_doubles() -> None:
    assert cbor.dumps(1.5) == b"\xfb" + struct.pack(">d", 1.5)
    assert cbor.dumps(-0.0) == bytes.fromhex("fb8000000000000000")


def test_booleans_encode_as_simple_values_not_integers() -> None:
    assert cbor.dumps([True, False, 1, 0]) == bytes.fromhex("84f5f40100")


def test_tuple_bytearray_and_memoryview_encode_as_array_and_byte_string() -> None:
    assert cbor.dumps((1, bytearray(b"ab"), memoryview(b"cd"))) == bytes.fromhex("8301426162426364")


def test_duplicate_map_keys_keep_the_last_value_as_cbor2_does() -> None:
    data = bytes.fromhex("a3016161026162016163")
    assert cbor.loads(data) == {1: "c", 2: "b"} == cbor2.loads(data)


def test_map_keys_may_be_byte_strings_integers_floats_and_text() -> None:
    assert cbor.loads(bytes.fromhex("a4410001616101fb3ff80000000000000220f5")) == {
        b"\x00": 1,
        "a": 1,
        1.5: 2,
        -1: True,
    }


def test_nesting_of_sixteen_levels_decodes() -> None:
    got = cbor.loads(nested_list(MAX_DEPTH))
    for _ in range(MAX_DEPTH):
        assert isinstance(got, list) and len(got) == 1
        got = got[0]
    assert got == 0


@pytest.mark.parametrize(
    "encoding",
    [
        nested_list(MAX_DEPTH + 1),
        b"\x9f" * (MAX_DEPTH + 1) + b"\xff" * (MAX_DEPTH + 1),
        b"\xa1\x00" * (MAX_DEPTH + 1) + b"\x00",
        b"\xc1" * (MAX_DEPTH + 1) + b"\x00",
        b"\x81" * 100_000 + b"\x00",
    ],
    ids=["arrays", "indefinite arrays", "maps", "tags", "hundred thousand arrays"],
)
def test_nesting_deeper_than_sixteen_is_refused(encoding: bytes) -> None:
    with pytest.raises(ValueError, match="nesting deeper than 16"):
        cbor.loads(encoding)


def test_nested_tags_count_toward_the_depth_limit_but_sixteen_decode() -> None:
    assert cbor.loads(b"\xc1" * MAX_DEPTH + b"\x07") == 7


@pytest.mark.parametrize(
    "encoding",
    [
        b"\x5a\xff\xff\xff\xff" + b"x" * 16,  # byte string of 2**32-1
        b"\x7b" + (2**32).to_bytes(8, "big") + b"x" * 16,  # text string of 2**32
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # byte string of 2**64-1
        b"\x9b" + (2**32).to_bytes(8, "big") + b"\x00" * 16,  # array of 2**32
        b"\xbb" + (2**32).to_bytes(8, "big") + b"\x00" * 16,  # map of 2**32
        b"\x5f\x5a\xff\xff\xff\xff\x00\xff",  # huge chunk in an indefinite string
    ],
    ids=["bytes", "text", "bytes 2**64", "array", "map", "chunk"],
)
def test_a_declared_length_past_the_buffer_is_refused_before_allocating(encoding: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="runs past the end"):
            cbor.loads(encoding)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_a_count_needing_more_bytes_than_remain_is_refused_up_front() -> None:
    # Ten elements announced, nine bytes left: refused before decoding any element.
    with pytest.raises(ValueError, match="length 10 runs past the end"):
        cbor.loads(b"\x8a" + b"\x00" * 9)
    # A map needs two bytes per pair.
    with pytest.raises(ValueError, match="length 10 runs past the end"):
        cbor.loads(b"\xa5" + b"\x00" * 9)


@pytest.mark.parametrize("hex_in", ["ff", "81ff", "a1ff00", "a101ff", "9f01a1ff", "c1ff"])
def test_a_stray_break_is_refused(hex_in: str) -> None:
    with pytest.raises(ValueError):
        cbor.loads(bytes.fromhex(hex_in))


def test_a_top_level_break_names_the_cause() -> None:
    with pytest.raises(ValueError, match="stray break"):
        cbor.loads(b"\xff")


@pytest.mark.parametrize("major", range(8))
@pytest.mark.parametrize("ai", [28, 29, 30])
def test_reserved_additional_info_is_refused_in_every_major_type(major: int, ai: int) -> None:
    with pytest.raises(ValueError, match="reserved additional info {}".format(ai)):
        cbor.loads(bytes([major << 5 | ai]) + b"\x00" * 16)


@pytest.mark.parametrize("hex_in", ["1f", "3f", "df00"])
def test_indefinite_length_is_refused_for_integers_and_tags(hex_in: str) -> None:
    with pytest.raises(ValueError, match="indefinite length"):
        cbor.loads(bytes.fromhex(hex_in))


@pytest.mark.parametrize(
    "hex_in",
    ["5f01ff", "5f6161ff", "7f4161ff", "5f5f4100ffff", "7f7f6161ffff"],
    ids=["integer chunk", "text in bytes", "bytes in text", "nested indefinite bytes", "nested text"],
)
def test_an_indefinite_string_with_a_foreign_chunk_is_refused(hex_in: str) -> None:
    with pytest.raises(ValueError, match="bad chunk"):
        cbor.loads(bytes.fromhex(hex_in))


@pytest.mark.parametrize("hex_in", ["61ff", "62c328", "62e282", "63f0908c", "7f6161 61ff ff", "62eda080"])
def test_invalid_utf8_in_a_text_string_is_refused(hex_in: str) -> None:
    with pytest.raises(ValueError, match="not UTF-8") as info:
        cbor.loads(bytes.fromhex(hex_in.replace(" ", "")))
    assert type(info.value) is ValueError


@pytest.mark.parametrize("hex_in", ["a1800000", "a1a00000", "a1c1800000", "bf8000ff"])
def test_an_array_or_map_as_map_key_is_refused(hex_in: str) -> None:
    with pytest.raises(ValueError, match="unhashable map key") as info:
        cbor.loads(bytes.fromhex(hex_in))
    assert type(info.value) is ValueError


@pytest.mark.parametrize("hex_in", ["e0", "f0", "f3", "f800", "f820", "f8ff"])
def test_unassigned_simple_values_are_refused(hex_in: str) -> None:
    with pytest.raises(ValueError, match="unsupported simple value"):
        cbor.loads(bytes.fromhex(hex_in))


@pytest.mark.parametrize(
    "hex_in", ["", "18", "1900", "1a000000", "1b00000000000000", "f9", "fa0000", "fb00", "9f", "bf01"]
)
def test_truncated_heads_and_open_indefinite_items_are_refused(hex_in: str) -> None:
    with pytest.raises(ValueError):
        cbor.loads(bytes.fromhex(hex_in))


@pytest.mark.parametrize("data", ["text", 5, None, [0]])
def test_loads_refuses_a_non_buffer_with_type_error(data: Any) -> None:
    with pytest.raises(TypeError):
        cbor.loads(data)


# --- buffers -------------------------------------------------------------------------------------


def test_loads_accepts_bytes_bytearray_and_memoryview() -> None:
    encoded = cbor2.dumps({"a": [1, b"xy", "z"]})
    for data in (encoded, bytearray(encoded), memoryview(encoded), memoryview(bytearray(encoded))):
        assert cbor.loads(data) == {"a": [1, b"xy", "z"]}


def test_loads_of_a_receive_buffer_slice_returns_independent_bytes() -> None:
    rx = bytearray(b"\xee" * 256)
    encoded = cbor2.dumps({"certificatePem": "PEM", "raw": b"\x01\x02"})
    rx[: len(encoded)] = encoded
    got = cbor.loads(memoryview(rx)[: len(encoded)])
    assert got == {"certificatePem": "PEM", "raw": b"\x01\x02"}
    assert type(got["raw"]) is bytes
    rx[:] = b"\x00" * len(rx)  # the next message overwrites the buffer
    assert got == {"certificatePem": "PEM", "raw": b"\x01\x02"}


def test_loads_of_a_view_does_not_read_past_the_view() -> None:
    rx = bytearray(cbor2.dumps([1, 2, 3]))
    with pytest.raises(ValueError):
        cbor.loads(memoryview(rx)[:3])


def test_loads_of_a_small_item_in_a_large_buffer_does_not_copy_the_buffer() -> None:
    rx = bytearray(4 * 1024 * 1024)
    encoded = cbor2.dumps({"token": "t" * 100})
    rx[: len(encoded)] = encoded
    view = memoryview(rx)
    tracemalloc.start()
    try:
        got = cbor.loads(view)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == {"token": "t" * 100}
    assert peak < 64 * 1024


# --- encoder errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, [2**70], {"a": -(2**65)}])
def test_dumps_refuses_integers_beyond_64_bits_with_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="beyond 64 bits"):
        cbor.dumps(value)


@pytest.mark.parametrize("value", [{1, 2}, object(), 1j, [frozenset()], {"a": object()}])
def test_dumps_refuses_other_types_with_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="cannot encode type"):
        cbor.dumps(value)


def test_dumps_refuses_nesting_deeper_than_sixteen() -> None:
    value: Any = 0
    for _ in range(MAX_DEPTH):
        value = [value]
    assert cbor.dumps(value) == nested_list(MAX_DEPTH)
    with pytest.raises(ValueError, match="deeper than 16"):
        cbor.dumps([value])


def test_dumps_refuses_a_self_containing_list_without_recursion_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        cbor.dumps(loop)


def test_dumps_writes_shortest_form_heads_at_every_boundary() -> None:
    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        assert cbor.dumps(n) == cbor2.dumps(n)
        assert cbor.dumps(-n - 1) == cbor2.dumps(-n - 1)
    for n in (0, 23, 24, 255, 256, 65536):
        assert cbor.dumps(b"x" * n) == cbor2.dumps(b"x" * n)
        assert cbor.dumps(list(range(n))[:300]) == cbor2.dumps(list(range(n))[:300])
