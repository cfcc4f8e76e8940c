"""A flooded control plane leaves provisioning alone.

`python -m tools.iotsim up` runs with a 1,024-descriptor limit (the limit under which 1,014 idle
HTTP connections once made MQTT CreateKeysAndCertificate fail with "Too many open files"); 1,000
clients open control-plane connections and send half a request each, and devices provision
over MQTT meanwhile. iotsim holds at most its connection cap, answers the rest 503 at once,
and cuts the held ones off at their request deadline.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tools.iotsim.broker import free_port
from tools.iotsim.limits import MAX_CONNECTIONS
from tools.iotsim.testing import MqttTestClient

ROOT = Path(__file__).resolve().parents[2]
SLOW_CLIENTS = 1000
DEADLINE_S = 3.0
pytestmark = pytest.mark.timeout(180)


def _raise_own_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip("this test needs {} descriptors; the hard limit is {}".format(need, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _iotsim_limit() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_devices_provision_over_mqtt_while_1000_slow_clients_flood_the_control_plane(tmp_path: Path) -> None:
    _raise_own_limit(SLOW_CLIENTS + 200)
    state, port, api = tmp_path / "state", free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tools.iotsim", "up", "--state", str(state), "--port", str(port),
            "--api-port", str(api), "--api-timeout", str(DEADLINE_S),
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_iotsim_limit,
    )
    slow: list[socket.socket] = []
    devices: list[MqttTestClient] = []
    try:
        assert proc.stdout is not None
        assert "iotsim is running" in proc.stdout.readline()
        # The devices connect first: paho waits with select(), which takes no descriptor over 1023.
        for i in range(3):
            devices.append(
                MqttTestClient(
                    port, state / "ca.pem", state / "claim.pem", state / "claim.key.pem", "flood-{}".format(i)
                ).connect()
            )
        baseline = len(os.listdir("/proc/{}/fd".format(proc.pid)))
        half = "POST /thing-groups/slow HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 100\r\n\r\n{{".format(api)
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", api), timeout=10)
            slow.append(sock)
            try:
                sock.sendall(half.encode())
            except OSError:
                pass  # already answered 503 and closed: fine
        held = len(os.listdir("/proc/{}/fd".format(proc.pid))) - baseline
        for i, device in enumerate(devices):
            outcome, keys = device.request("$aws/certificates/create/json", b"{}")
            assert outcome == "accepted", keys
            outcome, body = device.request(
                "$aws/provisioning-templates/FleetprovDemo/provision/json",
                {
                    "certificateOwnershipToken": keys["certificateOwnershipToken"],
                    "parameters": {"SerialNumber": "flood-{}".format(i)},
                },
            )
            assert (outcome, body.get("thingName")) == ("accepted", "fleetprov-flood-{}".format(i)), body
        assert held <= MAX_CONNECTIONS + 8  # the cap, not one descriptor per client
        for sock in slow:  # every one ends (503 at once, or closed at its deadline); none is held
            try:
                data = sock.recv(256)  # a held one would time out here (10 s) and fail the test
            except ConnectionResetError:
                data = b""  # refused with unread bytes in its buffer: the kernel resets it
            assert data == b"" or data.startswith(b"HTTP/1.1 503"), data
    finally:
        for sock in slow:
            sock.close()
        for device in devices:
            device.close()
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
