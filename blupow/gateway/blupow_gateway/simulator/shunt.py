"""Simulated Renogy Smart Shunt 300: a notification stream of 110-byte frames, ~8.5 per second.

The frames are written from the driver's table (devices/renogy_shunt.py: offset, width,
sign and scale of each field), so the simulator and the decoder share one description;
the golden frames of the reference (S1, S3–S5, tests/gateway/test_shunt.py) check that
description independently. The 4-byte records around the fields carry the tag bytes of
the only real capture (§2.3), so a decoder that mistakes data for a header would show.

A simple model drives the values: a house battery (200 Ah LFP) whose current swings
between charging and discharging over the simulated day, a starter battery, and a
temperature probe. ``truth`` holds what an exact decoder publishes from the latest live
frame (``frozen=True`` keeps it constant).

Faults (``faults``, also ``--devices shunt+split+history``), a mix on top of the live frames:

* ``split``: every frame arrives in two or three notifications, split at random points;
* ``prefixed``: every frame carries the 4-byte ``61 d2 xx xx`` prefix;
* ``history``: every ``fault_every``-th frame is a history frame (``42 57 01 0b``) with
  values of its own, which must never be published;
* ``truncated``: every ``fault_every``-th frame stops after 20 bytes (the next header follows);
* ``implausible``: every ``fault_every``-th frame says 95 V and 600 A (rejected as a whole);
* ``noise``: junk bytes between frames.

:meth:`SimulatedShunt.cut_link` makes the next frame stop part way and the link drop;
the next connection then starts in the middle of a frame (its tail first), as a
shunt that keeps streaming would. The partial frame carries a poison current (+123.456
A) that shows up if the gateway ever joined the two halves.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..devices.base import Field
from ..devices.renogy_shunt import FIELDS, FRAME_LEN, HISTORY_HEADER, LIVE_HEADER, SHUNT_SERVICE
from .base import SimulatedDevice, lfp_voltage

STREAM_FAULTS = ("split", "prefixed", "history", "truncated", "implausible", "noise")
FRAME_INTERVAL = 1 / 8.5  # seconds between frames (§2.2)
POISON_CURRENT = 123.456  # the partial frame before a cut link: never to be published
HISTORY_VALUES = {"battery_voltage": 11.111, "current": 33.333, "starter_voltage": 9.999, "battery_soc": 11.1}
IMPLAUSIBLE_VALUES = {"battery_voltage": 95.0, "current": 600.0}
TRUNCATED_LEN = 20
# tag bytes of the 4-byte records from offset 8 on (§2.3: A4 current, A6 voltages, A7 SOC, AD temperature)
TAGS = dict(
    zip(range(8, FRAME_LEN, 4), bytes.fromhex("a0a1a2a4a6a6a7a7a8a9aaf8abacadadaeafb0b1b2b3b4b5b6"), strict=False)
)
_BY_KEY = {f.key: f for f in FIELDS}


def check_stream_faults(faults: Iterable[str]) -> tuple[str, ...]:
    names = tuple(faults)
    for name in names:
        if name not in STREAM_FAULTS:
            raise ValueError(f"unknown shunt fault {name!r} (known: {', '.join(STREAM_FAULTS)})")
    return names


@dataclass
class SimulatedShunt(SimulatedDevice):
    family: str = "shunt"
    type_name: str = "renogy_shunt"
    gatt_layout: str = "shunt"
    service_uuids: tuple[str, ...] = (SHUNT_SERVICE,)
    capacity_ah: float = 200.0
    initial_soc: float = 80.0
    starter_volts: float = 12.6
    temperature_probe: bool = True
    frame_interval: float = FRAME_INTERVAL
    faults: tuple[str, ...] = ()
    fault_every: int = 3
    sent: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.faults = check_stream_faults(self.faults)
        if self.fault_every < 1:
            raise ValueError(f"fault_every must be >= 1, not {self.fault_every}")
        self.behaviour.chunk_size = 0  # whole frames per notification unless the "split" fault says otherwise
        self._frames = 0
        self._cut_at: int | None = None  # cut_link(): bytes of the next frame sent before the drop
        self._tail: bytes = b""  # what the next connection starts with
        super().__post_init__()

    # --- identity ---

    def default_name(self) -> str:
        tail = int("".join(self.mac.split(":")[3:]), 16)
        return f"RTMShunt300{tail % 10**8:08d}"

    def respond(self, frame: bytes, latency: float | None = None) -> tuple[bytes, float] | None:
        return None  # nothing is written to a shunt; a write is ignored like the real one would

    # --- model ---

    def setup(self) -> None:
        self.soc = self.initial_soc

    def current_at(self, t: float) -> float:
        """Charging in the day (sun), a steady house load, a fridge cycling."""
        fridge = 4.0 if math.sin(t / 900.0) > 0 else 0.0
        return 25.0 * self.solar(t) - 6.0 - fridge

    def step(self, t: float, dt: float) -> None:
        self.soc = max(0.0, min(100.0, self.soc + 100.0 * self.current_at(t) * dt / 3600.0 / self.capacity_ah))

    def refresh(self, t: float) -> None:
        amps = self.current_at(t)
        self.values = {
            "battery_voltage": lfp_voltage(self.soc) + 0.01 * amps,
            "current": amps,
            "starter_voltage": self.starter_volts,
            "battery_soc": self.soc,
            "battery_temperature": self.ambient(t) + 5.0 if self.temperature_probe else None,
        }
        self.truth = stored(self.values)

    # --- the stream ---

    def cut_link(self, after: int = 24) -> None:
        """The next frame stops after ``after`` bytes and the link drops (see the module docstring)."""
        self._cut_at = after

    def stream_start(self) -> list[bytes]:
        """Notifications at the start of a connection: the rest of a frame cut by a dropped link."""
        tail, self._tail = self._tail, b""
        return [tail] if tail else []

    def stream_tick(self) -> tuple[list[bytes], bool]:
        """The notifications of the next frame, and whether the link drops after them."""
        if self._cut_at is not None:
            return self._cut()
        self.update()
        self._frames += 1
        kind = self._kind()
        self.sent[kind] += 1
        values = self.values
        if kind == "history":
            values = {**values, **HISTORY_VALUES}
        elif kind == "implausible":
            values = {**values, **IMPLAUSIBLE_VALUES}
        frame = build_frame(values, history=kind == "history")
        if kind == "truncated":
            frame = frame[:TRUNCATED_LEN]
        data = self._wrap(frame)
        return self._split(data), False

    def _cut(self) -> tuple[list[bytes], bool]:
        cut, self._cut_at = self._cut_at or 0, None
        self.sent["cut"] += 1
        poisoned = build_frame({**self.values, "current": POISON_CURRENT})
        self._tail = build_frame(self.values)[cut:]
        return [poisoned[:cut]], True

    def _kind(self) -> str:
        """Every ``fault_every``-th frame carries one frame fault, taking turns among those enabled."""
        kinds = [f for f in ("history", "truncated", "implausible") if f in self.faults]
        if not kinds or self._frames % self.fault_every:
            return "live"
        return kinds[(self._frames // self.fault_every) % len(kinds)]

    def _wrap(self, frame: bytes) -> bytes:
        """Prefix right before the header, junk before both (junk between frames, as a bad link gives)."""
        if "prefixed" in self.faults:
            frame = bytes.fromhex("61d2") + (self._frames & 0xFFFF).to_bytes(2, "big") + frame
        if "noise" in self.faults:
            frame = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 12))) + frame
            self.sent["noise"] += 1
        return frame

    def _split(self, data: bytes) -> list[bytes]:
        if "split" not in self.faults:
            return [data]
        points = sorted(self.rng.sample(range(1, len(data)), k=min(len(data) - 1, self.rng.choice((1, 2)))))
        return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]

    def chunks(self, reply: bytes) -> Iterable[bytes]:
        return [reply]


def _raw(f: Field, value: float) -> bytes:
    """``value`` in the field's bytes, saturating at the width's range."""
    bits = 8 * f.frame_bytes
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if f.signed else (0, (1 << bits) - 1)
    raw = max(low, min(high, round(value / f.scale)))
    return raw.to_bytes(f.frame_bytes, "big", signed=f.signed)


def build_frame(values: dict[str, Any], *, history: bool = False) -> bytes:
    """A 110-byte frame holding ``values`` (physical units; None: the field's no-value raw)."""
    frame = bytearray(FRAME_LEN)
    frame[0:4] = HISTORY_HEADER if history else LIVE_HEADER
    frame[4:8] = bytes.fromhex("01001630")
    for offset, tag in TAGS.items():
        frame[offset] = tag
    for f in FIELDS:
        if f.frame_offset is None or f.key not in values:
            continue
        value = values[f.key]
        if value is None:
            frame[f.frame_offset : f.frame_end] = (f.no_value or 0).to_bytes(f.frame_bytes, "big")
        else:
            frame[f.frame_offset : f.frame_end] = _raw(f, value)
    return bytes(frame)


def stored(values: dict[str, Any]) -> dict[str, Any]:
    """What an exact decoder publishes for ``values``: each rounded to its resolution, power derived."""
    truth: dict[str, Any] = {}
    for key, value in values.items():
        f = _BY_KEY[key]
        if value is None:
            continue
        raw = int.from_bytes(_raw(f, value), "big", signed=f.signed)
        truth[key] = f.scaled(raw)
    power = _BY_KEY["power"]
    assert power.compute is not None
    truth["power"] = round(power.compute(truth), power.precision or 2)
    return truth
