# fleetprov's shared cases (tests/cases/fleetprov_cases.py) on the MicroPython
# unix port, with the umqtt.simple on its path and lib/cbor.py as the test
# side's CBOR codec. Prints one line per case: "ok <name>", "FAIL <name>:
# <detail>", "xfail <name>" (a known bug, failing as expected) or "XPASS
# <name>" (a known bug that no longer fails), then "cases: N passed, M failed,
# K xfailed, J xpassed"; exits 1 if any case failed or passed unexpectedly.
import json
import sys

import cbor
from umqtt.simple import MQTTClient

from fleetprov_cases import CASES, Harness

CODECS = {"json": (lambda obj: json.dumps(obj).encode(), json.loads), "cbor": (cbor.dumps, cbor.loads)}
counts = {"ok": 0, "FAIL": 0, "xfail": 0, "XPASS": 0}

for name, case, known_bug in CASES:
    h = Harness(MQTTClient, CODECS)
    error = None
    try:
        case(h)
    except Exception as exc:
        error = exc
    problems = h.close()
    if error is None and problems:
        error = AssertionError("; ".join(problems))
    if known_bug:
        verdict = "xfail" if error is not None else "XPASS"
    else:
        verdict = "ok" if error is None else "FAIL"
    counts[verdict] += 1
    if verdict == "FAIL":
        print("FAIL {}: {!r}".format(name, error))
        sys.print_exception(error)
    else:
        print(verdict + " " + name)

print("cases: {} passed, {} failed, {} xfailed, {} xpassed".format(
    counts["ok"], counts["FAIL"], counts["xfail"], counts["XPASS"]))
sys.exit(1 if counts["FAIL"] or counts["XPASS"] else 0)
