"""Live registry of the BluPow gateways seen on MQTT, and the command/response helper.

Everything comes from the gateways' retained topics (docs/mqtt-api.md): `<base>/<gw>/info`,
`<base>/<gw>/state` and `<base>/<gw>/devices`. Commands go to `<base>/<gw>/command` and are answered
on `<base>/<gw>/response`, matched by a random transaction id. A flow that wants to know how a
device's first contact went watches `<base>/<gw>/event` (:meth:`BluPowHub.watch_events`).

The response topic is subscribed once, when the config entry is set up, rather than once per
command: Home Assistant's MQTT client sends SUBSCRIBE packets after a short debounce, so a fresh
subscription made just before publishing could miss a fast answer. The standing subscription is in
place long before any command is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from homeassistant.components import mqtt
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError

from .const import BASE_TOPIC, COMMAND_TIMEOUT, GATEWAY_ONLINE, PROBE_TIMEOUT, SCAN_SECONDS
from .runtime import get_runtime
from .validation import decode_json

_LOGGER = logging.getLogger(__name__)

# Devices publish `<base>/<MAC>/state` too; their MAC (12 upper-case hex digits) is never a gateway id.
_DEVICE_ID_RE = re.compile(r"^[0-9A-F]{12}$")


class BluPowError(HomeAssistantError):
    """Base of the errors of a gateway command."""


class GatewayUnavailableError(BluPowError):
    """The gateway is unknown or offline (or the integration was unloaded while waiting)."""

    def __init__(self, gateway_id: str) -> None:
        super().__init__(f"BluPow gateway '{gateway_id}' is not online")
        self.gateway_id = gateway_id


class GatewayNoResponseError(BluPowError):
    """The gateway did not answer in time."""

    def __init__(self, gateway_id: str, timeout: float) -> None:
        super().__init__(f"BluPow gateway '{gateway_id}' did not answer within {timeout:g} seconds")
        self.gateway_id = gateway_id
        self.timeout = timeout


class GatewayCommandError(BluPowError):
    """The gateway answered with an error; `error` is its text, word for word."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class Gateway:
    """What is known about one gateway, from its retained topics."""

    gateway_id: str
    info: dict[str, Any] | None = None
    state: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def online(self) -> bool:
        """True when the gateway described itself and its last will says online."""
        return self.info is not None and self.state == GATEWAY_ONLINE

    @property
    def command_topic(self) -> str:
        return f"{BASE_TOPIC}/{self.gateway_id}/command"

    @property
    def supported_types(self) -> list[dict[str, Any]]:
        """The driver descriptions of info.supported_types (malformed entries skipped)."""
        types = (self.info or {}).get("supported_types")
        if not isinstance(types, list):
            return []
        return [item for item in types if isinstance(item, dict) and isinstance(item.get("type"), str)]

    def type_info(self, type_name: str) -> dict[str, Any] | None:
        return next((item for item in self.supported_types if item["type"] == type_name), None)


def command_timeout(command: str, payload: dict[str, Any]) -> float:
    """Seconds to wait for the answer: a scan answers only after scanning, a probe after its sweep."""
    if command == "probe_module":
        return PROBE_TIMEOUT
    if command == "scan":
        seconds = payload.get("seconds", SCAN_SECONDS)
        return COMMAND_TIMEOUT + (seconds if isinstance(seconds, int | float) else SCAN_SECONDS)
    return COMMAND_TIMEOUT


# The events that tell how a poll of a unit went (docs/mqtt-api.md, "Events").
CONTACT_EVENTS = ("device_connected", "device_failed", "device_unavailable")


class UnitEvents:
    """The events of one module's units, collected from before a command is sent: a new unit's
    first poll can follow the command's answer within milliseconds."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def put(self, event: dict[str, Any] | None) -> None:
        """An event; None ends the watch (the integration is unloading)."""
        self._queue.put_nowait(event)

    async def async_first_contact(self, unit_id: str, within: float) -> dict[str, Any] | None:
        """The unit's first connected / failed / unavailable event, or None if none came in time."""
        try:
            async with asyncio.timeout(within):
                while (event := await self._queue.get()) is not None:
                    if event.get("unit_id") == unit_id and event.get("type") in CONTACT_EVENTS:
                        return event
        except TimeoutError:
            pass
        return None


class BluPowHub:
    """The gateways registry plus the requests waiting for an answer."""

    def __init__(self, hass: HomeAssistant) -> None:
        self.hass = hass
        self.gateways: dict[str, Gateway] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._watches: dict[tuple[str, str], list[UnitEvents]] = {}

    async def async_subscribe(self) -> list[CALLBACK_TYPE]:
        """Subscribe to every gateway's topics; returns the unsubscribe callbacks."""
        handlers: dict[str, Callable[[mqtt.ReceiveMessage], None]] = {
            "response": self._on_response,
            "info": self._on_info,
            "state": self._on_state,
            "devices": self._on_devices,
            "event": self._on_event,
        }
        return [
            await mqtt.async_subscribe(self.hass, f"{BASE_TOPIC}/+/{leaf}", handler, qos=1)
            for leaf, handler in handlers.items()
        ]

    @callback
    def async_shutdown(self) -> None:
        """Fail the requests still waiting, so no flow or service call hangs after unload."""
        for (gateway_id, _), future in self._pending.items():
            if not future.done():
                future.set_exception(GatewayUnavailableError(gateway_id))
        self._pending.clear()
        self._end_watches()

    def _end_watches(self, gateway_id: str | None = None) -> None:
        """End the event watches of one gateway (None: of all)."""
        for (watched, _), watches in self._watches.items():
            if gateway_id is None or watched == gateway_id:
                for watch in watches:
                    watch.put(None)

    @contextlib.contextmanager
    def watch_events(self, gateway_id: str, mac: str) -> Iterator[UnitEvents]:
        """Collect the events of the units of module ``mac`` on this gateway while in the block."""
        key, watch = (gateway_id, mac.upper()), UnitEvents()
        self._watches.setdefault(key, []).append(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(key, [])
            if watch in watches:
                watches.remove(watch)
            if not watches:
                self._watches.pop(key, None)

    def online_gateways(self) -> list[Gateway]:
        return sorted((gw for gw in self.gateways.values() if gw.online), key=lambda gw: gw.gateway_id)

    def _gateway(self, gateway_id: str) -> Gateway:
        return self.gateways.setdefault(gateway_id, Gateway(gateway_id))

    @callback
    def _on_info(self, msg: mqtt.ReceiveMessage) -> None:
        gateway_id = _gateway_id(msg.topic)
        info = decode_json(msg.payload)
        if info is None and not msg.payload:
            # An empty retained info clears the gateway (it was removed for good).
            if self.gateways.pop(gateway_id, None) is not None:
                _LOGGER.info("BluPow gateway %s was removed", gateway_id)
            return
        if not isinstance(info, dict):
            _LOGGER.warning("Ignoring a malformed info message from BluPow gateway %s", gateway_id)
            return
        gateway = self._gateway(gateway_id)
        if gateway.info is None:
            _LOGGER.info("Found BluPow gateway %s", gateway_id)
        gateway.info = info

    @callback
    def _on_state(self, msg: mqtt.ReceiveMessage) -> None:
        gateway_id = _gateway_id(msg.topic)
        if _DEVICE_ID_RE.match(gateway_id):
            return  # a device's decoded values, not a gateway state
        payload = decode_json(msg.payload)
        state = payload.get("state") if isinstance(payload, dict) else None
        if not isinstance(state, str):
            return
        gateway = self._gateway(gateway_id)
        if gateway.state is not None and gateway.state != state:
            # Logged once per change, not per message.
            _LOGGER.info("BluPow gateway %s is now %s", gateway_id, state)
        gateway.state = state
        if not gateway.online:  # no first contact will be reported: a dialog waiting for one stops
            self._end_watches(gateway_id)

    @callback
    def _on_devices(self, msg: mqtt.ReceiveMessage) -> None:
        gateway_id = _gateway_id(msg.topic)
        devices = decode_json(msg.payload)
        if not isinstance(devices, list):
            _LOGGER.debug("Ignoring a malformed device list from BluPow gateway %s", gateway_id)
            return
        self._gateway(gateway_id).devices = [
            device for device in devices if isinstance(device, dict) and isinstance(device.get("mac_address"), str)
        ]

    @callback
    def _on_event(self, msg: mqtt.ReceiveMessage) -> None:
        if not self._watches:
            return
        event = decode_json(msg.payload)
        if not isinstance(event, dict) or not isinstance(mac := event.get("mac_address"), str):
            return
        for watch in self._watches.get((_gateway_id(msg.topic), mac.upper()), []):
            watch.put(event)

    @callback
    def _on_response(self, msg: mqtt.ReceiveMessage) -> None:
        response = decode_json(msg.payload)
        if not isinstance(response, dict) or response.get("transaction") is None:
            return  # not an answer to one of our requests (they always carry a transaction)
        future = self._pending.get((_gateway_id(msg.topic), str(response["transaction"])))
        if future is not None and not future.done():
            future.set_result(response)

    async def async_send_command(
        self,
        gateway_id: str,
        command: str,
        payload: dict[str, Any] | None = None,
        reply_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a command and return the `data` of the gateway's answer.

        Raises GatewayUnavailableError, GatewayNoResponseError or GatewayCommandError (with the
        gateway's error text). Publishing itself may raise HomeAssistantError (MQTT not available).
        """
        gateway = self.gateways.get(gateway_id)
        if gateway is None or not gateway.online:
            raise GatewayUnavailableError(gateway_id)
        body = dict(payload or {})
        timeout = command_timeout(command, body) if reply_timeout is None else reply_timeout
        transaction = secrets.token_hex(8)
        body.update(command=command, transaction=transaction)
        key = (gateway_id, transaction)
        future: asyncio.Future[dict[str, Any]] = self.hass.loop.create_future()
        self._pending[key] = future  # registered before publishing: the answer can be immediate
        try:
            # QoS 1 and never retained: a retained command would be replayed at every gateway start.
            await mqtt.async_publish(self.hass, gateway.command_topic, json.dumps(body), qos=1, retain=False)
            async with asyncio.timeout(timeout):
                response = await future
        except TimeoutError:
            raise GatewayNoResponseError(gateway_id, timeout) from None
        finally:
            self._pending.pop(key, None)
        if response.get("status") == "ok":
            data = response.get("data")
            return data if isinstance(data, dict) else {}
        error = response.get("error")
        raise GatewayCommandError(error if isinstance(error, str) and error else f"status {response.get('status')!r}")


def shares_module(devices: list[dict[str, Any]], device: dict[str, Any]) -> bool:
    """Whether ``device``'s Bluetooth module carries other units too (a battery chain, a hub)."""
    return sum(1 for other in devices if other.get("mac_address") == device.get("mac_address")) > 1


def unit_selector(devices: list[dict[str, Any]], device: dict[str, Any]) -> dict[str, Any]:
    """How a command names a unit of a gateway's device list: its MAC, plus its Modbus ID when
    its module carries several units (docs/mqtt-api.md, remove_device / update_device)."""
    selector: dict[str, Any] = {"mac_address": device["mac_address"]}
    if shares_module(devices, device):
        selector["modbus_id"] = device.get("modbus_id")
    return selector


def _gateway_id(topic: str) -> str:
    """`<base>/<gw>/<leaf>` → `<gw>`."""
    return topic.split("/")[-2]


def get_hub(hass: HomeAssistant) -> BluPowHub | None:
    """The hub of the loaded config entry (there is at most one), or None."""
    runtime = get_runtime(hass)
    return runtime.hub if runtime is not None else None


async def async_send_command(
    hass: HomeAssistant,
    gateway: Gateway | str,
    command: str,
    payload: dict[str, Any] | None = None,
    reply_timeout: float | None = None,
) -> dict[str, Any]:
    """Send `command` to a gateway and return the data of its answer (see BluPowHub.async_send_command)."""
    gateway_id = gateway.gateway_id if isinstance(gateway, Gateway) else gateway
    hub = get_hub(hass)
    if hub is None:
        raise GatewayUnavailableError(gateway_id)
    return await hub.async_send_command(gateway_id, command, payload, reply_timeout)
