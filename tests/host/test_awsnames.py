"""The device's template-name rule (lib/awsnames.py) against the host's (iotsim)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import awsnames
from tools.iotsim.templates import TEMPLATE_NAME

NAME_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"


@given(st.text(alphabet=st.sampled_from(NAME_CHARS + "/+#. é\n$"), max_size=40))
def test_the_device_accepts_exactly_the_names_iotsim_accepts(name: str) -> None:
    assert awsnames.template_name_ok(name) == bool(TEMPLATE_NAME.match(name))


@pytest.mark.parametrize("name", ["a", "x" * 36, "Fleet_Prov-1"])
def test_names_of_1_to_36_allowed_characters_pass(name: str) -> None:
    assert awsnames.template_name_ok(name)


@pytest.mark.parametrize("name", ["", "x" * 37, "a/b", "a+", "#", "é", "a b", "a\n", None, 5, b"abc", ["a"]])
def test_empty_long_topic_changing_or_non_text_names_fail(name: Any) -> None:
    assert not awsnames.template_name_ok(name)


@given(st.text(alphabet=st.sampled_from(NAME_CHARS + ":/+#. é\n$\x00"), max_size=140))
def test_a_thing_name_passes_exactly_when_botocores_pattern_and_length_allow_it(name: str) -> None:
    # botocore's iot model: ThingName, [a-zA-Z0-9:_-]+, 1 to 128
    assert awsnames.thing_name_ok(name) == bool(re.fullmatch(r"[a-zA-Z0-9:_-]{1,128}", name))


@given(st.text(alphabet=st.sampled_from("0123456789abcdefABCDEFgz/\n"), max_size=70))
def test_a_certificate_id_is_64_hex_digits(cid: str) -> None:
    assert awsnames.certificate_id_ok(cid) == bool(re.fullmatch(r"[0-9a-fA-F]{64}", cid))


@pytest.mark.parametrize("value", [None, 5, b"a" * 64, ["a"]])
def test_names_that_are_not_text_fail_every_rule(value: Any) -> None:
    assert not awsnames.thing_name_ok(value) and not awsnames.certificate_id_ok(value)
