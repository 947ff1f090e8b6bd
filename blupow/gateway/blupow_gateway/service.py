"""The gateway service: settings, broker, registry, MQTT, polling and discovery wired together.

``main()`` is what ``blupow-gateway run`` calls. It blocks until SIGTERM or
SIGINT, then publishes the offline state, closes the BLE connections,
disconnects from the broker and returns 0, all within a few seconds.

:class:`Gateway` wires the parts and runs them: the MQTT client and its
subscriptions (commands into ``commands.CommandLanes``, controls, Home
Assistant's birth message), the scheduler (it is its ``Listener``), and the
gateway-wide topics (state, info, health, device list, events). Each other job
has its own class: ``registry.DeviceRegistry`` changes the device list for the
commands, ``publisher.Publisher`` publishes what Home Assistant sees of each
unit and keeps the ledger, ``banks.BankKeeper`` forms the battery banks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from . import __version__, commands
from . import devices as drivers
from .banks import BankKeeper
from .commands import CommandLanes, CommandProcessor, Request, Response
from .discovery import Topics, gateway_configs
from .energy import EnergyMeters, max_gap_for
from .modules import Module, Status, Unit
from .mqtt import Message, MqttClient, Will, new_client_id
from .publisher import Publisher
from .registry import DeviceRegistry, Scanner
from .scheduler import LinkFactory, Scheduler, default_link_factory
from .store import ORIGIN_OPTIONS, DeviceRecord, DeviceStore, PublishedLedger, merge, utc_now
from .tasks import stop_task, stop_tasks

_LOGGER = logging.getLogger(__name__)

HEARTBEAT_ENV = "BLUPOW_HEARTBEAT_FILE"
HEARTBEAT_DEFAULT = "/tmp/blupow-heartbeat"  # noqa: S108 - fixed path the add-on's health check reads
HA_DELAY_ENV = "BLUPOW_HA_BIRTH_DELAY"  # "min,max" seconds before republishing on HA's birth message
DEVICES_INTERVAL = 5.0  # at most one stats-only republish of the device list per this many seconds
HEARTBEAT_INTERVAL = 10.0
OFFLINE = {"state": "offline"}
ONLINE = {"state": "online"}


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
        self.publisher = Publisher(self.mqtt, self.topics, version, PublishedLedger(data_dir))
        self.banks = BankKeeper(self.publisher, self.scheduler.units.values)
        self.energy = EnergyMeters(data_dir, lambda: max_gap_for(settings.poll_interval))
        self.registry = DeviceRegistry(
            settings, DeviceStore(data_dir), self.scheduler, self.publisher, self, scanner or _default_scanner
        )
        self.processor = CommandProcessor(self.registry)
        self.lanes = CommandLanes(self._execute)
        self.started = time.monotonic()
        self._devices_dirty = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ha_republish: asyncio.Task[None] | None = None
        self._stopped = False

    # ================================================================== lifecycle

    async def start(self) -> None:
        # Compile the command schema now, not while the first request waits for its answer.
        commands.parse(b'{"command": "health_check"}')
        registry = self.registry
        stored = await asyncio.to_thread(registry.store.load)
        await self.publisher.load()
        await asyncio.to_thread(self.energy.load)
        self.energy.start()
        merged = merge(self.settings.devices, stored, lambda t: drivers.driver(t).model_hint)
        registry.overrides = merged.overrides
        for record in merged.records:
            device, error = registry.build(record)
            self.scheduler.add(record, device, error)
        if merged.changed:
            async with registry.lock:
                await registry.save(registry.records())
        # Banks exist from the start (published once their members were polled), so that the
        # ledger cleanup on connecting does not take them for removed devices.
        self.banks.regroup()
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
        await self.energy.stop()
        await self.publisher.flush_ledger()
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

    # --- the registry's Announcer ---

    def event(self, kind: str, unit: Unit, data: dict[str, Any]) -> None:
        payload = {
            "type": kind,
            "mac_address": unit.mac,
            "modbus_id": unit.modbus_id,
            "unit_id": unit.key,
            "time": utc_now(),
            "data": data,
        }
        self.mqtt.publish(self.topics.event, payload, qos=1, retain=False, queue_offline=True)

    def devices_changed(self) -> None:
        self.banks.regroup()  # a unit added, enabled, disabled or given another bank name
        self._publish_devices()

    def unit_removed(self, unit: Unit) -> None:
        self.energy.forget(unit.key)
        self.banks.regroup()
        self.event("device_removed", unit, {})
        self._publish_devices()
        self._publish_health()

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

    # --- read-only views, for the device list and tests ---

    def records(self) -> list[DeviceRecord]:
        return self.registry.records()

    def list_devices(self) -> list[dict[str, Any]]:
        return self.registry.list_devices()

    # ================================================================== scheduler listener

    def on_values(self, unit: Unit) -> None:
        if (device := unit.device) is not None:
            self.energy.carry(unit.key, device.lifetime_counters(), unit.values)
            if counters := device.energy_fields():
                self.energy.record(unit.key, counters, unit.values)
                # what is on disk only: a published counter never has to go back down (energy.py)
                unit.values.update(self.energy.published(unit.key, counters))
        self.publisher.state(unit)
        self.publisher.discovery(unit, prune=True)
        self._devices_dirty = True

    def on_failure(self, unit: Unit, error: str) -> None:
        self.event("device_failed", unit, {"error": error})
        self._devices_dirty = True

    def on_status(self, unit: Unit, old: Status, new: Status) -> None:
        key, name = unit.key, unit.record.name
        if new == Status.ONLINE:
            self.publisher.availability(unit)
            model = self.registry.entry(unit)["model"]
            _LOGGER.info(
                "Device %s (%s) is online%s, poll took %s ms",
                key,
                name,
                f" ({model})" if model else "",
                unit.stats.last_latency_ms,
            )
            # what it says it is: the dialog that added it reports "Found Rover 40A, serial …"
            self.event("device_connected", unit, unit.device.identity(unit.values) if unit.device else {})
        elif new == Status.OFFLINE:
            self.publisher.availability(unit)
            _LOGGER.warning(
                "Device %s (%s) is offline after %d failed polls: %s",
                key,
                name,
                unit.stats.consecutive_failures,
                unit.stats.last_error,
            )
            self.event("device_unavailable", unit, {"error": unit.stats.last_error})
            self.banks.unit_offline(unit)
        elif new == Status.DISABLED:
            self.publisher.availability(unit)
            if old != Status.PENDING:
                self.event("device_unavailable", unit, {"error": "disabled"})
        self._publish_devices()
        self._publish_health()

    def on_module_polled(self, module: Module) -> None:
        """After each module poll (every unit read in one session): the banks with members on it."""
        self.banks.module_polled(module)

    def _live(self, unit: Unit) -> bool:
        """Still configured: a unit of the scheduler, or a battery bank."""
        return self.scheduler.units.get(unit.key) is unit or self.banks.live(unit)

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
            self.publisher.config(topic, payload, force=True)
        self._republish_devices()
        self._clear_stale()

    def _clear_stale(self) -> None:
        self.publisher.clear_stale(set(self.scheduler.units) | self.banks.keys())

    def _republish_devices(self) -> None:
        """Every unit's (and bank's) discovery, availability and state again, paced."""
        task = self.publisher.republish([*self.scheduler.units.values(), *self.banks.units()], self._live)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

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
            self.event("device_failed", unit, {"error": error})
            return
        self._spawn(self._switch(unit, parts[1], on), f"control-{unit.key}")

    async def _switch(self, unit: Unit, key: str, on: bool) -> None:
        wanted = "ON" if on else "OFF"
        try:
            value = await self.scheduler.write_control(unit.key, key, on)
        except Exception as exc:
            error = str(exc)
            _LOGGER.warning("Device %s: switching %s %s failed: %s", unit.key, key, wanted, error)
            self.event("device_failed", unit, {"error": error})
            return
        if value is None or bool(value) != on:
            got = "unknown" if value is None else ("ON" if value else "OFF")
            error = f"{key} reads {got} after switching it {wanted}"
            _LOGGER.warning("Device %s: %s", unit.key, error)
            self.event("device_failed", unit, {"error": error})
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
            self.publisher.config(topic, payload, force=True)
        self._republish_devices()

    # ================================================================== MQTT out

    def _publish_info(self) -> None:
        settings = self.settings
        info = {
            "gateway_id": settings.gateway_id,
            "version": self.version,
            "base_topic": settings.base_topic,
            "adapter": settings.adapter,
            "command_topic": self.topics.command,
            "response_topic": self.topics.response,
            "supported_types": [cls.describe() for cls in drivers.drivers().values()],
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
        self.mqtt.publish(self.topics.devices, self.registry.list_devices(), qos=1, retain=True)

    def _publish_health(self) -> None:
        self.mqtt.publish(self.topics.health, {**self.health(), "time": utc_now()}, qos=1, retain=True)

    async def _devices_loop(self) -> None:
        while True:
            await asyncio.sleep(self.devices_interval)
            if self._devices_dirty and self.mqtt.connected:
                self._publish_devices()

    async def _ledger_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            if self.mqtt.connected:
                self._clear_stale()
            await self.publisher.flush_ledger()

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
