"""lib/firstboot.py on CPython with a fake cloud: the flow, the retry policy,
revocation, and that no secret is ever printed."""

from __future__ import annotations

import json
import time
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boot_steps
import credstore
import credwrite
import devconfig
import device
import firstboot
import fleetprov
import mqttlink
import provisioning
import pytest
from cryptography import x509
from devicepki import Identity, ec_identity, factory_flash, rsa_identity
from device import Board, FlowError
import bootflow
from bootflow import FirstBoot
from fakecloud import TOKEN, Boot, FakeBoard, FakeClient, FakeCloud, FakeProvisioner, refused, status
from hypothesis import given
from hypothesis import strategies as st

@pytest.fixture
def claim() -> Identity:
    return ec_identity("claim")


@pytest.fixture
def flash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, claim: Identity) -> Path:
    monkeypatch.chdir(tmp_path)
    factory_flash(tmp_path, claim)
    return tmp_path


@pytest.fixture
def cloud(claim: Identity) -> FakeCloud:
    return FakeCloud(claim)


def claim_files(flash: Path) -> dict[str, bytes]:
    return {n: (flash / "certs" / n).read_bytes() for n in ("claim.der", "claim.key.der", "ca.der")}


# -- the flow ---------------------------------------------------------------------


def test_first_boot_provisions_commits_and_confirms_as_the_new_thing(flash: Path, cloud: FakeCloud) -> None:
    before = claim_files(flash)
    boot = Boot(cloud)
    link = boot.fb.start()
    assert ["config"] + boot.steps() == boot_steps.FIRST_BOOT
    assert list(cloud.things) == ["thing-a1b2c3"]
    claim_link, thing_link = cloud.links
    assert claim_link.closed and claim_link.client_id == "a1b2c3"
    assert thing_link is link and not link.closed
    assert thing_link.client_id == "thing-a1b2c3"  # the thing name: what AWS policies expect
    assert thing_link.cert == cloud.things["thing-a1b2c3"]
    assert thing_link.client.published == [
        (b"fleetprov/thing-a1b2c3/hello", b'{"event":"provisioned"}', False, 1)
    ]
    store = credstore.Store()
    assert store.load()["thing_name"] == "thing-a1b2c3"
    assert store.summary()["device_configuration"] == {"Fallback": "no"}
    assert claim_files(flash) == before
    # one Provisioner for the connection: one receive buffer for both answers
    assert cloud.provisioner_args == [("json", 10000, 6144, 5000)]


def test_each_progress_line_carries_elapsed_milliseconds(flash: Path, cloud: FakeCloud) -> None:
    boot = Boot(cloud)
    boot.fb.start()
    for line in boot.lines:
        head = line.split()
        assert head[0] == "fleetprov" and head[1].isdigit() and head[2] == "ms"


def test_no_key_or_ownership_token_is_ever_printed(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["register"] = [status(fleetprov.TIMEOUT)]
    boot = Boot(cloud)
    boot.fb.start()
    out = boot.output()
    assert TOKEN not in out and "PRIVATE" not in out
    store = credstore.Store()
    assert store.load() is not None
    key = store.identity()[1]
    for i in range(0, len(key) - 8, 8):
        assert key[i : i + 8].hex() not in out
    import base64

    b64 = base64.b64encode(key).decode()
    for i in range(0, len(b64) - 12, 12):
        assert b64[i : i + 12] not in out


def test_second_boot_skips_provisioning_and_connects_as_the_thing(flash: Path, cloud: FakeCloud) -> None:
    Boot(cloud).fb.start()
    cloud.calls.clear()
    boot = Boot(cloud)
    link = boot.fb.start()
    assert boot.steps() == ["provisioned", "connect-thing"]
    assert cloud.calls == ["connect"]
    assert link.client_id == "thing-a1b2c3"


def test_cbor_format_and_sizes_reach_the_provisioner(flash: Path, cloud: FakeCloud) -> None:
    Boot(cloud, format="cbor", rx_size=8192, response_timeout_ms=700, mqtt_timeout_ms=300).fb.start()
    assert cloud.provisioner_args == [("cbor", 700, 8192, 300)]


def test_config_client_id_is_used_and_uid_still_fills_parameters(flash: Path, cloud: FakeCloud) -> None:
    boot = Boot(cloud, client_id="my-device", parameters={"SerialNumber": "{uid}", "Cid": "{client_id}"})
    boot.fb.start()
    assert cloud.links[0].client_id == "my-device"
    assert list(cloud.things) == ["thing-a1b2c3"]


def test_without_a_hardware_id_a_stored_random_uid_is_used_and_kept(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = devconfig.validate(
        {"endpoint": "h", "template": "FleetprovDemo", "parameters": {"SerialNumber": "{uid}"}}
    )
    fb = FirstBoot(cfg, FakeBoard(cloud, uid=None))
    fb.start()
    uid = (flash / "certs" / "uid").read_text()
    assert list(cloud.things) == ["thing-" + uid] and len(uid) == 16


# -- retry policy -----------------------------------------------------------------


def test_throttled_twice_then_accepted_backs_off_on_fresh_connections(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["register"] = [refused(429, "ThrottlingException"), refused(429, "ThrottlingException")]
    boot = Boot(cloud, retry_base_ms=100, retry_max_ms=1000)
    boot.fb.start()
    assert boot.retry_waits() == [100, 200]
    assert boot.steps().count("retry") == 2 and boot.steps()[-1] == "confirm"
    claim_links = [l for l in cloud.links if l.cert == cloud.claim.cert_der]
    assert len(claim_links) == 3 and all(l.closed for l in claim_links)
    # the certificate staged by the first attempt is registered by the next: no orphan
    assert cloud.calls.count("keys") == 1 and cloud.calls.count("register") == 3
    assert len(cloud.active) == 1


@pytest.mark.parametrize("code", [500, 503, 504])
def test_server_errors_are_retried(flash: Path, cloud: FakeCloud, code: int) -> None:
    cloud.fail["keys"] = [refused(code, "InternalFailure")]
    boot = Boot(cloud)
    boot.fb.start()
    assert len(boot.retry_waits()) == 1 and credstore.Store().load() is not None


@pytest.mark.parametrize("s", [fleetprov.TIMEOUT, fleetprov.MQTT_ERROR])
def test_timeouts_and_mqtt_errors_are_retried(flash: Path, cloud: FakeCloud, s: int) -> None:
    cloud.fail["register"] = [status(s)]
    boot = Boot(cloud)
    boot.fb.start()
    assert len(boot.retry_waits()) == 1


def test_a_forbidden_request_fails_at_once_with_the_servers_message(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["register"] = [refused(403, "AccessDenied", "Pre-provisioning hook refused device a1b2c3")]
    boot = Boot(cloud)
    with pytest.raises(FlowError) as info:
        boot.fb.start()
    assert not info.value.retryable
    assert "403" in str(info.value) and "AccessDenied" in str(info.value)
    assert "Pre-provisioning hook refused device a1b2c3" in str(info.value)
    assert boot.sleeps == [] and cloud.calls.count("keys") == 1
    assert credstore.Store().load() is None


@pytest.mark.parametrize("code", [400, 404])
def test_other_client_errors_fail_at_once(flash: Path, cloud: FakeCloud, code: int) -> None:
    cloud.fail["keys"] = [refused(code, "NotFound", "template FleetprovDemo not found")]
    boot = Boot(cloud)
    with pytest.raises(FlowError, match="template FleetprovDemo not found"):
        boot.fb.start()
    assert boot.sleeps == []


@pytest.mark.parametrize("s", [fleetprov.BAD_RESPONSE, fleetprov.NO_MEMORY, fleetprov.BAD_PARAMETER])
def test_local_failures_are_not_retried(flash: Path, cloud: FakeCloud, s: int) -> None:
    cloud.fail["keys"] = [status(s)]
    boot = Boot(cloud)
    with pytest.raises(FlowError, match=fleetprov.strerror(s)):
        boot.fb.start()
    assert boot.sleeps == []


def test_a_provisioner_that_cannot_get_its_buffer_stops_with_fleetprovs_own_line(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_buffer(*args: Any) -> None:
        raise fleetprov.ProvisioningError(fleetprov.NO_MEMORY, "Provisioner: no memory for rx_size=6144")

    monkeypatch.setattr(cloud, "provisioner", no_buffer)
    boot = Boot(cloud)
    with pytest.raises(FlowError) as info:
        boot.fb.start()
    assert str(info.value) == "provisioning failed: Provisioner: no memory for rx_size=6144"
    assert not info.value.retryable and boot.sleeps == []


def test_attempts_are_bounded_and_the_last_error_is_reported(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["keys"] = [refused(429, "ThrottlingException", "slow down")] * 10
    boot = Boot(cloud, retry_attempts=4, retry_base_ms=1000, retry_max_ms=3000)
    with pytest.raises(FlowError) as info:
        boot.fb.start()
    assert info.value.retryable
    assert "after 4 attempts" in str(info.value) and "429" in str(info.value)
    assert cloud.calls.count("keys") == 4
    assert boot.retry_waits() == [1000, 2000, 3000]  # doubling, capped at retry_max_ms


def test_network_failures_on_connect_are_retried(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["connect"] = [
        mqttlink.ConnectError("cannot connect to 127.0.0.1:8883: OSError: 111"),
        mqttlink.ConnectError("127.0.0.1:8883 closed the connection before CONNACK", refused=True),
    ]
    boot = Boot(cloud)
    boot.fb.start()
    assert len(boot.retry_waits()) == 2


def test_running_out_of_memory_while_connecting_is_retried_and_named(flash: Path, cloud: FakeCloud) -> None:
    # A heap fragmented by a failed attempt may have the room once its objects are gone.
    cloud.fail["connect"] = [MemoryError("memory allocation failed, allocating 1688 bytes")] * 2
    boot = Boot(cloud)
    boot.fb.start()
    assert len(boot.retry_waits()) == 2
    assert "out of memory: memory allocation failed, allocating 1688 bytes" in boot.output()


def test_running_out_of_memory_on_every_attempt_ends_the_boot_as_retry(flash: Path, cloud: FakeCloud) -> None:
    # "retry": a board resets after a pause and starts from a clean heap; "fatal" would stop it.
    cloud.fail["connect"] = [MemoryError("memory allocation failed, allocating 1688 bytes")] * 10
    boot = Boot(cloud)
    assert bootflow.boot(boot.cfg, boot.fb.board) == "retry"
    assert boot.lines[-1].startswith("fleetprov: provisioning failed after 5 attempts; last: out of memory")


def test_a_claim_refused_at_connack_fails_at_once(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["connect"] = [
        mqttlink.ConnectError("refused: CONNACK 5 (not authorised)", refused=True, code=5)
    ]
    boot = Boot(cloud)
    with pytest.raises(FlowError, match="CONNACK 5.*claim certificate is active"):
        boot.fb.start()
    assert boot.sleeps == []


@pytest.mark.parametrize(
    "refusal",
    [
        mqttlink.ConnectError("refused: CONNACK 5 (not authorised)", refused=True, code=5),
        mqttlink.ConnectError("127.0.0.1:8883 closed the TLS handshake (...)", handshake=True),
    ],
    ids=["connack", "handshake"],
)
def test_a_refused_temporary_claim_says_it_has_expired_and_to_run_make_claim_again(
    flash: Path, cloud: FakeCloud, refusal: mqttlink.ConnectError
) -> None:
    (flash / "certs" / credstore.TEMPORARY_CLAIM).write_text("abc123 valid until 2026-12-06T20:30:00Z\n")
    cloud.fail["connect"] = [refusal, refusal]
    boot = Boot(cloud, retry_attempts=5)
    with pytest.raises(FlowError) as info:
        boot.fb.start()
    msg = str(info.value)
    assert "temporary claim (abc123 valid until 2026-12-06T20:30:00Z)" in msg, msg
    assert "has expired" in msg and "run `make claim` again" in msg, msg
    assert "policy allows iot:Connect" not in msg  # not the factory claim's advice


@given(
    attempt=st.integers(1, 40),
    base=st.integers(0, 10_000),
    cap=st.integers(0, 120_000),
    pick=st.sampled_from(["low", "high", "mid"]),
)
def test_backoff_doubles_is_capped_and_jitters_within_half_to_full_delay(
    attempt: int, base: int, cap: int, pick: str
) -> None:
    delay = min(cap, base * 2 ** (attempt - 1))
    rand: Callable[[int], int] = {"low": lambda n: 0, "high": lambda n: n, "mid": lambda n: n // 2}[pick]
    wait = device.backoff_ms(attempt, base, cap, rand)
    assert delay - delay // 2 <= wait <= delay


def test_default_jitter_draws_spread_over_the_window() -> None:
    waits = {device.backoff_ms(3, 1000, 30000, Board().rand) for _ in range(200)}
    assert min(waits) >= 2000 and max(waits) <= 4000 and len(waits) > 50


# -- credentials that do not belong together, revocation --------------------------


def test_a_certificate_that_does_not_match_its_key_is_refused_and_nothing_committed(
    flash: Path, cloud: FakeCloud
) -> None:
    cloud.wrong_key = True
    boot = Boot(cloud)
    with pytest.raises(FlowError, match="does not certify this private key"):
        boot.fb.start()
    assert credstore.Store().load() is None
    assert not list((flash / "certs").glob(credstore.IDENTITY + "*"))
    assert credstore.Store().load_pending() is None  # a pair of no use to anyone: dropped


def test_a_revoked_certificate_sends_the_device_back_to_the_claim(flash: Path, cloud: FakeCloud) -> None:
    before = claim_files(flash)
    Boot(cloud).fb.start()
    old = cloud.things["thing-a1b2c3"]
    cloud.revoked.add(old)
    boot = Boot(cloud)
    link = boot.fb.start()
    assert boot.steps()[:3] == ["provisioned", "refused", "connect-claim"]
    assert boot.steps()[-1] == "confirm"
    new = cloud.things["thing-a1b2c3"]
    assert new != old and link.cert == new
    store = credstore.Store()
    store.load()
    assert store.identity()[0] == new
    assert claim_files(flash) == before


def test_a_certificate_closed_before_connack_every_time_counts_as_refused(
    flash: Path, cloud: FakeCloud
) -> None:
    Boot(cloud).fb.start()
    boot = Boot(cloud, retry_attempts=3)
    closed = mqttlink.ConnectError("closed before CONNACK", refused=True)
    cloud.fail["connect"] = [closed, closed, closed]
    boot.fb.start()
    assert boot.steps()[:5] == ["provisioned", "retry", "retry", "refused", "connect-claim"]


def test_a_transient_failure_connecting_as_the_thing_keeps_the_identity(
    flash: Path, cloud: FakeCloud
) -> None:
    Boot(cloud).fb.start()
    boot = Boot(cloud, retry_attempts=2)
    cloud.fail["connect"] = [mqttlink.ConnectError("OSError 113")] * 2
    with pytest.raises(FlowError) as info:
        boot.fb.start()
    assert info.value.retryable and not info.value.refused
    assert credstore.Store().load() is not None


# -- CSR method -------------------------------------------------------------------


def test_csr_method_makes_the_key_on_the_device_and_never_sends_it(flash: Path, cloud: FakeCloud) -> None:
    boot = Boot(cloud, method="csr")
    boot.fb.start()
    assert "keygen" in boot.steps() and cloud.calls.count("csr") == 1 and "keys" not in cloud.calls
    store = credstore.Store()
    store.load()
    cert, key = store.identity()
    import der

    assert der.same_key(cert, key) and der.key_public_key(key)[0] == "ec"


def test_csr_method_reuses_its_key_across_retries(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["register"] = [refused(503, "ServiceUnavailable")]
    boot = Boot(cloud, method="csr")
    boot.fb.start()
    # the staged certificate (and its key) is registered on the retry: one key, one certificate
    assert boot.steps().count("keygen") == 1 and cloud.calls.count("csr") == 1
    assert cloud.calls.count("register") == 2 and len(cloud.active) == 1


def made_provisioners(cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch) -> list[FakeProvisioner]:
    made: list[FakeProvisioner] = []
    make = cloud.provisioner

    def provisioner(*args: Any) -> FakeProvisioner:
        made.append(make(*args))
        return made[-1]

    monkeypatch.setattr(cloud, "provisioner", provisioner)
    return made


@pytest.mark.parametrize("method", ["keys", "csr"])
def test_one_provisioner_serves_both_operations_of_a_connection_and_is_closed_after_them(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    made = made_provisioners(cloud, monkeypatch)
    Boot(cloud, method=method).fb.start()
    assert len(made) == 1 and made[0].closed  # one receive buffer for the certificate and RegisterThing


@pytest.mark.parametrize("where", ["register", "stage"])
def test_a_provisioner_is_closed_when_its_attempt_fails(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    made = made_provisioners(cloud, monkeypatch)
    if where == "register":
        cloud.fail["register"] = [refused(503, "ServiceUnavailable")]
    else:
        real = credwrite.stage
        calls: list[int] = []

        def stage(*args: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise OSError(28, "No space left on device")
            return real(*args)

        monkeypatch.setattr(credwrite, "stage", stage)
    Boot(cloud, method="csr").fb.start()
    # one per attempt: the failed one's and the next one's
    assert len(made) == 2 and all(p.closed for p in made)


def test_csr_method_uses_a_csr_shipped_on_flash(flash: Path, cloud: FakeCloud) -> None:
    import csr

    key_der, csr_pem = csr.generate("shipped")
    (flash / "certs" / "csr.pem").write_text(csr_pem)
    (flash / "certs" / "csr.key.der").write_bytes(key_der)
    boot = Boot(cloud, method="csr")
    boot.fb.start()
    assert "keygen" not in boot.steps() and "csr" in boot.steps()
    store = credstore.Store()
    store.load()
    assert store.identity()[1] == key_der


# -- run() ------------------------------------------------------------------------


def test_run_reports_a_config_error_in_one_line_and_says_fatal(flash: Path) -> None:
    (flash / "config.json").write_text(json.dumps({"endpoint": "x"}))
    lines: list[str] = []
    assert firstboot.run(printer=lines.append) == "fatal"
    assert lines == [
        "fleetprov: config.json: field 'template' is missing (the provisioning template name, e.g. \"FleetprovDemo\")"
    ]


def test_run_reports_missing_claim_files(flash: Path) -> None:
    (flash / "config.json").write_text(json.dumps({"endpoint": "x", "template": "T"}))
    os.remove(flash / "certs" / "claim.key.der")
    lines: list[str] = []
    assert firstboot.run(printer=lines.append) == "fatal"
    assert "certs/claim.key.der" in lines[-1] and "copy it to the board" in lines[-1]


def test_a_shipped_csr_without_its_key_is_reported(flash: Path, cloud: FakeCloud) -> None:
    import csr

    (flash / "certs" / "csr.pem").write_text(csr.generate("shipped")[1])
    with pytest.raises(FlowError, match="csr.pem is on flash but its key is not"):
        Boot(cloud, method="csr").fb.start()


def test_a_failing_random_source_during_keygen_is_reported(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csr

    def broken(common_name: str) -> tuple[bytes, str]:
        raise OSError("random source gave no valid P-256 scalar in 16 draws: check os.urandom")

    monkeypatch.setattr(csr, "generate", broken)
    with pytest.raises(FlowError, match="cannot make a key and CSR on the device: random source"):
        Boot(cloud, method="csr").fb.start()
    assert cloud.calls == []


# -- a first boot that resumes (the staged identity) ------------------------------------


def staged_boot(flash: Path, cloud: FakeCloud, **cfg: Any) -> dict[str, Any]:
    """A first boot cut short right after the certificate was staged, before RegisterThing."""
    cloud.fail["register"] = [KeyboardInterrupt()]  # the power goes: nothing after it runs
    with pytest.raises(KeyboardInterrupt):
        Boot(cloud, **cfg).fb.start()
    pending = credstore.Store().load_pending()
    assert pending is not None and credstore.Store().load() is None
    return pending


def test_a_cut_before_registerthing_resumes_with_the_staged_certificate(flash: Path, cloud: FakeCloud) -> None:
    pending = staged_boot(flash, cloud)
    boot = Boot(cloud)
    boot.fb.start()
    assert boot.steps()[:3] == ["not-provisioned", "resume", "connect-claim"]
    assert cloud.calls.count("keys") == 1  # no second certificate
    rec = credstore.Store().load()
    assert rec["certificate_id"] == pending["certificate_id"] and rec["thing_name"] == "thing-a1b2c3"
    assert not (flash / "certs" / credstore.PENDING).exists()
    assert TOKEN not in boot.output()


def test_a_registration_whose_answer_was_lost_adopts_the_active_certificate(flash: Path, cloud: FakeCloud) -> None:
    cloud.lose_register_answers = 1  # registered and activated; the device never hears it
    boot = Boot(cloud, retry_attempts=3)
    boot.fb.start()
    steps = boot.steps()
    assert "adopted" in steps and steps[-1] == "confirm", boot.output()
    assert cloud.calls.count("keys") == 1 and len(cloud.active) == 1  # one certificate, ACTIVE
    rec = credstore.Store().load()
    assert rec["thing_name"] is None
    assert (flash / "certs" / rec["files"]["cert"]).read_bytes() in cloud.active


def test_a_staged_certificate_that_is_not_active_and_whose_token_is_spent_is_dropped(
    flash: Path, cloud: FakeCloud
) -> None:
    staged_boot(flash, cloud)
    cloud.tokens.clear()  # the token was spent or expired and the certificate never activated
    boot = Boot(cloud)
    boot.fb.start()
    steps = boot.steps()
    assert "dropped" in steps and steps.count("certificate") == 1, boot.output()
    assert cloud.calls.count("keys") == 2 and len(cloud.active) == 1
    assert credstore.Store().load() is not None


def test_a_staged_certificate_past_its_token_lifetime_is_not_registered_again(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = staged_boot(flash, cloud)
    now = pending["issued"] + provisioning.TOKEN_TTL_S + 1
    monkeypatch.setattr(provisioning.time, "time", lambda: now)
    boot = Boot(cloud)
    boot.fb.start()
    assert "dropped" in boot.steps() and cloud.calls.count("register") == 2  # the cut one, the new one
    assert cloud.calls.count("keys") == 2


def test_an_expired_staged_csr_identity_is_dropped_and_a_new_csr_made(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = staged_boot(flash, cloud, method="csr")
    now = pending["issued"] + provisioning.TOKEN_TTL_S + 1
    monkeypatch.setattr(provisioning.time, "time", lambda: now)
    boot = Boot(cloud, method="csr")
    boot.fb.start()
    steps = boot.steps()
    assert steps.index("dropped") < steps.index("keygen"), boot.output()
    assert cloud.calls.count("csr") == 2 and cloud.calls.count("keys") == 0
    assert credstore.Store().load()["certificate_id"] != pending["certificate_id"]


@pytest.mark.parametrize("damage", ["torn-record", "wrong-digest", "missing-key"])
def test_a_damaged_pending_record_is_not_trusted_and_provisioning_starts_over(
    flash: Path, cloud: FakeCloud, damage: str
) -> None:
    staged_boot(flash, cloud)
    certs = flash / "certs"
    if damage == "torn-record":
        data = (certs / credstore.PENDING).read_bytes()
        (certs / credstore.PENDING).write_bytes(data[: len(data) // 2])
    elif damage == "wrong-digest":
        (certs / credstore.STAGED_CERT).write_bytes(b"\x30\x00")
    else:
        (certs / credstore.STAGED_KEY).unlink()
    boot = Boot(cloud)
    boot.fb.start()
    assert "resume" not in boot.steps() and cloud.calls.count("keys") == 2
    assert credstore.Store().load() is not None


# -- connection errors a user can act on ------------------------------------------------


def handshake_closed() -> mqttlink.ConnectError:
    return mqttlink.ConnectError("127.0.0.1:8883 closed the TLS handshake (OSError: 32): ...", handshake=True)


def test_a_closed_tls_handshake_on_the_claim_is_retried_once_then_fatal(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["connect"] = [handshake_closed(), handshake_closed(), handshake_closed()]
    boot = Boot(cloud, retry_attempts=5)
    with pytest.raises(FlowError) as info:
        boot.fb.start()
    assert not info.value.retryable and "closed the TLS handshake" in str(info.value)
    assert boot.steps().count("retry") == 1 and cloud.calls.count("connect") == 2


def test_one_closed_handshake_then_success_provisions(flash: Path, cloud: FakeCloud) -> None:
    cloud.fail["connect"] = [handshake_closed()]
    Boot(cloud).fb.start()
    assert credstore.Store().load() is not None


def test_a_closed_tls_handshake_as_the_thing_is_retried_once_and_keeps_the_identity(
    flash: Path, cloud: FakeCloud
) -> None:
    Boot(cloud).fb.start()
    cloud.fail["connect"] = [handshake_closed(), handshake_closed()]
    boot = Boot(cloud, retry_attempts=5)
    with pytest.raises(FlowError) as info:
        boot.fb.start()
    assert not info.value.retryable and not info.value.refused
    assert boot.steps().count("retry") == 1
    assert credstore.Store().load() is not None  # maybe the clock: the identity is kept


def test_run_reports_a_closed_handshake_as_fatal(flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"endpoint": "127.0.0.1", "template": "FleetprovDemo", "parameters": {"SerialNumber": "{uid}"}}
    (flash / "config.json").write_text(json.dumps(raw))
    cloud.fail["connect"] = [handshake_closed(), handshake_closed()]
    monkeypatch.setattr(mqttlink, "connect", cloud.connect)
    lines: list[str] = []
    assert firstboot.run(printer=lines.append) == "fatal"
    assert "closed the TLS handshake" in lines[-1]


@pytest.mark.parametrize("numbering", ["linux", "esp32"])
def test_network_errors_are_retried_and_named_by_errno_on_either_numbering(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch, numbering: str
) -> None:
    import errno

    import esp32errno
    import timedsock

    table = esp32errno if numbering == "esp32" else errno
    monkeypatch.setattr(timedsock, "errno", table)
    cloud.fail["connect"] = [OSError(table.ENOTCONN), OSError(table.ECONNRESET)]
    boot = Boot(cloud)
    boot.fb.start()
    retries = [line for line in boot.lines if " retry " in line]
    assert len(retries) == 2
    assert "network error: OSError ENOTCONN ({})".format(table.ENOTCONN) in retries[0]
    assert "network error: OSError ECONNRESET ({})".format(table.ECONNRESET) in retries[1]


def test_a_confirming_publish_that_times_out_names_etimedout_as_esp32_numbers_it(
    flash: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    import esp32errno
    import timedsock

    monkeypatch.setattr(timedsock, "errno", esp32errno)

    def no_puback(self: FakeClient, topic: bytes, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        raise OSError(esp32errno.ETIMEDOUT)

    monkeypatch.setattr(FakeClient, "publish", no_puback)
    with pytest.raises(FlowError) as info:
        Boot(cloud).fb.start()
    assert info.value.retryable and "OSError ETIMEDOUT (116)" in str(info.value)


def test_substitution_fills_uid_and_client_id_and_leaves_other_braces(flash: Path, cloud: FakeCloud) -> None:
    cfg = devconfig.validate({"endpoint": "h", "template": "FleetprovDemo", "client_id": "cid"})
    dev = device.Device(cfg, FakeBoard(cloud, uid="a1b2"))
    out = {k: dev.substitute(v) for k, v in {"SerialNumber": "{uid}", "Name": "dev-{client_id}", "Raw": "{x} {{uid}}"}.items()}
    assert out == {"SerialNumber": "a1b2", "Name": "dev-cid", "Raw": "{x} {a1b2}"}


def test_an_answer_fleetprov_refuses_as_bad_response_stops_the_boot_and_records_nothing(
    flash: Path, cloud: FakeCloud
) -> None:
    # e.g. a thing name outside AWS's rule: never a client id, a topic or a record's content
    cloud.fail["register"] = [
        fleetprov.ProvisioningError(fleetprov.BAD_RESPONSE, "RegisterThing: thingName 'evil/#\\n' is not 1-128 of ...")
    ]
    boot = Boot(cloud)
    with pytest.raises(FlowError) as info:
        boot.fb.start()
    assert not info.value.retryable and "thingName" in str(info.value)
    assert not (flash / "certs" / credstore.RECORD).exists() and credstore.Store().load() is None
    assert cloud.calls.count("register") == 1  # not retried: the same server would answer the same


def test_two_connects_with_one_client_id_are_a_second_apart_as_aws_requires(flash: Path, cloud: FakeCloud) -> None:
    # AWS IoT closes a second CONNECT with one client id within a second before CONNACK
    cloud.fail["register"] = [status(fleetprov.TIMEOUT)]
    waited: list[int] = []
    connects: list[int] = []
    real = cloud.connect

    def connect(*args: Any) -> Any:
        connects.append(time.monotonic() * 1000 + sum(waited))  # the fake's sleeps pass no time: add them
        return real(*args)

    cloud.connect = connect  # type: ignore[method-assign]
    boot = Boot(cloud, retry_base_ms=10, retry_max_ms=10)
    boot.fb.board.sleep_ms = waited.append  # type: ignore[method-assign]
    boot.fb.start()
    assert boot.retry_waits() == [10]
    claim = [at for at, link in zip(connects, cloud.links) if link.cert == cloud.claim.cert_der]
    assert len(claim) == 2 and claim[1] - claim[0] >= 900  # the back-off, then the rest of the second
