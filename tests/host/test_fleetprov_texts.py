"""fleetprov's failure texts (lib/fleetprov_texts.py), loaded only when an operation fails.

fleetprov names a text by a const() number; these tests hold the numbers, the
names in fleetprov_texts' comments and the count of {} fields together, and
check what a failure says when the texts cannot be loaded.
"""

from __future__ import annotations

import ast
import re
import string
import sys
from pathlib import Path

import pytest

import fleetprov
import fleetprov_texts

LIB = Path(__file__).resolve().parents[2] / "lib"
SOURCE = (LIB / "fleetprov.py").read_text()
TEXTS_SOURCE = (LIB / "fleetprov_texts.py").read_text()


def text_constants() -> dict[str, int]:
    """fleetprov's text constants: every `_NAME = const(n)` after the texts' heading comment."""
    block = SOURCE.split("# Failure texts:", 1)[1].split("\n\n", 1)[0]
    return {name: int(n) for name, n in re.findall(r"^(_[A-Z_]+) = const\((\d+)\)$", block, re.M)}


def fields(text: str) -> int:
    return sum(1 for _, name, _, _ in string.Formatter().parse(text) if name is not None)


def test_every_text_constant_names_its_text_in_order() -> None:
    constants = text_constants()
    named = {name: int(n) for n, name in re.findall(r"^    # (\d+) (_[A-Z_]+)$", TEXTS_SOURCE, re.M)}
    assert constants, "no text constants found in fleetprov.py"
    assert named == constants
    assert sorted(constants.values()) == list(range(len(fleetprov_texts.TEXTS)))


def test_every_text_is_used_and_every_call_fills_its_fields() -> None:
    constants = text_constants()
    used: set[str] = set()
    for node in ast.walk(ast.parse(SOURCE)):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        # _err(op, status, TEXT, *args); self._convert(op, fn, data, status, TEXT, *args) adds the cause
        position, extra = {"_err": (2, 0), "_convert": (4, 1)}.get(callee, (None, 0))
        if position is None or len(node.args) <= position:
            continue
        text = node.args[position]
        if not (isinstance(text, ast.Name) and text.id in constants):
            continue  # _mqtt passes the text it chose in a variable: checked below
        used.add(text.id)
        args = node.args[position + 1 :]
        assert not any(isinstance(a, ast.Starred) for a in args), ast.unparse(node)
        want = fields(fleetprov_texts.TEXTS[constants[text.id]])
        assert len(args) + extra == want, f"line {node.lineno}: {ast.unparse(node)} fills {len(args) + extra} of {want}"
    # _mqtt's texts take (what, cause), the first two leaving the cause out
    for name, want in (("_SUBACK_REFUSED", 1), ("_LINK_OUT_OF_MEMORY", 1), ("_LINK_FAILED", 2)):
        assert fields(fleetprov_texts.TEXTS[constants[name]]) == want
        used.add(name)
    assert used == set(constants), set(constants) - used


def test_the_texts_load_only_when_a_failure_needs_one() -> None:
    sys.modules.pop("fleetprov_texts", None)
    fleetprov.strerror(fleetprov.TIMEOUT)  # no failure: nothing to say
    assert "fleetprov_texts" not in sys.modules
    with pytest.raises(fleetprov.ProvisioningError) as info:
        fleetprov.Provisioner(object())
    assert str(info.value) == "Provisioner: client has no set_callback(): pass an umqtt.simple MQTTClient"
    assert info.value.status == fleetprov.BAD_PARAMETER
    assert "fleetprov_texts" in sys.modules


def test_without_the_texts_file_a_failure_still_names_its_text_and_the_missing_file(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "fleetprov_texts", None)  # import raises ImportError, as without the file
    with pytest.raises(fleetprov.ProvisioningError) as info:
        fleetprov.Provisioner(object())
    assert str(info.value) == "Provisioner: text 0 ('set_callback',): lib/fleetprov_texts.py is missing"
    assert info.value.status == fleetprov.BAD_PARAMETER


class _NoRoom:
    @property
    def TEXTS(self):  # noqa: N802 - the module attribute it stands in for
        raise MemoryError


def test_out_of_memory_for_the_text_keeps_the_status_and_the_operation(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "fleetprov_texts", _NoRoom())
    with pytest.raises(fleetprov.ProvisioningError) as info:
        fleetprov.Provisioner(object())
    assert str(info.value) == "Provisioner: no memory for the text"
    assert info.value.status == fleetprov.BAD_PARAMETER
