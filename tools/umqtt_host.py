"""The real umqtt.simple, running on CPython.

Host tests, the fleet benchmark and iotsim's examples drive fleetprov through
the very MQTT client a device uses: ``deps/umqtt/simple.py`` (fetched by
``tools/fetch_deps.py``). It imports MicroPython's ``usocket``, ``ustruct``,
``ubinascii`` and ``ussl``; this module supplies CPython stand-ins with the
MicroPython semantics umqtt relies on:

- ``sock.read(n)`` blocks until ``n`` bytes or end of stream; in non-blocking
  mode it returns ``None`` when nothing is ready (as mbedTLS does on a board).
- ``sock.write(buf, n)`` writes the first ``n`` bytes.
- ``ussl.wrap_socket(sock, key=DER, cert=DER, cadata=DER, cert_reqs=...,
  server_hostname=...)`` takes DER bytes like the unix and ESP32 ports.

Usage::

    from tools.umqtt_host import MQTTClient, tls_params
    client = MQTTClient(b"dev1", "127.0.0.1", port, ssl=True,
                        ssl_params=tls_params(ca_der, cert_der, key_der))
    client.connect()
"""

from __future__ import annotations

import binascii
import importlib.util
import os
import socket as _socket
import ssl as _ssl
import struct
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UMQTT_SIMPLE = ROOT / "deps" / "umqtt" / "simple.py"

CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2


class HostSocket:
    """A CPython socket with MicroPython's stream-socket behaviour."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    # MicroPython socket API used by umqtt and fleetprov
    def connect(self, addr: Any) -> None:
        self._sock.connect(addr)

    def settimeout(self, seconds: float | None) -> None:
        self._sock.settimeout(seconds)

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, n: int = -1) -> bytes | None:
        if n < 0:
            n = 1 << 16
        chunks: list[bytes] = []
        got = 0
        while got < n:
            try:
                chunk = self._sock.recv(n - got)
            except (BlockingIOError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError):
                if got == 0:
                    return None
                break  # non-blocking: return what is there
            except _ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if self._sock.gettimeout() == 0.0:  # non-blocking: one read only
                break
        return b"".join(chunks)

    def readinto(self, buf: memoryview | bytearray) -> int | None:
        """As MicroPython's stream readinto: the count read, 0 at end of stream,
        None when non-blocking and nothing is there."""
        try:
            return self._sock.recv_into(buf)
        except (BlockingIOError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError):
            return None
        except _ssl.SSLZeroReturnError:
            return 0

    def write(self, buf: bytes | bytearray | memoryview, n: int | None = None) -> int | None:
        data = memoryview(buf)[: len(buf) if n is None else n]
        if self._sock.gettimeout() == 0.0:
            try:
                return self._sock.send(data)
            except (BlockingIOError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError):
                return None
        self._sock.sendall(data)
        return len(data)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    @property
    def raw(self) -> Any:
        return self._sock


CONNECT_TIMEOUT_S = 10.0


def _usocket_module() -> types.ModuleType:
    mod = types.ModuleType("usocket")

    def socket(*args: Any) -> HostSocket:
        sock = _socket.socket(*args)
        # umqtt's connect() makes its own socket: bound TCP connect and TLS handshake.
        sock.settimeout(CONNECT_TIMEOUT_S)
        # MQTT's small request/answer packets must not wait for Nagle's delayed ACKs
        # (lwIP on a board sends them at once too).
        if sock.type == _socket.SOCK_STREAM:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return HostSocket(sock)

    mod.socket = socket  # type: ignore[attr-defined]
    mod.getaddrinfo = _socket.getaddrinfo  # type: ignore[attr-defined]
    return mod


def _pem_files(cert: bytes | None, key: bytes | None) -> tuple[str, str]:
    """CPython loads client certificates from files; write PEM to private temp files."""
    from cryptography.hazmat.primitives import serialization

    assert cert is not None and key is not None
    cert_pem = _ssl.DER_cert_to_PEM_cert(cert) if not cert.startswith(b"-----") else cert.decode()
    if key.startswith(b"-----"):
        key_pem = key
    else:
        private = serialization.load_der_private_key(key, password=None)
        key_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    paths = []
    for data in (cert_pem.encode(), key_pem):
        fd, path = tempfile.mkstemp(prefix="umqtt-host-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths[0], paths[1]


def wrap_socket(
    sock: HostSocket,
    key: bytes | None = None,
    cert: bytes | None = None,
    cadata: bytes | None = None,
    cert_reqs: int = CERT_NONE,
    server_hostname: str | None = None,
    do_handshake: bool = True,
) -> HostSocket:
    """MicroPython's ``ssl.wrap_socket`` signature, with DER bytes for key, cert and CA."""
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = bool(server_hostname) and cert_reqs == CERT_REQUIRED
    ctx.verify_mode = _ssl.CERT_REQUIRED if cert_reqs == CERT_REQUIRED else _ssl.CERT_NONE
    if cadata is not None:
        ctx.load_verify_locations(cadata=cadata if not cadata.startswith(b"-----") else cadata.decode())
    if cert is not None or key is not None:
        cert_path, key_path = _pem_files(cert, key)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        finally:
            os.unlink(cert_path)
            os.unlink(key_path)
    wrapped = ctx.wrap_socket(
        sock.raw, server_hostname=server_hostname, do_handshake_on_connect=do_handshake
    )
    return HostSocket(wrapped)


def _ussl_module() -> types.ModuleType:
    mod = types.ModuleType("ussl")
    mod.wrap_socket = wrap_socket  # type: ignore[attr-defined]
    mod.CERT_NONE = CERT_NONE  # type: ignore[attr-defined]
    mod.CERT_OPTIONAL = CERT_OPTIONAL  # type: ignore[attr-defined]
    mod.CERT_REQUIRED = CERT_REQUIRED  # type: ignore[attr-defined]
    return mod


def load_umqtt(path: Path = UMQTT_SIMPLE, name: str = "umqtt_simple_on_cpython") -> types.ModuleType:
    """umqtt/simple.py at ``path`` as a module of its own (default: 1.3.4 from deps/).

    Any release loads; 1.3.4 imports the u-modules below, later ones CPython's
    socket, struct and binascii, which serve them as long as the caller gives
    the client its socket (host tests do; connect() with TLS needs 1.3.4's form)."""
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make deps` (python -m tools.fetch_deps)")
    # umqtt imports these at module level (and ussl inside connect()).
    sys.modules.setdefault("usocket", _usocket_module())
    sys.modules.setdefault("ussl", _ussl_module())
    sys.modules.setdefault("ustruct", struct)
    sys.modules.setdefault("ubinascii", binascii)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


umqtt_simple = load_umqtt()
MQTTClient = umqtt_simple.MQTTClient
MQTTException = umqtt_simple.MQTTException


def client_class(version: str) -> type:
    """MQTTClient of umqtt.simple ``version`` (any release tools/fetch_deps.py pins)."""
    if version == "1.3.4":
        return MQTTClient  # type: ignore[no-any-return]
    from . import fetch_deps

    folder = fetch_deps.umqtt_dir(version)
    module = load_umqtt(folder / "umqtt" / "simple.py", "umqtt_simple_" + version.replace(".", "_"))
    return module.MQTTClient  # type: ignore[no-any-return]


def tls_params(
    ca_der: bytes, cert_der: bytes, key_der: bytes, server_hostname: str | None = "localhost"
) -> dict[str, Any]:
    """ssl_params for umqtt 1.3.4 as a device passes them: DER bytes, verification on."""
    params: dict[str, Any] = {"key": key_der, "cert": cert_der, "cadata": ca_der, "cert_reqs": CERT_REQUIRED}
    if server_hostname:
        params["server_hostname"] = server_hostname
    return params


def connect(
    client_id: bytes | str,
    port: int,
    ca_der: bytes,
    cert_der: bytes,
    key_der: bytes,
    host: str = "127.0.0.1",
    server_hostname: str | None = "localhost",
    keepalive: int = 60,
) -> Any:
    """A connected umqtt.simple client over mutual TLS, with a bounded connect."""
    client = MQTTClient(
        client_id.encode() if isinstance(client_id, str) else client_id,
        host,
        port,
        keepalive=keepalive,
        ssl=True,
        ssl_params=tls_params(ca_der, cert_der, key_der, server_hostname),
    )
    client.connect()
    client.sock.settimeout(None)
    return client
