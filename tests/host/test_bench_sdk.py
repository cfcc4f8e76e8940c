"""`make bench` (section sdk): what each timed run does, so the table measures what it says."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tools.bench import sdk, sdk_client
from tools.fetch_deps import UMQTT_VERSIONS
from tools.iotsim.testing import RunningIotSim


def test_a_round_runs_every_client_for_both_methods_and_every_umqtt_release() -> None:
    jobs = Counter(sdk.jobs_of_a_round())
    for method in ("keys", "csr"):
        assert jobs[sdk.Job("sdk", method)] == sdk.SDK_RUNS_PER_ROUND
        assert jobs[sdk.Job("firstboot", method)] == 1
        for version in UMQTT_VERSIONS:
            assert jobs[sdk.Job("example", method, version)] == 1
            assert jobs[sdk.Job("plain", method, version)] == 1
    assert sum(jobs.values()) == 2 * (sdk.SDK_RUNS_PER_ROUND + 1 + 2 * len(UMQTT_VERSIONS))


def test_the_sdk_client_provisions_with_a_csr_of_its_own_and_connects_as_the_thing(
    iotsim: RunningIotSim, tmp_path: Path
) -> None:
    out = tmp_path / "sdk-csr-1"
    assert sdk_client.main([str(iotsim.state / "config.json"), str(iotsim.state), str(out), "csr"]) == 0
    cert = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    key = serialization.load_pem_private_key((out / "device.key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # made in the process, never sent
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    certificate_id = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()  # AWS's id
    assert iotsim.registry.status(certificate_id) == "ACTIVE"
    assert iotsim.registry.thing_of(certificate_id) == "fleetprov-sdk-csr-1"


def test_the_plain_connect_stand_in_shadows_mqttlink_for_the_example(
    micropython: Any, tmp_path: Path
) -> None:
    # tools/bench/sdk.py puts it ahead of the library: the example then never loads lib/mqttlink
    proc = micropython.run(
        "import mqttlink; print(mqttlink.__file__); print(hasattr(mqttlink, 'nodelay'))",
        extra_path=(sdk.PLAIN_CONNECT,),
        cwd=tmp_path,
    )
    assert proc.stdout.split() == [str(sdk.PLAIN_CONNECT / "mqttlink.py"), "False"]
