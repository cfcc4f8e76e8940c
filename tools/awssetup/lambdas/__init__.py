"""The AWS Lambda functions fleetprov deploys, and their deployment package.

One file, ``fleetprov_rotation.py``, holds both functions of a certificate
rotation: the rotation template's pre-provisioning hook and the retire rule's
action (docs/rotation.md). :func:`package` zips it the same way on every call
(fixed time stamps and modes, stored uncompressed), so a package's SHA-256 says
which code it is: tools.awssetup uploads this package, and iotsim, which never
runs uploaded code, runs this module in-process for a function whose package is
byte-identical to it (:func:`module_for`).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
import zipfile
from pathlib import Path
from types import ModuleType

MODULE = "fleetprov_rotation"
SOURCE = Path(__file__).with_name(MODULE + ".py")
HOOK_HANDLER = MODULE + ".hook_handler"
RETIRE_HANDLER = MODULE + ".retire_handler"
RUNTIME = "python3.12"
TIMEOUT_S = 10  # the retire step makes five AWS calls; a hook must answer within 5 s whatever this says

# The names both iotsim's demo and tools.awssetup give them (awssetup's are options).
HOOK_FUNCTION = "FleetprovRotationHook"
RETIRE_FUNCTION = "FleetprovRetire"
RETIRE_RULE = "FleetprovRetire"
# The retire rule's statement: the request's own key only (a payload key cannot stand in for
# principal()), the publishing certificate, the thing the topic names, and the topic to answer on.
RETIRE_TOPIC_FILTER = "fleetprov/+/retire"
RETIRE_SQL = (
    "SELECT certificateId, principal() AS principal, topic(2) AS thingName, topic() AS topic "
    "FROM '{}'".format(RETIRE_TOPIC_FILTER)
)
SQL_VERSION = "2016-03-23"
HOOK_PAYLOAD_VERSION = "2020-04-01"  # AWS's only pre-provisioning hook payload version
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def package() -> bytes:
    """The deployment package: a zip holding ``fleetprov_rotation.py`` at its root."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        entry = zipfile.ZipInfo(MODULE + ".py", date_time=_ZIP_EPOCH)
        entry.external_attr = 0o644 << 16
        archive.writestr(entry, SOURCE.read_bytes())
    return out.getvalue()


def code_sha256(data: bytes) -> str:
    """A package's identity as AWS Lambda gives it (CodeSha256: base64 of its SHA-256)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def module_for(sha256: str) -> ModuleType | None:
    """This package's module when ``sha256`` (CodeSha256) is this package's; else None."""
    if sha256 != code_sha256(package()):
        return None
    return importlib.import_module("{}.{}".format(__name__, MODULE))
