"""The gateway service: settings, broker, registry, MQTT, polling and discovery wired together.

``main()`` is what ``blupow-gateway run`` calls. It blocks until SIGTERM or
SIGINT, then publishes the offline state, closes the BLE connections,
disconnects from the broker and returns 0, all within a few seconds.

:class:`Gateway` owns the run-time state. It implements the command
``Registry`` (commands.py) and the scheduler's ``Listener`` (scheduler.py), and
publishes everything docs/mqtt-api.md lists. Changes to the device list are
persisted before they are answered; connection results follow as events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from . import __version__, banks, commands, probe
from . import devices as registry
from .commands import CommandError, CommandLanes, CommandProcessor, Request, Response
from .devices import BaseDevice
from .discovery import Topics, config_inputs, device_configs, gateway_configs
from .modules import Module, Status, Unit
from .mqtt import Message, MqttClient, Will, new_client_id
from .scheduler import LinkFactory, Scheduler, default_link_factory, error_text
from .store import ORIGIN_OPTIONS, DeviceRecord, DeviceStore, PublishedLedger, merge, utc_now
from .tasks import stop_task, stop_tasks

_LOGGER = logging.getLogger(__name__)

HEARTBEAT_ENV = "BLUPOW_HEARTBEAT_FILE"
HEARTBEAT_DEFAULT = "/tmp/blupow-heartbeat"  # noqa: S108 - fixed path the add-on's health check reads
HA_DELAY_ENV = "BLUPOW_HA_BIRTH_DELAY"  # "min,max" seconds before republishing on HA's birth message
DEVICES_INTERVAL = 5.0  # at most one stats-only republish of the device list per this many seconds
HEARTBEAT_INTERVAL = 10.0
# A republish waits above this many unacknowledged QoS 1 messages: with one device's configs
# (at most ~100) on top it stays far below mqtt.MAX_QUEUED, beyond which paho drops messages.
REPUBLISH_HIGH_WATER = 1000
OFFLINE = {"state": "offline"}
ONLINE = {"state": "online"}

Scanner = Callable[[float, str | None], Awaitable[list[Any]]]


def _ha_delay_from_env() -> tuple[float, float]:
    raw = os.environ.get(HA_DELAY_ENV, "")
    try:
        parts = [float(p) for p in raw.split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] >= 0:
        return parts[0], parts[0]
    if len(parts) == 2 and 0 <= parts[0] <= parts[1]:
        return parts[0], parts[1]
    return 5.0, 15.0


def _default_scanner(seconds: float, adapter: str | None) -> Awaitable[list[Any]]:
    from .transport import scan

    return scan(seconds, adapter)


def _parse_switch(payload: bytes) -> bool | None:
    text = payload.decode("utf-8", errors="replace").strip().lower()
    if text in ("on", "1", "true"):
        return True
    if text in ("off", "0", "false"):
        return False
    return None


class Gateway:
    """Everything the running gateway holds; see the module docstring."""

    def __init__(
        self,
        settings: Any,
        broker: Any,
        data_dir: Path,
        *,
        link_factory: LinkFactory | None = None,
        scanner: Scanner | None = None,
        ha_delay: tuple[float, float] | None = None,
        devices_interval: float = DEVICES_INTERVAL,
        heartbeat_path: Path | None = None,
        scheduler_options: dict[str, Any] | None = None,
        version: str = __version__,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.version = version
        self.topics = Topics(settings.base_topic, settings.gateway_id, settings.discovery_prefix)
        self.store = DeviceStore(data_dir)
        self.ledger_store = PublishedLedger(data_dir)
        self.scanner = scanner or _default_scanner
        self.ha_delay = ha_delay if ha_delay is not None else _ha_delay_from_env()
        self.devices_interval = devices_interval
        self.heartbeat_path = heartbeat_path or Path(os.environ.get(HEARTBEAT_ENV) or HEARTBEAT_DEFAULT)
        if link_factory is None:
            from .transport import LinkOptions

            link_factory = default_link_factory(
                LinkOptions(
                    adapter=settings.adapter,
                    connect_timeout=float(settings.connect_timeout),
                    request_timeout=float(settings.request_timeout),
                    keep_connected=settings.keep_connected,
                )
            )
        self.scheduler = Scheduler(
            listener=self,
            link_factory=link_factory,
            poll_interval=float(settings.poll_interval),
            max_connections=settings.max_connections,
            keep_connected=settings.keep_connected,
            connect_timeout=float(settings.connect_timeout),
            request_timeout=float(settings.request_timeout),
            **(scheduler_options or {}),
        )
        self.mqtt = MqttClient(
            broker,
            client_id=new_client_id(settings.gateway_id),
            will=Will(self.topics.state, json.dumps(OFFLINE)),
            on_connect=self._on_mqtt_connect,
        )
        self.processor = CommandProcessor(self)
        self.lanes = CommandLanes(self._execute)
        self.overrides: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        self._published: dict[str, str] = {}  # discovery topic -> payload text last published
        self._device_topics: dict[str, set[str]] = {}  # MAC -> discovery topics it owns
        # MAC -> config_inputs() of the last complete, fully delivered discovery of that device
        self._discovered: dict[str, tuple[Any, ...]] = {}
        self._ledger: dict[str, dict[str, Any]] = {}
        self._ledger_dirty = False
        self._devices_dirty = False
        # Held while the device list changes: records -> devices.json -> scheduler, as one step,
        # so that commands about different devices (which run side by side) never overwrite
        # each other's saves. Only quick work happens under it, never a wait for a poll.
        self._registry_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ha_republish: asyncio.Task[None] | None = None
        self._republish: asyncio.Task[None] | None = None
        self._awaiting_republish: set[str] = set()  # unit keys the running republish has not reached
        self._banks: dict[str, Unit] = {}  # module MAC -> its battery bank (banks.py)
        self._scanning = False
        self._stopped = False

    # ================================================================== lifecycle

    async def start(self) -> None:
        # Compile the command schema now, not while the first request waits for its answer.
        commands.parse(b'{"command": "health_check"}')
        stored = await asyncio.to_thread(self.store.load)
        self._ledger = await asyncio.to_thread(self.ledger_store.load)
        merged = merge(self.settings.devices, stored, lambda t: registry.driver(t).model_hint)
        self.overrides = merged.overrides
        for record in merged.records:
            device, error = self._build(record)
            self.scheduler.add(record, device, error)
        if merged.changed:
            async with self._registry_lock:
                await self._save(self.records())
        t = self.topics
        self.mqtt.subscribe(t.command, self._on_command, qos=1)
        self.mqtt.subscribe(t.control_wildcard, self._on_control, qos=1)
        self.mqtt.subscribe(t.ha_status, self._on_ha_status, qos=1)
        await self.mqtt.start()
        await self.scheduler.start()
        self._spawn(self._devices_loop(), "devices-publisher")
        self._spawn(self._heartbeat_loop(), "heartbeat")
        self._spawn(self._ledger_loop(), "ledger")
        from_options = sum(1 for r in merged.records if r.origin == ORIGIN_OPTIONS)
        _LOGGER.info(
            "BluPow gateway %s started: %d device(s) (%d from the options, %d added by command); "
            "polling every %s s over at most %d connection(s)%s",
            self.version,
            len(merged.records),
            from_options,
            len(merged.records) - from_options,
            self.settings.poll_interval,
            self.settings.max_connections,
            ", kept open" if self.settings.keep_connected else "",
        )

    async def stop(self) -> None:
        """Offline state, BLE connections closed, broker disconnected; bounded in time."""
        if self._stopped:
            return
        self._stopped = True
        _LOGGER.info("Stopping the gateway")
        # Offline first, so Home Assistant shows the devices unavailable at once.
        self.mqtt.publish(self.topics.state, OFFLINE, qos=1, retain=True)
        await self.lanes.stop(2.0)
        await stop_tasks([*self._tasks, self._ha_republish], 2.0)
        await self.scheduler.stop(grace=2.0)
        await self._flush_ledger()
        await self.mqtt.stop(last=[(self.topics.state, OFFLINE, 1, True)], grace=2.0)
        _LOGGER.info("Gateway stopped")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("Internal task %s failed", task.get_name(), exc_info=task.exception())

    # ================================================================== registry

    def records(self) -> list[DeviceRecord]:
        return [w.record for w in self.scheduler.units.values()]

    def _build(self, record: DeviceRecord) -> tuple[BaseDevice | None, str | None]:
        try:
            return commands.build_device(record), None
        except CommandError as exc:
            _LOGGER.error("Device %s (%s) cannot be polled: %s", record.mac_address, record.name, exc)
            return None, str(exc)

    async def _save(self, records: Iterable[DeviceRecord], overrides: dict[str, dict[str, Any]] | None = None) -> None:
        """Write devices.json; the caller holds ``_registry_lock`` (records are read under it)."""
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

    async def add_device(self, record: DeviceRecord, device: BaseDevice) -> dict[str, Any]:
        async with self._registry_lock:
            await self._save([*self.records(), record])
            unit = self.scheduler.add(record, device)  # polled as soon as this task yields
        _LOGGER.info("Device %s (%s, %s) added by command", record.mac_address, record.name, record.type)
        entry = self._entry(unit)
        # The answer goes out first (it is published as soon as this returns); the
        # discovery burst and the event follow on the next turn of the loop.
        asyncio.get_running_loop().call_soon(self._announce_added, unit, entry)
        return entry

    def _announce_added(self, unit: Unit, entry: dict[str, Any]) -> None:
        if self.scheduler.units.get(unit.key) is not unit:
            return  # removed again in the meantime
        self._publish_discovery(unit)
        self._event("device_added", unit, entry)
        self._publish_devices()

    async def remove_device(self, key: str) -> None:
        async with self._registry_lock:
            await self._save([r for r in self.records() if r.topic_id != key])
            unit = self.scheduler.detach(key)
        if unit is None:
            return
        await self.scheduler.retire(unit)  # outside the lock: other devices' commands need not wait
        self._clear_device(key, unit)
        if banks.is_member(unit.record.type):
            self._refresh_bank(unit.module)
        _LOGGER.info("Device %s removed by command", unit.record.name)
        self._event("device_removed", unit, {})
        self._publish_devices()
        self._publish_health()

    async def update_device(self, record: DeviceRecord, device: BaseDevice | None) -> dict[str, Any]:
        unit = self.scheduler.units[record.topic_id]
        old = unit.record
        overrides = self.overrides
        if record.origin == ORIGIN_OPTIONS:
            changes = dict(self.overrides.get(record.topic_id, {}))
            changes.update(
                {k: getattr(record, k) for k in ("name", "enabled") if getattr(record, k) != getattr(old, k)}
            )
            overrides = {**self.overrides, record.topic_id: changes}
        if device is None and unit.device is None and record.enabled:
            device, error = self._build(record)
            if device is None:
                raise CommandError(f"device {record.mac_address} cannot be enabled: {error}")
        async with self._registry_lock:
            records = [record if r.topic_id == record.topic_id else r for r in self.records()]
            await self._save(records, overrides)
            self.overrides = overrides
            self.scheduler.update(record, device)  # at once: a running poll is cancelled, not awaited
        if device is not None:
            self._publish_discovery(unit, prune=True)
        else:
            self._publish_discovery(unit)
        if old.enabled != record.enabled:
            _LOGGER.info("Device %s %s by command", record.mac_address, "enabled" if record.enabled else "disabled")
        else:
            _LOGGER.info("Device %s updated by command", record.mac_address)
        self._event("device_updated", unit, self._entry(unit))
        self._publish_devices()
        return self._entry(unit)

    def list_devices(self) -> list[dict[str, Any]]:
        return [self._entry(u) for u in self.scheduler.units.values()]

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
        profile = registry.create_device("renogy_charge_controller")
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

    def poll_now(self, key: str | None) -> list[str]:
        return self.scheduler.poll_now(key)

    def health(self) -> dict[str, Any]:
        units = self.scheduler.units.values()
        return {
            "healthy": self.mqtt.connected and self.scheduler.running,
            "version": self.version,
            "uptime_s": round(time.monotonic() - self.started),
            "mqtt_connected": self.mqtt.connected,
            "devices_total": len(self.scheduler.units),
            "devices_online": sum(1 for u in units if u.status == Status.ONLINE),
            "last_cycle_s": self.scheduler.last_cycle_s,
        }

    def _entry(self, unit: Unit) -> dict[str, Any]:
        record, device = unit.record, unit.device
        model = unit.values.get(device.model_field) if device is not None and device.model_field else None
        return {
            "mac_address": record.mac_address,
            "unit_id": unit.key,
            "type": record.type,
            "name": record.name,
            "variant": device.variant if device is not None else record.variant,
            "modbus_id": device.modbus_id if device is not None else record.modbus_id,
            "origin": record.origin,
            "enabled": record.enabled,
            "status": str(unit.status),
            "model": model,
            "last_seen": unit.stats.last_seen,
            "last_error": unit.stats.last_error or unit.error,
            "rssi": unit.rssi,
            "stats": unit.stats.to_json(),
        }

    # ================================================================== scheduler listener

    def on_values(self, unit: Unit) -> None:
        self.mqtt.publish(self.topics.device_state(unit.key), unit.values, qos=0, retain=True)
        self._publish_discovery(unit, prune=True)
        self._devices_dirty = True

    def on_failure(self, unit: Unit, error: str) -> None:
        self._event("device_failed", unit, {"error": error})
        self._devices_dirty = True

    def on_status(self, unit: Unit, old: Status, new: Status) -> None:
        key, name = unit.key, unit.record.name
        if new == Status.ONLINE:
            self._availability(unit)
            model = self._entry(unit)["model"]
            _LOGGER.info(
                "Device %s (%s) is online%s, poll took %s ms",
                key,
                name,
                f" ({model})" if model else "",
                unit.stats.last_latency_ms,
            )
            self._event("device_connected", unit, {})
        elif new == Status.OFFLINE:
            self._availability(unit)
            _LOGGER.warning(
                "Device %s (%s) is offline after %d failed polls: %s",
                key,
                name,
                unit.stats.consecutive_failures,
                unit.stats.last_error,
            )
            self._event("device_unavailable", unit, {"error": unit.stats.last_error})
        elif new == Status.DISABLED:
            self._availability(unit)
            if old != Status.PENDING:
                self._event("device_unavailable", unit, {"error": "disabled"})
        self._publish_devices()
        self._publish_health()

    def on_module_polled(self, module: Module) -> None:
        """After each module poll (every unit read in one session): the module's battery bank."""
        self._refresh_bank(module)

    def _refresh_bank(self, module: Module) -> None:
        """Publish the bank of ``module``'s batteries from this poll; drop it below two members."""
        members = [u for u in module.units.values() if banks.is_member(u.record.type) and u.pollable]
        bank = self._banks.get(module.mac)
        if len(members) < 2 or module.retired:
            if bank is not None:
                del self._banks[module.mac]
                self._clear_device(bank.key, bank)
            return
        if bank is None:
            key = banks.bank_key(members[0].record.topic_id.split("_")[0])
            record = DeviceRecord(
                mac_address=module.mac, type=banks.BatteryBank.type_name, name=f"Battery bank {key[8:12]}", unit_id=key
            )
            bank = self._banks[module.mac] = Unit(record=record, device=banks.BatteryBank(), module=module)
        fresh = [u for u in members if u.polled_cycle == module.polls]
        missing = [u.record.name for u in members if u.polled_cycle != module.polls]
        assert bank.device is not None
        bank.values = bank.device.aggregate([u.values for u in fresh], missing)  # type: ignore[attr-defined]
        self.mqtt.publish(self.topics.device_state(bank.key), bank.values, qos=0, retain=True)
        self._publish_discovery(bank, prune=not missing)
        status = Status.OFFLINE if missing else Status.ONLINE
        if status != bank.status:
            bank.status = status
            self._availability(bank)
            if missing:
                _LOGGER.warning("Battery bank %s is unavailable: %s did not answer", bank.key, ", ".join(missing))

    def _live(self, unit: Unit) -> bool:
        """Still configured: a unit of the scheduler, or a bank of one of its modules."""
        return self.scheduler.units.get(unit.key) is unit or self._banks.get(unit.mac) is unit

    def on_cycle(self, seconds: float) -> None:
        _LOGGER.debug("Poll cycle finished in %.2f s", seconds)
        self._publish_health()
        self._touch_heartbeat()

    # ================================================================== MQTT in

    def _on_mqtt_connect(self) -> None:
        """Everything retained is republished: a restarted broker may have lost it."""
        t = self.topics
        self.mqtt.publish(t.state, ONLINE, qos=1, retain=True)
        self._publish_info()
        self._publish_devices()
        self._publish_health()
        for topic, payload in gateway_configs(t, self.version).items():
            self._publish_config(topic, payload, force=True)
        self._republish_devices()
        self._clear_stale()

    def _republish_devices(self) -> None:
        """Every device's discovery, availability and state again, paced (a restart may repeat it)."""
        if self._republish is not None:
            self._republish.cancel()
        units = list(self.scheduler.units.values())
        # Until the loop reaches them, polls of these devices publish their states only:
        # their discovery would bypass the pacing (and be sent twice).
        self._awaiting_republish = {u.key for u in [*units, *self._banks.values()]}
        self._republish = asyncio.ensure_future(self._republish_paced([*units, *self._banks.values()]))
        self._republish.set_name("republish")
        self._tasks.add(self._republish)
        self._republish.add_done_callback(self._task_done)

    async def _republish_paced(self, units: list[Unit]) -> None:
        """Publish device by device, waiting for the broker's acknowledgements when many are pending.

        A large installation has thousands of retained discovery configs: sent at
        once they exceed paho's queue (MAX_QUEUED) and the rest would be dropped
        until the next cycle. Pausing above a high-water mark keeps every one.
        """
        for unit in units:
            while self.mqtt.pending() >= REPUBLISH_HIGH_WATER:
                if not self.mqtt.connected:
                    return  # the next connection starts again from the first device
                await self.mqtt.wait_pending_below(REPUBLISH_HIGH_WATER // 2, 1.0)
            if not self.mqtt.connected:
                return
            self._awaiting_republish.discard(unit.key)
            if not self._live(unit):
                continue  # removed meanwhile
            self._publish_discovery(unit, force=True)
            self._availability(unit)
            if unit.values:
                self.mqtt.publish(self.topics.device_state(unit.key), unit.values, qos=0, retain=True)

    def _on_command(self, message: Message) -> None:
        """Answer what cannot run at once; hand the rest to the lanes (commands.CommandLanes)."""
        try:
            if message.retain:
                self._respond(self._retained_refusal(message.payload))
                return
            parsed = commands.parse(message.payload)
            if isinstance(parsed, Response):
                _LOGGER.debug("Rejected a command: %s", parsed.error)
                self._respond(parsed)
                return
            self.lanes.submit(parsed)
        except Exception:  # one bad command must never stop the ones after it
            _LOGGER.exception("Unexpected error while handling a command")

    async def _execute(self, request: Request) -> None:
        response = await self.processor.execute(request)
        if response.status == "error":
            _LOGGER.info("Command %s refused: %s", request.command, response.error)
        self._respond(response)

    def _retained_refusal(self, payload: bytes) -> Response:
        # A retained command would run again at every start; the live delivery already ran it.
        parsed = commands.parse(payload)
        command, transaction = parsed.command, parsed.transaction
        _LOGGER.warning(
            "Ignored a retained message on %s: publish commands without the retain flag", self.topics.command
        )
        return Response.failure(command, transaction, "retained commands are ignored (publish without the retain flag)")

    def _respond(self, response: Response) -> None:
        self.mqtt.publish(self.topics.response, response.to_json(), qos=1, retain=False, queue_offline=True)

    def _on_control(self, message: Message) -> None:
        base = self.topics.base + "/"
        if not message.topic.startswith(base):
            return
        parts = message.topic[len(base) :].split("/")
        if len(parts) != 3 or parts[2] != "set":
            return
        unit = self.scheduler.units.get(parts[0].upper())
        if unit is None or unit.device is None or unit.device.control(parts[1]) is None:
            return  # another gateway's device, or not a control of ours
        if message.retain:
            _LOGGER.warning("Ignored a retained %s: controls are only switched by live messages", message.topic)
            return
        on = _parse_switch(message.payload)
        if on is None:
            error = f"invalid payload for {parts[1]}: {message.payload[:40]!r} (use ON or OFF)"
            _LOGGER.warning("Device %s: %s", unit.key, error)
            self._event("device_failed", unit, {"error": error})
            return
        self._spawn(self._switch(unit, parts[1], on), f"control-{unit.key}")

    async def _switch(self, unit: Unit, key: str, on: bool) -> None:
        wanted = "ON" if on else "OFF"
        try:
            value = await self.scheduler.write_control(unit.key, key, on)
        except Exception as exc:
            error = str(exc)
            _LOGGER.warning("Device %s: switching %s %s failed: %s", unit.key, key, wanted, error)
            self._event("device_failed", unit, {"error": error})
            return
        if value is None or bool(value) != on:
            got = "unknown" if value is None else ("ON" if value else "OFF")
            error = f"{key} reads {got} after switching it {wanted}"
            _LOGGER.warning("Device %s: %s", unit.key, error)
            self._event("device_failed", unit, {"error": error})
        else:
            _LOGGER.info("Device %s: %s switched %s", unit.key, key, wanted)

    def _on_ha_status(self, message: Message) -> None:
        if message.payload.strip().lower() != b"online" or message.retain:
            return
        if self._ha_republish is not None and not self._ha_republish.done():
            self._ha_republish.cancel()
        delay = random.uniform(*self.ha_delay)  # noqa: S311 - spreading load, not security
        self._ha_republish = asyncio.ensure_future(self._republish_for_ha(delay))

    async def _republish_for_ha(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self.mqtt.connected:
            return
        _LOGGER.info("Home Assistant (re)started: republishing discovery and states")
        self.mqtt.publish(self.topics.state, ONLINE, qos=1, retain=True)
        for topic, payload in gateway_configs(self.topics, self.version).items():
            self._publish_config(topic, payload, force=True)
        self._republish_devices()

    # ================================================================== MQTT out

    def _event(self, kind: str, unit: Unit, data: dict[str, Any]) -> None:
        payload = {
            "type": kind,
            "mac_address": unit.mac,
            "modbus_id": unit.modbus_id,
            "unit_id": unit.key,
            "time": utc_now(),
            "data": data,
        }
        self.mqtt.publish(self.topics.event, payload, qos=1, retain=False, queue_offline=True)

    def _availability(self, unit: Unit) -> None:
        if unit.status == Status.PENDING:
            return  # unknown yet: leave the retained value of the previous run alone
        text = "online" if unit.status == Status.ONLINE else "offline"
        self.mqtt.publish(self.topics.availability(unit.key), text, qos=1, retain=True)

    def _publish_info(self) -> None:
        settings = self.settings
        info = {
            "gateway_id": settings.gateway_id,
            "version": self.version,
            "base_topic": settings.base_topic,
            "adapter": settings.adapter,
            "command_topic": self.topics.command,
            "response_topic": self.topics.response,
            "supported_types": [cls.describe() for cls in registry.drivers().values()],
            "settings": {
                "log_level": settings.log_level,
                "poll_interval": settings.poll_interval,
                "max_connections": settings.max_connections,
                "keep_connected": settings.keep_connected,
                "connect_timeout": settings.connect_timeout,
                "request_timeout": settings.request_timeout,
                "adapter": settings.adapter,
                "base_topic": settings.base_topic,
                "gateway_id": settings.gateway_id,
                "discovery_prefix": settings.discovery_prefix,
                "mqtt": {
                    "host": self.broker.host,
                    "port": self.broker.port,
                    "username": self.broker.username,
                    "tls": self.broker.tls,
                    "source": getattr(self.broker, "source", "options"),
                },
            },
        }
        self.mqtt.publish(self.topics.info, info, qos=1, retain=True)

    def _publish_devices(self) -> None:
        self._devices_dirty = False
        self.mqtt.publish(self.topics.devices, self.list_devices(), qos=1, retain=True)

    def _publish_health(self) -> None:
        self.mqtt.publish(self.topics.health, {**self.health(), "time": utc_now()}, qos=1, retain=True)

    async def _devices_loop(self) -> None:
        while True:
            await asyncio.sleep(self.devices_interval)
            if self._devices_dirty and self.mqtt.connected:
                self._publish_devices()

    # --- discovery ---

    def _publish_config(self, topic: str, payload: dict[str, Any], *, force: bool = False) -> bool:
        """Publish one config unless the same text is out already; False if it was dropped."""
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:  # NaN/Infinity is not JSON: never sent (see mqtt.encode)
            _LOGGER.error("Not publishing to %s: the payload holds NaN or Infinity, which is not JSON", topic)
            return False
        if not force and self._published.get(topic) == text:
            return True
        if self.mqtt.publish(topic, text, qos=1, retain=True):
            self._published[topic] = text
            return True
        return False

    def _discovery_values(self, unit: Unit) -> dict[str, Any]:
        """The last values, or before the first poll the ones remembered from the last run."""
        if unit.values:
            return unit.values
        remembered: dict[str, Any] = self._ledger.get(unit.key, {}).get("values", {})
        return remembered

    def _publish_discovery(self, unit: Unit, *, force: bool = False, prune: bool = False) -> None:
        """Publish what changed; with ``prune`` (the full entity set is known) clear what vanished.

        Called after every poll: when nothing the configs depend on changed since
        the last complete delivery, it returns before building them (that build
        and its JSON encoding were half of the gateway's CPU per poll).
        """
        mac = unit.key
        if unit.device is None:
            return
        if not force and mac in self._awaiting_republish:
            return  # the paced republish will publish it (with whatever changed meanwhile)
        values = self._discovery_values(unit)
        inputs = config_inputs(unit.record, unit.device, values)
        if not force and self._discovered.get(mac) == inputs:
            return
        self._discovered.pop(mac, None)
        configs = device_configs(self.topics, unit.record, unit.device, values, self.version)
        if isinstance(unit.device, banks.BatteryBank):
            configs = banks.status_always_available(configs)
        known = self._device_topics.setdefault(mac, set(self._ledger.get(mac, {}).get("topics", [])))
        complete = bool(prune and unit.values)  # the entity set is final: clear what vanished
        delivered = True
        if complete:
            for topic in known - set(configs):
                if self.mqtt.publish(topic, None, qos=1, retain=True):
                    known.discard(topic)  # kept otherwise: the next complete publish clears it
                    self._published.pop(topic, None)
                else:
                    delivered = False
        for topic, payload in configs.items():
            delivered &= self._publish_config(topic, payload, force=force)
        known.update(configs)
        self._remember(unit, known)
        if complete and delivered:
            self._discovered[mac] = inputs

    def _remember(self, unit: Unit, topics: set[str]) -> None:
        device = unit.device
        keep: dict[str, Any] = {}
        if device is not None:
            wanted = {device.model_field, device.sw_field, device.serial_field}
            wanted |= {f.key for f in device.active_fields() if isinstance(unit.values.get(f.key), list)}
            keep = {k: v for k, v in unit.values.items() if k in wanted}
        entry = self._ledger.get(unit.key, {})
        new = {"topics": sorted(topics), "values": keep or entry.get("values", {})}
        if entry != new:
            self._ledger[unit.key] = new
            self._ledger_dirty = True

    def _clear_device(self, mac: str, unit: Unit | None) -> bool:
        """Empty retained payloads on every discovery, state and availability topic of ``mac``.

        Returns whether every clear was handed to the broker connection. If one was
        not (broker away, queue full), the device stays in the ledger with all its
        topics, so that ``_clear_stale`` tries again: a removed device must not
        keep entities in Home Assistant.
        """
        topics = set(self._device_topics.pop(mac, set()))
        self._discovered.pop(mac, None)
        self._awaiting_republish.discard(mac)
        topics |= set(self._ledger.get(mac, {}).get("topics", []))
        if unit is not None and unit.device is not None:
            values = unit.values or self._ledger.get(mac, {}).get("values", {})
            topics |= set(device_configs(self.topics, unit.record, unit.device, values, self.version))
        delivered = True
        for topic in sorted(topics):
            delivered &= self.mqtt.publish(topic, None, qos=1, retain=True)
            self._published.pop(topic, None)
        delivered &= self.mqtt.publish(self.topics.device_state(mac), None, qos=1, retain=True)
        delivered &= self.mqtt.publish(self.topics.availability(mac), None, qos=1, retain=True)
        if delivered:
            if self._ledger.pop(mac, None) is not None:
                self._ledger_dirty = True
        else:
            self._ledger[mac] = {"topics": sorted(topics), "values": {}}
            self._ledger_dirty = True
        return delivered

    def _clear_stale(self) -> None:
        """Entities of devices no longer configured: removed while the gateway was down (e.g. from
        the options), or whose clearing could not be sent. Runs on every connection and every few
        seconds while connected; nothing to do is the usual case."""
        live = set(self.scheduler.units) | {b.key for b in self._banks.values()}
        for mac in [m for m in self._ledger if m not in live]:
            if self._clear_device(mac, None):
                _LOGGER.info("Cleared the Home Assistant entities of %s (no longer configured)", mac)

    async def _ledger_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            if self.mqtt.connected:
                self._clear_stale()
            await self._flush_ledger()

    async def _flush_ledger(self) -> None:
        if not self._ledger_dirty:
            return
        self._ledger_dirty = False
        snapshot = {mac: dict(entry) for mac, entry in self._ledger.items()}
        try:
            await asyncio.to_thread(self.ledger_store.save, snapshot)
        except OSError as exc:
            _LOGGER.warning("Could not write %s: %s", self.ledger_store.path, exc.strerror or exc)

    # --- heartbeat ---

    async def _heartbeat_loop(self) -> None:
        interval = min(HEARTBEAT_INTERVAL, float(self.settings.poll_interval))
        while True:
            self._touch_heartbeat()
            await asyncio.sleep(interval)

    def _touch_heartbeat(self) -> None:
        """Tell the add-on's health check we are alive: the loop runs and polling works."""
        if self._stopped or not self.scheduler.running:
            return
        try:
            self.heartbeat_path.touch()
            os.utime(self.heartbeat_path)
        except OSError as exc:
            _LOGGER.debug("Cannot touch the heartbeat file %s: %s", self.heartbeat_path, exc)


# ====================================================================== main


def main(options_path: Path | None, data_dir: Path, overrides: dict[str, Any] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; 0 after a signal, 1 when it cannot start."""
    from .logs import setup_logging
    from .schema import ConfigError
    from .settings import load_settings

    try:
        settings = load_settings(options_path, overrides=overrides or None)
    except ConfigError as exc:
        setup_logging("info")
        _LOGGER.error("Invalid configuration: %s", exc)
        return 1
    setup_logging(settings.log_level)
    return asyncio.run(_run(settings, Path(data_dir)))


async def _run(settings: Any, data_dir: Path) -> int:
    from .supervisor import BrokerError, resolve_broker

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _LOGGER.debug("Settings: %s", json.dumps(settings.redacted()))
    resolving = asyncio.ensure_future(resolve_broker(settings.mqtt))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({resolving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not resolving.done():
        await stop_task(resolving)
        return 0
    stopping.cancel()
    try:
        broker = resolving.result()
    except BrokerError as exc:
        _LOGGER.error("%s", exc)
        return 1
    try:
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        _LOGGER.error("Cannot use the data directory %s: %s", data_dir, exc.strerror or exc)
        return 1
    gateway = Gateway(settings, broker, data_dir)
    try:
        await gateway.start()
        await stop.wait()
    except Exception:
        _LOGGER.exception("The gateway failed")
        return 1
    finally:
        await gateway.stop()
    return 0


__all__ = ["Gateway", "main"]
