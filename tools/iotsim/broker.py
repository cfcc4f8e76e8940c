"""Run mosquitto with iotsim's plugin as a child process.

``Broker(state, port, plugin).start()`` makes sure the CA and the server identity
exist in ``state``, builds the plugin if it is missing or older than its source,
writes ``state/mosquitto.conf`` and starts ``mosquitto -c`` on it. It returns
once the listener accepts connections (a deadline-bounded poll), or raises
``BrokerError`` with the tail of ``state/mosquitto.log``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import pki

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SOURCE = REPO / "tools" / "iotsim" / "plugin" / "iotsim_plugin.c"
# Sources the plugin is built from besides PLUGIN_SOURCE (a change rebuilds it).
PLUGIN_HEADERS = (REPO / "tools" / "iotsim" / "plugin" / "policy.h",)
DEFAULT_PLUGIN = REPO / "build" / "iotsim_plugin.so"
PRINCIPALS_DIR = "principals"
# The account and region in the resource ARNs iotsim evaluates policies against.
REGION = "local"
ACCOUNT = "000000000000"
# AWS IoT refuses payloads over 128 KB; mosquitto drops a packet larger than this
# before reading it (the topic and headers add at most 64 KiB), so an oversized
# publish costs no memory. The plugin disconnects anything over 128 KB.
MAX_PACKET_SIZE = 128 * 1024 + 65536 + 16
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class MqttQuotas:
    """AWS IoT Core's message-broker rate quotas the plugin enforces; 0 turns one off.

    The values are AWS's ("AWS IoT Core endpoints and quotas", message broker
    limits): one CONNECT per second per client id, 100 publish requests per second
    per connection (in and out), 8 filters per SUBSCRIBE. Turn one off only for a
    test that is not about it, and say why there.
    """

    connect_interval_ms: int = 1000
    publish_rate: int = 100
    subscribe_filters: int = 8

    def plugin_options(self) -> list[str]:
        return [
            "plugin_opt_{} {}".format(name, int(getattr(self, name)))
            for name in ("connect_interval_ms", "publish_rate", "subscribe_filters")
        ]


AWS_QUOTAS = MqttQuotas()


class BrokerError(RuntimeError):
    """mosquitto could not be built, configured or started."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary (PATH, then /usr/sbin, where Debian puts it)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError(
            "mosquitto not found on PATH or in /usr/sbin; install it with "
            "`sudo apt-get install mosquitto` (or run `make setup`)"
        )
    return found


def build_plugin(plugin: Path = DEFAULT_PLUGIN, source: Path = PLUGIN_SOURCE) -> Path:
    """Compile the plugin to ``plugin`` if it is missing or older than ``source``.

    Uses the Makefile's command. The result is renamed into place, so a
    concurrent build never leaves a half-written library behind.
    """
    plugin = Path(plugin)
    inputs = [source, *(h for h in PLUGIN_HEADERS if source == PLUGIN_SOURCE)]
    if plugin.exists() and all(
        not p.exists() or plugin.stat().st_mtime >= p.stat().st_mtime for p in inputs
    ):
        return plugin
    if not source.exists():
        raise BrokerError(
            "plugin {} does not exist and its source {} is missing".format(plugin, source)
        )
    plugin.parent.mkdir(parents=True, exist_ok=True)
    tmp = plugin.with_name(".{}.{}.tmp".format(plugin.name, os.getpid()))
    cmd = [
        "gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
        "-o", str(tmp), str(source), "-lcrypto",
    ]
    log.info("building %s", plugin)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise BrokerError(
            "gcc not found; install it with `sudo apt-get install gcc mosquitto-dev libssl-dev`"
        ) from exc
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BrokerError(
            "building the iotsim plugin failed ({}):\n{}\nare mosquitto-dev and "
            "libssl-dev installed?".format(" ".join(cmd), result.stderr.strip())
        )
    os.replace(tmp, plugin)
    return plugin


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux).

    A test run that crashes or is killed must not leave brokers behind. The
    signal follows the thread that started the broker, so call start() from a
    thread that lives as long as the broker (the main thread, normally).
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        pr_set_pdeathsig = 1
        ctypes.CDLL(libc_name, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_conf_value(what: str, value: str) -> str:
    # mosquitto.conf has no quoting: a value ends at whitespace.
    if not value or any(c.isspace() for c in value):
        raise BrokerError(
            "{} {!r} contains whitespace, which mosquitto.conf cannot express; "
            "use a state folder whose path has no spaces".format(what, value)
        )
    return value


class Broker:
    """mosquitto on ``host:port`` with TLS client certificates and the iotsim plugin.

    ``state`` holds the PKI, principals/ (written by the service's registry), the
    generated mosquitto.conf and mosquitto.log. Use as a context manager or
    call ``start()``/``stop()``.
    """

    def __init__(
        self,
        state: Path,
        port: int,
        plugin: Path = DEFAULT_PLUGIN,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 10.0,
        region: str = REGION,
        account: str = ACCOUNT,
        quotas: MqttQuotas = AWS_QUOTAS,
    ) -> None:
        for what, value in (("region", region), ("account", account)):
            if not re.fullmatch(r"[a-z0-9-]{1,64}", value):
                raise BrokerError("the {} in resource ARNs must be 1-64 of [a-z0-9-], got {!r}".format(what, value))
        self.region = region
        self.account = account
        self.quotas = quotas
        self.state = Path(state).resolve()
        self.port = int(port)
        self.plugin = Path(plugin).resolve()
        self.host = host
        self.startup_timeout = startup_timeout
        self.conf_path = self.state / "mosquitto.conf"
        self.log_path = self.state / "mosquitto.log"
        self.principals_dir = self.state / PRINCIPALS_DIR
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The mosquitto process id, or None when not started."""
        return self._proc.pid if self._proc else None

    def write_config(self) -> Path:
        """Create the CA and server identity if needed and write mosquitto.conf."""
        self.state.mkdir(parents=True, exist_ok=True)
        ca = pki.CertificateAuthority.load_or_create(self.state)
        cert, key = pki.ensure_server_identity(self.state, ca)
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            "# Generated by tools/iotsim/broker.py; rewritten on every start.",
            "per_listener_settings false",
            # mosquitto started as root drops to user 'mosquitto', which could
            # not read the state folder; stay the user who started it.
            "user {}".format(_check_conf_value("user name", user)),
            "persistence false",
            # The service receives every device's request on one connection;
            # mosquitto's default queue (1000) would drop requests in a burst.
            "max_queued_messages 100000",
            # MQTT is small request/answer packets: without this every exchange waits
            # out Nagle's algorithm against the peer's delayed ACK (~40 ms a step).
            "set_tcp_nodelay true",
            "allow_anonymous false",
            "log_dest file {}".format(_check_conf_value("log path", str(self.log_path))),
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "listener {} {}".format(self.port, _check_conf_value("host", self.host)),
            "cafile {}".format(_check_conf_value("CA path", str(self.state / "ca.pem"))),
            "certfile {}".format(_check_conf_value("certificate path", str(cert))),
            "keyfile {}".format(_check_conf_value("key path", str(key))),
            "require_certificate true",
            # With use_identity_as_username on, mosquitto skips the plugin's
            # MOSQ_EVT_BASIC_AUTH, which is where certificate status is checked.
            "use_identity_as_username false",
            "tls_version tlsv1.2",
            "plugin {}".format(_check_conf_value("plugin path", str(self.plugin))),
            "plugin_opt_principals_dir {}".format(
                _check_conf_value("principals path", str(self.principals_dir))
            ),
            "plugin_opt_region {}".format(self.region),
            "plugin_opt_account {}".format(self.account),
            *self.quotas.plugin_options(),
            "max_packet_size {}".format(MAX_PACKET_SIZE),
            "",
        ]
        pki.write_atomic(self.conf_path, "\n".join(lines).encode())
        return self.conf_path

    def start(self) -> None:
        """Start mosquitto and return once it accepts connections on host:port."""
        if self.running:
            return
        if self.plugin == DEFAULT_PLUGIN.resolve() or not self.plugin.exists():
            build_plugin(self.plugin)
        mosquitto = find_mosquitto()
        self.write_config()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [mosquitto, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_die_with_parent if os.uname().sysname == "Linux" else None,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("mosquitto %d listening on %s:%d", self._proc.pid, self.host, self.port)

    def _probe(self) -> None:
        """One TLS handshake with the listener, verifying the server certificate
        against the iotsim CA: proves that the process on the port is our
        mosquitto, not something else that holds it. Raises OSError."""
        ctx = ssl.create_default_context(cafile=str(self.state / "ca.pem"))
        with socket.create_connection((self.host, self.port), timeout=1.0) as raw:
            with ctx.wrap_socket(raw, server_hostname=self.host):
                pass

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: OSError | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    "mosquitto exited with status {} while starting on {}:{}; "
                    "last lines of {}:\n{}".format(
                        code, self.host, self.port, self.log_path, self.log_tail()
                    )
                )
            try:
                self._probe()
            except OSError as exc:  # ssl.SSLError is an OSError
                last_error = exc
            else:
                if self._proc.poll() is None:
                    return
                continue
            if time.monotonic() >= deadline:
                raise BrokerError(
                    "mosquitto did not complete a TLS handshake on {}:{} within {:.0f} s "
                    "(last attempt: {}); last lines of {}:\n{}".format(
                        self.host, self.port, self.startup_timeout, last_error,
                        self.log_path, self.log_tail(),
                    )
                )
            # Wait for the process to die or a short interval, whichever first.
            try:
                self._proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines mosquitto logged since this start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError as exc:
            return "(cannot read {}: {})".format(self.log_path, exc)
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate mosquitto; kill it if it has not exited within ``timeout`` s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto %d ignored SIGTERM for %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait(timeout=timeout)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
