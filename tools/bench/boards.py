"""The iotsim the board sections boot against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..iotsim.broker import MqttQuotas, free_port
from ..iotsim.stack import IotSim


@contextmanager
def back_to_back_iotsim(state: Path) -> Iterator[IotSim]:
    """iotsim (state in ``state``) for boards the harness boots one right after another.

    A board's reboot takes seconds, the harness's none: without AWS's one CONNECT
    a second per client id, a boot right after the last with the same client id
    is measured without a retry a board would not make."""
    sim = IotSim(state, free_port(), mqtt_quotas=MqttQuotas(connect_interval_ms=0)).start()
    try:
        yield sim
    finally:
        sim.stop()
