"""examples/provision.py, the README's complete user client, on every umqtt.simple release and both methods.

Each target of the umqtt matrix (tests/device/conftest.py: the newest port
with every umqtt.simple release, and the old firmware) runs the example as its
header shows it: the library's sources and the target's umqtt.simple on
MICROPYPATH, the claim files in certs/ of the current folder, against iotsim.
tests/host/test_docs_commands.py runs the header's command itself;
`make bench` (section sdk) times the same runs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tools.unixboard import CLAIM_FILES, Target

pytestmark = pytest.mark.umqtt_matrix

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "provision.py"
# The example checks the server's name against its endpoint, here iotsim's 127.0.0.1.
NO_IP_NAME_CHECK = {
    "1.22.2": "MicroPython 1.22's mbedTLS (2.28) matches a server name against the certificate's DNS "
    "names only, so the IP address 127.0.0.1 as endpoint cannot be verified (a board reaches AWS by "
    "name; test_umqtt_versions covers 1.22 with a name)",
}


def run_example(micropython: Any, iotsim: Any, folder: Path, method: str, serial: str) -> str:
    (folder / "certs").mkdir(parents=True)
    for name in CLAIM_FILES:
        (folder / "certs" / name).write_bytes((iotsim.state / "certs" / name).read_bytes())
    proc = micropython.run(
        script=EXAMPLE, args=("127.0.0.1", str(iotsim.port), method, serial), cwd=folder, timeout=120
    )
    return proc.stdout


@pytest.mark.parametrize("method", ["keys", "csr"])
def test_the_example_provisions_keeps_the_identity_and_connects_as_the_thing(
    micropython: Any, iotsim: Any, device_target: Target, tmp_path: Path, method: str
) -> None:
    if device_target.port in NO_IP_NAME_CHECK:
        pytest.skip(NO_IP_NAME_CHECK[device_target.port])
    serial = "{}-{}".format(device_target.id.replace(".", ""), method)
    out = run_example(micropython, iotsim, tmp_path, method, serial)
    thing = "fleetprov-" + serial
    found = re.search(r"^thing (\S+) certificate ([0-9a-f]{64})$", out, re.M)
    assert found is not None and found.group(1) == thing, out
    certificate_id = found.group(2)
    assert "connected as {} and published".format(thing) in out.splitlines()
    assert iotsim.registry.status(certificate_id) == "ACTIVE"
    assert iotsim.registry.thing_of(certificate_id) == thing

    # Kept as DER, what a board's TLS loads: AWS's certificate id is the SHA-256 of that DER.
    cert_der = (tmp_path / "certs" / "thing.crt.der").read_bytes()
    assert hashlib.sha256(cert_der).hexdigest() == certificate_id
    key = serialization.load_der_private_key((tmp_path / "certs" / "thing.key.der").read_bytes(), None)
    public = x509.load_der_x509_certificate(cert_der).public_key()
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*raw) == public.public_bytes(*raw)
    # keys: the server made an RSA key; csr: the P-256 key made by the example itself
    assert isinstance(key, ec.EllipticCurvePrivateKey if method == "csr" else rsa.RSAPrivateKey)
