"""lib/rotation.py on CPython against the fake cloud: a provisioned device
renews its own identity, finishes what a power cut interrupted, and never
holds two ACTIVE certificates once it is done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boot_steps
import credstore
import fleetprov
import pytest
import rotation
from devicepki import Identity, ec_identity, factory_flash
from fakecloud import ROTATION_TEMPLATE, Boot, FakeCloud, status

ROTATION = {"rotation_template": ROTATION_TEMPLATE}


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCloud:
    monkeypatch.chdir(tmp_path)
    claim: Identity = ec_identity("claim")
    factory_flash(tmp_path, claim)
    cloud = FakeCloud(claim)
    Boot(cloud, **ROTATION).fb.start()  # provisioned; its certificate is valid for 30 days
    cloud.cert_days = 365  # what a rotation gets
    return cloud


def restore(cloud: FakeCloud, flash: dict[Path, bytes], thing: str, first: bytes) -> None:
    """The device's flash and the cloud as they were after the first boot."""
    for p in Path("certs").iterdir():
        p.unlink()
    for p, data in flash.items():
        p.write_bytes(data)
    for c in [c for c in cloud.attached if c != first]:
        del cloud.attached[c]
        cloud.active.discard(c)
    cloud.attached[first] = thing
    cloud.active.add(first)
    cloud.things[thing] = first


def record() -> dict[str, Any]:
    return json.loads(Path("certs", credstore.RECORD).read_text())


def rotation_steps(boot: Boot) -> list[str]:
    return [s for s in boot.steps() if s not in ("config", "provisioned", "connect-thing")]


def test_a_certificate_expiring_within_rotate_days_is_rotated_at_boot_and_the_old_one_retired(
    cloud: FakeCloud,
) -> None:
    old = record()["certificate_id"]
    thing = record()["thing_name"]
    boot = Boot(cloud, rotate_days=40, **ROTATION)  # 30 days left < 40
    link = boot.fb.start()
    steps = rotation_steps(boot)
    assert steps == boot_steps.ROTATION, boot.output()
    new = record()["certificate_id"]
    assert new != old and "retire" not in record()
    assert link.cert == cloud.things[thing] and link.client_id == thing
    assert cloud.active_certificates(thing) == [cloud.things[thing]]  # the old one: inactive, detached
    files = sorted(p.name for p in Path("certs").iterdir())
    assert [f for f in files if f.startswith(credstore.IDENTITY)] == sorted(record()["files"].values())
    assert not any(f.startswith("pending") for f in files)
    # valid for a year now: the next boot does not rotate
    again = Boot(cloud, rotate_days=40, **ROTATION)
    again.fb.start()
    assert rotation_steps(again) == []


def test_a_certificate_far_from_expiry_is_not_rotated(cloud: FakeCloud) -> None:
    boot = Boot(cloud, rotate_days=10, **ROTATION)
    boot.fb.start()
    assert rotation_steps(boot) == [] and cloud.calls.count("csr") == 0


def test_without_a_rotation_template_the_boot_never_rotates(cloud: FakeCloud) -> None:
    boot = Boot(cloud, rotate_days=400)
    boot.fb.start()
    assert rotation_steps(boot) == []


def test_the_application_can_rotate_at_any_time(cloud: FakeCloud) -> None:
    boot = Boot(cloud, rotate_days=0, **ROTATION)
    link = boot.fb.start()
    old = record()["certificate_id"]
    new_link = boot.fb.rotate(link)
    assert link.closed and not new_link.closed
    assert record()["certificate_id"] != old and new_link.cert == cloud.things[record()["thing_name"]]


def test_a_rotation_the_hook_refuses_keeps_the_old_identity_connected(cloud: FakeCloud) -> None:
    old = record()["certificate_id"]
    thing = record()["thing_name"]
    cert = cloud.things[thing]
    cloud.attached[cert] = "somebody-else"  # the hook: not a certificate of this thing
    boot = Boot(cloud, rotate_days=40, **ROTATION)
    link = boot.fb.start()
    assert "rotation-failed" in boot.steps() and "AccessDenied" in boot.output()
    assert record()["certificate_id"] == old and link.cert == cert and not link.closed


def test_a_new_certificate_that_cannot_connect_is_dropped_and_the_old_one_stays(cloud: FakeCloud) -> None:
    old = record()["certificate_id"]
    thing = record()["thing_name"]
    first = cloud.things[thing]
    real = cloud.connect

    def refuse_new(*args: Any) -> Any:
        if args[3] != first:  # registered, and yet refused (deleted, say)
            cloud.active.discard(args[3])
        return real(*args)

    cloud.connect = refuse_new  # type: ignore[method-assign]
    boot = Boot(cloud, rotate_days=40, **ROTATION)
    link = boot.fb.start()
    assert "rotation-failed" in boot.steps() and "it is dropped" in boot.output()
    assert record()["certificate_id"] == old and credstore.Store().load_pending() is None
    assert link.cert == first and not link.closed


def test_a_retirement_that_fails_is_asked_again_at_the_next_boot(cloud: FakeCloud) -> None:
    thing = record()["thing_name"]
    cloud.fail["retire"] = [status(fleetprov.TIMEOUT)]
    boot = Boot(cloud, rotate_days=40, **ROTATION)
    boot.fb.start()
    assert "retire-later" in boot.steps() and "retire" in record()
    assert len(cloud.active_certificates(thing)) == 2  # until the cloud retires the old one
    nxt = Boot(cloud, rotate_days=40, **ROTATION)
    nxt.fb.start()
    assert rotation_steps(nxt) == ["retired"]
    assert "retire" not in record() and len(cloud.active_certificates(thing)) == 1


def test_running_out_of_memory_making_the_key_fails_the_rotation_and_keeps_the_old_identity(
    cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csr

    def no_room(cn: str) -> Any:
        raise MemoryError("memory allocation failed, allocating 64 bytes")

    monkeypatch.setattr(csr, "generate", no_room)
    old = record()["certificate_id"]
    boot = Boot(cloud, rotate_days=40, **ROTATION)
    link = boot.fb.start()
    assert "rotation-failed" in boot.steps()
    assert "rotation: cannot make a key and CSR on the device: MemoryError: memory allocation failed" in boot.output()
    assert record()["certificate_id"] == old and link.cert == cloud.things[record()["thing_name"]] and not link.closed


def test_any_other_failure_in_a_rotation_is_named_and_the_device_carries_on(
    cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rotation is never worth a device: whatever escapes it becomes one line.
    def broken(self: Any, link: Any) -> Any:
        raise KeyError("certificate_id")

    monkeypatch.setattr(rotation._Rotation, "run", broken)
    boot = Boot(cloud, rotate_days=40, **ROTATION)
    link = boot.fb.start()
    assert "rotation-failed  rotation: KeyError: 'certificate_id'" in boot.output()
    assert not link.closed and link.cert == cloud.things[record()["thing_name"]]


def test_a_retirement_that_fails_unexpectedly_is_asked_again_later(
    cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_room(dev: Any, link: Any) -> None:
        raise MemoryError("memory allocation failed, allocating 1024 bytes")

    monkeypatch.setattr(rotation, "retire", no_room)
    boot = Boot(cloud, rotate_days=40, **ROTATION)
    boot.fb.start()
    assert "retire-later  rotation: MemoryError: memory allocation failed, allocating 1024 bytes" in boot.output()
    assert "retire" in record()


class PowerCut(BaseException):
    """A power cut: nothing on the device can catch it (the rotation catches every Exception)."""


def test_a_power_cut_at_any_boundary_of_a_rotation_leaves_an_identity_that_connects_and_one_active_certificate(
    cloud: FakeCloud,
) -> None:
    thing = record()["thing_name"]
    first = cloud.things[thing]
    flash = {p: p.read_bytes() for p in Path("certs").iterdir()}
    seen: list[str] = []
    Boot(cloud, hook=seen.append, rotate_days=40, **ROTATION).fb.start()
    steps = seen[seen.index("connect-thing") + 1 :]  # every step and write boundary of a rotation
    assert "rotated" in steps and "retired" in steps and "pending.json" in steps, steps
    for cut in steps:
        restore(cloud, flash, thing, first)

        def hook(step: str, cut: str = cut) -> None:
            # an identity file is named after its certificate: new in every rotation
            if step == cut or (step.startswith(credstore.IDENTITY) and cut.startswith(credstore.IDENTITY)
                               and step.split(".", 1)[1] == cut.split(".", 1)[1]):
                raise PowerCut(step)

        with pytest.raises(PowerCut):
            Boot(cloud, hook=hook, rotate_days=40, **ROTATION).fb.start()
        after = Boot(cloud, rotate_days=40, **ROTATION)
        link = after.fb.start()  # the next boot connects, whatever the cut left
        stored = credstore.Store()
        assert stored.load() is not None, cut
        assert link.cert == stored.identity()[0] and link.cert in cloud.active, (cut, after.output())
        assert cloud.active_certificates(thing) == [link.cert], (cut, after.output())


def test_a_device_that_provisions_in_cbor_asks_the_retire_rule_in_json(cloud: FakeCloud) -> None:
    cloud.provisioner_args.clear()
    Boot(cloud, rotate_days=40, format="cbor", **ROTATION).fb.start()
    formats = [args[0] for args in cloud.provisioner_args]
    assert formats[:-1] == ["cbor"] * (len(formats) - 1) and formats[-1] == "json"  # CSR, register; retire
