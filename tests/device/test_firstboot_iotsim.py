"""First boot on the MicroPython unix port against iotsim: the real boot.py and
main.py in a scratch folder that plays the board's flash (tools/unixboard.py)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boot_steps
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tools.iotsim.broker import MqttQuotas
from tools.unixboard import BOOT, EXIT_STATUS, Board, BootResult, make_flash

FAST_RETRY = {"retry_base_ms": 20, "retry_max_ms": 100}


def claim_files(flash: Path) -> dict[str, bytes]:
    return {n: (flash / "certs" / n).read_bytes() for n in ("ca.der", "claim.der", "claim.key.der")}


def stored_identity(flash: Path) -> tuple[dict[str, Any], bytes, bytes]:
    record = json.loads((flash / "certs" / "provisioned.json").read_text())
    cert = (flash / "certs" / record["files"]["cert"]).read_bytes()
    key = (flash / "certs" / record["files"]["key"]).read_bytes()
    return record, cert, key


def assert_provisioned_in_iotsim(iotsim: Any, flash: Path) -> tuple[str, str]:
    record, cert_der, key_der = stored_identity(flash)
    cert_id = hashlib.sha256(cert_der).hexdigest()
    assert record["certificate_id"] == cert_id
    cert = x509.load_der_x509_certificate(cert_der)
    key = serialization.load_der_private_key(key_der, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
    thing = iotsim.registry.thing(record["thing_name"])
    assert thing is not None and cert_id in thing.certificates
    assert iotsim.registry.status(cert_id) == "ACTIVE"
    return record["thing_name"], cert_id


@pytest.fixture
def flash(tmp_path: Path, iotsim: Any) -> Path:
    return make_flash(tmp_path / "flash", iotsim.state, FAST_RETRY)


@pytest.fixture
def iotsim_at_once(iotsim_factory: Any) -> Any:
    """An iotsim that lets a client id CONNECT again within a second, for the
    tests that read the exact steps of boots run back to back: a board's reboot
    takes seconds, the harness's none. AWS's rule, and a boot riding it out, are
    test_a_reboot_within_a_second_rides_out_awss_connect_rate."""
    return iotsim_factory(mqtt_quotas=MqttQuotas(connect_interval_ms=0))


def reconfigure(flash: Path, **changes: Any) -> None:
    path = flash / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def boot(flash: Path, **kw: Any) -> BootResult:
    return Board(flash).boot(timeout=kw.pop("timeout", 60), **kw)


def test_a_fresh_device_provisions_then_boots_straight_to_its_application(iotsim_at_once: Any, tmp_path: Path) -> None:
    iotsim = iotsim_at_once
    flash = make_flash(tmp_path / "flash", iotsim.state, FAST_RETRY)
    before = claim_files(flash)
    first = boot(flash)
    assert first.returncode == 0, first.text
    assert first.steps() == boot_steps.FIRST_BOOT + boot_steps.APPLICATION
    thing, cert_id = assert_provisioned_in_iotsim(iotsim, flash)
    assert thing.startswith("fleetprov-")  # the demo template: fleetprov-<SerialNumber>
    second = boot(flash)
    assert second.returncode == 0, second.text
    assert second.steps() == boot_steps.PROVISIONED_BOOT + boot_steps.APPLICATION
    assert f"thing {thing} certificate {cert_id}" in second.text
    assert claim_files(flash) == before
    record = json.loads((flash / "certs" / "provisioned.json").read_text())
    assert sorted(p.name for p in (flash / "certs").iterdir()) == sorted(
        ["ca.der", "claim.der", "claim.key.der", *record["files"].values(), "provisioned.json", "uid"]
    )


@pytest.mark.parametrize(
    "method, fmt, mpy",
    [("keys", "cbor", False), ("csr", "json", True), ("csr", "cbor", False)],
)
def test_every_method_and_format_provisions_end_to_end(
    iotsim: Any, tmp_path: Path, method: str, fmt: str, mpy: bool
) -> None:
    flash = make_flash(tmp_path / "flash", iotsim.state, dict(FAST_RETRY, method=method, format=fmt), mpy=mpy)
    result = boot(flash)
    assert result.returncode == 0, result.text
    assert ("keygen" in result.steps()) == (method == "csr")
    assert_provisioned_in_iotsim(iotsim, flash)
    if method == "csr":
        # the key iotsim certified is the one made on the device: iotsim never saw it
        _, _, key_der = stored_identity(flash)
        assert serialization.load_der_private_key(key_der, password=None).key_size == 256  # type: ignore[union-attr]


def test_no_key_or_token_appears_in_the_device_output(iotsim: Any, flash: Path) -> None:
    result = boot(flash)
    assert result.returncode == 0, result.text
    _, _, key_der = stored_identity(flash)
    import base64

    b64 = base64.b64encode(key_der).decode()
    for i in range(0, len(b64) - 16, 16):
        assert b64[i : i + 16] not in result.text
    assert "PRIVATE KEY" not in result.text and "OwnershipToken" not in result.text


def test_a_revoked_certificate_is_dropped_and_the_device_provisions_again_with_the_claim(
    iotsim_at_once: Any, tmp_path: Path
) -> None:
    iotsim = iotsim_at_once
    flash = make_flash(tmp_path / "flash", iotsim.state, FAST_RETRY)
    before = claim_files(flash)
    assert boot(flash).returncode == 0
    thing, old_id = assert_provisioned_in_iotsim(iotsim, flash)
    iotsim.registry.revoke(old_id)
    result = boot(flash)
    assert result.returncode == 0, result.text
    steps = result.steps()
    assert steps[:4] == ["config", "provisioned", "refused", "connect-claim"]
    assert steps[-3:] == ["confirm", "hello", "done"]
    assert "CONNACK" in result.text
    new_thing, new_id = assert_provisioned_in_iotsim(iotsim, flash)
    assert new_thing == thing and new_id != old_id
    assert iotsim.registry.status(old_id) == "REVOKED"
    assert claim_files(flash) == before
    assert boot(flash).steps()[:3] == ["config", "provisioned", "connect-thing"]


def test_a_reboot_within_a_second_rides_out_awss_connect_rate(iotsim: Any, flash: Path) -> None:
    # AWS IoT closes a second CONNECT with one client id within a second before
    # CONNACK; a board that reboots that fast retries once, after the second.
    assert boot(flash).returncode == 0
    again = boot(flash)
    assert again.returncode == 0, again.text
    assert again.steps()[-3:] == ["connect-thing", "hello", "done"], again.text
    retries = [line for line in again.lines if " retry " in line]
    assert len(retries) <= 1 and all("closed the connection before CONNACK" in r for r in retries), again.text


def test_throttled_twice_then_accepted(iotsim: Any, flash: Path) -> None:
    iotsim.set_fault(
        "register",
        "reject",
        status_code=429,
        error_code="ThrottlingException",
        error_message="Rate exceeded",
        times=2,
    )
    result = boot(flash)
    assert result.returncode == 0, result.text
    retries = [line for line in result.lines if " retry " in line]
    assert len(retries) == 2 and all("429" in r and "Rate exceeded" in r for r in retries)
    assert result.steps().count("connect-claim") == 3  # a fresh connection for each attempt
    assert_provisioned_in_iotsim(iotsim, flash)


def test_a_server_error_then_a_lost_response_are_retried(iotsim: Any, flash: Path) -> None:
    reconfigure(flash, response_timeout_ms=1000)
    iotsim.set_fault("keys", "reject", status_code=503, error_code="ServiceUnavailable", times=1)
    iotsim.set_fault("register", "drop", times=1)
    result = boot(flash)
    assert result.returncode == 0, result.text
    retries = [line for line in result.lines if " retry " in line]
    assert len(retries) == 2
    assert "503" in retries[0] and "TIMEOUT" not in retries[0]
    assert "no answer" in retries[1]
    assert_provisioned_in_iotsim(iotsim, flash)


def test_access_denied_fails_at_once_with_the_servers_message(iotsim: Any, flash: Path) -> None:
    iotsim.set_fault(
        "register",
        "reject",
        status_code=403,
        error_code="AccessDenied",
        error_message="device 42 is not on the allow list",
    )
    result = boot(flash)
    assert result.returncode == 1
    assert "retry" not in result.steps()
    last = result.lines[-1]
    assert last.startswith("fleetprov: provisioning failed: ")
    assert "403" in last and "AccessDenied" in last and "device 42 is not on the allow list" in last
    assert not (flash / "certs" / "provisioned.json").exists()


def test_attempts_are_bounded(iotsim: Any, flash: Path) -> None:
    reconfigure(flash, retry_attempts=3)
    iotsim.set_fault("keys", "reject", status_code=500, error_code="InternalFailure")
    result = boot(flash)
    assert result.returncode == 1
    assert result.steps().count("connect-claim") == 3 and result.steps().count("retry") == 2
    assert "after 3 attempts" in result.lines[-1]


@contextmanager
def serving(handle: Callable[[socket.socket, threading.Event], list[socket.socket]]) -> Iterator[int]:
    """A TCP server on a free loopback port that hands each connection to
    ``handle(conn, stop)`` (which returns the sockets it holds) until the block
    ends; then every one of them is closed."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.extend(handle(conn, stop))

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(timeout=5)
        for c in held:
            c.close()
        srv.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never sends a byte: a dead endpoint."""
    with serving(lambda conn, stop: [conn]) as port:
        yield port


def test_a_silent_endpoint_ends_in_bounded_retries_never_a_hang(flash: Path, silent_server: int) -> None:
    reconfigure(flash, port=silent_server, connect_timeout_ms=300, retry_attempts=2)
    result = boot(flash, timeout=30)
    assert result.returncode == 1
    assert result.steps().count("retry") == 1
    assert "after 2 attempts" in result.lines[-1] and "cannot connect" in result.lines[-1]


def test_a_server_certificate_for_another_name_is_refused_at_once_naming_the_field(
    iotsim: Any, flash: Path
) -> None:
    reconfigure(flash, server_hostname="not-the-endpoint.example", retry_attempts=5)
    result = boot(flash)
    assert result.returncode == 1, result.text
    assert "retry" not in result.steps(), result.text  # a configuration to fix: not retried
    last = result.lines[-1]
    assert "failed verification" in last and "`server_hostname` in config.json (not-the-endpoint.example)" in last
    assert not (flash / "certs" / "provisioned.json").exists()


def test_a_ca_that_did_not_sign_the_endpoint_is_refused_at_once_naming_the_field(
    iotsim: Any, flash: Path
) -> None:
    other, _ = _client_identity(iotsim, expired=False)  # any certificate but the endpoint's CA
    (flash / "certs" / "ca.der").write_bytes(other)
    reconfigure(flash, retry_attempts=5)
    result = boot(flash)
    assert result.returncode == 1, result.text
    assert "retry" not in result.steps(), result.text
    last = result.lines[-1]
    assert "not correctly signed by the trusted CA" in last and "`ca` in config.json" in last, last


def test_a_refused_tcp_connection_names_the_endpoint_the_port_and_iotsim(flash: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: refused
        reconfigure(flash, port=port, retry_attempts=2, retry_base_ms=10)
        result = boot(flash)
    assert result.returncode == 1, result.text
    last = result.lines[-1]
    assert "127.0.0.1:{} refused the TCP connection".format(port) in last, last
    assert "`endpoint` and `port` in config.json" in last and "tools.iotsim up" in last, last


@pytest.fixture
def dripping_server(iotsim: Any) -> Iterator[int]:
    """A proxy to iotsim that passes the device's bytes on at once and the
    server's one byte every 20 ms: a TLS handshake that takes a minute."""

    def pump(src: socket.socket, dst: socket.socket, stop: threading.Event, drip: bool) -> None:
        try:
            while not stop.is_set():
                data = src.recv(4096)
                if not data:
                    return
                for i in range(len(data)) if drip else [None]:
                    if stop.wait(0.02 if drip else 0):
                        return
                    dst.sendall(data[i : i + 1] if i is not None else data)
        except OSError:
            return

    def proxy(conn: socket.socket, stop: threading.Event) -> list[socket.socket]:
        up = socket.create_connection(("127.0.0.1", iotsim.port))
        threading.Thread(target=pump, args=(conn, up, stop, False), daemon=True).start()
        threading.Thread(target=pump, args=(up, conn, stop, True), daemon=True).start()
        return [conn, up]

    with serving(proxy) as port:
        yield port


def test_connect_timeout_bounds_the_whole_connection_against_a_dripping_handshake(
    flash: Path, dripping_server: int
) -> None:
    reconfigure(flash, port=dripping_server, connect_timeout_ms=3000, retry_attempts=2, retry_base_ms=100,
                retry_max_ms=100)
    result = boot(flash, timeout=60)
    assert result.returncode == 1, result.text
    times = [int(line.split()[1]) for line in result.lines if line.startswith("fleetprov ")]
    assert "retry" in result.steps() and "ETIMEDOUT" in result.lines[-1], result.text
    # each connect ends within the setting + 0.5 s, the boot within two of them and the back-off
    retry_at = times[result.steps().index("retry")]
    assert retry_at - times[result.steps().index("not-provisioned")] < 3500, result.text
    assert result.elapsed < 2 * 3.5 + 0.1 + 2, result.text


def _client_identity(iotsim: Any, *, expired: bool) -> tuple[bytes, bytes]:
    """(cert DER, key DER): an expired certificate from iotsim's CA, or a valid
    one from a CA iotsim does not know."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if expired:
        issuer_cert = x509.load_pem_x509_certificate((iotsim.state / "ca.pem").read_bytes())
        issuer_key = serialization.load_pem_private_key((iotsim.state / "ca.key.pem").read_bytes(), None)
        issuer = issuer_cert.subject
    else:
        issuer_key = ec.generate_private_key(ec.SECP256R1())
        issuer = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "a CA iotsim does not trust")])
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired else (now, now + dt.timedelta(days=1))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "claim")]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(issuer_key, hashes.SHA256())
    )
    der = serialization.Encoding.DER
    return cert.public_bytes(der), key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.mark.parametrize("claim", ["expired", "unknown-ca"])
def test_a_claim_the_server_hangs_up_on_names_the_causes_and_is_retried_once(
    iotsim: Any, flash: Path, claim: str
) -> None:
    cert, key = _client_identity(iotsim, expired=claim == "expired")
    (flash / "certs" / "claim.der").write_bytes(cert)
    (flash / "certs" / "claim.key.der").write_bytes(key)
    reconfigure(flash, retry_attempts=5)
    result = boot(flash)
    assert result.returncode == 1, result.text
    assert result.steps().count("retry") == 1, result.text  # once, not five times
    last = result.lines[-1]
    assert "closed the TLS handshake" in last, result.text
    for cause in ("expired or is not yet valid", "CA the endpoint does not trust", "another endpoint"):
        assert cause in last
    print(last)


def test_an_unresolvable_endpoint_names_the_host_and_the_config_field(flash: Path) -> None:
    reconfigure(flash, endpoint="no-such-endpoint.invalid", retry_attempts=1)
    result = boot(flash)
    assert result.returncode == 1, result.text
    last = result.lines[-1]
    assert "cannot resolve no-such-endpoint.invalid" in last and "`endpoint` in config.json" in last, last


def test_the_unix_ports_socket_takes_tcp_nodelay(micropython: Any) -> None:
    # The unix port's socket module has neither IPPROTO_TCP nor TCP_NODELAY, yet
    # passes the option to Linux: without it each request waits for delayed ACKs
    # (`make bench`: first boot 650 -> 170 ms).
    code = (
        "import socket, mqttlink\n"
        "print(hasattr(socket, 'TCP_NODELAY'), mqttlink.nodelay(socket.socket(), socket))\n"
    )
    assert micropython.run(code).stdout.split() == ["False", "True"]


def test_a_config_error_stops_the_device_with_one_line(flash: Path) -> None:
    reconfigure(flash, port="8883")
    result = boot(flash)
    assert result.returncode == 1
    expected = (
        "fleetprov: config.json: field 'port' must be an integer, got str \"8883\" "
        "(the MQTT-over-TLS port, usually 8883)"
    )
    assert result.lines == [expected]


# umqtt.simple 1.4/1.5 (firmware 1.23-1.24) as far as mqttlink can tell: the
# constructor takes `ssl=<SSLContext>` and no ssl_params, and connect() wraps
# its socket with ctx.wrap_socket(sock, server_hostname=self.server).
UMQTT_14 = """
from umqtt import simple

class _Made:
    # hands 1.3.4's connect() the TLS socket that 1.4 would have made
    def __init__(self, tls, real):
        self.tls = tls
        self.real = real
    def socket(self, *a):
        return self
    def getaddrinfo(self, *a):
        return self.real.getaddrinfo(*a)
    def connect(self, addr):
        pass
    def __getattr__(self, name):
        return getattr(self.tls, name)

class MQTTClient(simple.MQTTClient):
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None):
        simple.MQTTClient.__init__(self, client_id, server, port, user, password, keepalive, False)
        self.ctx = ssl

    def connect(self, clean_session=True):
        s = Umqtt14.socket.socket()  # the socket factory mqttlink installs
        s.connect(Umqtt14.socket.getaddrinfo(self.server, self.port)[0][-1])
        tls = self.ctx.wrap_socket(s, server_hostname=self.server)
        real = simple.socket
        simple.socket = _Made(tls, real)
        try:
            r = simple.MQTTClient.connect(self, clean_session)
        finally:
            simple.socket = real
        self.sock = tls
        return r

class Umqtt14:
    MQTTException = simple.MQTTException
    MQTTClient = MQTTClient
    socket = simple.socket
"""

PROBE_14 = (
    UMQTT_14
    + """
import json
import mqttlink

def rd(n):
    with open("certs/" + n, "rb") as f:
        return f.read()

cfg = json.load(open("config.json"))
cert, key, ca = rd("claim.der"), rd("claim.key.der"), rd("ca.der")
link = mqttlink.connect(b"ctx-test", cfg["endpoint"], cfg["port"], cert, key, ca,
                        server_hostname=cfg.get("server_hostname"), timeout_ms=5000, mqtt=Umqtt14)
print("connected with", type(link.client.ctx).__name__)
mqttlink.publish(link, b"$aws/certificates/create/json", b"{}", 5000, 0)
link.close()
try:
    mqttlink.connect(b"ctx-test", cfg["endpoint"], cfg["port"], cert, key, ca,
                     server_hostname="wrong.example", timeout_ms=5000, mqtt=Umqtt14)
    print("wrong name accepted")
except mqttlink.ConnectError as ex:
    print("wrong name refused:", ex)
"""
)


def test_umqtt_without_ssl_params_connects_through_a_verifying_ssl_context(
    iotsim: Any, flash: Path, micropython: Any
) -> None:
    result = micropython.run(PROBE_14, cwd=flash)
    assert "connected with _Context" in result.stdout
    assert "wrong name refused: 127.0.0.1" in result.stdout


FAKE_NETWORK = """
STA_IF = 0
calls = []

class WLAN:
    def __init__(self, which):
        calls.append(("WLAN", which))
        self.up = False
        self.polls = 0
    def active(self, on):
        calls.append(("active", on))
    def isconnected(self):
        self.polls += 1
        return self.up and self.polls > 3
    def connect(self, ssid, password):
        calls.append(("connect", ssid, len(password)))
        self.up = True
    def ifconfig(self):
        return ("192.0.2.7", "255.255.255.0", "192.0.2.1", "192.0.2.1")
"""

FAKE_NTPTIME = """
host = None
tries = []
FAIL = {fail}

def settime():
    tries.append(host)
    if len(tries) <= FAIL:
        raise OSError(110)
"""


@pytest.mark.parametrize("ntp_failures", [0, 3])
def test_boot_py_joins_wifi_and_sets_the_clock_on_a_board(
    flash: Path, micropython: Any, ntp_failures: int
) -> None:
    (flash / "network.py").write_text(FAKE_NETWORK)
    (flash / "ntptime.py").write_text(FAKE_NTPTIME.format(fail=ntp_failures))
    reconfigure(flash, wifi={"ssid": "workshop", "password": "s3cret-pass"}, ntp_host="ntp.example")
    code = "import boot, network, ntptime\nprint(network.calls)\nprint(ntptime.tries)\n"
    out = micropython.run(code, cwd=flash).stdout
    assert "boot: joining Wi-Fi workshop" in out
    assert "boot: Wi-Fi up, address 192.0.2.7" in out
    assert "[('WLAN', 0), ('active', True), ('connect', 'workshop', 11)]" in out
    assert "s3cret-pass" not in out
    if ntp_failures:
        assert "['ntp.example', 'ntp.example', 'ntp.example']" in out
        assert "boot: clock NOT set from ntp.example: TLS verification will fail" in out
    else:
        assert "boot: clock set from ntp.example" in out


def test_boot_py_does_nothing_on_the_unix_port(flash: Path, micropython: Any) -> None:
    assert micropython.run("import boot\nprint('after boot')", cwd=flash).stdout == "after boot\n"


@pytest.mark.parametrize("method", ["keys", "csr"])
def test_first_boot_fits_a_96_kb_heap_with_the_compiled_library(
    iotsim: Any, tmp_path: Path, method: str
) -> None:
    # An ESP32 without PSRAM has about 110 KB of MicroPython heap after Wi-Fi
    # (mbedTLS buffers come from the system heap there, as on the unix port).
    flash = make_flash(tmp_path / "flash", iotsim.state, dict(FAST_RETRY, method=method), mpy=True)
    board = Board(flash, heapsize=96 * 1024)
    first = board.boot(timeout=60)
    assert first.returncode == 0, first.text
    assert board.boot(timeout=60).steps()[-1] == "done"


# Loaded only to provision (and dropped after): a provisioned boot must not need them.
PROVISIONING_ONLY = ("provisioning", "fleetprov", "fleetprov_texts", "cbor", "csr", "p256", "der", "pem")
SHOW_MODULES = "import sys\nprint('modules: ' + ' '.join(sorted(sys.modules)))\n"


@pytest.mark.parametrize("method", ["keys", "csr"])
def test_provisioning_code_is_dropped_after_a_first_boot_and_a_provisioned_boot_runs_without_it(
    iotsim: Any, tmp_path: Path, method: str
) -> None:
    flash = make_flash(tmp_path / "flash", iotsim.state, dict(FAST_RETRY, method=method), mpy=True)
    first = Board(flash).boot(code=BOOT + SHOW_MODULES + EXIT_STATUS, timeout=60)
    assert first.returncode == 0 and "done" in first.steps(), first.text
    loaded = next(line for line in first.lines if line.startswith("modules: ")).split()[1:]
    assert not set(loaded) & {*PROVISIONING_ONLY, "devconfig"}, loaded
    # the provisioned board without them at all: an import of any would fail the boot
    for name in PROVISIONING_ONLY:
        (flash / "lib" / (name + ".mpy")).unlink()
    second = Board(flash).boot(timeout=60)
    assert second.returncode == 0, second.text
    assert "connect-claim" not in second.steps() and second.steps()[-1] == "done", second.text
