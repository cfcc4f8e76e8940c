"""RSA-2048 key generation in worker processes, for CreateKeysAndCertificate.

Key generation is CPU-bound and holds the GIL, so the service runs it in
separate processes. They are plain subprocesses (``python -m
tools.iotsim.keygen``) speaking a tiny pipe protocol — one line ``g`` in; one
line with two byte counts, then the private key PEM and the public key DER
out — rather than a multiprocessing
pool: spawn and forkserver re-import the caller's main script, which breaks
any script without a ``__main__`` guard, and fork is unsafe in a process that
runs threads.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parents[2]


def generate_rsa_key() -> tuple[bytes, bytes]:
    """A new RSA-2048 key: (private key as PKCS#1 PEM, "BEGIN RSA PRIVATE KEY" as AWS
    returns it; public key as SubjectPublicKeyInfo DER).

    The public half comes along so the service never parses the private key
    (cryptography validates an RSA private key on load, which costs about as
    much as generating it).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, spki


class KeygenError(RuntimeError):
    """A key generation worker failed."""


class KeygenPool:
    """``processes`` worker processes; :meth:`generate` is thread-safe and blocks."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = max(1, processes or os.cpu_count() or 1)
        self._idle: queue.Queue[subprocess.Popen[bytes]] = queue.Queue()
        self._all: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(self.processes):
            self._idle.put(self._spawn())

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", __spec__.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(REPO),
            env=env,
        )
        with self._lock:
            self._all.append(proc)
        return proc

    def generate(self, timeout: float = 60.0) -> tuple[bytes, bytes]:
        """Return a new RSA-2048 key: (PKCS#1 PEM private key, SPKI DER public key)."""
        if self._closed:
            raise KeygenError("the key generation pool is closed")
        try:
            proc = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise KeygenError(
                "no key generation worker became free within {:.0f} s".format(timeout)
            ) from None
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"g\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            pem_size, spki_size = int(header[0]), int(header[1])
            pem = proc.stdout.read(pem_size)
            spki = proc.stdout.read(spki_size)
            if len(pem) != pem_size or len(spki) != spki_size:
                raise ValueError("short read")
        except (OSError, ValueError) as exc:
            proc.kill()
            proc.wait()
            if self._closed:
                raise KeygenError("the key generation pool is closed") from None
            proc = self._spawn()
            raise KeygenError("a key generation worker died ({}); it was restarted".format(exc)) from None
        finally:
            self._idle.put(proc)
        return pem, spki

    def close(self) -> None:
        self._closed = True
        with self._lock:
            procs = list(self._all)
        for proc in procs:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        if line.strip() != b"g":
            return 2
        pem, spki = generate_rsa_key()
        stdout.write(b"%d %d\n" % (len(pem), len(spki)))
        stdout.write(pem)
        stdout.write(spki)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
