"""Config flow (set-up, MQTT discovery) and options flow (manage the gateways' devices).

Written for Home Assistant 2024.3 and later: results are typed with FlowResult (ConfigFlowResult only
exists from 2024.4), the options flow keeps its entry in `self._entry` (assigning `config_entry` is
deprecated from 2024.11) and progress is shown without the deprecated `step_id`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import voluptuous as vol
from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry, ConfigEntryState, ConfigFlow, OptionsFlow
from homeassistant.core import callback
from homeassistant.data_entry_flow import FlowResult
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.selector import (
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
)
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo

from .const import (
    CONF_CONFIG,
    CONF_GATEWAY_ID,
    CONF_MAC_ADDRESS,
    CONF_MODBUS_ID,
    CONF_NAME,
    CONF_TYPE,
    CONF_VARIANT,
    DOMAIN,
    SCAN_SECONDS,
)
from .gateway import (
    Gateway,
    GatewayCommandError,
    GatewayNoResponseError,
    GatewayUnavailableError,
    async_send_command,
    get_hub,
)
from .validation import InvalidConfigError, decode_json, normalize_mac, parse_config

TITLE = "BluPow"


class BluPowConfigFlow(ConfigFlow, domain=DOMAIN):
    """One entry manages every gateway on the broker (single_config_entry in the manifest)."""

    VERSION = 1

    def __init__(self) -> None:
        self._gateway_id = ""

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> BluPowOptionsFlow:
        return BluPowOptionsFlow(config_entry)

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Confirm only: the gateways are found on MQTT by themselves."""
        if not await mqtt.async_wait_for_mqtt_client(self.hass):
            return self.async_abort(reason="mqtt_not_available")
        # The unique id lets "Ignore" on a discovered gateway stick, and a user flow replace it.
        await self.async_set_unique_id(DOMAIN, raise_on_progress=False)
        self._abort_if_unique_id_configured()
        if user_input is None:
            return self.async_show_form(step_id="user")
        return self._async_create_the_entry()

    async def async_step_mqtt(self, discovery_info: MqttServiceInfo) -> FlowResult:
        """A gateway's retained `blupow/<gw>/info` was seen (manifest `mqtt` key)."""
        info = decode_json(discovery_info.payload)
        parts = discovery_info.topic.split("/")
        if not isinstance(info, dict) or len(parts) != 3 or not parts[1]:
            return self.async_abort(reason="invalid_discovery_info")
        self._gateway_id = parts[1]
        await self.async_set_unique_id(DOMAIN)
        self._abort_if_unique_id_configured()
        self.context["title_placeholders"] = {CONF_GATEWAY_ID: self._gateway_id}
        return await self.async_step_confirm()

    async def async_step_confirm(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        if user_input is None:
            self._set_confirm_only()
            return self.async_show_form(step_id="confirm", description_placeholders={CONF_GATEWAY_ID: self._gateway_id})
        return self._async_create_the_entry()

    async def async_step_ignore(self, user_input: dict[str, Any]) -> FlowResult:
        """Handle "Ignore" on a discovered gateway: Home Assistant's own step, after the work-around below."""
        self._async_abort_other_flows()
        return await super().async_step_ignore(user_input)

    def _async_create_the_entry(self) -> FlowResult:
        self._async_abort_other_flows()
        return self.async_create_entry(title=TITLE, data={})

    @callback
    def _async_abort_other_flows(self) -> None:
        """End the other BluPow flows before this one finishes (a user flow wins over a discovery).

        Home Assistant does it too, but 2024.3 aborts a flow that has the same unique id *and* belongs
        to a single_config_entry integration twice, and fails with UnknownFlow the second time.
        """
        for flow in self._async_in_progress(include_uninitialized=True):
            self.hass.config_entries.flow.async_abort(flow["flow_id"])


@dataclass
class _Request:
    """The command in flight and what the flow needs to report its outcome."""

    command: str
    payload: dict[str, Any]
    data: dict[str, Any] | None = None
    error_key: str | None = None  # form error / abort reason when it failed
    placeholders: dict[str, str] = field(default_factory=dict)


class BluPowOptionsFlow(OptionsFlow):
    """Configure → add a device, scan, remove a device, with the gateway's answer shown at once."""

    def __init__(self, entry: ConfigEntry) -> None:
        self._entry = entry  # private on purpose: see the module docstring
        self._gateway_id = ""
        self._task: asyncio.Task[None] | None = None
        self._request: _Request | None = None
        self._add_input: dict[str, Any] = {}  # last add form input (or scan pick), to prefill the form
        self._found: list[dict[str, Any]] = []

    # -- navigation ----------------------------------------------------------------------------

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        if self._entry.state is not ConfigEntryState.LOADED or get_hub(self.hass) is None:
            return self.async_abort(reason="not_loaded")
        online = self._online_ids()
        if not online:
            return self.async_abort(reason="no_gateway")
        if len(online) == 1:
            self._gateway_id = online[0]
            return await self.async_step_menu()
        return await self.async_step_gateway()

    async def async_step_gateway(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Several gateways are online: pick the one to manage."""
        errors: dict[str, str] = {}
        if user_input is not None:
            if user_input[CONF_GATEWAY_ID] in self._online_ids():
                self._gateway_id = user_input[CONF_GATEWAY_ID]
                return await self.async_step_menu()
            errors["base"] = "gateway_offline"
        schema = vol.Schema(
            {
                vol.Required(CONF_GATEWAY_ID): SelectSelector(
                    SelectSelectorConfig(options=self._online_ids(), mode=SelectSelectorMode.LIST)
                )
            }
        )
        return self.async_show_form(step_id="gateway", data_schema=schema, errors=errors)

    async def async_step_menu(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        return self.async_show_menu(
            step_id="menu",
            menu_options=["add_device", "scan", "remove_device"],
            description_placeholders={CONF_GATEWAY_ID: self._gateway_id},
        )

    # -- add -----------------------------------------------------------------------------------

    async def async_step_add_device(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        if self._task is not None:
            return self._progress()
        if (gateway := self._current_gateway()) is None:
            return self._abort_offline()
        if user_input is None:
            return self._show_add_form(gateway)
        self._add_input = user_input
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        payload = _add_payload(gateway, user_input, errors, placeholders)
        if payload is None:
            return self._show_add_form(gateway, errors, placeholders)
        return self._start("add_device", payload)

    def _show_add_form(
        self, gateway: Gateway, errors: dict[str, str] | None = None, placeholders: dict[str, str] | None = None
    ) -> FlowResult:
        variants = sorted(
            {
                variant["name"]
                for item in gateway.supported_types
                for variant in item.get("variants") or []
                if isinstance(variant, dict) and isinstance(variant.get("name"), str)
            }
        )
        schema = vol.Schema(
            {
                vol.Required(CONF_MAC_ADDRESS): TextSelector(),
                vol.Required(CONF_TYPE): SelectSelector(
                    SelectSelectorConfig(
                        options=[SelectOptionDict(value=t["type"], label=t["type"]) for t in gateway.supported_types],
                        mode=SelectSelectorMode.DROPDOWN,
                    )
                ),
                vol.Optional(CONF_NAME): TextSelector(),
                vol.Optional(CONF_MODBUS_ID): NumberSelector(
                    NumberSelectorConfig(min=0, max=255, step=1, mode=NumberSelectorMode.BOX)
                ),
                vol.Optional(CONF_VARIANT): SelectSelector(
                    SelectSelectorConfig(options=variants, custom_value=True, mode=SelectSelectorMode.DROPDOWN)
                ),
                vol.Optional(CONF_CONFIG): TextSelector(TextSelectorConfig(multiline=True)),
            }
        )
        return self.async_show_form(
            step_id="add_device",
            data_schema=self.add_suggested_values_to_schema(schema, self._add_input),
            errors=errors or {},
            description_placeholders=self._placeholders(placeholders),
        )

    # -- scan ----------------------------------------------------------------------------------

    async def async_step_scan(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        if self._task is not None:
            return self._progress()
        if self._current_gateway() is None:
            return self._abort_offline()
        return self._start("scan", {"seconds": SCAN_SECONDS})

    async def async_step_scan_result(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Pick one of the devices found; the add form opens prefilled with its most likely type."""
        if (gateway := self._current_gateway()) is None:
            return self._abort_offline()
        assert user_input is not None  # the form is shown by the scan's finish step
        found = next((item for item in self._found if item["mac_address"] == user_input[CONF_MAC_ADDRESS]), {})
        known = {item["type"] for item in gateway.supported_types}
        # A BT-TH module does not tell what it is attached to: the gateway lists the most likely first.
        likely = next((t for t in found.get("types") or [] if t in known), None)
        self._add_input = {CONF_MAC_ADDRESS: user_input[CONF_MAC_ADDRESS]}
        if likely is not None:
            self._add_input[CONF_TYPE] = likely
        return self._show_add_form(gateway)

    def _show_scan_form(self) -> FlowResult:
        options = [SelectOptionDict(value=item["mac_address"], label=_found_label(item)) for item in self._found]
        return self.async_show_form(
            step_id="scan_result",
            data_schema=vol.Schema(
                {vol.Required(CONF_MAC_ADDRESS): SelectSelector(SelectSelectorConfig(options=options))}
            ),
            description_placeholders=self._placeholders(),
        )

    # -- remove --------------------------------------------------------------------------------

    async def async_step_remove_device(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        if self._task is not None:
            return self._progress()
        if (gateway := self._current_gateway()) is None:
            return self._abort_offline()
        if user_input is not None:
            return self._start("remove_device", _removal(gateway.devices, user_input[CONF_MAC_ADDRESS]))
        return self._show_remove_form(gateway)

    def _show_remove_form(
        self, gateway: Gateway, errors: dict[str, str] | None = None, placeholders: dict[str, str] | None = None
    ) -> FlowResult:
        # Devices from the add-on options can only be removed there (the gateway refuses).
        removable = [device for device in gateway.devices if device.get("origin") != "options"]
        if not removable:
            return self.async_abort(reason="no_removable_devices", description_placeholders=self._placeholders())
        options = [
            SelectOptionDict(value=_unit_value(gateway.devices, device), label=_device_label(device))
            for device in removable
        ]
        schema = vol.Schema({vol.Required(CONF_MAC_ADDRESS): SelectSelector(SelectSelectorConfig(options=options))})
        return self.async_show_form(
            step_id="remove_device",
            data_schema=schema,
            errors=errors or {},
            description_placeholders=self._placeholders(placeholders),
        )

    # -- sending and reporting -----------------------------------------------------------------

    def _start(self, command: str, payload: dict[str, Any]) -> FlowResult:
        """Send the command in a task; the flow shows progress until the gateway answers."""
        self._request = _Request(command, payload)
        self._task = self.hass.async_create_task(self._async_run(self._request), f"blupow {command}")
        return self._progress()

    def _progress(self) -> FlowResult:
        """Called again by the flow manager when the task ends (under the step that started it)."""
        assert self._task is not None and self._request is not None
        if not self._task.done():
            return self.async_show_progress(
                progress_action=self._request.command,
                progress_task=self._task,
                description_placeholders=self._placeholders({"seconds": str(self._request.payload.get("seconds", ""))}),
            )
        return self.async_show_progress_done(next_step_id="finish")

    async def _async_run(self, request: _Request) -> None:
        """Wait for the answer and record the outcome (never raises: the flow reports it)."""
        try:
            request.data = await async_send_command(self.hass, self._gateway_id, request.command, request.payload)
        except GatewayCommandError as err:
            request.error_key, request.placeholders = "gateway_error", {"error": err.error}
        except GatewayNoResponseError as err:
            request.error_key, request.placeholders = "no_response", {"timeout": f"{err.timeout:g}"}
        except GatewayUnavailableError:
            request.error_key = "gateway_offline"
        except HomeAssistantError as err:  # publishing failed (MQTT went away)
            request.error_key, request.placeholders = "send_failed", {"error": str(err)}

    async def async_step_finish(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Report the gateway's answer: success, its error text word for word, or no answer."""
        request, self._task = self._request, None
        assert request is not None
        if request.command == "scan":
            return self._scan_finished(request)
        gateway = self._current_gateway()
        if request.data is not None:
            record = request.data
            mac = str(record.get(CONF_MAC_ADDRESS) or request.payload[CONF_MAC_ADDRESS])
            reason = "device_added" if request.command == "add_device" else "device_removed"
            return self.async_abort(
                reason=reason,
                description_placeholders=self._placeholders(
                    {CONF_MAC_ADDRESS: mac, CONF_NAME: str(record.get(CONF_NAME) or mac)}
                ),
            )
        if gateway is None:
            return self._abort_offline()
        errors = {"base": request.error_key or "unknown"}
        if request.command == "add_device":
            return self._show_add_form(gateway, errors, request.placeholders)
        return self._show_remove_form(gateway, errors, request.placeholders)

    def _scan_finished(self, request: _Request) -> FlowResult:
        if request.data is None:
            return self.async_abort(
                reason=request.error_key or "unknown", description_placeholders=self._placeholders(request.placeholders)
            )
        devices = request.data.get("devices")
        self._found = [
            item
            for item in (devices if isinstance(devices, list) else [])
            if isinstance(item, dict) and isinstance(item.get("mac_address"), str) and not item.get("configured")
        ]
        if not self._found:
            return self.async_abort(reason="no_devices_found", description_placeholders=self._placeholders())
        return self._show_scan_form()

    # -- helpers -------------------------------------------------------------------------------

    def _online_ids(self) -> list[str]:
        hub = get_hub(self.hass)
        return [gateway.gateway_id for gateway in hub.online_gateways()] if hub else []

    def _current_gateway(self) -> Gateway | None:
        hub = get_hub(self.hass)
        gateway = hub.gateways.get(self._gateway_id) if hub else None
        return gateway if gateway is not None and gateway.online else None

    def _abort_offline(self) -> FlowResult:
        return self.async_abort(reason="gateway_offline", description_placeholders=self._placeholders())

    def _placeholders(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Every placeholder a text of the current step may use, so none is ever left unfilled."""
        return {CONF_GATEWAY_ID: self._gateway_id, "error": "", "timeout": "", **(extra or {})}


def _add_payload(
    gateway: Gateway, user_input: dict[str, Any], errors: dict[str, str], placeholders: dict[str, str]
) -> dict[str, Any] | None:
    """Validate the add form; fill `errors` and return None, or return the add_device payload."""
    payload: dict[str, Any] = {CONF_TYPE: user_input[CONF_TYPE]}
    mac = normalize_mac(user_input[CONF_MAC_ADDRESS])
    if mac is None:
        errors[CONF_MAC_ADDRESS] = "invalid_mac"
    else:
        payload[CONF_MAC_ADDRESS] = mac
    for key in (CONF_NAME, CONF_VARIANT):
        if text := str(user_input.get(key) or "").strip():
            payload[key] = text
    modbus_id = user_input.get(CONF_MODBUS_ID)
    if modbus_id is not None:
        if float(modbus_id).is_integer():
            payload[CONF_MODBUS_ID] = int(modbus_id)
        else:
            errors[CONF_MODBUS_ID] = "invalid_modbus_id"  # never round a bus address silently
    if config_text := str(user_input.get(CONF_CONFIG) or "").strip():
        try:
            payload[CONF_CONFIG] = parse_config(config_text)
        except InvalidConfigError as err:
            errors[CONF_CONFIG] = "invalid_config"
            placeholders["error"] = str(err)
    elif (gateway.type_info(payload[CONF_TYPE]) or {}).get("requires_config"):
        errors[CONF_CONFIG] = "config_required"
    return None if errors else payload


def _found_label(item: dict[str, Any]) -> str:
    """`BT-TH-E3383D0E (C4:64:E3:38:3D:0E, -70 dBm): renogy_charge_controller, …`."""
    details = [item["mac_address"]]
    if isinstance(item.get("rssi"), int):
        details.append(f"{item['rssi']} dBm")
    label = f"{item.get('name') or '?'} ({', '.join(details)})"
    types = [t for t in item.get("types") or [] if isinstance(t, str)]
    return f"{label}: {', '.join(types)}" if types else label


def _device_label(device: dict[str, Any]) -> str:
    """`Inverter (D8:B6:73:BF:4F:75, renogy_inverter)`."""
    return f"{device.get('name') or device['mac_address']} ({device['mac_address']}, {device.get('type', '?')})"


def _shares_module(devices: list[dict[str, Any]], device: dict[str, Any]) -> bool:
    return sum(1 for d in devices if d.get("mac_address") == device.get("mac_address")) > 1


def _unit_value(devices: list[dict[str, Any]], device: dict[str, Any]) -> str:
    """What the remove form returns for ``device``: its MAC, or its unit id when the Bluetooth
    module carries several units (a battery bank, a hub), whose MACs are all the same."""
    if _shares_module(devices, device) and device.get("unit_id"):
        return str(device["unit_id"])
    return str(device.get("mac_address"))


def _removal(devices: list[dict[str, Any]], value: str) -> dict[str, Any]:
    """The remove_device payload for a form value: a unit of a shared module also names its ID."""
    for device in devices:
        if device.get("unit_id") == value and _shares_module(devices, device):
            return {CONF_MAC_ADDRESS: device["mac_address"], CONF_MODBUS_ID: device.get("modbus_id")}
    return {CONF_MAC_ADDRESS: value}
