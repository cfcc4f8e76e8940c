"""The iotsim the board sections boot against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..iotsim.broker import MqttQuotas, free_port
from ..iotsim.stack import IotSim

# The config of a board in a heap search: a board that runs out of memory
# retries at once rather than after a board's back-off (the search probes
# many sizes too small), and still counts as passing only when it finishes.
HEAP_SEARCH = {"retry_base_ms": 20, "retry_max_ms": 100}


@contextmanager
def back_to_back_iotsim(state: Path) -> Iterator[IotSim]:
    """iotsim (state in ``state``) for boards the harness boots one right after another,
    or several at a time.

    A board's reboot takes seconds, the harness's none: without AWS's one CONNECT
    a second per client id, a boot right after the last with the same client id
    is measured without a retry a board would not make. Nor is provisioning
    throttled: boards measured side by side would share AWS's per-account rate,
    as one board in the field does not."""
    sim = IotSim(state, free_port(), tps=0, mqtt_quotas=MqttQuotas(connect_interval_ms=0)).start()
    try:
        yield sim
    finally:
        sim.stop()
