"""Fleet burst: N simulated devices provisioning against iotsim at once.

Each device is a thread running the device library (lib/fleetprov.py) over the
real umqtt.simple (tools/umqtt_host) with the shared claim certificate over
mutual TLS: connect, CreateKeysAndCertificate or CreateCertificateFromCsr,
RegisterThing, disconnect. C devices run at a time. The benchmark starts its
own iotsim in a temporary folder.

Reported: provisions per second and p50/p99 latency (connect to RegisterThing
answer) per method, beside the machine's RSA-2048 key generation rate — the
physical limit of the keys flow, since iotsim makes one RSA key per device as
AWS does. Every device's result is verified: its certificate holds its own key
(the key AWS returned, or the key behind its CSR), its certificateId is its
own and no other device's, the registry's thing for its serial number has
exactly that certificate and it is ACTIVE — so a reply delivered to the wrong
connection would be caught ("cross-device leak").

Targets (issue 3, 100 concurrent devices on a 2-core machine): keys + register
>= 60% of the all-cores keygen rate; CSR + register >= 200/s; p99 < 2 s; zero
leaks.

Why p99 < 2 s cannot hold for the keys flow at C = 100 here. Every
CreateKeysAndCertificate needs one fresh RSA-2048 key, made at no more than r
keys/s (the all-cores rate measured alone; during the burst the devices,
mosquitto and the service share those cores, so the real rate is lower). The
burst is a closed loop: a device starts when another finishes, so C devices
are in flight until the last C drain. In steady state Little's law gives a
mean latency of C / throughput >= C / r, whatever the order of service. In a
burst of N devices served first come first served, device j (j <= C) waits
about j / r and every later device exactly C / r, so p99 = C / r and the mean
is (C(C+1)/2 + (N-C)C) / (rN): 3.5 s and 2.6 s for C = 100, N = 200, r = 28.6.
A pool of K keys made in advance while idle only lets the first K requests skip
the wait: p99 stays C / r unless K >= N - C, i.e. unless the pool holds most of
the burst, which would measure the pool rather than the service. iotsim makes
each key on demand (a fresh key per request, as AWS does); the table prints
C / r beside the measured p99.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
TOOLS = __package__.rpartition(".")[0]  # the host package: "tools" in the clone, "fleetprov_tools" installed
if str(ROOT / "lib") not in sys.path:
    sys.path.insert(0, str(ROOT / "lib"))

TEMPLATE = "FleetprovDemo"
CONCURRENCY = 100
DEVICES = 200
QUICK_DEVICES = 20
KEYS_SHARE_TARGET = 0.60
CSR_RATE_TARGET = 200.0
P99_TARGET_S = 2.0


@dataclass
class Outcome:
    serial: str
    latency: float
    certificate_id: str = ""
    certificate_pem: str = ""
    thing_name: str = ""
    key_spki: bytes = b""
    error: str = ""


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def keygen_rates(quick: bool) -> tuple[float, float, int]:
    """RSA-2048 keys per second: in this process (one core) and over all cores."""
    from ..iotsim.keygen import KeygenPool

    n = 6 if quick else 20
    started = time.perf_counter()
    for _ in range(n):
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    single = n / (time.perf_counter() - started)
    cores = os.cpu_count() or 1
    pool = KeygenPool(cores)
    try:
        for _ in range(cores):  # workers are warm once each has made a key
            pool.generate()
        per_worker = n // 2 if quick else n
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(cores) as ex:
            list(ex.map(lambda _: [pool.generate() for _ in range(per_worker)], range(cores)))
        multi = cores * per_worker / (time.perf_counter() - started)
    finally:
        pool.close()
    return single, multi, cores


def _shared_tls_context() -> None:
    """Build the claim identity's TLS context once per device process.

    tools/umqtt_host builds a fresh SSLContext for every connection (as a board
    loads its certificate for every connect), which costs the simulator about
    2 ms of CPU per device, all of it on the device side. Every simulated
    device uses the same claim certificate, so the context is shared; each
    connection still makes its own full TLS handshake (no session resumption).
    """
    import ssl

    from .. import umqtt_host

    contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
    lock = threading.Lock()
    original = umqtt_host.wrap_socket

    def wrap_socket(
        sock: Any,
        key: bytes | None = None,
        cert: bytes | None = None,
        cadata: bytes | None = None,
        cert_reqs: int = umqtt_host.CERT_NONE,
        server_hostname: str | None = None,
        do_handshake: bool = True,
    ) -> Any:
        if not (key and cert and cadata):
            return original(sock, key, cert, cadata, cert_reqs, server_hostname, do_handshake)
        ident = (key, cert, cadata, cert_reqs, bool(server_hostname))
        with lock:
            ctx = contexts.get(ident)
            if ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = bool(server_hostname) and cert_reqs == umqtt_host.CERT_REQUIRED
                ctx.verify_mode = (
                    ssl.CERT_REQUIRED if cert_reqs == umqtt_host.CERT_REQUIRED else ssl.CERT_NONE
                )
                ctx.load_verify_locations(cadata=cadata)
                cert_path, key_path = umqtt_host._pem_files(cert, key)
                try:
                    ctx.load_cert_chain(cert_path, key_path)
                finally:
                    os.unlink(cert_path)
                    os.unlink(key_path)
                contexts[ident] = ctx
        return umqtt_host.HostSocket(
            ctx.wrap_socket(sock.raw, server_hostname=server_hostname, do_handshake_on_connect=do_handshake)
        )

    sys.modules["ussl"].wrap_socket = wrap_socket


_thread_socket = threading.local()
_files: dict[Path, bytes] = {}


def _claim_files(sim: Any) -> tuple[bytes, bytes, bytes]:
    """CA, claim certificate and claim key (DER), read once per process: a board has them in flash."""
    paths = (sim.ca_der, sim.claim_cert_der, sim.claim_key_der)
    for p in paths:
        if p not in _files:
            _files[p] = p.read_bytes()
    return _files[paths[0]], _files[paths[1]], _files[paths[2]]


def _quiet_polling() -> None:
    """Let a simulated device sleep until its socket has data whenever fleetprov sleeps.

    fleetprov waits on its timed socket between empty polls; where it has none
    it sleeps a slice instead, and 100 simulated devices in one process would
    burn a core on wake-ups. That sleep is replaced here by a wait on the
    device's own TLS socket (at most 50 ms, so fleetprov still checks its
    deadline); what goes over the wire is unchanged, answers are read as soon
    as they arrive.
    """
    import select

    import fleetprov

    def sleep_ms(ms: int) -> None:
        sock = getattr(_thread_socket, "sock", None)
        if sock is None:
            time.sleep(ms / 1000)
        elif not sock.pending():
            select.select([sock], [], [], 0.05)

    fleetprov.sleep_ms = sleep_ms


def _device(sim: Any, method: str, fmt: str, serial: str, csr: tuple[str, bytes] | None) -> Outcome:
    import fleetprov

    from .. import umqtt_host

    started = time.perf_counter()
    out = Outcome(serial=serial, latency=0.0)
    client = None
    try:
        client = umqtt_host.connect(
            "bench-" + serial,
            sim.port,
            *_claim_files(sim),
        )
        _thread_socket.sock = client.sock.raw
        p = fleetprov.Provisioner(client, fmt=fmt, timeout_ms=30000, mqtt_timeout_ms=30000)
        try:
            if method == "keys":
                creds = p.create_keys_and_certificate()
                # The key is checked against the certificate in _verify; skip
                # cryptography's RSA validation on load (as costly as keygen).
                key = serialization.load_pem_private_key(
                    creds.private_key.encode(), None, unsafe_skip_rsa_key_validation=True
                )
                out.key_spki = _spki(key.public_key())
            else:
                assert csr is not None
                creds = p.create_certificate_from_csr(csr[0])
                out.key_spki = csr[1]
            reg = p.register_thing(TEMPLATE, creds.ownership_token, {"SerialNumber": serial})
        finally:
            p.close()
        out.latency = time.perf_counter() - started
        out.certificate_id = creds.certificate_id
        out.certificate_pem = creds.certificate_pem
        out.thing_name = reg.thing_name or ""
    except Exception as exc:  # a failed device is counted and reported, not fatal
        out.latency = time.perf_counter() - started
        out.error = "{}: {}".format(type(exc).__name__, exc)
    finally:
        _thread_socket.sock = None
        if client is not None:
            try:
                client.disconnect()
            except OSError:
                pass
    return out


def _verify(sim: Any, outcomes: list[Outcome]) -> list[str]:
    """Problems found: a certificate not holding the device's key, shared ids, wrong things."""
    problems = []
    seen: dict[str, str] = {}
    for o in outcomes:
        if o.error:
            continue
        cert = x509.load_pem_x509_certificate(o.certificate_pem.encode())
        if _spki(cert.public_key()) != o.key_spki:
            problems.append("{}: certificate does not hold the device's key".format(o.serial))
        der_id = __import__("hashlib").sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        if der_id != o.certificate_id:
            problems.append("{}: certificateId is not the SHA-256 of its certificate".format(o.serial))
        if o.certificate_id in seen:
            problems.append("{} and {} got the same certificate".format(seen[o.certificate_id], o.serial))
        seen[o.certificate_id] = o.serial
        if o.thing_name != "fleetprov-" + o.serial:
            problems.append("{}: got thing {!r}".format(o.serial, o.thing_name))
        thing = sim.registry.thing("fleetprov-" + o.serial)
        if thing is None or thing.certificates != [o.certificate_id]:
            problems.append(
                "{}: registry thing has certificates {}".format(o.serial, thing and thing.certificates)
            )
        if sim.registry.status(o.certificate_id) != "ACTIVE":
            problems.append("{}: certificate is {}".format(o.serial, sim.registry.status(o.certificate_id)))
    return problems


def _burst(
    sim: Any, method: str, fmt: str, n: int, concurrency: int, tag: str
) -> tuple[list[Outcome], float, float]:
    """Provision ``n`` devices, ``concurrency`` at a time, spread over one process per core.

    One process would cap the devices at one core (the GIL) and make the
    benchmark measure the simulator, not iotsim.
    """
    from tqdm import tqdm

    devices: list[dict[str, Any]] = []
    for i in range(n):
        dev: dict[str, Any] = {"serial": "{}{:05d}".format(tag, i)}
        if method == "csr":  # made before the clock starts: the device's own work, not iotsim's
            key = ec.generate_private_key(ec.SECP256R1())
            req = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(
                    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-{}-{}".format(tag, i))])
                )
                .sign(key, hashes.SHA256())
            )
            dev["csr"] = req.public_bytes(serialization.Encoding.PEM).decode()
            dev["spki"] = _spki(key.public_key()).hex()
        devices.append(dev)
    workers = max(1, min(os.cpu_count() or 1, concurrency))
    procs = []
    for w in range(workers):
        job = {
            "port": sim.port,
            "ca": str(sim.ca_der),
            "cert": str(sim.claim_cert_der),
            "key": str(sim.claim_key_der),
            "method": method,
            "fmt": fmt,
            "concurrency": concurrency // workers + (w < concurrency % workers),
            "devices": devices[w::workers],
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", __spec__.name, "--worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        procs.append(proc)
    for proc in procs:  # each worker says "ready" once imported and prepared
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("fleet worker failed to start: {!r}".format(line))
    outcomes: list[Outcome] = []
    cpu_used = [0.0]
    lock = threading.Lock()
    bar = tqdm(total=n, desc="{} {} x{}".format(method, fmt, n), unit="dev", leave=True, file=sys.stderr,
               mininterval=0.1 if sys.stderr.isatty() else 5.0)  # a log (CI) gets a line every 5 s, not every device

    def collect(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            data = json.loads(line)
            if "cpu" in data:
                with lock:
                    cpu_used[0] += data["cpu"]
                continue
            o = Outcome(**{**data, "key_spki": bytes.fromhex(data["key_spki"])})
            with lock:
                outcomes.append(o)
                bar.update(1)

    readers = [threading.Thread(target=collect, args=(p,)) for p in procs]
    for t in readers:
        t.start()
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.close()
    for t in readers:
        t.join()
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
    bar.close()
    missing = n - len(outcomes)
    for i in range(missing):
        outcomes.append(Outcome(serial="lost{}".format(i), latency=0.0, error="worker died"))
    return outcomes, elapsed, cpu_used[0]


def _worker() -> int:
    """One device process: read the job, say ready, wait for go, run, stream results."""
    _quiet_polling()
    _shared_tls_context()

    job = json.loads(sys.stdin.readline())
    sim = argparse.Namespace(
        port=job["port"],
        ca_der=Path(job["ca"]),
        claim_cert_der=Path(job["cert"]),
        claim_key_der=Path(job["key"]),
    )
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    out_lock = threading.Lock()

    def one(dev: dict[str, Any]) -> None:
        csr = (dev["csr"], bytes.fromhex(dev["spki"])) if "csr" in dev else None
        o = _device(sim, job["method"], job["fmt"], dev["serial"], csr)
        line = json.dumps({**o.__dict__, "key_spki": o.key_spki.hex()})
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    started = time.process_time()
    with concurrent.futures.ThreadPoolExecutor(job["concurrency"]) as ex:
        list(ex.map(one, job["devices"]))
    # The devices' CPU from "go" on (not the interpreter's start-up and imports).
    print(json.dumps({"cpu": time.process_time() - started}), flush=True)
    return 0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


class _Sim:
    """iotsim as its own process (``python -m tools.iotsim up``), as a user runs it.

    In-process, the service would share the GIL with the 100 device threads and
    the benchmark would measure Python's scheduler rather than iotsim.
    """

    def __init__(self, state: Path) -> None:
        from ..iotsim.broker import free_port

        self.state = state
        self.port = free_port()
        self.ca_der = state / "ca.der"
        self.claim_cert_der = state / "claim.der"
        self.claim_key_der = state / "claim.key.der"
        # --tps 0: the benchmark measures what iotsim can serve, above the per-account
        # rates AWS throttles provisioning to (and iotsim does by default).
        command = ["up", "--state", str(state), "--port", str(self.port), "--tps", "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", TOOLS + ".iotsim", *command],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "iotsim is running" not in first:
            self.proc.kill()
            raise RuntimeError("iotsim did not start: " + first + self.proc.stdout.read())
        from ..iotsim.registry import Registry

        self.registry = Registry(state)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by iotsim's service process and by mosquitto."""
        times = {"service": _cpu(self.proc.pid)}
        for child in (
            Path("/proc/{}/task/{}/children".format(self.proc.pid, self.proc.pid)).read_text().split()
        ):
            name = Path("/proc/{}/comm".format(child)).read_text().strip()
            if name == "mosquitto":
                times["mosquitto"] = _cpu(int(child))
            else:
                times["keygen"] = times.get("keygen", 0.0) + _cpu(int(child))
        return times

    def close(self) -> None:
        self.registry.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _cpu(pid: int) -> float:
    fields = Path("/proc/{}/stat".format(pid)).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    n = QUICK_DEVICES if quick else DEVICES
    concurrency = min(CONCURRENCY, n)
    single, multi, cores = keygen_rates(quick)
    rows = []
    all_problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="iotsim-bench-") as folder:
        sim = _Sim(Path(folder) / "state")
        try:
            for method, fmt, tag in (
                ("keys", "json", "k"),
                ("csr", "json", "c"),
                ("keys", "cbor", "kc"),
                ("csr", "cbor", "cc"),
            ):
                if quick and fmt == "cbor":
                    continue
                before = sim.cpu_seconds()
                load = os.getloadavg()[0]
                outcomes, elapsed, mine = _burst(sim, method, fmt, n, concurrency, tag)
                after = sim.cpu_seconds()
                cpu = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
                cpu["devices"] = mine
                ok = [o for o in outcomes if not o.error]
                failed = [o for o in outcomes if o.error]
                problems = _verify(sim, outcomes)
                all_problems += problems
                lat = [o.latency for o in ok]
                rows.append(
                    {
                        "flow": "{} + register ({})".format("keys" if method == "keys" else "csr", fmt),
                        "method": method,
                        "devices": n,
                        "ok": len(ok),
                        "failed": len(failed),
                        "rate": len(ok) / elapsed if elapsed else 0.0,
                        "p50": _pct(lat, 0.50),
                        "p99": _pct(lat, 0.99),
                        "leaks": len(problems),
                        "load": load,
                        "iotsim_ms": 1000
                        * (cpu.get("service", 0.0) + cpu.get("keygen", 0.0) + cpu.get("mosquitto", 0.0))
                        / max(1, len(ok)),
                        "devices_ms": 1000 * cpu.get("devices", 0.0) / max(1, len(ok)),
                        "cpu": "service {service:.1f} s, keygen {keygen:.1f} s, mosquitto {mosquitto:.1f} s, devices {devices:.1f} s".format(
                            **{"service": 0.0, "keygen": 0.0, "mosquitto": 0.0, **cpu}
                        ),
                    }
                )
                for o in failed[:3]:
                    print("  failed device {}: {}".format(o.serial, o.error))
                for p in problems[:5]:
                    print("  VERIFY: {}".format(p))
        finally:
            sim.close()

    print(
        "\nRSA-2048 key generation (cryptography): {:.1f} keys/s on one core, {:.1f} keys/s on all {} cores".format(
            single, multi, cores
        )
    )
    print(
        "fleet burst: {} devices per flow, {} at a time, fleetprov + umqtt.simple over mutual TLS\n".format(
            n, concurrency
        )
    )
    print("| flow | devices ok | provisions/s | p50 latency | p99 latency | cross-device leaks |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| {flow} | {ok}/{devices} | {rate:.1f} | {p50:.3f} s | {p99:.3f} s | {leaks} |".format(**r))
    print("\nCPU time per flow (and the machine's 1-minute load average when it started):")
    for r in rows:
        print("  {flow}: {cpu}; load {load:.1f}".format(**r))
    print(
        "\nCPU per provision: iotsim (service + keygen + mosquitto) vs the simulated devices; the devices run"
    )
    print(
        "on the same {} cores, so iotsim alone could serve about cores / its CPU per provision:".format(cores)
    )
    for r in rows:
        print(
            "  {}: iotsim {:.1f} ms, devices {:.1f} ms -> iotsim capacity ~{:.0f}/s".format(
                r["flow"],
                r["iotsim_ms"],
                r["devices_ms"],
                cores * 1000 / r["iotsim_ms"] if r["iotsim_ms"] else 0,
            )
        )
    print("\n| target | measured | goal | met |")
    print("|---|---|---|---|")
    keys_target = KEYS_SHARE_TARGET * multi
    for r in rows:
        if r["method"] == "keys":
            print(
                "| {} rate | {:.1f}/s ({:.0%} of keygen) | >= {:.1f}/s (60% of {:.1f}) | {} |".format(
                    r["flow"],
                    r["rate"],
                    r["rate"] / multi if multi else 0,
                    keys_target,
                    multi,
                    "yes" if r["rate"] >= keys_target else "NO",
                )
            )
        else:
            print(
                "| {} rate | {:.1f}/s | >= {:.0f}/s | {} |".format(
                    r["flow"], r["rate"], CSR_RATE_TARGET, "yes" if r["rate"] >= CSR_RATE_TARGET else "NO"
                )
            )
    for r in rows:
        # Keys flow: first come first served at r keys/s, every device after the
        # first C waits C / r, so p99 >= C / r (see the module docstring).
        bound = (
            ""
            if r["method"] != "keys"
            else " (C / keygen rate = {:.1f} s: the p99 when keys are made on demand)".format(
                concurrency / multi if multi else float("nan")
            )
        )
        print(
            "| {} p99 | {:.3f} s | < {:.0f} s{} | {} |".format(
                r["flow"], r["p99"], P99_TARGET_S, bound, "yes" if r["p99"] < P99_TARGET_S else "NO"
            )
        )
    total_failed = sum(r["failed"] for r in rows)
    print("| failed devices | {} | 0 | {} |".format(total_failed, "yes" if total_failed == 0 else "NO"))
    print(
        "| cross-device leaks / wrong certificates | {} | 0 | {} |".format(
            len(all_problems), "yes" if not all_problems else "NO"
        )
    )
    if quick:
        print(
            "\n(--quick: {} devices, JSON only; `make bench` runs {} per flow in both formats)".format(
                n, DEVICES
            )
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        sys.exit(_worker())
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args())
