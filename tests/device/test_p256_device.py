"""lib/p256.py and lib/csr.py on the real MicroPython unix port.

Keys and CSRs are made by MicroPython and checked on the host with
`cryptography` and `openssl`; a certificate issued from a device CSR by a
throwaway CA then completes a mutual-TLS handshake, MicroPython's ssl using the
device-made private key, against a CPython TLS server that requires a client
certificate. Both the source (.py) and the compiled (.mpy) build are run.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools.unixboard import compile_lib

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "lib"
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

RFC6979_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC6979 = {
    "sample": (
        0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60,
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    ),
    "test": (
        0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0,
        0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
        0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083,
    ),
}
TLS_DEADLINE_S = 30.0


def last_json(stdout: str) -> object:
    """The JSON document a MicroPython snippet printed on its last line."""
    return json.loads(stdout.strip().splitlines()[-1])


def openssl_verify(path: Path) -> bool:
    # OpenSSL 3.0 exits 0 even on "self-signature verify failure": read the message too.
    result = subprocess.run(
        ["openssl", "req", "-verify", "-noout", "-in", str(path)], capture_output=True, text=True, timeout=30
    )
    output = result.stdout + result.stderr
    return result.returncode == 0 and "verify OK" in output and "failure" not in output


@pytest.fixture(scope="module")
def mpy_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """p256 and csr compiled with mpy-cross into a folder of their own."""
    out = tmp_path_factory.mktemp("mpy")
    compile_lib(out, ("p256", "csr"))
    return out


@pytest.fixture(params=["py", "mpy"])
def build(request: pytest.FixtureRequest, mpy_build: Path) -> tuple[Path, ...]:
    """extra_path for micropython.run: () runs lib/*.py, the mpy folder shadows it."""
    return () if request.param == "py" else (mpy_build,)


GENERATE = """
import csr, json, binascii, p256
print(p256.__file__)
out = []
for i in range(%d):
    key, pem = csr.generate("mp-device-%%d" %% i)
    out.append([binascii.hexlify(key).decode(), pem])
print(json.dumps(out))
"""


def test_keys_and_csrs_made_on_micropython_verify_with_cryptography_and_openssl(
    micropython, build: tuple[Path, ...], tmp_path: Path
) -> None:
    proc = micropython.run(GENERATE % 4, extra_path=build)
    module_file = proc.stdout.splitlines()[0]
    assert module_file.endswith(".mpy" if build else ".py"), module_file
    made = last_json(proc.stdout)
    assert isinstance(made, list) and len(made) == 4
    scalars = set()
    for i, (key_hex, pem) in enumerate(made):
        key = serialization.load_der_private_key(bytes.fromhex(key_hex), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        scalars.add(key.private_numbers().private_value)
        req = x509.load_pem_x509_csr(pem.encode())
        assert req.is_signature_valid
        assert req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mp-device-%d" % i
        # The CSR carries exactly the public key cryptography derives from the key file.
        assert req.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
        path = tmp_path / ("%d.csr" % i)
        path.write_text(pem)
        assert openssl_verify(path), pem
    assert len(scalars) == 4  # four different keys from os.urandom


def test_generate_completes_in_a_48_kb_heap_with_the_compiled_build(micropython, mpy_build: Path) -> None:
    # An ESP32 without PSRAM has about 110 KB of heap after Wi-Fi, shared with the
    # rest of first boot; the .mpy build needs about 24 KB (make bench measures it).
    code = """
import csr
key, pem = csr.generate("small-heap-device")
print(len(key), pem.splitlines()[0])
"""
    proc = micropython.run(code, extra_path=(mpy_build,), heapsize=48 * 1024)
    assert proc.stdout.split("\n")[0] == "121 -----BEGIN CERTIFICATE REQUEST-----"


def test_rfc6979_vectors_hold_on_micropython(micropython, build: tuple[Path, ...]) -> None:
    code = (
        """
import p256, hashlib, json
d = %d
out = {"pub": list(p256.public_key(d))}
for m in ("sample", "test"):
    h = hashlib.sha256(m.encode()).digest()
    k = next(p256.nonces(d, h))
    r, s = p256.sign(d, h)
    out[m] = [k, r, s]
print(json.dumps(out))
"""
        % RFC6979_KEY
    )
    got = last_json(micropython.run(code, extra_path=build).stdout)
    assert got["pub"] == [
        0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6,
        0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299,
    ]
    for message, expected in RFC6979.items():
        assert tuple(got[message]) == expected, message


def test_micropython_signatures_over_random_keys_verify_with_cryptography(micropython) -> None:
    code = """
import p256, hashlib, json, os, binascii
out = []
for i in range(8):
    d = p256.generate_key()
    msg = os.urandom(i * 7)
    rs = p256.sign(d, hashlib.sha256(msg).digest())
    out.append([d, list(p256.public_key(d)), binascii.hexlify(msg).decode(), list(rs)])
print(json.dumps(out))
"""
    for d, pub, msg_hex, rs in last_json(micropython.run(code).stdout):
        numbers = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
        assert [numbers.x, numbers.y] == pub
        key = ec.EllipticCurvePublicNumbers(pub[0], pub[1], ec.SECP256R1()).public_key()
        key.verify(encode_dss_signature(*rs), bytes.fromhex(msg_hex), ec.ECDSA(hashes.SHA256()))


def test_scalar_validation_and_bounded_redraw_on_micropython(micropython) -> None:
    code = """
import p256, json
out = {}
for name, d in (("zero", 0), ("n", p256.N), ("n+1", p256.N + 1)):
    try:
        p256.check_scalar(d)
        out[name] = "accepted"
    except ValueError as e:
        out[name] = str(e)
draws = [bytes(32), (7).to_bytes(32, "big")]
calls = []
def rng(n):
    calls.append(n)
    return draws.pop(0)
out["key"] = p256.generate_key(rng)
out["calls"] = len(calls)
calls = []
def zeros(n):
    calls.append(n)
    return bytes(32)
try:
    p256.generate_key(zeros)
    out["broken"] = "accepted"
except OSError as e:
    out["broken"] = [str(e), len(calls)]
out["inf"] = p256.mul_base(p256.N) is None
print(json.dumps(out))
"""
    got = last_json(micropython.run(code).stdout)
    for name in ("zero", "n", "n+1"):
        assert "out of range" in got[name], got
    assert got["key"] == 7 and got["calls"] == 2
    assert "no valid P-256 scalar" in got["broken"][0] and got["broken"][1] == 16
    assert got["inf"] is True


def test_pow_fallback_matches_builtin_three_argument_pow_on_micropython(micropython) -> None:
    code = """
import p256
ok = all(p256._pow_mod(a, m - 2, m) == pow(a, m - 2, m) for a in (1, 2, p256.GX) for m in (p256.P, p256.N))
print(ok, p256._pow is pow)
"""
    assert micropython.run(code).stdout.split() == ["True", "True"]


def test_bad_common_names_are_refused_on_micropython(micropython) -> None:
    code = """
import csr, json
out = []
for name in ("", "x" * 65, b"dev", None):
    try:
        csr.generate(name)
        out.append("accepted")
    except (TypeError, ValueError) as e:
        out.append(type(e).__name__ + ": " + str(e))
print(json.dumps(out))
"""
    got = last_json(micropython.run(code).stdout)
    assert got[0].startswith("ValueError") and "got 0" in got[0]
    assert got[1].startswith("ValueError") and "got 65" in got[1]
    assert got[2].startswith("TypeError") and got[3].startswith("TypeError")


# --- TLS with the device-made key ----------------------------------------------------


@dataclass
class Pki:
    """A throwaway CA, a server identity for localhost, and certificates it issues from CSRs."""

    folder: Path
    ca_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p256 test CA")])
        self.ca = (
            self._builder(name, name, self.ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.server_key = ec.generate_private_key(ec.SECP256R1())
        server = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
                self.ca.subject,
                self.server_key.public_key(),
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_pem = self.folder / "ca.pem"
        self.ca_pem.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        (self.folder / "ca.der").write_bytes(self.ca.public_bytes(serialization.Encoding.DER))
        self.server_pem = self.folder / "server.pem"
        self.server_key_pem = self.folder / "server.key.pem"
        self.server_pem.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        self.server_key_pem.write_bytes(
            self.server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    @staticmethod
    def _builder(
        subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    def issue(self, csr_pem: str) -> x509.Certificate:
        """Certify the CSR's own public key, as CreateCertificateFromCsr does."""
        req = x509.load_pem_x509_csr(csr_pem.encode())
        assert req.is_signature_valid
        return (
            self._builder(req.subject, self.ca.subject, req.public_key())  # type: ignore[arg-type]
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@dataclass
class ServerResult:
    peer_der: bytes | None = None
    received: bytes = b""
    error: str | None = None


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[tuple[int, ServerResult, threading.Thread]]:
    """A CPython TLS server on a free loopback port that requires a client certificate
    from the test CA, serves one connection (echo of one line) and records the peer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(pki.ca_pem))
    ctx.load_cert_chain(str(pki.server_pem), str(pki.server_key_pem))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TLS_DEADLINE_S)
    port = listener.getsockname()[1]
    result = ServerResult()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TLS_DEADLINE_S)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                result.peer_der = tls.getpeercert(binary_form=True)
                line = b""
                while not line.endswith(b"\n") and len(line) < 256:  # bounded read of one line
                    chunk = tls.recv(256)
                    if not chunk:
                        break
                    line += chunk
                result.received = line
                tls.sendall(b"hello " + line)
        except (OSError, ssl.SSLError) as exc:
            result.error = repr(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, result, thread
    finally:
        listener.close()
        thread.join(TLS_DEADLINE_S)


# Key pair and CSR made on the device, written to key.der and req.pem in cwd.
MAKE_KEY = Path(__file__).resolve().parent / "scripts" / "make_key.py"

CONNECT = """
import socket, ssl
def read(name):
    with open(name, "rb") as f:
        return f.read()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=read("ca.der"))
ctx.load_cert_chain(read("cert.der"), read(%r))
s = socket.socket()
s.connect(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
tls = ctx.wrap_socket(s, server_hostname="localhost")
tls.write(b"ping from device\\n")
got = b""
for _ in range(16):
    chunk = tls.read(64)
    if not chunk:
        break
    got += chunk
    if got.endswith(b"\\n"):
        break
tls.close()
print("reply:", got.decode().strip())
"""


def test_device_key_loads_in_micropython_ssl_with_a_certificate_issued_from_its_csr(
    micropython, pki: Pki, tmp_path: Path
) -> None:
    micropython.run(script=MAKE_KEY, args=("load-check",), cwd=tmp_path)
    cert = pki.issue((tmp_path / "req.pem").read_text())
    (tmp_path / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    # The same key as PKCS#8 (written by cryptography): the other format mbedTLS takes.
    # csr.py writes SEC1; this keeps the claim in its docstring (both load) checked.
    key = serialization.load_der_private_key((tmp_path / "key.der").read_bytes(), password=None)
    (tmp_path / "key.p8.der").write_bytes(
        key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    code = """
import ssl
def read(name):
    with open(name, "rb") as f:
        return f.read()
for name in ("key.der", "key.p8.der"):
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(read("cert.der"), read(name))
    print(name, "loaded")
try:
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(read("cert.der"), read("key.der")[:-5])
    print("truncated key accepted")
except (OSError, ValueError) as e:
    print("truncated key refused")
"""
    proc = micropython.run(code, cwd=tmp_path)
    assert proc.stdout.split("\n")[:3] == ["key.der loaded", "key.p8.der loaded", "truncated key refused"]


def test_device_made_key_completes_mutual_tls_with_a_certificate_issued_from_its_csr(
    micropython, build: tuple[Path, ...], pki: Pki, tls_server, tmp_path: Path
) -> None:
    port, result, thread = tls_server
    micropython.run(script=MAKE_KEY, args=("tls-device-1",), cwd=tmp_path, extra_path=build)
    cert = pki.issue((tmp_path / "req.pem").read_text())
    (tmp_path / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    proc = micropython.run(CONNECT % ("key.der", port), cwd=tmp_path, timeout=TLS_DEADLINE_S)
    thread.join(TLS_DEADLINE_S)
    assert not thread.is_alive()
    assert result.error is None, result.error
    assert proc.stdout.strip() == "reply: hello ping from device"
    assert result.received == b"ping from device\n"
    # The server saw exactly the certificate issued from the device's CSR.
    assert result.peer_der == cert.public_bytes(serialization.Encoding.DER)
    peer = x509.load_der_x509_certificate(result.peer_der)
    assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tls-device-1"


def test_a_certificate_used_with_another_device_key_fails_the_handshake(
    micropython, pki: Pki, tls_server, tmp_path: Path
) -> None:
    port, result, thread = tls_server
    micropython.run(script=MAKE_KEY, args=("tls-device-2",), cwd=tmp_path)
    cert = pki.issue((tmp_path / "req.pem").read_text())
    (tmp_path / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "key.der").rename(tmp_path / "first.der")
    micropython.run(script=MAKE_KEY, args=("tls-device-2",), cwd=tmp_path)  # a second, different key
    assert (tmp_path / "key.der").read_bytes() != (tmp_path / "first.der").read_bytes()
    proc = micropython.run(CONNECT % ("key.der", port), cwd=tmp_path, timeout=TLS_DEADLINE_S, check=False)
    thread.join(TLS_DEADLINE_S)
    assert not thread.is_alive()
    assert proc.returncode != 0
    assert "reply:" not in proc.stdout
    assert result.error is not None  # the server refused the CertificateVerify
    assert result.received == b""
