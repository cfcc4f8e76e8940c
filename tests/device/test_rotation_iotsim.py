"""Certificate rotation on the MicroPython unix port against iotsim (its
rotation template, pre-provisioning hook and retire rule, as tools.awssetup
makes them on AWS): a provisioned board renews its own identity when its
certificate expires within rotate_days, or when the application asks, and a
power cut at any instant of a rotation leaves it an identity that connects.

The power-cut sweep: a fresh board provisions itself, boots with its rotation
due and is SIGKILLed at every boundary of the rotation (progress steps and
credential writes) and at random instants. Before the next boot an
independent reading of the flash finds a complete identity whose certificate
is ACTIVE; the next boot connects as the thing, without the claim, and
finishes whatever the cut interrupted; after it the thing holds exactly one
ACTIVE certificate, the one on the flash, and no staged or temporary file is
left.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boot_steps
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from devicepki import host_says_provisioned
from tools.iotsim.broker import MqttQuotas
from tools.iotsim.testing import RunningIotSim, running_iotsim
from tools.unixboard import Board, BootResult, make_flash, update_config

pytestmark = pytest.mark.slow

FAST_RETRY = {"retry_base_ms": 20, "retry_max_ms": 100, "response_timeout_ms": 5000}
DUE = {"rotate_days": 100000}  # the certificate expires "within" that: the boot rotates it
NOT_DUE = {"rotate_days": 0}  # the boot only finishes what a cut interrupted
CLAIM = ("ca.der", "claim.der", "claim.key.der")

# Every boundary of a rotation, in order. "*" stands for a file named after the
# new certificate; "@2": the record's second write (the retirement noted).
ROTATION_STEPS = [
    "keygen",
    "certificate",
    *boot_steps.STAGE_WRITES,
    "register",
    "connect-new",
    *boot_steps.COMMIT_WRITES,
    "rotated",
    "provisioned.json.tmp@2",
    "provisioned.json@2",
    "retired",
]
RANDOM_CUTS = 80
SEED = 20261206
# Boards of the random sweep run side by side: a rotation spends most of its
# time waiting out AWS's one CONNECT a second per client id, not computing.
WORKERS = 4


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIotSim]:
    # A board's reset, Wi-Fi and NTP take seconds, the harness's restart none:
    # without AWS's one CONNECT a second per client id, the boot after a cut is
    # not refused once, as no board's would be. (Within a boot the device keeps
    # that rule itself: it is in every rotation below.)
    with running_iotsim(tmp_path_factory.mktemp("iotsim"), mqtt_quotas=MqttQuotas(connect_interval_ms=0)) as sim:
        yield sim


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, cloud: RunningIotSim) -> Path:
    # One compiled flash image, copied for each board (mpy-cross once).
    return make_flash(tmp_path_factory.mktemp("template") / "flash", cloud.state, {**FAST_RETRY, **NOT_DUE}, mpy=True)


def certificate_id(flash: Path) -> str:
    """The id of the certificate the flash's record names (its DER's SHA-256)."""
    certs = flash / "certs"
    rec = json.loads((certs / "provisioned.json").read_text())
    return hashlib.sha256((certs / rec["files"]["cert"]).read_bytes()).hexdigest()


class ProvisionedBoard:
    """A fresh board that has provisioned itself against iotsim."""

    def __init__(self, template: Path, where: Path, cloud: RunningIotSim) -> None:
        self.flash = where / "flash"
        shutil.copytree(template, self.flash)
        self.cloud = cloud
        first = self.boot(due=False)
        assert first.returncode == 0 and "done" in first.steps(), first.text
        self.thing = json.loads((self.flash / "certs" / "provisioned.json").read_text())["thing_name"]
        self.first_certificate = certificate_id(self.flash)
        self.claim = self.claim_files()

    def claim_files(self) -> dict[str, bytes]:
        return {n: (self.flash / "certs" / n).read_bytes() for n in CLAIM}

    def boot(self, due: bool, **kw: Any) -> BootResult:
        update_config(self.flash, DUE if due else NOT_DUE)
        return Board(self.flash).boot(timeout=60, **kw)

    def active(self) -> list[str]:
        registry = self.cloud.registry
        thing = registry.thing(self.thing)
        assert thing is not None
        return [c for c in thing.certificates if registry.status(c) == "ACTIVE"]


def recover(board: ProvisionedBoard, after: str) -> BootResult:
    """The boot after a cut, and every guarantee around it."""
    # At every instant the flash holds an identity that connects.
    assert host_says_provisioned(board.flash), after
    assert board.cloud.registry.status(certificate_id(board.flash)) == "ACTIVE", after
    r = board.boot(due=False)
    steps = r.steps()
    assert r.returncode == 0 and "done" in steps, f"{after}:\n{r.text}"
    assert steps[1] == "provisioned" and "connect-claim" not in steps, f"{after}:\n{r.text}"
    assert "rotation-failed" not in steps and "retire-later" not in steps, f"{after}:\n{r.text}"
    # Once it has finished: one ACTIVE certificate on the thing, the one on the flash.
    assert board.active() == [certificate_id(board.flash)], after
    rec = json.loads((board.flash / "certs" / "provisioned.json").read_text())
    assert "retire" not in rec and rec["thing_name"] == board.thing, after
    left = sorted(p.name for p in (board.flash / "certs").iterdir() if p.name.startswith("pending") or
                  p.name.endswith(".tmp"))
    assert left == [], after
    assert board.claim_files() == board.claim, after
    return r


def test_a_certificate_expiring_within_rotate_days_is_rotated_at_boot(
    iotsim_factory: Any, tmp_path: Path
) -> None:
    # Certificates valid for 20 days: within the default rotate_days (30) from the start.
    sim = iotsim_factory(cert_days=20, mqtt_quotas=MqttQuotas(connect_interval_ms=0))
    flash = make_flash(tmp_path / "flash", sim.state, {**FAST_RETRY, "rotate_days": 0}, mpy=True)
    first = Board(flash).boot(timeout=60)
    assert first.returncode == 0 and "done" in first.steps(), first.text
    old = certificate_id(flash)
    old_flash = tmp_path / "old-flash"
    shutil.copytree(flash, old_flash)
    update_config(flash, {"rotate_days": 30})
    r = Board(flash).boot(timeout=60)
    steps = r.steps()
    assert r.returncode == 0, r.text
    assert steps == boot_steps.PROVISIONED_BOOT + boot_steps.ROTATION + boot_steps.APPLICATION, r.text
    new = certificate_id(flash)
    rec = json.loads((flash / "certs" / "provisioned.json").read_text())
    thing = sim.registry.thing(rec["thing_name"])
    assert thing is not None and new in thing.certificates and old not in thing.certificates  # detached
    assert sim.registry.status(old) == "INACTIVE" and sim.registry.status(new) == "ACTIVE"
    assert f"rotated  {old} -> {new}" in r.text
    # the new key was made on the device (P-256); the endpoint made the first (RSA)
    key = serialization.load_der_private_key((flash / "certs" / rec["files"]["key"]).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert "retire" not in rec
    not_after = x509.load_der_x509_certificate((flash / "certs" / rec["files"]["cert"]).read_bytes())
    assert rec["not_after"] == int(not_after.not_valid_after_utc.timestamp())
    # the retired certificate is refused: a board restored from a backup of the old flash
    # is turned away and goes back to its claim
    r_old = Board(old_flash).boot(timeout=60)
    assert "refused" in r_old.steps(), r_old.text
    # 20 days left is not within rotate_days 10: the next boot does not rotate
    update_config(flash, {"rotate_days": 10})
    again = Board(flash).boot(timeout=60)
    assert again.returncode == 0 and "keygen" not in again.steps(), again.text


def test_the_application_rotates_with_fb_rotate_and_works_on_over_the_new_link(
    cloud: RunningIotSim, template: Path, tmp_path: Path
) -> None:
    board = ProvisionedBoard(template, tmp_path, cloud)
    (board.flash / "main.py").write_text(
        "import firstboot, mqttlink\n"
        "def application(fb, link):\n"
        "    link = fb.rotate(link)\n"
        "    topic = fb.topic(fb.cfg['app_topic'])\n"
        "    mqttlink.publish(link, topic, b'{\"rotated\":true}', fb.cfg['mqtt_timeout_ms'])\n"
        "    fb.step('hello', 'published after the rotation')\n"
        "result = firstboot.run(application)\n"
    )
    r = board.boot(due=False)
    assert r.returncode == 0, r.text
    assert r.steps()[-5:] == ["connect-new", "rotated", "retired", "hello", "done"], r.text
    assert certificate_id(board.flash) != board.first_certificate
    assert board.active() == [certificate_id(board.flash)]


@pytest.mark.parametrize("step", ROTATION_STEPS)
def test_a_power_cut_at_each_boundary_of_a_rotation(
    cloud: RunningIotSim, template: Path, tmp_path: Path, step: str
) -> None:
    board = ProvisionedBoard(template, tmp_path, cloud)
    r = board.boot(due=True, stop_at=step)
    name = step.partition("@")[0]
    assert r.killed_at is not None and (r.killed_at == name or (name.startswith("*") and r.killed_at.endswith(
        name[1:]))), f"step {step!r} was never reached:\n{r.text}"
    after = recover(board, "cut at " + step)
    rotated_before_cut = ROTATION_STEPS.index(step) >= ROTATION_STEPS.index("provisioned.json")
    staged_before_cut = ROTATION_STEPS.index(step) >= ROTATION_STEPS.index("pending.json")
    # A cut after pending.json landed is finished by the next boot; before, the old identity stays.
    assert (certificate_id(board.flash) != board.first_certificate) == staged_before_cut, after.text
    if rotated_before_cut:
        assert "resume-rotation" not in after.steps(), after.text


def test_a_power_cut_at_random_instants_of_a_rotation(
    cloud: RunningIotSim, template: Path, tmp_path: Path
) -> None:
    probe = ProvisionedBoard(template, tmp_path / "probe", cloud)
    full = probe.boot(due=True)
    assert full.returncode == 0 and "retired" in full.steps(), full.text
    rng = random.Random(SEED)
    delays = [rng.uniform(0.0, full.elapsed) for _ in range(RANDOM_CUTS)]

    def cut(i: int) -> None:
        board = ProvisionedBoard(template, tmp_path / f"cut{i}", cloud)
        r = board.boot(due=True, kill_after=delays[i])
        recover(board, f"random cut {i} after {delays[i]:.3f} s (seed {SEED}); output:\n{r.text}")

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(cut, range(RANDOM_CUTS)))  # re-raises the first failed board's assertion


def test_no_thing_ends_with_two_active_certificates(cloud: RunningIotSim) -> None:
    # Last in the module: every board above has rotated (or been cut) against this iotsim.
    registry = cloud.registry
    things = registry.things()
    assert things
    for thing in things:
        active = [c for c in thing.certificates if registry.status(c) == "ACTIVE"]
        assert len(active) == 1, f"thing {thing.name} has ACTIVE certificates {active}"
