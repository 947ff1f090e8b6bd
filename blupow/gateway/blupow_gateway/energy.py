"""Energy counters for the Energy dashboard: the ones the gateway integrates for devices that
have none of their own, and the guard on the lifetime counters devices do keep.

A driver declares them in its table (``Field(integrates="power", direction=±1)``,
see ``devices._fields.integrated_energy``). After each good reading the power
is integrated over the time since the previous reading (trapezoid rule); the
positive part goes to the ``direction=1`` counters, the negative part to the
``direction=-1`` ones. The Energy dashboard reads them as ``total_increasing``
sensors in kWh, so three rules matter more than precision:

* **Never decreasing.** A drop of a ``total_increasing`` value is taken by Home
  Assistant as a meter reset and the whole value is counted again. So a value
  is *published* only after it is on disk: :meth:`EnergyMeters.published`
  returns the last committed snapshot, and :meth:`commit` (one writer, atomic
  file replace with fsync) moves the snapshot forward. A crash can lose what was
  not committed yet, never publish more than the file holds.
* **Nothing invented.** Across a gap longer than ``max_gap`` (a few poll
  intervals: the device was away, the gateway stopped, the broker was gone and
  polling went on regardless is fine) the energy is unknown: the gap adds
  nothing and the next reading starts a new segment.
* **Nothing lost or counted twice across a restart.** The last reading's time
  and power are committed with the counters, so after a restart (or a SIGKILL)
  the first reading continues the segment from the committed point when it is
  within ``max_gap``: the energy of the interval since the commit is counted
  once, from the committed state.

A device's own lifetime counter (``Field(lifetime=True)``, e.g. a charge controller's
"generated total") needs no integration but the same promise: Home Assistant must never see it
go down because of one odd reading. :meth:`EnergyMeters.carry` holds back a drop, or a jump no
Renogy device can make in the time since the last reading, until the next reading confirms it.
A confirmed drop is a reset of the device's counter (a factory reset, a replaced controller): the
last value is carried forward as an offset, so the published counter continues from where it
was. The last accepted reading and the offset are kept in the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .devices.base import Field, Values, is_finite
from .store import atomic_write_json

_LOGGER = logging.getLogger(__name__)

FILENAME = "energy.json"
SCHEMA = 1
GAP_POLLS = 3  # integrate across at most this many poll intervals (a missed poll or two is fine)
MIN_GAP_S = 60.0  # ... but never less than a minute: a short poll interval is not a long gap
# A lifetime counter rising faster than this is a glitch until confirmed: far above any Renogy
# controller or DC-DC charger (100 A at 48 V is under 5 kW).
MAX_COUNTER_KW = 20.0


@dataclass
class Meter:
    """One unit's counters: Wh so far, and the last reading the next one continues from."""

    wh: dict[str, float] = field(default_factory=dict)
    at: float | None = None  # wall-clock time of the last reading (survives restarts)
    power: dict[str, float] = field(default_factory=dict)  # source field -> W at ``at``
    # lifetime counters of the device: last accepted reading, offset carried over resets, time
    raw: dict[str, float] = field(default_factory=dict)
    offset: dict[str, float] = field(default_factory=dict)
    raw_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "wh": self.wh,
            "at": self.at,
            "power": self.power,
            "raw": self.raw,
            "offset": self.offset,
            "raw_at": self.raw_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Meter:
        """A meter from the file; anything malformed is left out, never turned into energy."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        wh = {k: float(v) for k, v in (data.get("wh") or {}).items() if _good(v) and v >= 0}
        power = {k: float(v) for k, v in (data.get("power") or {}).items() if _good(v)}
        raw = {k: float(v) for k, v in (data.get("raw") or {}).items() if _good(v) and v >= 0}
        offset = {k: float(v) for k, v in (data.get("offset") or {}).items() if _good(v) and v >= 0}
        at, raw_at = data.get("at"), data.get("raw_at")
        return cls(
            wh=wh,
            at=float(at) if _good(at) else None,
            power=power,
            raw=raw,
            offset=offset,
            raw_at=float(raw_at) if _good(raw_at) else None,
        )


def _good(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class EnergyMeters:
    """The integrated counters of every unit, persisted in ``<data>/energy.json``."""

    def __init__(self, data_dir: Path, max_gap: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self.path = data_dir / FILENAME
        self._max_gap = max_gap
        self._clock = clock
        self._working: dict[str, Meter] = {}
        self._committed: dict[str, Meter] = {}
        self._dirty = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._held: dict[tuple[str, str], float] = {}  # (unit, field) -> reading waiting for confirmation

    # -- loading and committing ---------------------------------------------------------------

    def load(self) -> None:
        """Read the file (blocking: call it in a thread). A corrupt file is set aside, not fatal."""
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            # kept for the user (it may be repaired), out of the way of the next save
            aside = self.path.with_name(f"{FILENAME}.corrupt-{int(self._clock())}")
            with contextlib.suppress(OSError):
                self.path.rename(aside)
            _LOGGER.error(
                "Energy counters in %s cannot be read (%s); moved to %s, counting starts again", self.path, exc, aside
            )
            return
        units = data.get("units") if isinstance(data, dict) else None
        for key, raw in (units or {}).items():
            try:
                self._working[key] = Meter.from_json(raw)
            except (TypeError, ValueError) as exc:
                _LOGGER.error(
                    "Energy counters of %s in %s are not valid (%s): they start again from 0", key, self.path, exc
                )
        self._committed = copy.deepcopy(self._working)

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="energy writer")

    async def stop(self) -> None:
        """Write what is left, then end the writer."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._working != self._committed:
            await self.commit()

    async def _write_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.commit()

    async def commit(self) -> None:
        """Write the counters; only then may they be published."""
        snapshot = copy.deepcopy(self._working)
        document = {"schema": SCHEMA, "units": {key: meter.to_json() for key, meter in snapshot.items()}}
        try:
            await asyncio.to_thread(atomic_write_json, self.path, document)
        except OSError as exc:  # the values stay unpublished; the next commit tries again
            _LOGGER.error("Energy counters could not be saved to %s: %s", self.path, exc)
            return
        self._committed = snapshot

    # -- counting -----------------------------------------------------------------------------

    def record(self, key: str, counters: list[Field], values: Values) -> None:
        """Integrate one good reading of unit ``key``."""
        if not counters:
            return
        now = self._clock()
        meter = self._working.setdefault(key, Meter())
        power = {f.integrates: float(values[f.integrates]) for f in counters if _has(values, f.integrates)}
        dt = now - meter.at if meter.at is not None else None
        if dt is not None and 0 < dt <= self._max_gap():
            for f in counters:
                source = f.integrates
                assert source is not None
                if source in power and source in meter.power:
                    wh = _trapezoid(meter.power[source], power[source], dt, f.direction)
                    meter.wh[f.key] = meter.wh.get(f.key, 0.0) + wh
        for f in counters:  # a counter exists (at 0) from the first reading on
            meter.wh.setdefault(f.key, 0.0)
        meter.at, meter.power = now, power
        self._dirty.set()

    def published(self, key: str, counters: list[Field]) -> dict[str, float]:
        """The committed counters of unit ``key`` in kWh, Wh resolution.

        A counter not committed yet starts at 0, which is safe to show: nothing published
        later can be below it.
        """
        meter = self._committed.get(key) or Meter()
        # whole Wh, rounded down: rounding up could show more than the file holds
        return {f.key: math.floor(meter.wh.get(f.key, 0.0)) / 1000.0 for f in counters}

    def forget(self, key: str) -> None:
        """The unit was removed: its counters go with it."""
        self._held = {k: v for k, v in self._held.items() if k[0] != key}
        if self._working.pop(key, None) is not None:
            self._dirty.set()

    # -- the device's own lifetime counters ---------------------------------------------------

    def carry(self, key: str, counters: list[Field], values: Values) -> None:
        """Replace the lifetime counters in ``values`` (one good reading of unit ``key``) with
        what may be published: never below what was published before (see the module doc)."""
        if not counters:
            return
        now = self._clock()
        meter = self._working.setdefault(key, Meter())
        elapsed = now - meter.raw_at if meter.raw_at is not None else 0.0
        accepted = False
        for f in counters:
            reading = values.get(f.key)
            if not _has(values, f.key):
                continue
            if self._accept(key, meter, f, float(reading), elapsed):
                accepted = True
            last = meter.raw.get(f.key)
            if last is not None:
                values[f.key] = round(last + meter.offset.get(f.key, 0.0), 6)
        if accepted:
            meter.raw_at = now
            self._dirty.set()

    def _accept(self, key: str, meter: Meter, f: Field, reading: float, elapsed: float) -> bool:
        """Take ``reading`` as the counter's new raw value, or hold it back; True if taken."""
        last = meter.raw.get(f.key)
        step = _max_step(f, elapsed)
        if last is None or last <= reading <= last + step:
            self._held.pop((key, f.key), None)
            meter.raw[f.key] = reading
            return True
        held = self._held.get((key, f.key))
        if held is None or not held <= reading <= held + step:
            self._held[(key, f.key)] = reading
            _LOGGER.info(
                "%s: %s went from %s to %s %s; held back until the next reading confirms it",
                key,
                f.key,
                last,
                reading,
                f.unit,
            )
            return False
        del self._held[(key, f.key)]
        if reading < last:
            meter.offset[f.key] = meter.offset.get(f.key, 0.0) + last
            _LOGGER.warning(
                "%s: the device's %s counter restarted (%s -> %s %s); the published total continues from %s",
                key,
                f.key,
                last,
                reading,
                f.unit,
                round(meter.offset[f.key], 6),
            )
        meter.raw[f.key] = reading
        return True


def _has(values: Mapping[str, Any], key: str | None) -> bool:
    return key is not None and key in values and is_finite(values[key]) and not isinstance(values[key], bool)


def _trapezoid(p0: float, p1: float, seconds: float, direction: int) -> float:
    """Wh of the part of the power with sign ``direction``, power linear from p0 to p1.

    When the power crosses zero inside the interval, each side gets its own triangle
    (charging that turns into discharging is not netted out).
    """
    a, b = p0 * direction, p1 * direction
    hours = seconds / 3600.0
    if a >= 0 and b >= 0:
        return (a + b) / 2 * hours
    if a <= 0 and b <= 0:
        return 0.0
    crossing = a / (a - b)  # fraction of the interval at which the power is 0
    return (a * crossing if a > 0 else b * (1 - crossing)) / 2 * hours


def _max_step(f: Field, seconds: float) -> float:
    """The most a lifetime counter can plausibly rise in ``seconds`` (at least a minute's worth)."""
    kwh = MAX_COUNTER_KW * max(seconds, 60.0) / 3600.0
    return kwh * 1000.0 if f.unit == "Wh" else kwh


def max_gap_for(poll_interval: float) -> float:
    return max(MIN_GAP_S, GAP_POLLS * poll_interval)
