"""JSON iotsim did not write itself (tools/iotsim/untrusted.py): what nests within the bound
parses exactly as json.loads parses it; deeper is refused before the parser starts, so the
parser never recurses to the interpreter's limit, where the garbage collector's finalizers
fail too (that once failed CI through test_deeply_nested_json_is_a_400_not_a_crash)."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.iotsim import untrusted
from tools.iotsim.untrusted import MAX_DEPTH, NestedTooDeep

# Strings full of what a depth count could mistake for structure.
TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\/ax\u00e9\u2028\U0001f600'), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=30,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def nested(levels: int, leaf: Any = '"]}\\"[{') -> Any:
    """Arrays and objects alternating, ``levels`` deep, around a string that looks like brackets."""
    value = leaf
    for level in range(levels):
        value = [value, "[["] if level % 2 else {'k"[': value}
    return value


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans(), st.booleans())
def test_any_value_within_the_bound_parses_as_json_loads_parses_it(
    value: Any, ascii_only: bool, as_bytes: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert untrusted.loads(text.encode() if as_bytes else text) == json.loads(text)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_the_bound_is_exact(as_bytes: bool) -> None:
    for levels, allowed in ((MAX_DEPTH - 1, True), (MAX_DEPTH, True), (MAX_DEPTH + 1, False)):
        value = nested(levels)
        assert depth_of(value) == levels
        text = json.dumps(value)
        data: str | bytes = text.encode() if as_bytes else text
        if allowed:
            assert untrusted.loads(data) == value
        else:
            with pytest.raises(NestedTooDeep, match="deeper than {} levels".format(MAX_DEPTH)):
                untrusted.loads(data)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 1_000_000,
        b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
        b'["\\"", ' + b"[" * 5_000,  # an escaped quote does not end the string early
        b'["\\\\", ' + b"[" * 5_000,  # an escaped backslash does not escape the quote after it
        "[" * 5_000 + "\ud800",  # a lone surrogate in a str
    ],
    ids=["arrays", "objects", "escaped-quote", "escaped-backslash", "lone-surrogate"],
)
def test_hostile_depth_is_refused_before_parsing(data: str | bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def parser_reached(_: object) -> None:
        raise AssertionError("the parser was handed the hostile text")

    monkeypatch.setattr(untrusted.json, "loads", parser_reached)
    with pytest.raises(NestedTooDeep):
        untrusted.loads(data)


@pytest.mark.parametrize(
    "data",
    [b'"unterminated [[[', b"[1, 2", b"\\", b'["\\', b"\xff[]", b"{'single': 'quotes'}", b"", "\ud800"],
)
def test_text_that_is_not_json_is_a_value_error(data: str | bytes) -> None:
    with pytest.raises(ValueError):
        untrusted.loads(data)


class _FinalizedInACycle:
    """Garbage only the collector frees; its finalizer needs a few frames of stack."""

    def __init__(self) -> None:
        self.other = self

    def __del__(self) -> None:
        def descend(n: int) -> int:
            return descend(n - 1) if n else 0

        descend(30)


@pytest.fixture
def unraisable() -> Iterator[list[BaseException | None]]:
    seen: list[BaseException | None] = []
    hook, threshold = sys.unraisablehook, gc.get_threshold()
    sys.unraisablehook = lambda info: seen.append(info.exc_value)
    try:
        yield seen
    finally:
        sys.unraisablehook = hook
        gc.set_threshold(*threshold)
        gc.collect()


def test_no_finalizer_fails_while_hostile_json_is_refused(unraisable: list[BaseException | None]) -> None:
    # Collections at varied points: with json.loads in place of untrusted.loads, some fall at
    # the parser's deepest level and the finalizers they run raise RecursionError.
    for round_ in range(20):
        gc.set_threshold(50 + 37 * round_)
        for _ in range(100):
            _FinalizedInACycle()
        for body in (b"[" * 5_000, b'{"a":' * 5_000):
            with pytest.raises(NestedTooDeep):
                untrusted.loads(body)
    assert unraisable == []
