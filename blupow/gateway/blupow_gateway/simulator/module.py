"""A simulated Bluetooth module carrying several Modbus units on one RS-485 bus.

A Renogy Communication Hub, or a BT-2 at the head of a daisy chain of
batteries, is ONE BLE identity (one MAC, advertised as ``BT-TH-…`` like any
BT-2) in front of several Modbus slaves, each at its own ID (protocol notes,
renogy-hub-and-shunt §1). :class:`SimulatedModule` plays that bus:

* a request to ID n is answered by the unit at n, with that unit's own latency,
  behaviour and faults; with nobody at n the bus stays silent (no slave makes up
  an answer for an absent one, §1.5);
* 0xFF is the universal address, which every unit answers: with one unit that is
  an ordinary reply, with two or more they talk at once and the module notifies
  garbage that never holds a valid frame (a collision, §1.2);
* faults per unit, settable at creation and at run time (:func:`set_faults`):
  ``silent`` never answers, ``late`` answers only after ``late_after`` seconds
  (default 5, longer than any request timeout), ``wrong-id`` answers as the next
  ID up with a recomputed CRC, so the frame is otherwise valid.

Specs (``blupow-sim --devices``): ``hub:battery*4,controller@97``,
``chain:battery@33,battery@34``, ``hub:battery*3,battery@51+silent``; see
:func:`parse_module_spec` for the grammar and the default IDs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..devices import driver
from ..devices.base import DeviceProtocol
from .base import (
    BEHAVIOUR_KEYS,
    BT_SERVICE_UUIDS,
    Behaviour,
    SimulatedDevice,
    apply_behaviour,
    bt_manufacturer_data,
    bt_module_name,
    mac_for,
    parse_request,
    split_reply,
)
from .battery import SERIAL_REGISTER, SERIAL_WORDS

TOPOLOGIES = ("hub", "chain")
FAULTS = ("silent", "late", "wrong-id")
MAX_UNITS = 16  # a hub's bus, or the longest chain seen (§1.4 peers poll at most 8-16 IDs)
MIN_ID, MAX_ID = 1, 247  # Modbus slave addresses; 0 is broadcast-without-reply, 0xFF universal
BROADCAST_ID = 0xFF
DEFAULT_LATE_AFTER = 5.0  # seconds: past any request timeout the gateway uses
SYNTAX = "KIND[*COUNT][@ID][+FAULT...]"

_UNIT = re.compile(
    r"(?P<kind>[A-Za-z0-9_]+)(?:\*(?P<count>\d+))?(?:@(?P<id>0[xX][0-9A-Fa-f]+|\d+))?(?P<faults>(?:\+[A-Za-z0-9_-]*)*)"
)

# IDs a unit gets when its spec names none, first free one wins (§1.2: batteries
# auto-address from 0x30 upward, the hub puts controllers/DC-DC chargers at
# 0x60/0x61 and inverters at 0x20; a daisy chain has controllers at 16/17).
_BATTERY_IDS = tuple(range(0x30, MAX_ID + 1))
DEFAULT_IDS: dict[str, dict[str, tuple[int, ...]]] = {
    "hub": {"battery": _BATTERY_IDS, "controller": (0x60, 0x61), "dcc": (0x60, 0x61), "inverter": (0x20,)},
    "chain": {"battery": _BATTERY_IDS, "controller": (16, 17), "inverter": (0x20,)},
}
_WHERE = {"hub": "behind a hub", "chain": "in a chain"}

# What the BLE module itself does with a reply; every other behaviour key belongs to the units.
LINK_BEHAVIOUR_KEYS = ("chunk_size", "garbage_before_reply")


@dataclass(frozen=True)
class UnitSpec:
    """One unit of a module spec: a simulated kind at a Modbus ID (None: the topology's default)."""

    kind: str
    modbus_id: int | None = None
    faults: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)  # family options (model, capacity_ah, …)
    behaviour: Mapping[str, Any] = field(default_factory=dict)  # Behaviour fields (latency, …)


@dataclass
class SimulatedModule:
    """One BLE module (MAC, name, advertisement) and the units on its RS-485 bus, by Modbus ID.

    ``behaviour`` is the BLE side's: ``chunk_size`` (MTU) and
    ``garbage_before_reply``; latency and failures are each unit's own.
    """

    topology: str
    units: dict[int, SimulatedDevice]
    mac: str = ""  # empty: a deterministic MAC from the topology
    name: str = ""  # empty: BT-TH- and the last four MAC bytes, like any BT-2
    behaviour: Behaviour = field(default_factory=Behaviour)
    late_after: float = DEFAULT_LATE_AFTER  # how late a unit with the ``late`` fault answers
    manufacturer_id: int | None = None  # None: BT-1/BT-2 scheme (MAC bytes)
    service_uuids: tuple[str, ...] = BT_SERVICE_UUIDS
    collisions: int = 0  # 0xFF requests that two or more units answered at once

    type_name: ClassVar[str] = "module"
    variant: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, not {self.topology!r}")
        self.mac = (self.mac or mac_for(self.topology)).upper()
        self.name = self.name or bt_module_name(self.mac)
        _check_units(self.units)
        self.units = dict(sorted(self.units.items()))

    def __repr__(self) -> str:
        # the units' register banks would drown an assertion message
        return f"SimulatedModule({self.topology} {self.mac} {self.name!r} {self.describe()})"

    def unit(self, modbus_id: int) -> SimulatedDevice:
        try:
            return self.units[modbus_id]
        except KeyError:
            known = ", ".join(map(str, self.units))
            raise KeyError(f"no unit at Modbus ID {modbus_id} behind {self.mac} (units: {known})") from None

    def set_faults(self, modbus_id: int, faults: Iterable[str]) -> None:
        """Replace the faults of the unit at ``modbus_id`` (an empty list restores it)."""
        set_faults(self.unit(modbus_id), faults, late_after=self.late_after)

    # --- on air ---

    def manufacturer_data(self) -> dict[int, bytes]:
        return bt_manufacturer_data(self.mac, self.manufacturer_id)

    def chunks(self, reply: bytes) -> Iterable[bytes]:
        return split_reply(reply, self.behaviour)

    def describe(self) -> str:
        """``48=renogy_battery/legacy,97=renogy_charge_controller+silent``: the units as blupow-sim prints them."""
        return ",".join(f"{modbus_id}={unit_label(unit)}" for modbus_id, unit in self.units.items())

    # --- the bus ---

    def respond(self, frame: bytes, latency: float | None = None) -> tuple[bytes, float] | None:
        """The bus's answer to one request and its delay; None when no unit answers."""
        request = parse_request(frame)
        if request is None:
            return None  # a corrupt request: every slave ignores it
        answers = [
            (reply, unit.reply_delay(latency))
            for unit in self._addressed(request.slave_id)
            if (reply := unit.answer(request)) is not None
        ]
        if len(answers) <= 1:
            return answers[0] if answers else None
        # Two talkers at once: the bus is busy until the slowest one is done.
        self.collisions += 1
        return collide([reply for reply, _ in answers]), max(delay for _, delay in answers)

    def _addressed(self, slave_id: int) -> list[SimulatedDevice]:
        if slave_id == BROADCAST_ID:
            return list(self.units.values())
        unit = self.units.get(slave_id)
        return [] if unit is None else [unit]


def _check_units(units: Mapping[int, SimulatedDevice]) -> None:
    if not units:
        raise ValueError("a module needs at least one unit")
    if len(units) > MAX_UNITS:
        raise ValueError(f"a module carries at most {MAX_UNITS} units, this one has {len(units)}")
    for modbus_id, unit in units.items():
        check_id(modbus_id)
        if unit.modbus_id != modbus_id:
            raise ValueError(f"the unit listed at Modbus ID {modbus_id} answers at {unit.modbus_id}")


# --- collisions -----------------------------------------------------------------


def collide(replies: Sequence[bytes]) -> bytes:
    """What two or more slaves answering at once leave on the line: never a valid frame.

    Their bytes are ORed together; should a CRC happen to fit anywhere in the
    result (two identical replies do), a bit is flipped until none does, so no
    assembler can take the garbage for an answer.
    """
    mixed = bytearray(max(len(r) for r in replies))
    for reply in replies:
        for i, byte in enumerate(reply):
            mixed[i] |= byte
    while (end := valid_frame_end(mixed)) is not None:
        mixed[end - 1] ^= 0x01
    return bytes(mixed)


def valid_frame_end(data: bytes | bytearray) -> int | None:
    """End offset of the first stretch of ``data`` (4 bytes or more) whose CRC-16/MODBUS fits."""
    for start in range(len(data)):
        crc = 0xFFFF
        for end in range(start, len(data)):
            crc = _crc_step(crc, data[end])
            # the CRC over a frame including its own little-endian CRC is 0
            if crc == 0 and end - start >= 3:
                return end + 1
    return None


def _crc_step(crc: int, byte: int) -> int:
    crc ^= byte
    for _ in range(8):
        crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


# --- faults -----------------------------------------------------------------------


def set_faults(device: SimulatedDevice, faults: Iterable[str], *, late_after: float = DEFAULT_LATE_AFTER) -> None:
    """Replace a unit's faults: ``silent``, ``late`` (after ``late_after`` s), ``wrong-id``."""
    wanted = set(check_faults(faults))
    b = device.behaviour
    b.drop_replies = "silent" in wanted
    b.late_after = late_after if "late" in wanted else 0.0
    b.wrong_id = wrong_id_for(device.modbus_id) if "wrong-id" in wanted else None


def faults_of(device: SimulatedDevice) -> list[str]:
    """The named faults a unit's behaviour amounts to, in :data:`FAULTS` order."""
    b = device.behaviour
    present = {"silent": b.drop_replies, "late": b.late_after > 0, "wrong-id": b.wrong_id is not None}
    return [name for name in FAULTS if present[name]]


def check_faults(faults: Iterable[str], where: str = "") -> tuple[str, ...]:
    names = tuple(faults)
    for name in names:
        if name not in FAULTS:
            context = f" in {where!r}" if where else ""
            raise ValueError(f"unknown fault {name!r}{context} (known: {', '.join(FAULTS)})")
    return names


def wrong_id_for(modbus_id: int | None) -> int:
    """The ID a ``wrong-id`` unit answers as: the next one up (247 wraps to 1)."""
    return (modbus_id or 0) % MAX_ID + 1


def unit_label(device: SimulatedDevice) -> str:
    """``renogy_battery/legacy+silent``: type, variant and faults of one unit."""
    label = device.type_name + (f"/{device.variant}" if device.variant else "")
    return label + "".join(f"+{name}" for name in faults_of(device))


# --- specs ----------------------------------------------------------------------------


def is_module_spec(value: str) -> bool:
    """Whether ``value`` names one module (``hub:…``/``chain:…``) rather than standalone kinds."""
    return any(value.strip().startswith(f"{topology}:") for topology in TOPOLOGIES)


def topology_of(spec: str) -> str:
    return spec.strip().partition(":")[0]


def parse_module_spec(spec: str) -> tuple[str, list[UnitSpec]]:
    """``hub:battery*4,controller@97`` -> ``("hub", units)`` with every Modbus ID assigned.

    A unit is ``KIND[*COUNT][@ID][+FAULT...]``: ``COUNT`` units of a kind
    (1..16), at ``ID`` and the IDs after it when given (decimal or 0x hex), with
    faults ``silent``, ``late``, ``wrong-id``. Without ``@ID`` a unit gets the
    first free default of its family (:data:`DEFAULT_IDS`): behind a hub
    batteries 48 upward, controllers and DC-DC chargers 96 then 97, inverters
    32; in a chain batteries 48 upward, controllers 16/17, inverters 32. Raises
    ValueError (one line) for anything else, duplicate IDs and more than 16 units.
    """
    topology, _, body = spec.strip().partition(":")
    if topology not in TOPOLOGIES:
        raise ValueError(f"a module spec starts with {' or '.join(t + ':' for t in TOPOLOGIES)}, not {spec!r}")
    tokens = [token.strip() for token in body.split(",")]
    units = [unit for token in tokens if token for unit in parse_unit(token)]  # a stray comma is harmless
    if not units:
        raise ValueError(f"names no unit, e.g. {topology}:battery*2,controller")
    return topology, assign_ids(topology, units)


def parse_unit(token: str) -> list[UnitSpec]:
    """One comma-separated element of a module spec (several units with ``*COUNT``)."""
    match = _UNIT.fullmatch(token)
    if match is None:
        raise ValueError(f"bad unit {token!r}: expected {SYNTAX}")
    kind = check_kind(match["kind"])
    count = int(match["count"] or 1)
    if not 1 <= count <= MAX_UNITS:
        raise ValueError(f"count {count} in {token!r} is outside 1..{MAX_UNITS}")
    faults = check_faults(match["faults"].split("+")[1:], token)
    if match["id"] is None:
        return [UnitSpec(kind, None, faults) for _ in range(count)]
    first = _number(match["id"])
    ids = range(first, first + count)
    for modbus_id in ids:
        check_id(modbus_id, token)
    return [UnitSpec(kind, modbus_id, faults) for modbus_id in ids]


def _number(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def check_kind(kind: Any) -> str:
    from . import KINDS  # the package imports this module

    # only devices on the RS-485 bus can sit behind a hub or in a chain (not the Bluetooth-only shunt)
    on_bus = [name for name, spec in KINDS.items() if driver(spec.type_name).protocol == DeviceProtocol.MODBUS]
    if kind in KINDS and kind not in on_bus:
        raise ValueError(f"device kind {kind!r} has no RS-485 port: it cannot be behind a hub or in a chain")
    if kind not in on_bus:
        raise ValueError(f"unknown device kind {kind!r} (known: {', '.join(on_bus)})")
    return str(kind)


def check_id(modbus_id: Any, where: str = "") -> int:
    context = f" in {where!r}" if where else ""
    if isinstance(modbus_id, bool) or not isinstance(modbus_id, int):
        raise ValueError(f"Modbus ID{context} must be a whole number {MIN_ID}..{MAX_ID}, not {modbus_id!r}")
    if not MIN_ID <= modbus_id <= MAX_ID:
        raise ValueError(f"Modbus ID {modbus_id}{context} is outside {MIN_ID}..{MAX_ID}")
    return modbus_id


def assign_ids(topology: str, units: Sequence[UnitSpec]) -> list[UnitSpec]:
    """Check the units of one module and give each without an ID its topology's default.

    Explicit IDs are reserved first, so ``hub:battery,battery@48`` puts the first
    battery at 49 rather than refusing a duplicate it never asked for.
    """
    if len(units) > MAX_UNITS:
        raise ValueError(f"a module carries at most {MAX_UNITS} units, this one has {len(units)}")
    taken: dict[int, str] = {}
    for unit in units:
        if unit.modbus_id is None:
            continue
        modbus_id = check_id(unit.modbus_id)
        if modbus_id in taken:
            raise ValueError(f"Modbus ID {modbus_id} is given to two units ({taken[modbus_id]} and {unit.kind})")
        taken[modbus_id] = unit.kind
    assigned = []
    for unit in units:
        modbus_id = unit.modbus_id
        if modbus_id is None:
            modbus_id = default_id(topology, unit.kind, taken)
            taken[modbus_id] = unit.kind
        assigned.append(dataclasses.replace(unit, modbus_id=modbus_id))
    return assigned


def default_id(topology: str, kind: str, taken: Mapping[int, str]) -> int:
    from . import KINDS

    family = KINDS[kind].cls.family
    candidates = DEFAULT_IDS[topology].get(family, ())
    free = next((i for i in candidates if i not in taken), None)
    if free is not None:
        return free
    where = _WHERE[topology]
    if not candidates:
        raise ValueError(f"no default Modbus ID for {kind} {where}: give one with @ID")
    shown = ", ".join(map(str, candidates)) if len(candidates) <= 4 else "all"
    raise ValueError(f"no free default Modbus ID for {kind} {where} ({shown} taken): give one with @ID")


# --- construction -------------------------------------------------------------------


def create_module(spec: str, mac: str | None = None, **kwargs: Any) -> SimulatedModule:
    """A module from a spec such as ``hub:battery*4,controller@97`` (see :func:`build_module`)."""
    topology, units = parse_module_spec(spec)
    return build_module(topology, units, mac=mac, **kwargs)


def build_module(
    topology: str,
    units: Sequence[UnitSpec],
    *,
    mac: str | None = None,
    name: str | None = None,
    identical_serials: bool = False,
    late_after: float = DEFAULT_LATE_AFTER,
    **options: Any,
) -> SimulatedModule:
    """Create the units and the module that carries them.

    Every unit shares the module's MAC; ``seed`` (default 1) is the first unit's
    and each further unit takes the next, so batteries differ in serial, cells
    and state. ``identical_serials=True`` gives every battery the first one's
    serial, as real daisy-chained batteries sometimes report (§1.6). Behaviour
    keys in ``options`` go to the module (``chunk_size``, ``garbage_before_reply``)
    or to every unit (``latency``, …), ``behaviour`` (a :class:`Behaviour`) is
    copied to every unit; the rest are family options for every unit (``clock``,
    ``frozen``, ``cold``…). ``late_after``: how late ``late`` units answer.
    """
    from . import create_simulated, default_mac

    behaviour = {k: options.pop(k) for k in BEHAVIOUR_KEYS if k in options and k != "late_after"}
    template: Behaviour | None = options.pop("behaviour", None)
    mac = (mac or default_mac(topology)).upper()
    seed = options.pop("seed", 1)
    specs = assign_ids(topology, units)
    devices: dict[int, SimulatedDevice] = {}
    for index, unit in enumerate(specs):
        assert unit.modbus_id is not None  # assign_ids gave every unit one
        devices[unit.modbus_id] = create_simulated(
            unit.kind,
            mac=mac,
            modbus_id=unit.modbus_id,
            seed=seed + index,
            # a copy each: a fault set on one unit must not reach its siblings
            behaviour=dataclasses.replace(template) if template is not None else None,
            **{**options, **unit.options},
        )
        set_faults(devices[unit.modbus_id], unit.faults, late_after=late_after)
    module = SimulatedModule(topology, devices, mac=mac, name=name or "", late_after=late_after)
    apply_module_behaviour(module, behaviour)
    for unit in specs:  # a unit's own settings win over the module-wide ones
        apply_behaviour(devices[unit.modbus_id or 0], unit.behaviour)
    if identical_serials:
        share_serials(module)
    return module


def apply_module_behaviour(module: SimulatedModule, values: Mapping[str, Any]) -> None:
    """Behaviour for a whole module: the BLE side's keys to the module, the others to every unit."""
    link = {k: v for k, v in values.items() if k in LINK_BEHAVIOUR_KEYS}
    per_unit = {k: v for k, v in values.items() if k not in LINK_BEHAVIOUR_KEYS}
    apply_behaviour(module, link)
    for unit in module.units.values():
        apply_behaviour(unit, per_unit)


def share_serials(module: SimulatedModule) -> None:
    """Give every battery the first battery's serial number (registers and truth)."""
    batteries = [u for u in module.units.values() if u.family == "battery"]
    for other in batteries[1:]:
        for reg in range(SERIAL_REGISTER, SERIAL_REGISTER + SERIAL_WORDS):
            other.registers[reg] = batteries[0].registers[reg]
        other.truth["serial_number"] = batteries[0].truth["serial_number"]
