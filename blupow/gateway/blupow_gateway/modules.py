"""The run-time device model: Bluetooth *modules* carrying Modbus *units*.

A **module** is one BLE peripheral (one MAC, one link): a BT-1/BT-2, a
Communication Hub's BT-2, or a device with built-in BLE. It owns what belongs to
the radio side: the link, connecting, the connection slot, backoff after the
module failed as a whole, the RSSI.

A **unit** is one configured device behind a module: a driver at a Modbus ID
(a battery at 0x30 of a daisy chain, the controller at 97 behind a hub). It owns
what Home Assistant sees: the record, driver and variant, status
(availability), poll statistics, values, discovery and its state topic.

A module with one unit is the classic single device. Its unit's ``key`` is the
bare MAC id (``C464E3383D0E``), exactly as before modules existed, so upgrades
keep unique_ids, topics and entity ids. A unit added to a module that already
carries units gets ``<MAC id>_<Modbus id>``; keys are stored with the record, so
they never change when siblings come or go.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .devices import BaseDevice
from .store import DeviceRecord

BROADCAST_ID = 0xFF  # every slave answers it: fine alone, a collision on a shared bus


class Status(StrEnum):
    PENDING = "pending"
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


@dataclass
class PollStats:
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_latency_ms: int | None = None
    last_error: str | None = None
    last_poll: str | None = None
    last_seen: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_latency_ms": self.last_latency_ms,
            "last_poll": self.last_poll,
        }


@dataclass
class Cycle:
    started: float
    pending: set[str]


@dataclass(eq=False)
class Unit:
    """A configured device at run time: a driver at a Modbus ID behind a module."""

    record: DeviceRecord
    device: BaseDevice | None
    module: Module
    error: str | None = None  # why ``device`` could not be built (record kept, not polled)
    status: Status = Status.PENDING
    stats: PollStats = field(default_factory=PollStats)
    values: dict[str, Any] = field(default_factory=dict)
    registers: dict[int, int] = field(default_factory=dict)
    retired: bool = False  # removed: a reading that arrives now is dropped
    controls: set[asyncio.Task[Any]] = field(default_factory=set)  # control writes in flight
    polled_cycle: int = 0  # the module poll that last read this unit successfully

    @property
    def key(self) -> str:
        """Unique per gateway: topics, unique_ids, the ledger and the scheduler use it."""
        return self.record.topic_id

    @property
    def mac(self) -> str:
        return self.record.mac_address

    @property
    def modbus_id(self) -> int | None:
        """The ID requests go to: the driver's (its default when the record names none)."""
        return self.device.modbus_id if self.device is not None else self.record.modbus_id

    @property
    def pollable(self) -> bool:
        return self.record.enabled and self.device is not None

    @property
    def rssi(self) -> int | None:
        return self.module.rssi


@dataclass(eq=False)
class Module:
    """One BLE peripheral and its link; polls read its units one after another."""

    mac: str
    units: dict[str, Unit] = field(default_factory=dict)  # key -> unit, in the order they were added
    link: Any = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    holds_slot: bool = False
    retry_at: float | None = None
    queued: bool = False
    cycle: Cycle | None = None
    connects: int = 0
    rssi: int | None = None
    failures: int = 0  # polls in a row in which no unit answered: drives the module's backoff
    polls: int = 0  # module polls so far (units remember the one that last read them)
    retired: bool = False  # its last unit is gone: the poll loop must end

    @property
    def pollable(self) -> bool:
        return any(u.pollable for u in self.units.values())

    def pollable_units(self) -> list[Unit]:
        """Units to read in a poll: by Modbus ID, so a bank is read in bus order."""
        units = [u for u in self.units.values() if u.pollable and not u.retired]
        return sorted(units, key=lambda u: (u.modbus_id if u.modbus_id is not None else 256, u.key))

    def profile(self) -> BaseDevice | None:
        """The driver whose GATT layout and pacing the link uses (units of a module share them)."""
        for unit in self.units.values():
            if unit.device is not None:
                return unit.device
        return None

    def shared(self) -> bool:
        return len(self.units) > 1
