"""What Home Assistant sees of each unit: its state, availability and discovery configs.

:class:`Publisher` owns the per-unit MQTT output and the *ledger*
(``published.json``: the discovery topics each unit owns and the few values
discovery needs before the first poll). The ledger lets a restarted gateway
clear the entities of units removed while it was down, and keeps a removed
unit's topics until their clearing reached the broker.

Discovery is sent on change only: after each poll :meth:`discovery` returns
before building anything while nothing the configs depend on changed
(``discovery.config_inputs``). After a broker restart or Home Assistant's birth
message, :meth:`republish` sends everything again, paced by the broker's
acknowledgements so paho's queue never overflows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from . import banks
from .discovery import Topics, config_inputs, device_configs
from .modules import Status, Unit
from .mqtt import MqttClient
from .store import PublishedLedger

_LOGGER = logging.getLogger(__name__)

# A republish waits above this many unacknowledged QoS 1 messages: with one device's configs
# (at most ~100) on top it stays far below mqtt.MAX_QUEUED, beyond which paho drops messages.
REPUBLISH_HIGH_WATER = 1000


class Publisher:
    """Per-unit state, availability and discovery, and the ledger of what was published."""

    def __init__(self, mqtt: MqttClient, topics: Topics, version: str, ledger_store: PublishedLedger) -> None:
        self.mqtt = mqtt
        self.topics = topics
        self.version = version
        self.ledger_store = ledger_store
        self.published: dict[str, str] = {}  # discovery topic -> payload text last published
        self.device_topics: dict[str, set[str]] = {}  # unit key -> discovery topics it owns
        # unit key -> config_inputs() of the last complete, fully delivered discovery of that unit
        self.discovered: dict[str, tuple[Any, ...]] = {}
        self.ledger: dict[str, dict[str, Any]] = {}
        self.ledger_dirty = False
        self.awaiting: set[str] = set()  # unit keys the running republish has not reached
        self.republishing: asyncio.Task[None] | None = None

    async def load(self) -> None:
        self.ledger = await asyncio.to_thread(self.ledger_store.load)

    # --- state and availability ---

    def state(self, unit: Unit) -> None:
        self.mqtt.publish(self.topics.device_state(unit.key), unit.values, qos=0, retain=True)

    def availability(self, unit: Unit) -> None:
        if unit.status == Status.PENDING:
            return  # unknown yet: leave the retained value of the previous run alone
        text = "online" if unit.status == Status.ONLINE else "offline"
        self.mqtt.publish(self.topics.availability(unit.key), text, qos=1, retain=True)

    # --- discovery ---

    def config(self, topic: str, payload: dict[str, Any], *, force: bool = False) -> bool:
        """Publish one config unless the same text is out already; False if it was dropped."""
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:  # NaN/Infinity is not JSON: never sent (see mqtt.encode)
            _LOGGER.error("Not publishing to %s: the payload holds NaN or Infinity, which is not JSON", topic)
            return False
        if not force and self.published.get(topic) == text:
            return True
        if self.mqtt.publish(topic, text, qos=1, retain=True):
            self.published[topic] = text
            return True
        return False

    def _values(self, unit: Unit) -> dict[str, Any]:
        """The last values, or before the first poll the ones remembered from the last run."""
        if unit.values:
            return unit.values
        remembered: dict[str, Any] = self.ledger.get(unit.key, {}).get("values", {})
        return remembered

    def discovery(self, unit: Unit, *, force: bool = False, prune: bool = False) -> None:
        """Publish what changed; with ``prune`` (the full entity set is known) clear what vanished.

        Called after every poll: when nothing the configs depend on changed since
        the last complete delivery, it returns before building them (that build
        and its JSON encoding were half of the gateway's CPU per poll).
        """
        key = unit.key
        if unit.device is None:
            return
        if not force and key in self.awaiting:
            return  # the paced republish will publish it (with whatever changed meanwhile)
        values = self._values(unit)
        inputs = config_inputs(unit.record, unit.device, values)
        if not force and self.discovered.get(key) == inputs:
            return
        self.discovered.pop(key, None)
        configs = device_configs(self.topics, unit.record, unit.device, values, self.version)
        if isinstance(unit.device, banks.BatteryBank):
            configs = banks.status_always_available(configs)
        known = self.device_topics.setdefault(key, set(self.ledger.get(key, {}).get("topics", [])))
        complete = bool(prune and unit.values)  # the entity set is final: clear what vanished
        delivered = True
        if complete:
            for topic in known - set(configs):
                if self.mqtt.publish(topic, None, qos=1, retain=True):
                    known.discard(topic)  # kept otherwise: the next complete publish clears it
                    self.published.pop(topic, None)
                else:
                    delivered = False
        for topic, payload in configs.items():
            delivered &= self.config(topic, payload, force=force)
        known.update(configs)
        self._remember(unit, known)
        if complete and delivered:
            self.discovered[key] = inputs

    def _remember(self, unit: Unit, topics: set[str]) -> None:
        device = unit.device
        keep: dict[str, Any] = {}
        if device is not None:
            wanted = {device.model_field, device.sw_field, device.serial_field}
            wanted |= {f.key for f in device.active_fields() if isinstance(unit.values.get(f.key), list)}
            keep = {k: v for k, v in unit.values.items() if k in wanted}
        entry = self.ledger.get(unit.key, {})
        new = {"topics": sorted(topics), "values": keep or entry.get("values", {})}
        if entry != new:
            self.ledger[unit.key] = new
            self.ledger_dirty = True

    # --- clearing ---

    def clear(self, key: str, unit: Unit | None) -> bool:
        """Empty retained payloads on every discovery, state and availability topic of unit ``key``.

        Returns whether every clear was handed to the broker connection. If one was
        not (broker away, queue full), the unit stays in the ledger with all its
        topics, so that :meth:`clear_stale` tries again: a removed device must not
        keep entities in Home Assistant.
        """
        topics = set(self.device_topics.pop(key, set()))
        self.discovered.pop(key, None)
        self.awaiting.discard(key)
        topics |= set(self.ledger.get(key, {}).get("topics", []))
        if unit is not None and unit.device is not None:
            values = unit.values or self.ledger.get(key, {}).get("values", {})
            topics |= set(device_configs(self.topics, unit.record, unit.device, values, self.version))
        delivered = True
        for topic in sorted(topics):
            delivered &= self.mqtt.publish(topic, None, qos=1, retain=True)
            self.published.pop(topic, None)
        delivered &= self.mqtt.publish(self.topics.device_state(key), None, qos=1, retain=True)
        delivered &= self.mqtt.publish(self.topics.availability(key), None, qos=1, retain=True)
        if delivered:
            if self.ledger.pop(key, None) is not None:
                self.ledger_dirty = True
        else:
            self.ledger[key] = {"topics": sorted(topics), "values": {}}
            self.ledger_dirty = True
        return delivered

    def clear_stale(self, live: set[str]) -> None:
        """Entities of units no longer configured: removed while the gateway was down (e.g. from
        the options), or whose clearing could not be sent. Runs on every connection and every few
        seconds while connected; nothing to do is the usual case."""
        for key in [k for k in self.ledger if k not in live]:
            if self.clear(key, None):
                _LOGGER.info("Cleared the Home Assistant entities of %s (no longer configured)", key)

    async def flush_ledger(self) -> None:
        if not self.ledger_dirty:
            return
        self.ledger_dirty = False
        snapshot = {key: dict(entry) for key, entry in self.ledger.items()}
        try:
            await asyncio.to_thread(self.ledger_store.save, snapshot)
        except OSError as exc:
            _LOGGER.warning("Could not write %s: %s", self.ledger_store.path, exc.strerror or exc)

    # --- republishing everything ---

    def republish(self, units: Iterable[Unit], live: Callable[[Unit], bool]) -> asyncio.Task[None]:
        """Every unit's discovery, availability and state again, paced (a restart may repeat it)."""
        if self.republishing is not None:
            self.republishing.cancel()
        units = list(units)
        # Until the loop reaches them, polls of these units publish their states only:
        # their discovery would bypass the pacing (and be sent twice).
        self.awaiting = {u.key for u in units}
        self.republishing = asyncio.ensure_future(self._republish_paced(units, live))
        self.republishing.set_name("republish")
        return self.republishing

    async def _republish_paced(self, units: list[Unit], live: Callable[[Unit], bool]) -> None:
        """Publish unit by unit, waiting for the broker's acknowledgements when many are pending.

        A large installation has thousands of retained discovery configs: sent at
        once they exceed paho's queue (MAX_QUEUED) and the rest would be dropped
        until the next cycle. Pausing above a high-water mark keeps every one.
        """
        for unit in units:
            while self.mqtt.pending() >= REPUBLISH_HIGH_WATER:
                if not self.mqtt.connected:
                    return  # the next connection starts again from the first unit
                await self.mqtt.wait_pending_below(REPUBLISH_HIGH_WATER // 2, 1.0)
            if not self.mqtt.connected:
                return
            self.awaiting.discard(unit.key)
            if not live(unit):
                continue  # removed meanwhile
            self.discovery(unit, force=True)
            self.availability(unit)
            if unit.values:
                self.state(unit)
