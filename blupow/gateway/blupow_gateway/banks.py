"""Battery banks: several batteries shown as one more device.

Two kinds of bank, each with two members or more:

* a **module bank**: the batteries behind one module (a daisy-chained bank on a
  BT-2, the batteries behind a Communication Hub), key ``<MAC id>_bank``;
* a **named bank**: the batteries whose records carry the same ``bank`` name,
  whatever module each is on (a boat with two batteries, each with its own
  BT-2), key ``bank_<slug>`` (``House bank`` -> ``bank_house_bank``), named as the
  user wrote it. Names with the same slug are the same bank, so case, spaces and
  punctuation do not split one. A battery in a named bank is not a member of its
  module's bank.

Besides each battery, the gateway publishes the bank's device, computed from
the members' latest readings (those of one module come from one session):

* totals: current, power, remaining and full capacity, stored energy;
* capacity-weighted SOC (Σ remaining / Σ full, not a mean of SOCs, so a small
  battery does not count as much as a big one), the spread of SOC between
  members, the lowest and highest cell voltage and the highest temperature
  anywhere in the bank.

A bank value is computed only from a fresh reading of **every** member: one
made in the latest poll of the member's module. When a member did not answer
there, or its module cannot be reached, the bank's values are unavailable and its
two status entities (which stay available) say which member is missing: never a
total that silently lacks a battery. A member without a field (a pack without
temperature sensors) makes that one aggregate unavailable, not partial.

One table (``BatteryBank.fields``) drives the computation, the entities and the
device reference, like a driver's register table. :class:`BankKeeper` decides
which batteries form a bank, keeps each bank's device and hands it to the
publisher; the gateway only tells it when modules were polled and units changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .devices.base import BaseDevice, Category, Field, is_finite
from .modules import Module, Status, Unit
from .store import DeviceRecord, default_name, mac_id, named_bank_key

_LOGGER = logging.getLogger(__name__)

BANK_SUFFIX = "_bank"
MEMBER_TYPE = "renogy_battery"
# Entities of a bank that stay available when a member is missing: they say which one.
STATUS_KEYS = frozenset({"members_reporting", "missing_members"})
DIAG = Category.DIAGNOSTIC


def _members(v: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The members' values; only when every member answered in this poll."""
    if v["missing"]:
        raise ValueError("a member is missing")
    members: list[Mapping[str, Any]] = v["members"]
    return members


def _total(key: str) -> Any:
    def compute(v: Mapping[str, Any]) -> float:
        return sum(m[key] for m in _members(v))

    return compute


def _soc(v: Mapping[str, Any]) -> float:
    members = _members(v)
    full = sum(m["capacity"] for m in members)
    return min(100.0, 100.0 * sum(m["remaining_capacity"] for m in members) / full)


def _soc_spread(v: Mapping[str, Any]) -> float:
    socs = [m["battery_soc"] for m in _members(v)]
    return max(socs) - min(socs)


def _temperatures(m: Mapping[str, Any]) -> list[float]:
    found = list(m.get("cell_temperatures") or []) + list(m.get("environment_temperatures") or [])
    if "bms_temperature" in m:
        found.append(m["bms_temperature"])
    if not found:
        raise KeyError("no temperature")
    return found


def _measure(unit: str, device_class: str, precision: int, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "unit": unit,
        "device_class": device_class,
        "state_class": "measurement",
        "precision": precision,
        "description": description,
        **extra,
    }


class BatteryBank(BaseDevice):
    """Not a driver (it is not in ``devices/``, so it cannot be added): the bank's entity table."""

    type_name = "battery_bank"
    description = "Battery bank: the batteries behind one Bluetooth module, or those given one bank name, as one device"
    model_hint = "Battery bank"
    fields = (
        Field(
            "members_reporting",
            None,
            compute=lambda v: f"{len(v['members'])} of {len(v['members']) + len(v['missing'])}",
            category=DIAG,
            description="Members that answered in the last poll, e.g. 3 of 4 (stays available)",
        ),
        Field(
            "missing_members",
            None,
            compute=lambda v: ", ".join(v["missing"]) or "none",
            category=DIAG,
            description="Names of the members that did not answer in the last poll, or none (stays available)",
        ),
        Field(
            "current",
            None,
            compute=_total("current"),
            **_measure("A", "current", 2, "Total current of the bank: positive while charging"),
        ),
        Field("power", None, compute=_total("power"), **_measure("W", "power", 0, "Total power of the bank")),
        Field(
            "battery_soc",
            None,
            compute=_soc,
            **_measure("%", "battery", 1, "State of charge, weighted by capacity (Σ remaining / Σ full)"),
        ),
        Field(
            "remaining_capacity",
            None,
            compute=_total("remaining_capacity"),
            unit="Ah",
            state_class="measurement",
            precision=1,
            description="Remaining capacity of all members",
        ),
        Field(
            "capacity",
            None,
            compute=_total("capacity"),
            unit="Ah",
            precision=1,
            category=DIAG,
            description="Full capacity of all members",
        ),
        Field(
            "stored_energy",
            None,
            compute=_total("stored_energy"),
            **_measure("kWh", "energy_storage", 2, "Energy stored in all members"),
        ),
        Field(
            "soc_spread",
            None,
            compute=_soc_spread,
            unit="%",
            state_class="measurement",
            precision=1,
            category=DIAG,
            description="Highest minus lowest member SOC: a growing spread means the bank drifts apart",
        ),
        Field(
            "cell_voltage_min",
            None,
            name="Lowest cell voltage",
            compute=lambda v: min(m["cell_voltage_min"] for m in _members(v)),
            **_measure("V", "voltage", 3, "Lowest cell voltage in the bank"),
        ),
        Field(
            "cell_voltage_max",
            None,
            name="Highest cell voltage",
            compute=lambda v: max(m["cell_voltage_max"] for m in _members(v)),
            **_measure("V", "voltage", 3, "Highest cell voltage in the bank"),
        ),
        Field(
            "temperature_max",
            None,
            name="Highest temperature",
            compute=lambda v: max(max(_temperatures(m)) for m in _members(v)),
            **_measure("°C", "temperature", 1, "Highest temperature of any sensor in the bank"),
        ),
    )

    def aggregate(self, members: Sequence[Mapping[str, Any]], missing: Sequence[str]) -> dict[str, Any]:
        """The bank's values from the fresh ``members`` and the names of the ``missing`` ones."""
        inputs = {"members": list(members), "missing": list(missing)}
        values: dict[str, Any] = {}
        for f in self.active_fields():
            assert f.compute is not None
            try:
                value = f.compute(inputs)
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                continue  # missing member, or a member without this field: no value, never a partial one
            if isinstance(value, float):
                value = round(value, 3)  # sums of decoded values carry float noise
            if is_finite(value):
                values[f.key] = value
        return values


def bank_key(mac_key: str) -> str:
    return f"{mac_key}{BANK_SUFFIX}"


def is_member(record_type: str) -> bool:
    return record_type == MEMBER_TYPE


def status_always_available(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The bank's status entities follow only the gateway's availability, not the bank's."""
    patched = {}
    for topic, payload in configs.items():
        status = any(str(payload.get("unique_id", "")).endswith(f"_{key}") for key in STATUS_KEYS)
        patched[topic] = {**payload, "availability": payload["availability"][:1]} if status else payload
    return patched


# ====================================================================== which batteries form which bank


class BankPublisher(Protocol):
    """What the keeper needs of ``publisher.Publisher`` (a protocol: the publisher imports this module)."""

    def state(self, unit: Unit) -> None: ...

    def availability(self, unit: Unit) -> None: ...

    def discovery(self, unit: Unit, *, force: bool = False, prune: bool = False) -> None: ...

    def clear(self, key: str, unit: Unit | None) -> bool: ...


@dataclass(eq=False)
class Bank:
    """One bank: the unit the publisher shows (key, record, values, status) and its members."""

    unit: Unit
    members: list[Unit]

    @property
    def key(self) -> str:
        return self.unit.key


def group_of(unit: Unit) -> tuple[str, str] | None:
    """The key and display name of the bank ``unit`` belongs to, or None for a unit of no bank.

    A battery with a ``bank`` name belongs to that named bank only, wherever its module
    is; one without belongs to its module's bank.
    """
    record = unit.record
    if not is_member(record.type) or not unit.pollable or unit.retired:
        return None
    if record.bank is not None:
        return named_bank_key(record.bank), record.bank
    mac = unit.module.mac
    return bank_key(mac_id(mac)), default_name(BatteryBank.model_hint, mac)


def fresh(unit: Unit, finished: int) -> bool:
    """Whether ``unit`` answered in its module's latest poll (``finished``: that poll's number).

    A poll of the module may be under way: a member it has read already counts
    (``polled_cycle`` is then ahead), one it has not read yet counts with its reading
    of the finished poll. A failed latest attempt (also a connection that failed, which
    finishes no poll) or a unit not read since it was (re-)enabled does not count.
    """
    return unit.status == Status.ONLINE and unit.stats.consecutive_failures == 0 and unit.polled_cycle >= finished


class BankKeeper:
    """Groups the configured battery units into banks and keeps each bank's device published.

    ``units`` returns the configured units in their order (the scheduler's). A bank
    exists while it has two members or more; the member order is the units' order,
    which is also the order in which ``missing_members`` names them.
    """

    def __init__(self, publisher: BankPublisher, units: Callable[[], Iterable[Unit]]) -> None:
        self._publisher = publisher
        self._units = units
        self._banks: dict[str, Bank] = {}
        # module -> its poll count when its latest poll finished (see fresh())
        self._finished: dict[Module, int] = {}

    # --- views, for the gateway's republish and ledger cleanup ---

    def keys(self) -> set[str]:
        return set(self._banks)

    def units(self) -> list[Unit]:
        return [bank.unit for bank in self._banks.values()]

    def live(self, unit: Unit) -> bool:
        """Whether ``unit`` is the device of a bank that still exists."""
        bank = self._banks.get(unit.key)
        return bank is not None and bank.unit is unit

    def bank(self, key: str) -> Bank | None:
        return self._banks.get(key)

    # --- what the gateway reports ---

    def module_polled(self, module: Module) -> None:
        """After a poll of ``module``: every bank with a member on it, from this poll's readings
        and, for members on other modules, from their modules' latest ones."""
        self._finished[module] = module.polls
        published = self.regroup()
        for bank in self._banks.values():
            if bank not in published and any(m.module is module for m in bank.members):
                self._publish(bank)

    def unit_offline(self, unit: Unit) -> None:
        """A member went offline: its banks go unavailable now, also when its module cannot be
        reached at all (then no poll of it finishes to tell)."""
        for bank in self._banks.values():
            if unit in bank.members:
                self._publish(bank)

    def regroup(self) -> list[Bank]:
        """Form, change and drop banks after units changed (added, removed, enabled, disabled,
        given another bank name); returns the banks published anew."""
        groups = self._groups()
        for key in [k for k in self._banks if k not in groups]:
            self._drop(key)
        modules = {m.module for _names, members in groups.values() for m in members}
        self._finished = {m: n for m, n in self._finished.items() if m in modules}  # no leak of removed ones
        published = []
        for key, (names, members) in groups.items():
            bank = self._banks.get(key)
            # the name as first given: kept while a member still spells it so
            name = bank.unit.record.name if bank is not None and bank.unit.record.name in names else names[0]
            if bank is None:
                bank = self._banks[key] = Bank(self._new_unit(key, name, members[0]), members)
                _LOGGER.info("Battery bank %s (%s) formed by %d batteries", key, name, len(members))
            elif bank.members == members and bank.unit.record.name == name:
                continue
            else:
                bank.members = members
                bank.unit.record = bank.unit.record.with_changes(name=name)
            self._publish(bank)
            published.append(bank)
        return published

    # --- internals ---

    def _groups(self) -> dict[str, tuple[list[str], list[Unit]]]:
        """Bank key -> (the display names its members give, the members), for two members or more."""
        groups: dict[str, tuple[list[str], list[Unit]]] = {}
        for unit in self._units():
            group = group_of(unit)
            if group is not None:
                names, members = groups.setdefault(group[0], ([], []))
                names.append(group[1])
                members.append(unit)
        return {key: group for key, group in groups.items() if len(group[1]) >= 2}

    @staticmethod
    def _new_unit(key: str, name: str, first: Unit) -> Unit:
        # A Unit so that the publisher treats a bank like any device. Its MAC and module are
        # those of its first member: a named bank spans modules, and only its key (unit_id)
        # reaches topics and unique ids; the record's MAC is never used for a bank.
        record = DeviceRecord(mac_address=first.mac, type=BatteryBank.type_name, name=name, unit_id=key)
        return Unit(record=record, device=BatteryBank(), module=first.module)

    def _drop(self, key: str) -> None:
        bank = self._banks.pop(key)
        # a failed clear stays in the publisher's ledger and is retried by its clear_stale
        self._publisher.clear(key, bank.unit)
        _LOGGER.info("Battery bank %s (%s) removed: fewer than two members", key, bank.unit.record.name)

    def _publish(self, bank: Bank) -> None:
        """The bank's values from the members' latest readings; unavailable while one is missing."""
        unit = bank.unit
        if unit.status == Status.PENDING and any(m.stats.attempts == 0 for m in bank.members):
            # A member not tried yet in this run: nothing is known; like a unit before its first
            # poll, the bank leaves the retained topics of the previous run alone.
            return
        fresh_members = [m for m in bank.members if fresh(m, self._finished.get(m.module, 0))]
        missing = [m.record.name for m in bank.members if m not in fresh_members]
        assert isinstance(unit.device, BatteryBank)
        unit.values = unit.device.aggregate([m.values for m in fresh_members], missing)
        self._publisher.state(unit)
        self._publisher.discovery(unit, prune=not missing)
        status = Status.OFFLINE if missing else Status.ONLINE
        if status != unit.status:
            unit.status = status
            self._publisher.availability(unit)
            if missing:
                _LOGGER.warning("Battery bank %s is unavailable: %s did not answer", unit.key, ", ".join(missing))
