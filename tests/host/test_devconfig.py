"""lib/devconfig.py: config.json validation names the one bad field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import devconfig
import pytest
from devconfig import ConfigError

MINIMAL = {"endpoint": "127.0.0.1", "template": "FleetprovDemo"}


def test_minimal_config_gets_every_documented_default() -> None:
    cfg = devconfig.validate(dict(MINIMAL))
    assert cfg["port"] == 8883
    assert cfg["server_hostname"] == "127.0.0.1"
    assert cfg["client_id"] is None
    assert cfg["parameters"] == {}
    assert (cfg["format"], cfg["method"], cfg["cert_dir"]) == ("json", "keys", "certs")
    assert (cfg["ca"], cfg["claim_cert"], cfg["claim_key"]) == ("ca.der", "claim.der", "claim.key.der")
    assert cfg["app_topic"] == "fleetprov/{thing_name}/hello"
    assert (cfg["connect_timeout_ms"], cfg["mqtt_timeout_ms"], cfg["response_timeout_ms"]) == (
        10000,
        5000,
        10000,
    )
    assert (cfg["retry_attempts"], cfg["retry_base_ms"], cfg["retry_max_ms"]) == (5, 1000, 30000)
    assert cfg["rx_size"] == 6144 and cfg["wifi"] is None


def test_every_field_in_the_documentation_is_validated() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for name, *_ in devconfig._FIELDS:
        assert f"| `{name}` |" in doc, name


def test_the_iotsim_example_in_the_documentation_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for block in doc.split("```json")[1:]:
        devconfig.validate(json.loads(block.split("```")[0]))


@pytest.mark.parametrize("field", ["endpoint", "template"])
def test_a_missing_required_field_is_named(field: str) -> None:
    raw = dict(MINIMAL)
    del raw[field]
    with pytest.raises(ConfigError, match=f"^config.json: field '{field}' is missing"):
        devconfig.validate(raw)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("endpoint", 5, "must be a string, got int 5"),
        ("endpoint", "", "must not be empty"),
        ("port", "8883", 'must be an integer, got str "8883"'),
        ("port", True, "must be an integer, got bool true"),
        ("port", 0, "out of range: 0"),
        ("port", 70000, "out of range: 70000"),
        ("port", 8883.0, "must be an integer, got float"),
        ("template", ["a"], "must be a string, got list"),
        ("template", "bad name", "must be 1-36 of"),
        ("template", "x" * 37, "must be 1-36 of"),
        ("parameters", "SerialNumber", "must be an object, got str"),
        ("format", "xml", 'must be one of json or cbor, got "xml"'),
        ("method", "KEYS", 'must be one of keys or csr, got "KEYS"'),
        ("cert_dir", 1, "must be a string"),
        ("client_id", {}, "must be a string, got dict"),
        ("wifi", "home", "must be an object"),
        ("connect_timeout_ms", -1, "out of range: -1"),
        ("mqtt_timeout_ms", 0, "out of range: 0"),
        ("response_timeout_ms", "10s", "must be an integer"),
        ("rx_size", 512, "out of range: 512"),
        ("retry_attempts", 0, "out of range: 0"),
        ("retry_base_ms", -5, "out of range: -5"),
        ("retry_max_ms", None, None),  # null means "use the default"
    ],
)
def test_a_field_of_the_wrong_type_or_value_is_named_with_the_value(
    field: str, value: Any, words: str | None
) -> None:
    raw = dict(MINIMAL, **{field: value})
    if words is None:
        assert devconfig.validate(raw)[field] == 30000
        return
    with pytest.raises(ConfigError) as info:
        devconfig.validate(raw)
    msg = str(info.value)
    assert msg.startswith(f"config.json: field '{field}' ")
    assert words in msg
    assert "\n" not in msg


def test_zero_backoff_is_allowed() -> None:
    assert devconfig.validate(dict(MINIMAL, retry_base_ms=0, retry_max_ms=0))["retry_base_ms"] == 0


def test_a_non_string_parameter_value_is_named() -> None:
    with pytest.raises(ConfigError, match="field 'parameters.SerialNumber' must be a string, got int 42"):
        devconfig.validate(dict(MINIMAL, parameters={"SerialNumber": 42}))


@pytest.mark.parametrize("key", ["ssid", "password"])
def test_wifi_fields_are_checked_and_the_password_is_never_echoed(key: str) -> None:
    wifi = {"ssid": "net", "password": "hunter2"}
    wifi[key] = 12345678
    with pytest.raises(ConfigError) as info:
        devconfig.validate(dict(MINIMAL, wifi=wifi))
    assert f"field 'wifi.{key}' must be a string, got int" in str(info.value)
    assert "12345678" not in str(info.value) and "hunter2" not in str(info.value)
    del wifi[key]
    with pytest.raises(ConfigError, match=f"field 'wifi.{key}' is missing"):
        devconfig.validate(dict(MINIMAL, wifi=wifi))


def test_a_top_level_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ConfigError, match="must hold a JSON object, got list"):
        devconfig.validate([MINIMAL])


@pytest.mark.parametrize(
    "typo, field",
    [
        ("rx_sise", "rx_size"),
        ("templat", "template"),
        ("templates", "template"),
        ("endpiont", "endpoint"),
        ("clientid", "client_id"),
        ("Port", "port"),
        ("RX_SIZE", "rx_size"),
        ("retry_base", "retry_base_ms"),
        ("response_timeout", "response_timeout_ms"),
        ("connection_timeout", "connect_timeout_ms"),
        ("cert-dir", "cert_dir"),
        ("rx_size ", "rx_size"),
    ],
)
def test_a_misspelt_field_stops_the_device_with_a_did_you_mean(typo: str, field: str) -> None:
    # Ignoring it would leave the setting meant at its default without a word.
    with pytest.raises(ConfigError) as info:
        devconfig.validate(dict(MINIMAL, **{typo: 1}))
    assert str(info.value) == f"config.json: field '{typo}' is unknown (did you mean '{field}'?)"


@pytest.mark.parametrize("name", ["future", "ssid", "x", "", "timeout", "region", "_comment", "//"])
def test_an_unknown_field_close_to_no_known_one_stops_the_device_without_a_guess(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        devconfig.validate(dict(MINIMAL, **{name: 1}))
    assert str(info.value) == (
        f"config.json: field '{name}' is unknown (remove it; docs/configuration.md lists the fields)"
    )


def test_a_long_hostile_unknown_field_is_refused_without_a_guess() -> None:
    name = "rx_size" * 1500
    with pytest.raises(ConfigError) as info:
        devconfig.validate(dict(MINIMAL, **{name: 1}))
    assert str(info.value).endswith("is unknown (remove it; docs/configuration.md lists the fields)")


def test_of_several_unknown_fields_the_first_in_sorted_order_is_named() -> None:
    # Sorted, not dict order: MicroPython's dicts do not keep insertion order,
    # and the board and `make deploy` must print the same line.
    raw = dict(MINIMAL, zz_top=1, rx_sise=2, aaa=3)
    with pytest.raises(ConfigError, match="^config.json: field 'aaa' is unknown"):
        devconfig.validate(raw)


def test_an_unknown_field_is_reported_before_the_required_field_it_misspells() -> None:
    with pytest.raises(ConfigError, match=r"field 'templte' is unknown \(did you mean 'template'\?\)"):
        devconfig.validate({"endpoint": "e", "templte": "FleetprovDemo"})


def test_every_known_field_passes_the_unknown_field_check() -> None:
    raw = {name: None for name in devconfig.FIELD_NAMES}
    raw.update(MINIMAL)
    assert set(devconfig.validate(raw)) == set(devconfig.FIELD_NAMES)


def test_a_misspelt_wifi_field_is_named_with_a_did_you_mean() -> None:
    wifi = {"ssid": "net", "pasword": "hunter2"}
    with pytest.raises(ConfigError) as info:
        devconfig.validate(dict(MINIMAL, wifi=wifi))
    assert str(info.value) == "config.json: field 'wifi.pasword' is unknown (did you mean 'password'?)"
    assert "hunter2" not in str(info.value)


def test_server_hostname_overrides_the_endpoint_for_tls() -> None:
    assert devconfig.validate(dict(MINIMAL, server_hostname="localhost"))["server_hostname"] == "localhost"


def test_load_reports_a_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read .*nope.json.*copy it to the board"):
        devconfig.load(str(tmp_path / "nope.json"))
    bad = tmp_path / "config.json"
    bad.write_text('{"endpoint": "x",')
    with pytest.raises(ConfigError, match="is not valid JSON"):
        devconfig.load(str(bad))
    bad.write_text(json.dumps(MINIMAL))
    assert devconfig.load(str(bad))["endpoint"] == "127.0.0.1"
