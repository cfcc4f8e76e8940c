"""The first-boot flow on CPython over real mutual TLS: lib/firstboot.py and
lib/mqttlink.py drive the real umqtt.simple (tools/umqtt_host.py) against
iotsim, and every network wait ends on its deadline."""

from __future__ import annotations

import errno
import json
import shutil
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import credstore
import devconfig
import bootflow
import firstboot
import mqttlink
import pytest
from device import Board, FlowError

from tools import umqtt_host


@pytest.fixture
def device(tmp_path: Path, iotsim: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(iotsim.state / "certs", tmp_path / "certs")
    cfg = json.loads((iotsim.state / "config.json").read_text())
    cfg.update(retry_base_ms=10, retry_max_ms=50)
    return devconfig.validate(cfg)


class HostBoard(Board):
    """CPython as the board: the real umqtt.simple over the host's TLS."""

    def __init__(self, uid: str, lines: list[str]) -> None:
        super().__init__(lines.append)
        self._uid = uid

    def uid(self) -> str:
        return self._uid

    def connect(self, client_id, host, port, cert, key, ca, server_hostname, timeout_ms):  # type: ignore[no-untyped-def]
        return mqttlink.connect(
            client_id, host, port, cert, key, ca, server_hostname, timeout_ms, mqtt=umqtt_host.umqtt_simple
        )


def first_boot(cfg: dict[str, Any], uid: str, lines: list[str]) -> mqttlink.Link:
    return bootflow.FirstBoot(cfg, HostBoard(uid, lines)).start()


def test_cpython_device_provisions_and_reconnects_as_its_thing(iotsim: Any, device: dict[str, Any]) -> None:
    lines: list[str] = []
    link = first_boot(device, "host-a", lines)
    link.close()
    store = credstore.Store()
    rec = store.load()
    assert rec is not None and rec["thing_name"] == "fleetprov-host-a"
    thing = iotsim.registry.thing("fleetprov-host-a")
    assert thing is not None and rec["certificate_id"] in thing.certificates
    assert iotsim.registry.status(rec["certificate_id"]) == "ACTIVE"
    assert rec["device_configuration"]["HelloTopic"] == "fleetprov/fleetprov-host-a/hello"


def test_cpython_device_with_a_revoked_certificate_provisions_again(
    iotsim: Any, device: dict[str, Any]
) -> None:
    first_boot(device, "host-b", []).close()
    old = credstore.Store()
    old_id = old.load()["certificate_id"]
    iotsim.registry.revoke(old_id)
    lines: list[str] = []
    first_boot(device, "host-b", lines).close()
    assert any(" refused " in line and "CONNACK" in line for line in lines)
    new_id = credstore.Store().load()["certificate_id"]
    assert new_id != old_id and iotsim.registry.status(new_id) == "ACTIVE"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(5)
    for c in held:
        c.close()
    srv.close()


def connect_with_the_claim(iotsim: Any, port: int) -> mqttlink.Link:
    """mqttlink.connect to 127.0.0.1:``port`` with iotsim's claim, 200 ms to connect."""
    ca = Path(iotsim.ca_der).read_bytes()
    cert = Path(iotsim.claim_cert_der).read_bytes()
    key = Path(iotsim.claim_key_der).read_bytes()
    return mqttlink.connect(b"x", "127.0.0.1", port, cert, key, ca, "localhost", 200, umqtt_host.umqtt_simple)


def test_connect_to_a_silent_endpoint_ends_in_connect_error_on_its_deadline(
    iotsim: Any, silent_server: int
) -> None:
    with pytest.raises(mqttlink.ConnectError) as info:
        connect_with_the_claim(iotsim, silent_server)
    assert not info.value.refused and f"cannot connect to 127.0.0.1:{silent_server}" in str(info.value)
    # the umqtt module got its own socket factory back
    assert umqtt_host.umqtt_simple.socket is not None and not isinstance(
        umqtt_host.umqtt_simple.socket, mqttlink._SocketFactory
    )


def test_a_failed_connect_without_room_for_its_words_is_still_a_connect_error(
    iotsim: Any, silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading lib/linkfail.py is an allocation like any other: the failure must survive it.
    class NoRoom:
        def __getattr__(self, name: str) -> Any:
            raise MemoryError("memory allocation failed")

    monkeypatch.setitem(sys.modules, "linkfail", NoRoom())
    with pytest.raises(mqttlink.ConnectError) as info:
        connect_with_the_claim(iotsim, silent_server)
    # (the deadline's OSError: TimeoutError on CPython)
    assert re.fullmatch(rf"127\.0\.0\.1:{silent_server} failed \(\w+Error; no memory to say more\)", str(info.value))
    assert not (info.value.refused or info.value.handshake or info.value.verify)  # retried as the network


def test_a_publish_whose_puback_never_comes_times_out() -> None:
    a, b = socket.socketpair()
    try:
        client = umqtt_host.MQTTClient(b"x", "127.0.0.1", 1)
        client.sock = umqtt_host.HostSocket(a)
        link = mqttlink.Link(client)
        with pytest.raises(OSError) as info:
            mqttlink.publish(link, b"fleetprov/x/hello", b"hi", 200)
        assert info.value.args[0] == errno.ETIMEDOUT
        assert b.recv(100).startswith(b"\x32")  # the PUBLISH (QoS 1) went out
        assert client.sock.raw is a  # the real socket is back in place
    finally:
        a.close()
        b.close()


def test_a_claim_refused_by_the_broker_is_reported_as_refused(iotsim: Any, device: dict[str, Any]) -> None:
    iotsim.registry.revoke(iotsim.claim_id)
    try:
        with pytest.raises(FlowError) as info:
            first_boot(device, "host-c", [])
        assert not info.value.retryable
        assert "CONNACK" in str(info.value) and "claim certificate is active" in str(info.value)
    finally:
        iotsim.registry.set_status(iotsim.claim_id, "CLAIM")


def test_a_connect_failure_with_the_clock_unset_says_so(
    iotsim: Any, silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setattr(time, "gmtime", lambda *a: (2000, 1, 1, 0, 0, 0, 5, 1, 0))
    ca = Path(iotsim.ca_der).read_bytes()
    cert = Path(iotsim.claim_cert_der).read_bytes()
    key = Path(iotsim.claim_key_der).read_bytes()
    with pytest.raises(mqttlink.ConnectError, match="the clock reads 2000: .*ntptime"):
        mqttlink.connect(
            b"x", "127.0.0.1", silent_server, cert, key, ca, "localhost", 200, umqtt_host.umqtt_simple
        )


def test_a_claim_from_a_ca_the_server_does_not_trust_is_a_closed_handshake_naming_the_causes(iotsim: Any) -> None:
    from devicepki import ec_identity  # signed by the tests' own CA, unknown to iotsim

    stranger = ec_identity("stranger")
    ca = Path(iotsim.ca_der).read_bytes()
    with pytest.raises(mqttlink.ConnectError) as info:
        mqttlink.connect(b"x", "127.0.0.1", iotsim.port, stranger.cert_der, stranger.key_der(), ca, "localhost",
                         3000, umqtt_host.umqtt_simple)
    assert info.value.handshake and not info.value.refused
    assert "closed the TLS handshake" in str(info.value) and "CA the endpoint does not trust" in str(info.value)


def test_an_unresolvable_endpoint_names_the_host_and_the_config_field(iotsim: Any) -> None:
    ca = Path(iotsim.ca_der).read_bytes()
    cert = Path(iotsim.claim_cert_der).read_bytes()
    key = Path(iotsim.claim_key_der).read_bytes()
    with pytest.raises(mqttlink.ConnectError) as info:
        mqttlink.connect(b"x", "no-such-endpoint.invalid", 8883, cert, key, ca, "localhost", 3000,
                         umqtt_host.umqtt_simple)
    assert "cannot resolve no-such-endpoint.invalid" in str(info.value)
    assert "`endpoint` in config.json" in str(info.value) and not info.value.handshake


class OptionSocket:
    """Records setsockopt calls; refuses them when told to."""

    def __init__(self, refuse: bool = False) -> None:
        self.options: list[tuple[int, int, int]] = []
        self.refuse = refuse

    def setsockopt(self, level: int, opt: int, value: int) -> None:
        if self.refuse:
            raise OSError(errno.ENOPROTOOPT, "not supported")
        self.options.append((level, opt, value))


def test_nodelay_uses_the_ports_names_where_it_has_them() -> None:
    sock = OptionSocket()
    mod = SimpleNamespace(IPPROTO_TCP=6, TCP_NODELAY=1)  # an ESP32's socket module (lwIP values)
    assert mqttlink.nodelay(sock, mod) and sock.options == [(6, 1, 1)]


def test_nodelay_falls_back_to_linuxs_numbers_on_the_unix_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqttlink.sys, "platform", "linux")
    sock = OptionSocket()
    assert mqttlink.nodelay(sock, SimpleNamespace()) and sock.options == [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


@pytest.mark.parametrize("case", ["no-names-elsewhere", "refused", "no-setsockopt"])
def test_nodelay_is_skipped_silently_where_the_port_cannot(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.setattr(mqttlink.sys, "platform", "rp2" if case == "no-names-elsewhere" else "linux")
    sock: Any = {"no-names-elsewhere": OptionSocket(), "refused": OptionSocket(refuse=True), "no-setsockopt": object()}[case]
    assert mqttlink.nodelay(sock, SimpleNamespace()) is False
    assert not getattr(sock, "options", [])



def test_nodelay_skips_a_port_without_a_socket_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # CircuitPython has socketpool, no socket: the default probe must not raise.
    monkeypatch.setitem(sys.modules, "socket", None)  # `import socket` now raises ImportError
    sock = OptionSocket()
    assert mqttlink.nodelay(sock) is False and sock.options == []
