"""lib/cbor.py on the real MicroPython unix port, checked against cbor2 on the host.

All cases run in one MicroPython process: the host writes a script holding the
cases as literals, MicroPython prints one line per case, and the host compares
each line with what cbor2 says. Values are compared through `show()`, a
canonical text form both interpreters compute the same way (MicroPython's repr
of str and float differs from CPython's, so repr is not used).
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path
from typing import Any

import cbor2
import pytest

MAX_DEPTH = 16

SHOW_SRC = r'''
import binascii
import struct


def show(x):
    if x is None:
        return "N"
    if x is True:
        return "T"
    if x is False:
        return "F"
    t = type(x)
    if t is int:
        return "i" + str(x)
    if t is float:
        return "fnan" if x != x else "f" + binascii.hexlify(struct.pack(">d", x)).decode()
    if t is str:
        return "s" + binascii.hexlify(x.encode("utf-8")).decode()
    if t is bytes:
        return "b" + binascii.hexlify(x).decode()
    if t is list or t is tuple:
        return "[" + ",".join([show(i) for i in x]) + "]"
    if t is dict:
        return "{" + ",".join(sorted([show(k) + ":" + show(x[k]) for k in x])) + "}"
    return "?" + t.__name__
'''

_namespace: dict[str, Any] = {}
exec(SHOW_SRC, _namespace)
show = _namespace["show"]


def lit(x: Any, ordered: bool) -> str:
    """x as Python source that MicroPython evaluates to the same value.

    Floats go through struct so that no decimal parsing is involved. MicroPython's
    dict does not keep insertion order, so with `ordered` maps become OrderedDicts
    (a dict subclass there too) and the encoding can be compared byte for byte.
    """
    if isinstance(x, float):
        return "struct.unpack('>d', {!r})[0]".format(struct.pack(">d", x))
    if isinstance(x, list):
        return "[" + ", ".join(lit(i, ordered) for i in x) + "]"
    if isinstance(x, tuple):
        return "(" + "".join(lit(i, ordered) + ", " for i in x) + ")"
    if isinstance(x, dict) and ordered:
        pairs = ("(" + lit(k, ordered) + ", " + lit(v, ordered) + ")" for k, v in x.items())
        return "OrderedDict([" + ", ".join(pairs) + "])"
    if isinstance(x, dict):
        return "{" + ", ".join(lit(k, ordered) + ": " + lit(v, ordered) for k, v in x.items()) + "}"
    return repr(x)


def random_document(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(9 if depth < 4 else 7)
    if kind == 0:
        return rnd.choice([None, True, False])
    if kind == 1:
        return rnd.randint(-(2**64), 2**64 - 1) >> rnd.randrange(65)
    if kind == 2:
        return -rnd.randrange(1 << rnd.randrange(66))
    if kind == 3:
        return rnd.choice(
            [struct.unpack(">d", rnd.randbytes(8))[0], rnd.uniform(-1e6, 1e6), math.inf, -0.0, 0.5]
        )
    if kind == 4:
        size = rnd.randrange(30)
        codes = (rnd.choice([rnd.randrange(32, 127), rnd.randrange(0xA0, 0xD7FF)]) for _ in range(size))
        return "".join(map(chr, codes))
    if kind == 5:
        return rnd.randbytes(rnd.randrange(300))
    if kind == 6:
        return rnd.choice(["", b"", "x" * 24, b"y" * 256])
    if kind == 7:
        return [random_document(rnd, depth + 1) for _ in range(rnd.randrange(6))]
    keys = [
        rnd.choice(["k%d" % rnd.randrange(100), rnd.randrange(-300, 300), rnd.randbytes(3)]) for _ in range(5)
    ]
    return {k: random_document(rnd, depth + 1) for k in keys[: rnd.randrange(6)]}


def indefinite(major: int, *parts: bytes) -> bytes:
    return bytes([major << 5 | 31]) + b"".join(parts) + b"\xff"


# Documents for both directions: boundaries by hand, then seeded random ones.
DOCUMENTS: list[Any] = [
    0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
    -1, -24, -25, -256, -257, -(2**32), -(2**64),
    True, False, None, 1.5, -0.0, 1e300, 5e-324, math.inf, -math.inf, math.nan,
    "", "a", "\u00e9\u20ac\U0001f600", "x" * 23, "x" * 24, "x" * 300,
    b"", b"\x00\xff", b"z" * 256,
    [], [1, [2, [3, []]]], (1, 2),
    {}, {"a": 1, "b": [True, None]}, {1: b"x", -2: "y", b"k": 2.5},
    {"certificateId": "ab" * 32, "certificatePem": "-----BEGIN CERTIFICATE-----\n" + "A" * 1200,
     "privateKey": "-----BEGIN RSA PRIVATE KEY-----\n" + "B" * 1600, "certificateOwnershipToken": "T" * 700},
]
_rnd = random.Random(20261122)
DOCUMENTS += [random_document(_rnd) for _ in range(150)]

# (encoding, expected value) pairs made by cbor2 or by hand, for decoding on the device.
DECODE_CASES: list[tuple[bytes, Any]] = [(cbor2.dumps(d), d) for d in DOCUMENTS]
HALF_AND_SINGLE = (1.0, -2.0, 65504.0, 2.0**-24, 0.333251953125, 100000.0, 3.4028234663852886e38, -0.0)
DECODE_CASES += [(cbor2.dumps(x, canonical=True), x) for x in HALF_AND_SINGLE]
DECODE_CASES += [
    (bytes.fromhex("f97e00"), math.nan),
    (bytes.fromhex("fa7fc00000"), math.nan),
    (bytes.fromhex("f7"), None),
    (cbor2.dumps(cbor2.CBORTag(1, 1363896240)), 1363896240),
    (cbor2.dumps(cbor2.CBORTag(2**64 - 1, [1, "x"])), [1, "x"]),
    (bytes.fromhex("d820c1c2a1616101"), {"a": 1}),
    (indefinite(2, b"\x42\x01\x02", b"\x40", b"\x41\x03"), b"\x01\x02\x03"),
    (indefinite(3, b"\x65strea", b"\x64ming", b"\x62\xc3\xa9"), "streaming\u00e9"),
    (indefinite(4, b"\x01", indefinite(4, b"\x02"), b"\x9f\xff"), [1, [2], []]),
    (indefinite(5, b"\x61a", indefinite(4), b"\x01", indefinite(5)), {"a": [], 1: {}}),
    (bytes.fromhex("a3016161026162016163"), {1: "c", 2: "b"}),
    (b"\x81" * MAX_DEPTH + b"\x00", [[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]),
    (b"\xc1" * MAX_DEPTH + b"\x07", 7),
    (cbor2.dumps({"a": 1}) + b"\xff\xff\x1c trailing", {"a": 1}),
]

# Encodings the device must refuse with ValueError.
ERROR_CASES: list[bytes] = [
    b"",
    b"\xff",
    b"\x81\xff",
    b"\x9f\x01\xa1\xff",
    b"\x1c",
    b"\x5d",
    b"\xfe",
    b"\x1f",
    b"\xdf\x00",
    b"\x5f\x01\xff",
    b"\x7f\x41a\xff",
    b"\x5f\x5f\x41\x00\xff\xff",
    b"\x61\xff",
    b"\x62\xc3\x28",
    b"\x7f\x61a\x61\xff\xff",
    b"\xa1\x80\x00\x00",
    b"\xa1\xa0\x00\x00",
    b"\xf0",
    b"\xf8\x20",
    b"\x81" * (MAX_DEPTH + 1) + b"\x00",
    b"\xc1" * (MAX_DEPTH + 1) + b"\x00",
    b"\x81" * 5000 + b"\x00",
    b"\x5a\xff\xff\xff\xff" + b"x" * 16,
    b"\x7b" + (2**32).to_bytes(8, "big") + b"x" * 16,
    b"\x9b" + (2**32).to_bytes(8, "big") + b"\x00" * 16,
    b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff" + b"\x00" * 16,
    b"\x8a" + b"\x00" * 9,
]
for _doc in ({"a": [1, 2.5, "xy", b"z"], "b": None}, 2**64 - 1, -1.5, "\u00e9t\u00e9"):
    _enc = cbor2.dumps(_doc)
    ERROR_CASES += [_enc[:end] for end in range(len(_enc))]

# Values the encoder must refuse: (literal, exception name).
ENCODE_ERROR_CASES: list[tuple[str, str]] = [
    ("2**64", "ValueError"),
    ("-(2**64) - 1", "ValueError"),
    ("[1, {'a': 2**70}]", "ValueError"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "ValueError"),
    ("object()", "TypeError"),
    ("{1, 2}", "TypeError"),
    ("[1, object]", "TypeError"),
]


def device_script() -> str:
    lines = [
        "import gc",
        "from collections import OrderedDict",
        "import cbor",
        SHOW_SRC,
        "",
        "def attempt(f, x):",
        "    try:",
        "        f(x)",
        "    except Exception as e:",
        "        return type(e).__name__",
        "    return 'no error'",
        "",
        "# A receive buffer taking most of the heap: decoding a view of it must not copy it.",
        "gc.collect()",
        "rx = bytearray(gc.mem_free() * 6 // 10)",
        "enc = {!r}".format(cbor2.dumps({"token": "t" * 100, "raw": b"\x01\x02"})),
        "rx[:len(enc)] = enc",
        "print('BIG', show(cbor.loads(memoryview(rx))))",
        "print('SHORTVIEW', attempt(cbor.loads, memoryview(rx)[:3]))",
        "v = cbor.loads(memoryview(rx)[:len(enc)])",
        "rx[:len(enc)] = bytes(len(enc))",
        "print('VIEW', show(v), type(v['raw']).__name__)",
        "print('BYTEARRAY', show(cbor.loads(bytearray(enc))))",
        "del rx, v",
        "gc.collect()",
        "",
    ]
    lines.append("ENCODE = [")
    lines += ["    {},".format(lit(d, True)) for d in DOCUMENTS]
    lines.append("]")
    lines.append("ENCODE_PLAIN = [")
    lines += ["    {},".format(lit(d, False)) for d in DOCUMENTS]
    lines.append("]")
    lines.append("DECODE = [")
    lines += ["    {!r},".format(enc) for enc, _ in DECODE_CASES]
    lines.append("]")
    lines.append("ERRORS = [")
    lines += ["    {!r},".format(enc) for enc in ERROR_CASES]
    lines.append("]")
    lines.append("ENCODE_ERRORS = [")
    lines += ["    {},".format(src) for src, _ in ENCODE_ERROR_CASES]
    lines.append("]")
    lines += [
        "for x in ENCODE:",
        "    print('E', binascii.hexlify(cbor.dumps(x)).decode())",
        "for x in ENCODE_PLAIN:",
        "    print('P', binascii.hexlify(cbor.dumps(x)).decode())",
        "for d in DECODE:",
        "    print('D', show(cbor.loads(d)))",
        "for d in ERRORS:",
        "    print('X', attempt(cbor.loads, d))",
        "for x in ENCODE_ERRORS:",
        "    print('Y', attempt(cbor.dumps, x))",
        "print('DONE')",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def device_output(micropython, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    script = Path(tmp_path_factory.mktemp("cbor_device")) / "cbor_cases.py"
    script.write_text(device_script(), encoding="utf-8")
    proc = micropython.run(script=script, heapsize=2 * 1024 * 1024)
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        out.setdefault(tag, []).append(rest)
    assert out.get("DONE") == [""], proc.stdout[-2000:]
    return out


def test_device_encodes_every_document_byte_for_byte_as_cbor2(device_output: dict[str, list[str]]) -> None:
    got = device_output["E"]
    assert len(got) == len(DOCUMENTS)
    for doc, line in zip(DOCUMENTS, got):
        assert line == cbor2.dumps(doc).hex(), doc


def test_device_encodes_plain_dicts_in_its_own_order_and_cbor2_reads_the_same_values(
    device_output: dict[str, list[str]],
) -> None:
    got = device_output["P"]
    assert len(got) == len(DOCUMENTS)
    for doc, line in zip(DOCUMENTS, got):
        encoded = bytes.fromhex(line)
        assert len(encoded) == len(cbor2.dumps(doc)), doc
        assert show(cbor2.loads(encoded)) == show(doc), doc


def test_device_decodes_cbor2_and_hand_made_encodings_to_the_same_values(
    device_output: dict[str, list[str]],
) -> None:
    got = device_output["D"]
    assert len(got) == len(DECODE_CASES)
    for (enc, want), line in zip(DECODE_CASES, got):
        assert line == show(want), enc.hex()


def test_device_refuses_malformed_truncated_and_hostile_input_with_value_error(
    device_output: dict[str, list[str]],
) -> None:
    got = device_output["X"]
    assert len(got) == len(ERROR_CASES)
    wrong = [(enc.hex()[:40], line) for enc, line in zip(ERROR_CASES, got) if line != "ValueError"]
    assert wrong == []


def test_device_encoder_refuses_out_of_range_deep_and_foreign_values(
    device_output: dict[str, list[str]],
) -> None:
    assert device_output["Y"] == [name for _, name in ENCODE_ERROR_CASES]


def test_device_decodes_a_view_of_a_receive_buffer_larger_than_the_free_heap(
    device_output: dict[str, list[str]],
) -> None:
    assert device_output["BIG"] == [show({"token": "t" * 100, "raw": b"\x01\x02"})]


def test_device_values_decoded_from_a_view_survive_the_buffer_being_overwritten(
    device_output: dict[str, list[str]],
) -> None:
    assert device_output["VIEW"] == [show({"token": "t" * 100, "raw": b"\x01\x02"}) + " bytes"]
    assert device_output["BYTEARRAY"] == [show({"token": "t" * 100, "raw": b"\x01\x02"})]
    assert device_output["SHORTVIEW"] == ["ValueError"]


def test_the_host_oracle_agrees_with_the_cases() -> None:
    # Guards the test data itself: cbor2 reads the documents back as written.
    for doc in DOCUMENTS:
        back = cbor2.loads(cbor2.dumps(doc))
        assert show(back) == show(list(doc) if isinstance(doc, tuple) else doc)
    for enc in ERROR_CASES[:5]:
        with pytest.raises(cbor2.CBORDecodeError):
            cbor2.loads(enc)
