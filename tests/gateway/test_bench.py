"""The benchmark harness itself still works (scripts/bench is not run by scripts/test).

These are not timing checks: they run the measuring code on a small scale and check that
it measured what it claims (every poll done, every config of a republish counted, the
process-per-poll baseline really polled a device over the fake BlueZ).
"""

from __future__ import annotations

import pytest

from bench import hub, inproc, process
from bench.common import at_least, at_most
from tests.plugins.mosquitto import Mosquitto


async def test_scale_measure_counts_every_poll_and_the_republish(mosquitto: Mosquitto) -> None:
    count, cycles = 8, 2
    windows = await inproc.measure(mosquitto, count, cycles, repeats=2, count_calls=True, republish=True)
    assert len(windows) == 2
    for window in windows:
        assert window.polls == count * cycles
        assert window.cpu > 0 and window.messages >= window.polls  # a state per poll at least
        assert window.calls_per_poll is not None and window.calls_per_poll > 100
        assert window.republish is not None
    seconds, sent, dropped = windows[0].republish
    # every config of the 8 devices (each family has at least 15 entities), none dropped
    assert sent >= count * 15 and dropped == 0 and seconds > 0


@pytest.mark.slow
def test_process_per_poll_baseline_polls_over_the_fake_bluez() -> None:
    """The baseline script fails (and the harness raises) unless it decoded a real reply."""
    with_io, decode_only = process.process_per_poll_cpu(1)
    assert with_io > 0 and decode_only > 0


def test_a_missed_target_is_reported_as_missed() -> None:
    assert at_most("cpu", 5.2, "ms", 5).met is False
    assert at_least("ratio", 49.9, "x", 50).met is False
    assert at_most("cpu", 5, "ms", 5).to_json() == {
        "name": "cpu",
        "value": 5,
        "unit": "ms",
        "target": "<= 5 ms",
        "met": True,
    }


async def test_hub_figure_polls_every_unit_in_one_session_per_cycle() -> None:
    """The hub figure measures what it claims: one connect per cycle, every unit read each time."""
    measured = await hub._scheduled(4, cycles=2)
    assert measured["connects"] == 3  # the first poll and two measured cycles, keep_connected off
    assert measured["cycle"] > hub.CONNECT and measured["cpu_per_unit_poll"] > 0
    assert await hub._baseline(1) > hub.CONNECT
