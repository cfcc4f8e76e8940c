"""A fake AWS IoT endpoint for the boot flows on CPython: connections that
check certificates, the three provisioning operations, a rotation template
with its pre-provisioning hook, the retire step, revocation and injected
failures. The device code runs for real above it (lib/bootflow.py and below),
through a Board whose connections and MQTT API clients are these."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import devconfig
import fleetprov
import mqttlink
from bootflow import FirstBoot
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from device import Board
from devicepki import Identity, ca_der, issue, rsa_identity

ROTATION_TEMPLATE = "FleetprovRotation"

TOKEN = "OWNERSHIP-TOKEN-SECRET-0123456789"


def refused(
    code: int, error_code: str = "Err", message: str = "server says no"
) -> fleetprov.ProvisioningError:
    # the message fleetprov builds from a /rejected response
    return fleetprov.ProvisioningError(
        fleetprov.SERVER_REFUSED,
        f"RegisterThing: refused by the server: {code} {error_code}: {message}",
        code,
        error_code,
        message,
    )


def status(s: int) -> fleetprov.ProvisioningError:
    return fleetprov.ProvisioningError(s, "op: " + fleetprov.strerror(s))


class FakeClient:
    def __init__(self, link: FakeLink) -> None:
        self.link = link
        self.sock = None
        self.published: list[tuple[bytes, bytes, bool, int]] = []

    def publish(self, topic: bytes, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        self.published.append((topic, msg, retain, qos))


class FakeLink:
    def __init__(self, client_id: bytes | str, cert: bytes) -> None:
        self.client_id = client_id
        self.cert = cert
        self.client = FakeClient(self)
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeCloud:
    """Stands in for the endpoint: connections, the three operations, the
    rotation template and the retire step, revocation."""

    def __init__(self, claim: Identity) -> None:
        self.claim = claim
        self.fail: dict[str, list[BaseException]] = {
            "connect": [], "keys": [], "csr": [], "register": [], "retire": []
        }
        self.attached: dict[bytes, str] = {}  # certificate -> the thing it is attached to
        self.made: list[bytes] = []  # certificates in the order they were made
        self.issued: list[Identity | x509.Certificate] = []
        self.tokens: dict[str, bytes] = {}
        self.active: set[bytes] = set()
        self.revoked: set[bytes] = set()
        self.things: dict[str, bytes] = {}
        self.links: list[FakeLink] = []
        self.provisioner_args: list[tuple[Any, ...]] = []
        self.calls: list[str] = []
        self.wrong_key = False
        self.lose_register_answers = 0
        self.cert_days = 30

    # mqttlink.connect's signature
    def connect(self, client_id, host, port, cert, key, ca, server_hostname=None, timeout_ms=10000):
        self.calls.append("connect")
        if self.fail["connect"]:
            raise self.fail["connect"].pop(0)
        assert ca == ca_der()
        if cert in self.revoked:
            raise mqttlink.ConnectError(
                "127.0.0.1:8883 refused the connection: CONNACK 5", refused=True, code=5
            )
        if cert != self.claim.cert_der and cert not in self.active:
            raise mqttlink.ConnectError(
                "127.0.0.1:8883 refused the connection: CONNACK 5", refused=True, code=5
            )
        link = FakeLink(client_id, cert)
        self.links.append(link)
        return link

    def provisioner(self, client, fmt, timeout_ms, rx_size, mqtt_timeout_ms):
        self.provisioner_args.append((fmt, timeout_ms, rx_size, mqtt_timeout_ms))
        return FakeProvisioner(self, client.link.cert)

    def active_certificates(self, thing: str) -> list[bytes]:
        return [c for c, t in self.attached.items() if t == thing and c in self.active]


class FakeProvisioner:
    def __init__(self, cloud: FakeCloud, cert: bytes) -> None:
        self.cloud = cloud
        self.cert = cert  # the certificate of the connection it runs on
        self.closed = False

    def _maybe_fail(self, op: str) -> None:
        self.cloud.calls.append(op)
        if self.cloud.fail[op]:
            raise self.cloud.fail[op].pop(0)

    def create_keys_and_certificate(self, timeout_ms=None):
        self._maybe_fail("keys")
        assert self.cert == self.cloud.claim.cert_der, "provisioning must use the claim connection"
        ident = rsa_identity()
        other = rsa_identity() if self.cloud.wrong_key else ident
        token = TOKEN + str(len(self.cloud.tokens))
        self.cloud.tokens[token] = ident.cert_der
        self.cloud.made.append(ident.cert_der)
        return SimpleNamespace(
            certificate_id=ident.certificate_id,
            certificate_pem=ident.cert_pem,
            private_key=other.key_pem("pkcs1"),
            ownership_token=token,
        )

    def create_certificate_from_csr(self, csr_pem, qos=1, timeout_ms=None):
        self._maybe_fail("csr")
        req = x509.load_pem_x509_csr(csr_pem.encode())
        assert req.is_signature_valid
        cert = issue(req.public_key(), "dev", days=self.cloud.cert_days)
        der = cert.public_bytes(serialization.Encoding.DER)
        token = TOKEN + str(len(self.cloud.tokens))
        self.cloud.tokens[token] = der
        self.cloud.issued.append(SimpleNamespace(cert=cert))  # type: ignore[arg-type]
        self.cloud.made.append(der)
        return SimpleNamespace(
            certificate_id=hashlib.sha256(der).hexdigest(),
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            private_key=None,
            ownership_token=token,
        )

    def register_thing(self, template, token, parameters=None, timeout_ms=None):
        self._maybe_fail("register")
        assert template in ("FleetprovDemo", ROTATION_TEMPLATE)
        if template == ROTATION_TEMPLATE:
            # the pre-provisioning hook: the certificate the request came in on
            # (claimCertificateId) must be attached to the thing it names
            name = parameters["ThingName"]
            if self.cloud.attached.get(self.cert) != name:
                raise refused(403, "AccessDenied", "certificate is not attached to thing " + name)
        elif self.cert != self.cloud.claim.cert_der:
            raise refused(403, "AccessDenied", "the claim's template, over another certificate")
        else:
            name = "thing-" + parameters["SerialNumber"]
        cert = self.cloud.tokens.pop(token, None)
        if cert is None:  # single use, as iotsim has it
            raise refused(400, "InvalidCertificateOwnershipToken", "Certificate ownership token has already been used")
        self.cloud.active.add(cert)
        self.cloud.attached[cert] = name
        self.cloud.things[name] = cert
        if self.cloud.lose_register_answers:
            self.cloud.lose_register_answers -= 1
            raise status(fleetprov.TIMEOUT)  # registered; the answer never came
        return SimpleNamespace(thing_name=name, device_configuration={"Fallback": "no"})

    def request(self, topic, message, timeout_ms=None):
        # the retire step: over the new certificate of the same thing, the old
        # one (made before it) is deactivated and detached
        self._maybe_fail("retire")
        thing = topic.decode().split("/")[1]
        target = next((c for c in self.cloud.made if hashlib.sha256(c).hexdigest() == message["certificateId"]), None)
        if self.cloud.attached.get(self.cert) != thing:
            raise refused(403, "ForbiddenException", "not a certificate of " + thing)
        if target is None or self.cloud.attached.get(target) != thing:
            raise refused(404, "ResourceNotFoundException", "no such certificate on " + thing)
        if self.cloud.made.index(target) > self.cloud.made.index(self.cert):
            raise refused(403, "ForbiddenException", "an older certificate cannot retire a newer one")
        self.cloud.active.discard(target)
        del self.cloud.attached[target]
        return {"certificateId": message["certificateId"], "status": "INACTIVE"}

    def close(self):
        self.closed = True


class FakeBoard(Board):
    """The board's seams wired to the fake cloud; sleeps and jitter recorded."""

    def __init__(
        self,
        cloud: FakeCloud,
        printer: Callable[[str], None] = lambda s: None,
        sleeps: Callable[[int], None] = lambda ms: None,
        rand: Callable[[int], int] = lambda n: n,
        uid: str | None = "a1b2c3",
        hook: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(printer, hook)
        self.cloud = cloud
        self._sleeps = sleeps
        self._rand = rand
        self._uid = uid

    def uid(self) -> str | None:
        return self._uid

    def connect(self, *args: Any) -> FakeLink:
        return self.cloud.connect(*args)

    def provisioner(
        self, client: FakeClient, cfg: dict[str, Any], rx_buffer: bytearray, fmt: str | None = None
    ) -> Any:
        assert isinstance(rx_buffer, bytearray) and len(rx_buffer) in (cfg["rx_size"], 1024)
        return self.cloud.provisioner(
            client, fmt or cfg["format"], cfg["response_timeout_ms"], cfg["rx_size"], cfg["mqtt_timeout_ms"]
        )

    def sleep_ms(self, ms: int) -> None:
        self._sleeps(ms)

    def rand(self, n: int) -> int:
        return self._rand(n)




class Boot:
    """One boot of the device against the fake cloud, capturing its output."""

    def __init__(self, cloud: FakeCloud, hook: Callable[[str], None] | None = None, **cfg: Any) -> None:
        raw = {"endpoint": "127.0.0.1", "template": "FleetprovDemo", "parameters": {"SerialNumber": "{uid}"}}
        raw.update(cfg)
        self.cfg = devconfig.validate(raw)
        self.lines: list[str] = []
        self.sleeps: list[int] = []
        # rand: the longest wait in each jitter window
        self.fb = FirstBoot(self.cfg, FakeBoard(cloud, self.lines.append, self.sleeps.append, lambda n: n, hook=hook))

    def retry_waits(self) -> list[int]:
        """The back-off before each retry, as the progress lines give it ("next in N ms")."""
        return [int(m) for m in re.findall(r"; next in (\d+) ms", self.output())]

    def steps(self) -> list[str]:
        return [line.split()[3] for line in self.lines if line.startswith("fleetprov ")]

    def output(self) -> str:
        return "\n".join(self.lines)


