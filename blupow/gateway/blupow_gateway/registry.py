"""The device registry at run time: what the commands change, saved before it is answered.

:class:`DeviceRegistry` implements ``commands.Registry``: it adds, removes and
updates units (records in ``devices.json``, workers in the scheduler, entities
through the publisher), lists them, scans, probes modules and polls on demand.
A change is persisted before it is applied and answered; one lock makes
"records -> devices.json -> scheduler" a single step, so commands about
different devices (which run side by side, commands.CommandLanes) never
overwrite each other's saves. Only quick work happens under it, never a wait
for a poll.

What the gateway announces around a change (events, the device list, the
battery banks) goes through the :class:`Announcer` it is given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from . import commands, probe
from . import devices as drivers
from .commands import OPTIONS_EDITABLE, CommandError
from .devices import BaseDevice
from .devices.base import DeviceProtocol
from .modules import Unit
from .publisher import Publisher
from .scheduler import Scheduler, error_text
from .store import ORIGIN_OPTIONS, DeviceRecord, DeviceStore

_LOGGER = logging.getLogger(__name__)

Scanner = Callable[[float, str | None], Awaitable[list[Any]]]


STREAM = DeviceProtocol.NOTIFY_STREAM


class Announcer(Protocol):
    """What the gateway tells the world after a change of the registry."""

    def event(self, kind: str, unit: Unit, data: dict[str, Any]) -> None: ...

    def devices_changed(self) -> None: ...

    def unit_removed(self, unit: Unit) -> None: ...

    def health(self) -> dict[str, Any]: ...


class DeviceRegistry:
    """The configured units: commands change them here (see the module docstring)."""

    def __init__(
        self,
        settings: Any,
        store: DeviceStore,
        scheduler: Scheduler,
        publisher: Publisher,
        announcer: Announcer,
        scanner: Scanner,
    ) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.publisher = publisher
        self.announcer = announcer
        self.scanner = scanner
        self.overrides: dict[str, dict[str, Any]] = {}  # unit key -> command changes to an options unit
        self.lock = asyncio.Lock()
        self._scanning = False

    # --- records ---

    def records(self) -> list[DeviceRecord]:
        return [u.record for u in self.scheduler.units.values()]

    def build(self, record: DeviceRecord) -> tuple[BaseDevice | None, str | None]:
        try:
            return commands.build_device(record), None
        except CommandError as exc:
            _LOGGER.error("Device %s (%s) cannot be polled: %s", record.mac_address, record.name, exc)
            return None, str(exc)

    async def save(self, records: Iterable[DeviceRecord], overrides: dict[str, dict[str, Any]] | None = None) -> None:
        """Write devices.json; the caller holds ``lock`` (records are read under it)."""
        data = list(records)
        over = self.overrides if overrides is None else overrides
        try:
            await asyncio.to_thread(self.store.save, data, over)
        except OSError as exc:
            _LOGGER.error("Could not save the device registry %s: %s", self.store.path, exc.strerror or exc)
            raise CommandError(f"could not save the device registry ({exc.strerror or exc})") from exc

    def units_of(self, mac: str) -> list[tuple[DeviceRecord, int | None]]:
        """The units behind module ``mac``: each record with the Modbus ID it is polled at."""
        module = self.scheduler.modules.get(mac)
        if module is None:
            return []
        return [(u.record, u.modbus_id) for u in module.units.values()]

    def profile_of(self, mac: str) -> BaseDevice | None:
        module = self.scheduler.modules.get(mac)
        return module.profile() if module is not None else None

    # --- changes ---

    async def add_device(self, record: DeviceRecord, device: BaseDevice) -> dict[str, Any]:
        async with self.lock:
            await self.save([*self.records(), record])
            unit = self.scheduler.add(record, device)  # polled as soon as this task yields
        _LOGGER.info("Device %s (%s, %s) added by command", record.mac_address, record.name, record.type)
        entry = self.entry(unit)
        # The answer goes out first (it is published as soon as this returns); the
        # discovery burst and the event follow on the next turn of the loop.
        asyncio.get_running_loop().call_soon(self._announce_added, unit, entry)
        return entry

    def _announce_added(self, unit: Unit, entry: dict[str, Any]) -> None:
        if self.scheduler.units.get(unit.key) is not unit:
            return  # removed again in the meantime
        self.publisher.discovery(unit)
        self.announcer.event("device_added", unit, entry)
        self.announcer.devices_changed()

    async def remove_device(self, key: str) -> None:
        async with self.lock:
            await self.save([r for r in self.records() if r.topic_id != key])
            unit = self.scheduler.detach(key)
        if unit is None:
            return
        await self.scheduler.retire(unit)  # outside the lock: other devices' commands need not wait
        self.publisher.clear(key, unit)
        _LOGGER.info("Device %s removed by command", unit.record.name)
        self.announcer.unit_removed(unit)

    async def update_device(self, record: DeviceRecord, device: BaseDevice | None) -> dict[str, Any]:
        unit = self.scheduler.units[record.topic_id]
        old = unit.record
        overrides = self.overrides
        if record.origin == ORIGIN_OPTIONS:
            changes = dict(self.overrides.get(record.topic_id, {}))
            changes.update({k: getattr(record, k) for k in OPTIONS_EDITABLE if getattr(record, k) != getattr(old, k)})
            overrides = {**self.overrides, record.topic_id: changes}
        if device is None and unit.device is None and record.enabled:
            device, error = self.build(record)
            if device is None:
                raise CommandError(f"device {record.mac_address} cannot be enabled: {error}")
        async with self.lock:
            records = [record if r.topic_id == record.topic_id else r for r in self.records()]
            await self.save(records, overrides)
            self.overrides = overrides
            self.scheduler.update(record, device)  # at once: a running poll is cancelled, not awaited
        self.publisher.discovery(unit, prune=device is not None)
        if old.enabled != record.enabled:
            _LOGGER.info("Device %s %s by command", record.mac_address, "enabled" if record.enabled else "disabled")
        else:
            _LOGGER.info("Device %s updated by command", record.mac_address)
        self.announcer.event("device_updated", unit, self.entry(unit))
        self.announcer.devices_changed()
        return self.entry(unit)

    # --- reading ---

    def list_devices(self) -> list[dict[str, Any]]:
        return [self.entry(u) for u in self.scheduler.units.values()]

    def list_modules(self) -> list[dict[str, Any]]:
        """Module -> units: what shares a Bluetooth link."""
        return [
            {
                "mac_address": module.mac,
                "rssi": module.rssi,
                "units": [
                    {"modbus_id": u.modbus_id, "unit_id": u.key, "type": u.record.type, "name": u.record.name}
                    for u in module.units.values()
                ],
            }
            for module in self.scheduler.modules.values()
        ]

    def entry(self, unit: Unit) -> dict[str, Any]:
        """One unit as the device list shows it (docs/mqtt-api.md, "Device list")."""
        record, device = unit.record, unit.device
        model = device.identity(unit.values).get("model") if device is not None else None
        return {
            "mac_address": record.mac_address,
            "unit_id": unit.key,
            "type": record.type,
            "name": record.name,
            "variant": device.variant if device is not None else record.variant,
            "modbus_id": device.modbus_id if device is not None else record.modbus_id,
            "origin": record.origin,
            "enabled": record.enabled,
            "bank": record.bank,
            "status": str(unit.status),
            "model": model,
            "last_seen": unit.stats.last_seen,
            "last_error": unit.stats.last_error or unit.error,
            "rssi": unit.rssi,
            "stats": unit.stats.to_json(),
            # stream devices (the shunt): frames good / rejected by reason / history / resyncs
            **({"diagnostics": device.diagnostics()} if device is not None and device.protocol is STREAM else {}),
        }

    def health(self) -> dict[str, Any]:
        return self.announcer.health()

    def poll_now(self, key: str | None) -> list[str]:
        return self.scheduler.poll_now(key)

    # --- looking around ---

    async def scan(self, seconds: float) -> list[dict[str, Any]]:
        if self._scanning:
            raise CommandError("a scan is already running")
        self._scanning = True
        # A scan takes turns with a device search (transport.discovery_lock): it may first
        # wait for one search, which lasts at most connect_timeout.
        limit = seconds + float(self.settings.connect_timeout) + 15
        try:
            async with asyncio.timeout(limit):
                results = await self.scanner(seconds, self.settings.adapter)
        except TimeoutError:
            raise CommandError(f"scan did not finish within {limit:g} s") from None
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(str(exc) or type(exc).__name__) from exc
        finally:
            self._scanning = False
        configured = set(self.scheduler.modules)
        return [
            {
                "mac_address": r.address.upper(),
                "name": r.name,
                "rssi": r.rssi,
                "types": list(r.types),
                "configured": r.address.upper() in configured,
            }
            for r in results
        ]

    async def probe_module(self, mac: str) -> dict[str, Any]:
        """Which units answer behind module ``mac`` (probe.py); read-only, bounded in time."""
        # Every BT-1/BT-2 module has the same GATT layout: any of their drivers serves as profile.
        profile = drivers.create_device("renogy_charge_controller")
        wait = min(probe.PROBE_TIMEOUT, float(self.settings.request_timeout))  # per Modbus id tried
        limit = self.scheduler.connect_guard + (len(probe.candidates()) + 1) * wait + 10
        try:
            async with asyncio.timeout(limit):
                async with self.scheduler.session(mac, profile) as link:
                    result = await probe.probe(link, wait)
        except TimeoutError:
            raise CommandError(f"probing {mac} did not finish within {limit:g} s") from None
        except Exception as exc:
            raise CommandError(f"{mac} did not answer: {error_text(exc)}") from exc
        if not result.units:
            tried = ", ".join(str(i) for i in result.tried)
            raise CommandError(
                f"{mac} is connected, but no device answered at Modbus ids {tried}: check the RS-485 cable "
                "between the module and the devices, and that they are powered"
            )
        configured = {modbus_id for _record, modbus_id in self.units_of(mac)}
        units = [{**u.to_json(), "configured": u.modbus_id in configured} for u in result.units]
        _LOGGER.info("Probed %s in %.1f s: %s", mac, result.seconds, result.summary())
        return {"mac_address": mac, "units": units, "summary": result.summary(), "seconds": result.seconds}
