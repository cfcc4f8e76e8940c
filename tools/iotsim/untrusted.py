"""JSON that iotsim did not write itself (API bodies, device payloads, documents inside them),
parsed only when its nesting is within a bound.

Python's parser recurses once per level and stops only at the interpreter's recursion
limit; at that depth every finalizer the garbage collector happens to run fails too,
so hostile depth is refused before the parser starts. The depth is found without a
Python loop over the text, so a megabyte costs what the parser itself costs.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

# iotsim's choice: AWS documents none; its own policy and template documents nest a handful of levels.
# The provisioning service gives cbor2 the same bound for CBOR payloads.
MAX_DEPTH = 64

_ESCAPE = re.compile(rb"\\.", re.S)  # valid JSON has a backslash only inside a string, as an escape
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


class NestedTooDeep(ValueError):
    """The text nests arrays and objects deeper than MAX_DEPTH."""


def _too_deep(text: str | bytes) -> bool:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    outside_strings = b"".join(_ESCAPE.sub(b"", raw).split(b'"')[::2])
    brackets = outside_strings.translate(None, _NOT_BRACKET)
    if brackets.count(b"[") + brackets.count(b"{") <= MAX_DEPTH:
        return False  # the usual case, decided without walking the brackets
    return max(accumulate(map(_STEP.__getitem__, brackets))) > MAX_DEPTH


def loads(text: str | bytes) -> Any:
    """json.loads, after refusing (NestedTooDeep, a ValueError) what nests deeper than MAX_DEPTH."""
    if _too_deep(text):
        raise NestedTooDeep("it nests deeper than {} levels (iotsim's limit)".format(MAX_DEPTH))
    return json.loads(text)
