"""fleetprov executed by the real MicroPython unix port, as .py source and as mpy-cross output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from fleetprov_cases import CASES
from rawbroker import RawBroker

from tools.unixboard import compile_lib, mpy_cross_binary

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "device" / "scripts" / "run_fleetprov_cases.py"
CASES_DIR = ROOT / "tests" / "cases"


def assert_the_shared_cases_pass(proc: subprocess.CompletedProcess[str]) -> None:
    """Every case of the table ran and did what the table says: pass, or fail as a known bug."""
    verdicts: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("ok", "xfail", "XPASS", "FAIL"):
            verdicts[rest.split(":", 1)[0] if verdict == "FAIL" else rest] = verdict
    expected = {name: "xfail" if known_bug else "ok" for name, _, known_bug in CASES}
    wrong = {name: verdicts.get(name, "missing") for name in expected if verdicts.get(name) != expected[name]}
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAIL", "XPASS"))]
    assert not wrong, "\n".join(failures) + "\n" + repr(wrong) + "\n" + proc.stderr[-3000:]
    assert set(verdicts) == set(expected), set(verdicts) ^ set(expected)
    assert re.search(r"cases: \d+ passed, 0 failed, \d+ xfailed, 0 xpassed", proc.stdout), proc.stdout[-2000:]
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.umqtt_matrix
def test_the_shared_cases_pass_on_micropython_from_source(micropython) -> None:
    # on every umqtt.simple release: cases differ by version only in what they expect
    proc = micropython.run(script=RUNNER, extra_path=(CASES_DIR,), check=False)
    assert_the_shared_cases_pass(proc)


def test_the_shared_cases_pass_on_micropython_from_mpy(micropython, tmp_path: Path) -> None:
    compile_lib(tmp_path)
    proc = micropython.run(script=RUNNER, extra_path=(tmp_path, CASES_DIR), check=False)
    assert_the_shared_cases_pass(proc)
    # the compiled modules were the ones imported
    check = micropython.run("import fleetprov; print(fleetprov.__file__)", extra_path=(tmp_path,))
    assert check.stdout.strip() == str(tmp_path / "fleetprov.mpy")


@pytest.mark.parametrize("source", sorted((ROOT / "lib").glob("*.py")), ids=lambda p: p.name)
def test_every_device_module_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    target = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run([str(mpy_cross_binary()), "-o", str(target), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert target.stat().st_size > 0


@pytest.mark.parametrize(
    "source", [ROOT / "boot.py", ROOT / "main.py", *sorted((ROOT / "examples").glob("*.py"))], ids=lambda p: p.name
)
def test_boot_and_main_compile_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    if not source.exists():
        pytest.fail(f"{source.name} is missing")
    proc = subprocess.run([str(mpy_cross_binary()), "-o", str(tmp_path / "x.mpy"), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- the real umqtt.simple against a hostile broker (tests/fakes/rawbroker.py) --

HOSTILE = ROOT / "tests" / "device" / "scripts" / "hostile_broker.py"


def run_against(
    micropython, broker: RawBroker, timeout_ms: int, mqtt_ms: int, *extra: str, mpy: Path | None = None
) -> dict[str, str]:
    try:
        proc = micropython.run(
            script=HOSTILE,
            args=(str(broker.port), str(timeout_ms), str(mqtt_ms), *extra),
            extra_path=() if mpy is None else (mpy,),
            timeout=60,
        )
    finally:
        broker.close()
    lines = proc.stdout.splitlines()
    words = lines[-2].split()
    out = dict(zip(words[::2], words[1::2]))
    out["message"] = lines[-1][len("message ") :]
    return out


def test_a_flood_of_stray_pubacks_ends_in_timeout_at_the_deadline(micropython) -> None:
    # umqtt returns the type of every non-PUBLISH packet from check_msg(): the
    # wait once ran 15 s on a 500 ms deadline, or for ever
    broker = RawBroker(publish="flood")
    out = run_against(micropython, broker, 500, 5000)
    assert int(out["status"]) == 7, out  # TIMEOUT
    assert "no answer" in out["message"]
    assert int(out["elapsed_ms"]) <= 500 + 100, out  # including the unsubscribes
    assert broker.flooded > int(out["check_msg"]) // 8  # the flood was on while it waited


def test_a_silent_server_is_polled_at_most_25_times_a_second(micropython) -> None:
    out = run_against(micropython, RawBroker(), 1000, 5000)
    assert int(out["status"]) == 7, out
    assert int(out["check_msg"]) <= 25 + 3, out  # the drain, the wait, one last look


def test_a_subscription_refused_by_real_umqtt_names_the_claim_policy(micropython) -> None:
    out = run_against(micropython, RawBroker(subscribe="refuse"), 1000, 5000)
    assert int(out["status"]) == 10, out  # MQTT_ERROR
    assert "SUBACK 0x80" in out["message"] and "iot:Subscribe" in out["message"]


@pytest.mark.parametrize("numbering", ["linux", "esp32"])
def test_an_unanswered_subscribe_times_out_named_by_errno_not_as_a_refusal(
    micropython, numbering: str, tmp_path: Path
) -> None:
    # Compiled with mpy-cross, as deployed: the unix port's own compiler folds
    # errno.ETIMEDOUT into the constant 110, so only .mpy code can be given
    # ESP32's numbers (mpy-cross leaves the lookup to the board, rightly).
    compile_lib(tmp_path)
    out = run_against(micropython, RawBroker(subscribe="none"), 1000, 200, numbering, mpy=tmp_path)
    assert int(out["status"]) == 10, out
    number = 116 if numbering == "esp32" else 110
    assert "OSError ETIMEDOUT ({})".format(number) in out["message"], out
    assert "SUBACK" not in out["message"] and "policy" not in out["message"]


FAIL_AND_MEASURE = """
import gc, sys
import fleetprov, runtime
gc.collect()
before = gc.mem_alloc()
print("LOADED_BEFORE", "fleetprov_texts" in sys.modules)
try:
    fleetprov.Provisioner(object())
except fleetprov.ProvisioningError as exc:
    print("MESSAGE", exc)
print("LOADED", "fleetprov_texts" in sys.modules)
exc = None
gc.collect()
print("HELD", gc.mem_alloc() - before)
runtime.release("fleetprov_texts")
gc.collect()  # from here: the GC scans the C stack, where release()'s own frame is gone
print("GROWTH", gc.mem_alloc() - before)
"""


def test_a_failure_loads_its_text_on_the_board_and_a_release_lets_the_texts_go(micropython, tmp_path: Path) -> None:
    compile_lib(tmp_path)
    proc = micropython.run(FAIL_AND_MEASURE, extra_path=(tmp_path,))
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert out["MESSAGE"] == "Provisioner: client has no set_callback(): pass an umqtt.simple MQTTClient"
    assert out["LOADED_BEFORE"] == "False" and out["LOADED"] == "True"
    # released (as the first boot releases the provisioning code), the texts are
    # garbage again; what stays is the few names loading them interned for good
    assert int(out["GROWTH"]) * 3 < int(out["HELD"]), out
