"""Simulated Renogy devices: one module per family and a registry of ready-made kinds.

``create_simulated("controller")`` gives a Rover-like controller with a
deterministic MAC and name; ``KINDS`` lists every kind with the gateway type
and driver variant it should be polled with. ``create_module("hub:battery*4,controller@97")``
gives one Bluetooth module carrying several of them at their own Modbus IDs
(:mod:`.module`). Nothing here imports bleak or dbus: the fake BlueZ and the
in-memory :mod:`.link` build on these objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .base import Behaviour, Responder, SimulatedDevice, mac_for
from .battery import SimulatedBattery
from .controller import SimulatedController
from .dcc import SimulatedDcc
from .inverter import SimulatedInverter
from .module import SimulatedModule, create_module
from .shunt import SimulatedShunt

__all__ = [
    "KINDS",
    "Behaviour",
    "Responder",
    "SimKind",
    "SimulatedBattery",
    "SimulatedController",
    "SimulatedDcc",
    "SimulatedDevice",
    "SimulatedInverter",
    "SimulatedModule",
    "SimulatedShunt",
    "create_module",
    "create_simulated",
    "default_mac",
]


@dataclass(frozen=True)
class SimKind:
    """A ready-made simulated device and how the gateway should poll it."""

    kind: str
    cls: type[SimulatedDevice]
    type_name: str  # gateway device type (driver)
    variant: str | None  # driver variant
    modbus_id: int
    description: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def _kinds(*kinds: SimKind) -> dict[str, SimKind]:
    return {k.kind: k for k in kinds}


KINDS: dict[str, SimKind] = _kinds(
    SimKind(
        "controller",
        SimulatedController,
        "renogy_charge_controller",
        None,
        0xFF,
        "Rover 40 A MPPT controller on a BT-2 (RNG-CTRL-RVR40), load output switchable",
    ),
    SimKind("dcc", SimulatedDcc, "renogy_dcc", "standard", 0xFF, "DC-DC charger RBC50D1S-G1 on a BT-2"),
    SimKind(
        "dcc_g6",
        SimulatedDcc,
        "renogy_dcc",
        "g6",
        0xFF,
        "DC-DC charger RBC50D1S-G6: no reply at 0x0120, nothing past 0x0121",
        MappingProxyType({"model": "RBC50D1S-G6"}),
    ),
    SimKind(
        "battery",
        SimulatedBattery,
        "renogy_battery",
        "legacy",
        0x30,
        "Smart lithium battery RBT100LFP12-BT on a BT-2 (current in 0.01 A)",
    ),
    SimKind(
        "battery_pro",
        SimulatedBattery,
        "renogy_battery",
        "pro",
        0xFF,
        "Pro battery with built-in BLE (RNGRBP…, manufacturer id 0xE14C, current in 0.1 A)",
    ),
    SimKind(
        "shunt",
        SimulatedShunt,
        "renogy_shunt",
        None,
        0xFF,
        "Smart Shunt 300 (RTMShunt300…): ~8.5 notified frames/s, no Modbus; faults split, prefixed, history, "
        "truncated, implausible, noise",
    ),
    SimKind("inverter", SimulatedInverter, "renogy_inverter", None, 0x20, "Inverter/charger RIV1230RCH-SPS (BTRIC…)"),
    SimKind(
        "inverter_riv4835",
        SimulatedInverter,
        "renogy_inverter",
        None,
        0x20,
        "Inverter RIV4835CSH1S (48 V): never answers the model read at 4311",
        MappingProxyType({"model": "RIV4835CSH1S", "answers_model": False, "nominal_voltage": 48, "rated_va": 3500.0}),
    ),
)


def default_mac(kind: str, index: int = 0) -> str:
    """The MAC ``create_simulated`` gives the ``index``-th device of a kind when none is passed."""
    return mac_for(kind, index)


def create_simulated(
    kind: str,
    *,
    mac: str | None = None,
    name: str | None = None,
    modbus_id: int | None = None,
    behaviour: Behaviour | None = None,
    **options: Any,
) -> SimulatedDevice:
    """A simulated device of ``kind``; ``options`` go to its class (``cold``, ``seed``, ``clock``, ``frozen``…)."""
    try:
        spec = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown simulated kind {kind!r} (known: {', '.join(KINDS)})") from None
    if modbus_id is not None and not 0 <= modbus_id <= 0xFF:
        raise ValueError(f"modbus_id must be 0..255, got {modbus_id}")
    return spec.cls(
        mac=mac or default_mac(kind),
        name=name or "",
        modbus_id=spec.modbus_id if modbus_id is None else modbus_id,
        behaviour=behaviour or Behaviour(),
        variant=spec.variant,
        **{**spec.options, **options},
    )
