"""``blupow-sim``: simulated Renogy devices behind a fake BlueZ, for running the gateway without hardware.

::

    blupow-sim --devices controller,dcc,battery,inverter
    blupow-sim --devices 'hub:battery*4,controller@97' --devices chain:battery@33,battery@34
    blupow-sim --config devices.yaml --control-socket /tmp/sim.sock

A ``--devices`` value that starts with ``hub:`` or ``chain:`` is ONE Bluetooth
module (one MAC) carrying several Modbus units, ``KIND[*COUNT][@ID][+FAULT...]``
each (see ``--help`` and :mod:`.module`); any other value is a comma-separated
list of standalone devices. It starts a private ``dbus-daemon`` (unless
``--bus-address`` names an existing bus), exports a fake ``org.bluez`` on it and
prints one line per device (``MAC TYPE NAME``) and per module (``MAC module NAME
UNITS``, UNITS as ``ID=TYPE[/VARIANT][+FAULT...]`` joined by commas)::

    DBUS_SYSTEM_BUS_ADDRESS=unix:path=/tmp/blupow-dbus-…/system_bus_socket,guid=…
    C4:64:E3:8C:2D:75 renogy_charge_controller BT-TH-E38C2D75
    C4:64:E3:8C:30:F6 module BT-TH-E38C30F6 48=renogy_battery/legacy,49=renogy_battery/legacy,96=renogy_dcc/standard
    READY

Run the gateway with that variable set. The process runs until SIGINT/SIGTERM
(or, with ``--watch-stdin``, until its stdin closes) and then removes the bus.

Control protocol (``--control-socket PATH``): JSON lines over a unix socket, one
reply line per request line, e.g. ``{"op": "drop", "mac": "C4:…"}``. Every reply
has ``"ok"``; failures carry ``"error"``. Ops: ``ping``, ``devices``, ``stats``
(optional ``mac``), ``drop``, ``set`` (``failures`` and/or ``behaviour``),
``registers`` (optional ``start``/``count``), ``set_registers``, ``truth``,
``notify`` (``hex``), ``add`` (a config entry), ``remove``, ``powered`` (``value``).
On a module, ``registers``, ``set_registers`` and ``truth`` need ``modbus_id``
(the unit); ``set`` with ``modbus_id`` changes that unit's ``behaviour`` and
``faults`` (a list of ``silent``/``late``/``wrong-id`` that replaces the unit's;
``[]`` restores it), without it ``behaviour`` goes to every unit (``chunk_size``
and ``garbage_before_reply`` to the module). ``failures`` always concern the link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import Behaviour, SimulatedDevice
from .bus import ENV_VAR, BusError, PrivateBus
from .fake_bluez import BEHAVIOUR_KEYS, LAYOUTS, Failures, FakeBlueZ, FakePeripheral, apply_behaviour
from .module import (
    DEFAULT_IDS,
    DEFAULT_LATE_AFTER,
    FAULTS,
    MAX_UNITS,
    SYNTAX,
    TOPOLOGIES,
    SimulatedModule,
    UnitSpec,
    apply_module_behaviour,
    build_module,
    check_faults,
    check_id,
    check_kind,
    faults_of,
    is_module_spec,
    parse_module_spec,
    set_faults,
)
from .shunt import check_stream_faults

ENTRY_KEYS = ("kind", "mac", "name", "modbus_id", "rssi", "layout", "failures", "options", *BEHAVIOUR_KEYS)
MODULE_ENTRY_KEYS = (
    "kind",
    "mac",
    "name",
    "rssi",
    "failures",
    "options",
    "units",
    "identical_serials",
    *BEHAVIOUR_KEYS,
)
UNIT_ENTRY_KEYS = ("kind", "modbus_id", "faults", "options", *BEHAVIOUR_KEYS)
MAX_LINE = 1 << 20


class SimConfigError(ValueError):
    """A bad --devices / --config entry; reported on one line, exit code 2."""


# --- configuration -------------------------------------------------------------------


def known_kinds() -> list[str]:
    from . import KINDS

    return list(KINDS)


def parse_kinds(values: Sequence[str]) -> list[dict[str, Any]]:
    """``--devices a,b --devices hub:battery*2`` -> config entries; repeated kinds are allowed.

    A value starting with ``hub:``/``chain:`` is one module entry (IDs assigned
    here, so a bad spec fails before any bus starts); any other value lists
    standalone devices.
    """
    entries: list[dict[str, Any]] = []
    kinds = known_kinds()
    for value in values:
        if is_module_spec(value):
            entries.append(module_entry(value))
            continue
        for token in (k.strip() for k in value.split(",")):
            if not token:
                continue
            kind, *faults = token.split("+")
            if kind not in kinds:
                raise SimConfigError(f"unknown device kind {kind!r} (known: {', '.join(kinds)})")
            if faults:  # only the shunt's stream faults go here (shunt+split+history)
                if kind != "shunt":
                    raise SimConfigError(f"--devices {token!r}: +FAULT on a standalone device is for shunt only")
                try:
                    check_stream_faults(faults)
                except ValueError as exc:
                    raise SimConfigError(f"--devices {token!r}: {exc}") from None
                entries.append({"kind": kind, "options": {"faults": faults}})
                continue
            entries.append({"kind": kind})
    return entries


def module_entry(spec: str) -> dict[str, Any]:
    """``hub:battery*2,controller@97`` -> ``{"kind": "hub", "units": [{kind, modbus_id, faults}, …]}``."""
    try:
        topology, units = parse_module_spec(spec)
    except ValueError as exc:
        raise SimConfigError(f"--devices {spec.strip()!r}: {exc}") from None
    return {
        "kind": topology,
        "units": [{"kind": u.kind, "modbus_id": u.modbus_id, "faults": list(u.faults)} for u in units],
    }


def load_config(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a YAML (or JSON) file: a list of entries, or ``{devices: [...], adv_interval: s}``."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SimConfigError(f"{path} is not valid YAML: {exc}") from None
    settings: dict[str, Any] = {}
    if isinstance(data, Mapping):
        unknown = set(data) - {"devices", "adv_interval"}
        if unknown:
            raise SimConfigError(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        if "adv_interval" in data:
            interval = data["adv_interval"]
            if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
                raise SimConfigError(f"{path}: adv_interval must be a number of seconds > 0")
            settings["adv_interval"] = float(interval)
        data = data.get("devices")
    if not isinstance(data, list) or not data:
        raise SimConfigError(f"{path}: expected a non-empty list of devices (each with at least 'kind')")
    entries = []
    for index, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise SimConfigError(f"{path}: devices[{index}] must be a mapping with at least 'kind'")
        entries.append(dict(entry))
    return entries, settings


def add_entry(fake: FakeBlueZ, entry: Mapping[str, Any], where: str = "device") -> SimulatedDevice | SimulatedModule:
    """Create and attach the device or module one config entry describes; errors name the entry."""
    if entry.get("kind") in TOPOLOGIES:
        return add_module_entry(fake, entry, where)
    _check_keys(entry, ENTRY_KEYS, where)
    kind = entry.get("kind")
    if kind not in known_kinds():
        raise SimConfigError(f"{where}: kind must be one of {', '.join([*known_kinds(), *TOPOLOGIES])}, not {kind!r}")
    sim_kwargs: dict[str, Any] = {k: entry[k] for k in ("mac", "name", "modbus_id") if entry.get(k) is not None}
    options = _mapping(entry, "options", where)
    layout = entry.get("layout")
    if layout is not None and layout not in LAYOUTS:
        raise SimConfigError(f"{where}: layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    rssi, failures = _link_settings(entry, where)
    behaviour = {k: entry[k] for k in BEHAVIOUR_KEYS if k in entry}
    try:
        device = fake.add(kind, rssi=rssi, layout=layout, failures=failures, **sim_kwargs, **options)
        assert isinstance(device, SimulatedDevice)
        apply_behaviour(device, behaviour)
    except (ValueError, TypeError) as exc:
        raise SimConfigError(f"{where}: {exc}") from None
    return device


def add_module_entry(fake: FakeBlueZ, entry: Mapping[str, Any], where: str) -> SimulatedModule:
    """``{kind: hub|chain, units: [{kind, modbus_id, faults, …}], mac, name, identical_serials, …}``.

    Behaviour keys at the module's level go to every unit (``chunk_size`` and
    ``garbage_before_reply`` to the module), except ``late_after``: how late the
    module's ``late`` units answer.
    """
    _check_keys(entry, MODULE_ENTRY_KEYS, where)
    topology = str(entry["kind"])
    units = _unit_specs(entry.get("units"), where)
    rssi, failures = _link_settings(entry, where)
    options = _mapping(entry, "options", where)
    identical = entry.get("identical_serials", False)
    if not isinstance(identical, bool):
        raise SimConfigError(f"{where}: identical_serials must be true or false, not {identical!r}")
    late_after = entry.get("late_after", DEFAULT_LATE_AFTER)
    if isinstance(late_after, bool) or not isinstance(late_after, int | float) or late_after <= 0:
        raise SimConfigError(f"{where}: late_after must be a number of seconds > 0, not {late_after!r}")
    behaviour = {k: entry[k] for k in BEHAVIOUR_KEYS if k in entry and k != "late_after"}
    try:
        module = build_module(
            topology,
            units,
            mac=entry.get("mac") or fake.free_mac(topology),
            name=entry.get("name"),
            identical_serials=identical,
            late_after=float(late_after),
            **options,
            **behaviour,
        )
        fake.attach(module, failures=failures, rssi=rssi)
    except (ValueError, TypeError) as exc:
        raise SimConfigError(f"{where}: {exc}") from None
    return module


def _unit_specs(units: Any, where: str) -> list[UnitSpec]:
    if not isinstance(units, list) or not units:
        raise SimConfigError(f"{where}: units must be a non-empty list of {{kind, modbus_id, faults, ...}}")
    specs = []
    for index, unit in enumerate(units):
        at = f"{where}.units[{index}]"
        if not isinstance(unit, Mapping):
            raise SimConfigError(f"{at}: must be a mapping with at least 'kind'")
        _check_keys(unit, UNIT_ENTRY_KEYS, at)
        faults = unit.get("faults") or []
        behaviour = {k: unit[k] for k in BEHAVIOUR_KEYS if k in unit}
        try:
            if not isinstance(faults, list):
                raise ValueError(f"faults must be a list of {', '.join(FAULTS)}")
            modbus_id = unit.get("modbus_id")
            spec = UnitSpec(
                check_kind(unit.get("kind")),
                None if modbus_id is None else check_id(modbus_id),
                check_faults(faults),
                _mapping(unit, "options", at),
                behaviour,
            )
            apply_behaviour(_BehaviourProbe(), behaviour)  # report a bad value against this unit
        except ValueError as exc:
            raise SimConfigError(f"{at}: {exc}") from None
        specs.append(spec)
    return specs


def _check_keys(entry: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = set(entry) - set(known)
    if unknown:
        raise SimConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: {', '.join(known)})"
        )


def _mapping(entry: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = entry.get(key) or {}
    if not isinstance(value, Mapping):
        raise SimConfigError(f"{where}: {key} must be a mapping")
    return dict(value)


def _link_settings(entry: Mapping[str, Any], where: str) -> tuple[int, Failures]:
    """What belongs to the BLE side of an entry: RSSI, failures, and a well-formed MAC."""
    failures = _mapping(entry, "failures", where)
    rssi = entry.get("rssi", -60)
    if isinstance(rssi, bool) or not isinstance(rssi, int) or not -127 <= rssi <= 20:
        raise SimConfigError(f"{where}: rssi must be a whole number of dBm (-127..20), not {rssi!r}")
    mac = entry.get("mac")
    if mac is not None and (not isinstance(mac, str) or not _valid_mac(mac)):
        raise SimConfigError(f"{where}: mac must look like C4:64:E3:38:3D:0E, not {mac!r}")
    try:
        return rssi, Failures.from_dict(failures)
    except ValueError as exc:
        raise SimConfigError(f"{where}: {exc}") from None


def _valid_mac(mac: str) -> bool:
    parts = mac.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts)


# --- control protocol -----------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _register_number(key: Any) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str):
        with contextlib.suppress(ValueError):
            return int(key, 0)
    raise ValueError(f"register must be a number like 256 or '0x0100', not {key!r}")


class SimControl:
    """The control operations, independent of the socket they arrive on."""

    def __init__(self, fake: FakeBlueZ) -> None:
        self.fake = fake
        self._ops: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "ping": lambda _r: {},
            "devices": self._devices,
            "stats": self._stats,
            "drop": self._drop,
            "set": self._set,
            "registers": self._registers,
            "set_registers": self._set_registers,
            "truth": self._truth,
            "notify": self._notify,
            "add": self._add,
            "remove": self._remove,
            "powered": self._powered,
        }

    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, Mapping):
            return {"ok": False, "error": "a request must be a JSON object with 'op'"}
        op = request.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r} (known: {', '.join(self._ops)})"}
        try:
            return {"ok": True, **handler(request)}
        except (KeyError, ValueError, TypeError, SimConfigError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return {"ok": False, "error": str(message)}

    def handle_line(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
        except ValueError:
            reply: dict[str, Any] = {"ok": False, "error": "not valid JSON"}
        else:
            reply = self.handle(request)
        return json.dumps(_json_safe(reply)).encode() + b"\n"

    def _peripheral(self, request: Mapping[str, Any]) -> FakePeripheral:
        mac = request.get("mac")
        if not isinstance(mac, str):
            raise ValueError("'mac' is required")
        return self.fake.peripheral(mac)

    def _unit(self, request: Mapping[str, Any]) -> SimulatedDevice:
        """The device a register or truth op is about: the unit at ``modbus_id`` of a module."""
        sim = self._peripheral(request).sim
        wanted = request.get("modbus_id")
        modbus_id = None if wanted is None else _modbus_id(wanted)
        if isinstance(sim, SimulatedModule):
            if modbus_id is None:
                units = ", ".join(map(str, sim.units))
                raise ValueError(f"'modbus_id' is required for the module {sim.mac} (units: {units})")
            return sim.unit(modbus_id)
        assert isinstance(sim, SimulatedDevice)
        if modbus_id is not None and modbus_id != sim.modbus_id:
            raise ValueError(f"{sim.mac} is a single device at Modbus ID {sim.modbus_id}, not {modbus_id}")
        return sim

    def _devices(self, _request: Mapping[str, Any]) -> dict[str, Any]:
        return {"devices": [_describe(p) for p in self.fake.peripherals.values()]}

    def _stats(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if request.get("mac") is not None:
            return {"device": self._peripheral(request).summary()}
        return {"stats": self.fake.snapshot()}

    def _drop(self, request: Mapping[str, Any]) -> dict[str, Any]:
        return {"was_connected": self._peripheral(request).drop()}

    def _set(self, request: Mapping[str, Any]) -> dict[str, Any]:
        peripheral = self._peripheral(request)
        failures = request.get("failures") or {}
        behaviour = request.get("behaviour") or {}
        faults = request.get("faults")
        if not isinstance(failures, Mapping) or not isinstance(behaviour, Mapping):
            raise ValueError("'failures' and 'behaviour' must be objects")
        whole_module = isinstance(peripheral.sim, SimulatedModule) and request.get("modbus_id") is None
        unit = None if whole_module else self._unit(request)
        # Validate everything before changing anything: a bad request changes nothing.
        trial = Failures.from_dict(peripheral.failures.as_dict())
        trial.update(failures)
        apply_behaviour(_BehaviourProbe(), behaviour)
        if faults is not None:
            if unit is None:
                raise ValueError("'faults' belong to one unit of a module: give 'modbus_id'")
            if not isinstance(faults, list):
                raise ValueError(f"'faults' must be a list of {', '.join(FAULTS)}")
            check_faults(faults)
        peripheral.failures.update(failures)
        if unit is None:
            assert isinstance(peripheral.sim, SimulatedModule)
            apply_module_behaviour(peripheral.sim, behaviour)
            return {"failures": peripheral.failures.as_dict()}
        if faults is not None:
            late_after = peripheral.sim.late_after if isinstance(peripheral.sim, SimulatedModule) else None
            set_faults(unit, faults, late_after=late_after or DEFAULT_LATE_AFTER)
        apply_behaviour(unit, behaviour)
        return {"failures": peripheral.failures.as_dict(), "faults": faults_of(unit)}

    def _registers(self, request: Mapping[str, Any]) -> dict[str, Any]:
        sim = self._unit(request)
        regs: dict[int, int] = sim.registers
        if "start" in request:
            start = _register_number(request["start"])
            count = request.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError("'count' must be a whole number >= 1")
            regs = {r: sim.registers[r] for r in range(start, start + count) if r in sim.registers}
        return {"registers": {str(r): v for r, v in sorted(regs.items())}, "writes": [list(w) for w in sim.writes]}

    def _set_registers(self, request: Mapping[str, Any]) -> dict[str, Any]:
        sim = self._unit(request)
        values = request.get("registers")
        if not isinstance(values, Mapping):
            raise ValueError("'registers' must be an object of register: value")
        parsed = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
                raise ValueError(f"register {key} value must be 0..65535, not {value!r}")
            parsed[_register_number(key)] = value
        sim.registers.update(parsed)
        return {"set": len(parsed)}

    def _truth(self, request: Mapping[str, Any]) -> dict[str, Any]:
        return {"truth": self._unit(request).truth}

    def _notify(self, request: Mapping[str, Any]) -> dict[str, Any]:
        peripheral = self._peripheral(request)
        text = request.get("hex")
        if not isinstance(text, str):
            raise ValueError("'hex' is required")
        return {"sent": peripheral.notify(bytes.fromhex(text))}

    def _add(self, request: Mapping[str, Any]) -> dict[str, Any]:
        entry = {k: v for k, v in request.items() if k != "op"}
        device = add_entry(self.fake, entry, where="add")
        return _describe(self.fake.peripheral(device.mac))

    def _remove(self, request: Mapping[str, Any]) -> dict[str, Any]:
        peripheral = self._peripheral(request)
        self.fake.remove(peripheral.mac)
        return {}

    def _powered(self, request: Mapping[str, Any]) -> dict[str, Any]:
        value = request.get("value")
        if not isinstance(value, bool):
            raise ValueError("'value' must be true or false")
        self.fake.set_powered(value)
        return {"powered": value}


class _BehaviourProbe:
    """A throw-away target so behaviour updates can be validated before anything changes."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()


def _modbus_id(value: Any) -> int:
    """A Modbus ID from a request: 48 or "0x30" (0xFF too: a standalone device's own ID)."""
    try:
        number = _register_number(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFF:
        raise ValueError(f"'modbus_id' must be a Modbus ID like 48 or '0x30', not {value!r}")
    return number


def _describe(peripheral: FakePeripheral) -> dict[str, Any]:
    """One attached device or module as the ``devices`` and ``add`` ops report it."""
    sim = peripheral.sim
    entry: dict[str, Any] = {
        "mac": peripheral.mac,
        "type": sim.type_name,
        "name": sim.name,
        "variant": getattr(sim, "variant", None),
        "modbus_id": getattr(sim, "modbus_id", None),
        "layout": peripheral.layout,
    }
    if isinstance(sim, SimulatedModule):
        entry["topology"] = sim.topology
        entry["units"] = [
            {"modbus_id": modbus_id, "type": unit.type_name, "variant": unit.variant, "faults": faults_of(unit)}
            for modbus_id, unit in sim.units.items()
        ]
    return entry


def banner_line(peripheral: FakePeripheral) -> str:
    """``MAC TYPE NAME`` for a device; ``MAC module NAME 48=renogy_battery/legacy,…`` for a module."""
    sim = peripheral.sim
    line = f"{peripheral.mac} {sim.type_name} {sim.name}"
    return f"{line} {sim.describe()}" if isinstance(sim, SimulatedModule) else line


async def serve_control(control: SimControl, path: Path) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(control.handle_line(line))
                await writer.drain()
        except (ConnectionError, ValueError):  # ValueError: line longer than the limit
            pass
        finally:
            writer.close()

    _remove_socket(path)
    server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_LINE)
    os.chmod(path, 0o600)  # the socket can change device behaviour: owner only
    return server


def _remove_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# --- main ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blupow-sim",
        description="Simulated Renogy BLE devices on a fake BlueZ (private D-Bus).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--devices",
        action="append",
        default=[],
        metavar="KINDS",
        help=f"comma-separated kinds ({', '.join(known_kinds())}), or hub:UNITS / chain:UNITS "
        "for one module carrying several units (see below); repeatable",
    )
    parser.add_argument("--config", type=Path, help="YAML list of {kind, mac, name, modbus_id, latency, ...}")
    parser.add_argument("--bus-address", help="use this D-Bus instead of starting a private dbus-daemon")
    parser.add_argument(
        "--bus-dir", type=Path, help="directory for the private bus socket and config (default: a new temp dir)"
    )
    parser.add_argument("--control-socket", type=Path, help="unix socket for the JSON-lines control protocol")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin is closed (parent went away)")
    parser.add_argument("--adapter", default="hci0")
    parser.add_argument("--adv-interval", type=float, help="seconds between advertisements (default 0.02)")
    return parser


def _epilog() -> str:
    def defaults(topology: str) -> str:
        ids = DEFAULT_IDS[topology]
        return ", ".join(f"{family} {_id_list(values)}" for family, values in ids.items())

    return f"""modules: one MAC (one BLE link), several Modbus units on its RS-485 bus
  --devices hub:UNITS    a Communication Hub's BT-2
  --devices chain:UNITS  a daisy chain behind one BT-2
  UNITS: comma-separated {SYNTAX}
         (at most {MAX_UNITS} units, IDs unique within the module)
    *COUNT  that many units of KIND (IDs counting up from @ID when given)
    @ID     Modbus ID 1..247 (48 or 0x30); without it the first free of
              hub:   {defaults("hub")}
              chain: {defaults("chain")}
    +FAULT  silent (never answers), late (answers after 5 s),
            wrong-id (answers as ID+1)
  0xFF (every unit answers) with two or more units is a collision:
  garbage that never holds a valid frame.
  examples:
    --devices 'hub:battery*4,controller@97'   (batteries 48-51, controller 97)
    --devices chain:battery@33,battery@34,battery@35
    --devices 'hub:battery*3,battery@51+silent'   (quoted: * is a shell glob)

shunt: --devices shunt streams a Smart Shunt 300's frames (~8.5/s, 110 bytes,
  no Modbus) on c411; --devices shunt+FAULT+... mixes in frame faults:
    split (2-3 notifications per frame), prefixed (61 d2 xx xx before each),
    noise (junk between frames), and on every 3rd frame (options.fault_every)
    history (42 57 01 0b), truncated (20 bytes), implausible (95 V, 600 A)
  example: --devices shunt+split+prefixed+history+implausible

output: DBUS_SYSTEM_BUS_ADDRESS=..., then one line per device "MAC TYPE NAME"
  and per module "MAC module NAME ID=TYPE[/VARIANT][+FAULT...],...", READY.
--config: a module is {{kind: hub, units: [{{kind: battery, modbus_id: 48,
  faults: [silent]}}, ...]}}, optionally with mac, name, rssi, failures,
  options, identical_serials, late_after and behaviour keys."""


def _id_list(ids: Sequence[int]) -> str:
    return f"{ids[0]} upward" if len(ids) > 4 else "/".join(map(str, ids))


def _stop_event(watch_stdin: bool) -> asyncio.Event:
    """Set on SIGINT/SIGTERM (and stdin EOF); installed before READY so no signal is missed."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if watch_stdin:

        def on_stdin() -> None:
            try:
                data = os.read(sys.stdin.fileno(), 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(sys.stdin.fileno())
                stop.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)
    return stop


async def run(args: argparse.Namespace, entries: list[dict[str, Any]], settings: dict[str, Any]) -> int:
    stop = _stop_event(args.watch_stdin)
    bus: PrivateBus | None = None
    address = args.bus_address
    if not address:
        bus = PrivateBus(args.bus_dir)
        address = bus.start()
    adv_interval = args.adv_interval or settings.get("adv_interval", 0.02)
    fake = FakeBlueZ(address, adapter=args.adapter, adv_interval=adv_interval)
    server: asyncio.AbstractServer | None = None
    try:
        await fake.start()
        for index, entry in enumerate(entries):
            add_entry(fake, entry, where=f"devices[{index}]")
        if args.control_socket:
            server = await serve_control(SimControl(fake), args.control_socket)
        lines = [f"{ENV_VAR}={address}"]
        lines += [banner_line(p) for p in fake.peripherals.values()]
        lines.append("READY")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)
            _remove_socket(args.control_socket)
        await fake.stop()
        if bus is not None:
            bus.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        entries = parse_kinds(args.devices)
        settings: dict[str, Any] = {}
        if args.config is not None:
            more, settings = load_config(args.config)
            entries += more
        if not entries:
            raise SimConfigError("nothing to simulate: give --devices KINDS and/or --config FILE")
        if args.adv_interval is not None and args.adv_interval <= 0:
            raise SimConfigError("--adv-interval must be > 0")
        return asyncio.run(run(args, entries, settings))
    except SimConfigError as exc:
        print(f"blupow-sim: error: {exc}", file=sys.stderr)
        return 2
    except BusError as exc:
        print(f"blupow-sim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
