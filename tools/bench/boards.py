"""The iotsim the board sections boot against."""

from __future__ import annotations

import tempfile

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..iotsim.broker import MqttQuotas, free_port
from ..iotsim.stack import IotSim
from ..unixboard import Target, TargetUnavailable

# The config of a board in a heap search: a board that runs out of memory
# retries at once rather than after a board's back-off (the search probes
# many sizes too small), and still counts as passing only when it finishes.
HEAP_SEARCH = {"retry_base_ms": 20, "retry_max_ms": 100}


@contextmanager
def board_bench(name: str) -> Iterator[tuple[Path, IotSim]]:
    """A scratch folder for a section's boards, and the iotsim they boot against
    (its state in that folder): both gone after the block."""
    with tempfile.TemporaryDirectory(prefix=f"fleetprov-bench-{name}-") as tmp:
        work = Path(tmp)
        with back_to_back_iotsim(work / "iotsim") as sim:
            yield work, sim


def back_to_back() -> dict[str, Any]:
    """IotSim's arguments for boards the harness boots one right after another,
    or several at a time.

    A board's reboot takes seconds, the harness's none: without AWS's one CONNECT
    a second per client id, a boot right after the last with the same client id
    is measured without a retry a board would not make. Nor is provisioning
    throttled: boards measured side by side would share AWS's per-account rate,
    as one board in the field does not."""
    return {"tps": 0, "mqtt_quotas": MqttQuotas(connect_interval_ms=0)}


@contextmanager
def back_to_back_iotsim(state: Path) -> Iterator[IotSim]:
    """iotsim (state in ``state``) for boards booted back to back (back_to_back())."""
    sim = IotSim(state, free_port(), **back_to_back()).start()
    try:
        yield sim
    finally:
        sim.stop()


def unavailable(target: Target) -> str | None:
    """Why ``target`` cannot boot here (a port not built), or None."""
    try:
        target.check()
    except TargetUnavailable as exc:
        return str(exc)
    return None
