"""`make bench` (section ports): each device module's own import cost from the probe's lines."""

from __future__ import annotations

from tools.bench.ports import own_costs


def test_an_import_is_charged_without_the_device_imports_made_inside_it() -> None:
    lines = [
        "fleetprov 0 ms  config",  # progress output is not a measurement
        "fleetprov IMPORT 1 timedsock 3000",
        "fleetprov IMPORT 0 firstboot 9000",
        "fleetprov IMPORT 2 awsnames 400",
        "fleetprov IMPORT 1 devconfig 6000",
        "fleetprov IMPORT 1 credstore 5000",
        "fleetprov IMPORT 0 provision 17000",
        "fleetprov IMPORT 0 fleetprov 7000",
    ]
    assert own_costs(lines) == [
        ("timedsock", 3000),
        ("firstboot", 6000),
        ("awsnames", 400),
        ("devconfig", 5600),
        ("credstore", 5000),
        ("provision", 6000),
        ("fleetprov", 7000),
    ]


def test_a_module_loaded_again_is_listed_again() -> None:
    lines = ["fleetprov IMPORT 0 fleetprov 7232", "fleetprov IMPORT 0 pem 1696", "fleetprov IMPORT 0 fleetprov 6560"]
    assert own_costs(lines) == [("fleetprov", 7232), ("pem", 1696), ("fleetprov", 6560)]
