"""Figure 9: the Smart Shunt's stream costs at most 2 % of one core at 8.5 frames/s.

The stream never stops while a shunt is connected, so its cost is paid all the time,
not per poll. Frames as the simulator notifies them (split in two or three
notifications, a prefix, history and implausible frames mixed in) are fed through the
driver (reassembly, decoding, validation) as fast as they go; the CPU time per frame
times 8.5 frames/s is the share of one core the stream takes.

The baseline, in the same run: the same notifications only copied into a buffer (the
least any receiver does), so the note shows what the decoding adds over bare receiving
on this machine.
"""

from __future__ import annotations

import time

from blupow_gateway.devices import create_device
from blupow_gateway.simulator.shunt import SimulatedShunt

from .common import Figure, at_most, info

FRAMES_PER_SECOND = 8.5
LIMIT_PERCENT = 2.0


def _notifications(count: int) -> list[bytes]:
    sim = SimulatedShunt(frozen=True, faults=("split", "prefixed", "history", "implausible"), fault_every=5)
    chunks: list[bytes] = []
    for _ in range(count):
        more, _drop = sim.stream_tick()
        chunks += more
    return chunks


def _cpu(run: object) -> float:
    started = time.process_time()
    run()  # type: ignore[operator]
    return time.process_time() - started


def run(quick: bool) -> list[Figure]:
    frames = 2000 if quick else 20000
    chunks = _notifications(frames)
    device = create_device("renogy_shunt")

    def decode() -> None:
        for chunk in chunks:
            device.feed(chunk)  # type: ignore[attr-defined]

    def copy_only() -> None:
        buf = bytearray()
        for chunk in chunks:
            buf += chunk
            if len(buf) > 4096:
                buf.clear()

    baseline = min(_cpu(copy_only) for _ in range(3))
    cost = min(_cpu(decode) for _ in range(3))
    per_frame = cost / frames
    share = 100 * per_frame * FRAMES_PER_SECOND
    good = device.diagnostics().get("good", 0)  # type: ignore[attr-defined]
    return [
        at_most(
            "shunt stream: share of one core at 8.5 frames/s",
            round(share, 4),
            "%",
            LIMIT_PERCENT,
            note=f"{per_frame * 1e6:.1f} µs/frame over {frames} frames ({good // 3} good per pass)",
        ),
        info(
            "shunt stream: decoding against bare receiving",
            round(cost / baseline, 1) if baseline > 0 else None,
            "×",
            note=f"copy-only baseline {baseline / frames * 1e6:.2f} µs/frame, same notifications, same run",
        ),
    ]
