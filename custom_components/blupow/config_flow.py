"""Config flow (set-up, MQTT discovery) and options flow (manage the gateways' devices).

Written for Home Assistant 2024.3 and later: results are typed with FlowResult (ConfigFlowResult only
exists from 2024.4), the options flow keeps its entry in `self._entry` (assigning `config_entry` is
deprecated from 2024.11) and progress is shown without the deprecated `step_id`.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import voluptuous as vol
from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry, ConfigEntryState, ConfigFlow, OptionsFlow
from homeassistant.core import callback
from homeassistant.data_entry_flow import FlowResult
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_call_later
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

from . import energy
from .const import (
    CONF_BANK,
    CONF_CONFIG,
    CONF_GATEWAY_ID,
    CONF_MAC_ADDRESS,
    CONF_MODBUS_ID,
    CONF_NAME,
    CONF_TYPE,
    CONF_UNITS,
    CONF_VARIANT,
    DOMAIN,
    SCAN_SECONDS,
    TYPE_LABELS,
    TYPE_WORDS,
)
from .gateway import (
    Gateway,
    GatewayCommandError,
    GatewayNoResponseError,
    GatewayUnavailableError,
    async_send_command,
    get_hub,
    shares_module,
    unit_selector,
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
    """The command in flight and what the flow needs to report its outcome.

    ``add_units`` and ``remove_units`` are the flow's own: one ``add_device`` / ``remove_device``
    per entry of ``batch`` (a label for the report, the payload), one after another.
    ``undo_add`` is a ``remove_device`` of the unit just added, when its first contact failed.
    """

    command: str
    payload: dict[str, Any]
    data: dict[str, Any] | None = None
    error_key: str | None = None  # form error / abort reason when it failed
    placeholders: dict[str, str] = field(default_factory=dict)
    batch: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # labels of the batch's units the gateway took
    failed: list[str] = field(default_factory=list)  # "label: the gateway's error" for the others
    contact: dict[str, Any] | None = None  # add_device: the event of the unit's first poll, if in time


BATCH_COMMANDS = {"add_units": "add_device", "remove_units": "remove_device", "bank_units": "update_device"}
SENT_AS = {"undo_add": "remove_device"}  # the flow's own names for a gateway command
BANK_TYPE = "renogy_battery"  # the only type a battery bank groups
BANK_NAME_MAX = 40  # the gateway's limit (docs/mqtt-api.md)
MODULE_PREFIX = "module:"  # remove form value for every unit of a Bluetooth module
QUICK_ANSWER = 1.0  # s: an answer within this comes with the step itself (no spinner)
LISTEN_GRACE = 2.0  # s a browser has after drawing a spinner to listen for its end
# s an added device has to answer its first poll before the dialog says it was not reached: the
# gateway's connect timeout (20 s by default) and a poll, with room for a module's other units
FIRST_CONTACT_TIMEOUT = 60.0


class BluPowOptionsFlow(OptionsFlow):
    """Configure → add a device, scan, remove a device, with the gateway's answer shown at once."""

    def __init__(self, entry: ConfigEntry) -> None:
        self._entry = entry  # private on purpose: see the module docstring
        self._gateway_id = ""
        self._task: asyncio.Task[None] | None = None
        self._request: _Request | None = None
        self._add_input: dict[str, Any] = {}  # last add form input (or scan pick), to prefill the form
        self._found: list[dict[str, Any]] = []
        self._probe: dict[str, Any] = {}  # the probe_module answer of the module picked after a scan
        self._removal_choice: str | None = None  # the remove form's pick, until it is confirmed
        self._removal_name = ""  # its name: the gateway's answer to remove_device carries none
        self._shown_at: float | None = None  # loop time the spinner of the running command was shown
        self._unanswered: dict[str, str] = {}  # the unit just added that did not answer, in words
        self._undo: dict[str, Any] = {}  # and the remove_device payload that takes it back

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
            menu_options=["add_device", "scan", "remove_device", "bank", "energy"],
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
        return await self._start("add_device", payload)

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
                # optional for the form, required by _add_payload: a required select is pre-filled
                # with its first option by the frontend, and no type is a safe guess
                vol.Optional(CONF_TYPE): SelectSelector(
                    SelectSelectorConfig(options=_type_options(gateway), mode=SelectSelectorMode.DROPDOWN)
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

    # -- scan, then probe the module picked ----------------------------------------------------

    async def async_step_scan(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        if self._task is not None:
            return self._progress()
        if self._current_gateway() is None:
            return self._abort_offline()
        return await self._start("scan", {"seconds": SCAN_SECONDS})

    async def async_step_scan_result(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """A module was picked: ask the gateway which devices sit behind it (probe_module)."""
        if self._task is not None:
            return self._progress()
        if self._current_gateway() is None:
            return self._abort_offline()
        assert user_input is not None  # the form is shown by the scan's finish step
        mac = user_input[CONF_MAC_ADDRESS]
        self._add_input = {CONF_MAC_ADDRESS: mac}
        if (gateway := self._current_gateway()) is not None and (streams := _stream_type(gateway, self._found, mac)):
            # A device that only streams notifications (the Smart Shunt) has no Modbus ids to probe.
            self._add_input[CONF_TYPE] = streams
            return self._show_add_form(gateway)
        return await self._start("probe_module", {CONF_MAC_ADDRESS: mac})

    def _show_scan_form(self) -> FlowResult:
        options = [SelectOptionDict(value=item["mac_address"], label=_found_label(item)) for item in self._found]
        return self.async_show_form(
            step_id="scan_result",
            data_schema=vol.Schema(
                {vol.Required(CONF_MAC_ADDRESS): SelectSelector(SelectSelectorConfig(options=options))}
            ),
            description_placeholders=self._placeholders(),
        )

    async def async_step_probe_result(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """The ticked units are added one after another, reported together."""
        if self._task is not None:
            return self._progress()
        if self._current_gateway() is None:
            return self._abort_offline()
        assert user_input is not None  # the form is shown by the probe's finish step
        chosen = {str(value) for value in user_input.get(CONF_UNITS) or []}
        batch = [
            (_unit_label(unit), payload)
            for unit, payload in _unit_payloads(self._probe, self._new_units())
            if str(unit["modbus_id"]) in chosen
        ]
        if not batch:
            return self._show_probe_form({"base": "nothing_selected"})
        return await self._start("add_units", {CONF_MAC_ADDRESS: self._probe[CONF_MAC_ADDRESS]}, batch)

    def _new_units(self) -> list[dict[str, Any]]:
        """The probed units not added yet, of types this gateway supports."""
        gateway = self._current_gateway()
        known = {item["type"] for item in gateway.supported_types} if gateway else set()
        units = self._probe.get(CONF_UNITS)
        return [
            unit
            for unit in (units if isinstance(units, list) else [])
            if isinstance(unit, dict)
            and isinstance(unit.get("modbus_id"), int)
            and unit.get("type") in known
            and not unit.get("configured")
        ]

    def _show_probe_form(
        self, errors: dict[str, str] | None = None, placeholders: dict[str, str] | None = None
    ) -> FlowResult:
        new = self._new_units()
        options = [SelectOptionDict(value=str(unit["modbus_id"]), label=_unit_label(unit)) for unit in new]
        schema = vol.Schema(
            {
                vol.Optional(CONF_UNITS, default=[option["value"] for option in options]): SelectSelector(
                    SelectSelectorConfig(options=options, multiple=True, mode=SelectSelectorMode.LIST)
                )
            }
        )
        return self.async_show_form(
            step_id="probe_result",
            data_schema=schema,
            errors=errors or {},
            description_placeholders=self._placeholders({**self._probe_placeholders(), **(placeholders or {})}),
        )

    def _probe_placeholders(self) -> dict[str, str]:
        units = self._probe.get(CONF_UNITS)
        added = [
            _unit_label(unit)
            for unit in (units if isinstance(units, list) else [])
            if isinstance(unit, dict) and unit.get("configured")
        ]
        return {
            CONF_MAC_ADDRESS: str(self._probe.get(CONF_MAC_ADDRESS, "")),
            "summary": str(self._probe.get("summary") or ""),
            "added": ", ".join(added) or "none",
        }

    # -- remove --------------------------------------------------------------------------------

    async def async_step_remove_device(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        if self._task is not None:
            return self._progress()
        if (gateway := self._current_gateway()) is None:
            return self._abort_offline()
        if user_input is None:
            return self._show_remove_form(gateway)
        value = str(user_input.get(CONF_MAC_ADDRESS) or "")
        if value not in {option["value"] for option in _removal_options(gateway.devices)}:
            return self._show_remove_form(gateway, {CONF_MAC_ADDRESS: "pick_device"})
        self._removal_choice = value
        return await self.async_step_remove_confirm()

    async def async_step_remove_confirm(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Say what goes, in words, before anything is removed."""
        if self._task is not None:
            return self._progress()
        if (gateway := self._current_gateway()) is None:
            return self._abort_offline()
        value = self._removal_choice
        options = {option["value"]: option["label"] for option in _removal_options(gateway.devices)}
        if value is None or value not in options:  # removed meanwhile (another dialog, the add-on)
            return self._show_remove_form(gateway)
        if user_input is None:
            what = options[value]
            if value.startswith(MODULE_PREFIX):  # "All 3 devices on …" inside a sentence
                what = what[0].lower() + what[1:]
            return self.async_show_form(
                step_id="remove_confirm", description_placeholders=self._placeholders({"device": what})
            )
        if value.startswith(MODULE_PREFIX):
            mac = value.removeprefix(MODULE_PREFIX)
            batch = [
                (_device_label(device, True), unit_selector(gateway.devices, device))
                for device in _removable(gateway.devices)
                if device["mac_address"] == mac
            ]
            return await self._start("remove_units", {CONF_MAC_ADDRESS: mac}, batch)
        removing = next((d for d in gateway.devices if _unit_value(gateway.devices, d) == value), {})
        self._removal_name = str(removing.get(CONF_NAME) or "")
        return await self._start("remove_device", _removal(gateway.devices, value))

    def _show_remove_form(
        self, gateway: Gateway, errors: dict[str, str] | None = None, placeholders: dict[str, str] | None = None
    ) -> FlowResult:
        options = _removal_options(gateway.devices)
        if not options:
            return self.async_abort(reason="no_removable_devices", description_placeholders=self._placeholders())
        # optional for the form (nothing pre-selected: removing is not undone), checked on submit
        schema = vol.Schema({vol.Optional(CONF_MAC_ADDRESS): SelectSelector(SelectSelectorConfig(options=options))})
        return self.async_show_form(
            step_id="remove_device",
            data_schema=schema,
            errors=errors or {},
            description_placeholders=self._placeholders(placeholders),
        )

    # -- battery bank across modules -----------------------------------------------------------

    async def async_step_bank(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Name a bank and tick its batteries (any modules); untick one to take it out."""
        if self._task is not None:
            return self._progress()
        if (gateway := self._current_gateway()) is None:
            return self._abort_offline()
        batteries = [device for device in gateway.devices if device.get(CONF_TYPE) == BANK_TYPE]
        if len(batteries) < 2:
            return self.async_abort(reason="not_enough_batteries", description_placeholders=self._placeholders())
        if user_input is None:
            return self._show_bank_form(gateway)
        name = str(user_input.get(CONF_BANK) or "").strip()
        if not _slug(name) or len(name) > BANK_NAME_MAX:
            return self._show_bank_form(gateway, {CONF_BANK: "invalid_bank_name"}, user_input)
        chosen = {str(value) for value in user_input.get(CONF_UNITS) or []}
        if len(chosen) == 1:
            return self._show_bank_form(gateway, {"base": "bank_needs_two"}, user_input)
        batch = []
        for device in batteries:
            value = _unit_value(gateway.devices, device)
            member = _slug(str(device.get(CONF_BANK) or "")) == _slug(name)
            if value in chosen and (not member or device.get(CONF_BANK) != name):
                batch.append((_device_label(device), {**unit_selector(gateway.devices, device), CONF_BANK: name}))
            elif value not in chosen and member:
                batch.append((_device_label(device), {**unit_selector(gateway.devices, device), CONF_BANK: None}))
        if not batch:
            return self._show_bank_form(gateway, {"base": "bank_unchanged"}, user_input)
        return await self._start("bank_units", {CONF_BANK: name}, batch)

    def _show_bank_form(
        self,
        gateway: Gateway,
        errors: dict[str, str] | None = None,
        user_input: dict[str, Any] | None = None,
        placeholders: dict[str, str] | None = None,
    ) -> FlowResult:
        batteries = [device for device in gateway.devices if device.get(CONF_TYPE) == BANK_TYPE]
        banks = sorted({str(device[CONF_BANK]) for device in batteries if device.get(CONF_BANK)})
        if user_input is None:  # one bank so far: open it to edit; otherwise start a new one
            name = banks[0] if len(banks) == 1 else ""
            members = [_unit_value(gateway.devices, d) for d in batteries if name and d.get(CONF_BANK) == name]
            user_input = {CONF_BANK: name, CONF_UNITS: members}
        options = [
            SelectOptionDict(value=_unit_value(gateway.devices, device), label=_battery_label(device))
            for device in batteries
        ]
        schema = vol.Schema(
            {
                vol.Required(CONF_BANK): TextSelector(),
                vol.Optional(CONF_UNITS): SelectSelector(
                    SelectSelectorConfig(options=options, multiple=True, mode=SelectSelectorMode.LIST)
                ),
            }
        )
        return self.async_show_form(
            step_id="bank",
            data_schema=self.add_suggested_values_to_schema(schema, user_input),
            errors=errors or {},
            description_placeholders=self._placeholders({"banks": ", ".join(banks) or "none", **(placeholders or {})}),
        )

    # -- the Energy dashboard --------------------------------------------------------------------

    async def async_step_energy(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Show what would be added to the Energy dashboard; add it when confirmed."""
        if (gateway := self._current_gateway()) is None:
            return self._abort_offline()
        plan = await energy.async_plan(self.hass, gateway.devices)
        if not plan:
            return self.async_abort(reason="energy_nothing_to_add", description_placeholders=self._placeholders())
        placeholders = self._placeholders({"plan": plan.describe()})
        if user_input is None:
            return self.async_show_form(step_id="energy", description_placeholders=placeholders)
        await energy.async_apply(self.hass, plan)
        return self.async_abort(reason="energy_done", description_placeholders=placeholders)

    # -- sending and reporting -----------------------------------------------------------------

    async def _start(
        self, command: str, payload: dict[str, Any], batch: list[tuple[str, dict[str, Any]]] | None = None
    ) -> FlowResult:
        """Send the command in a task; the flow shows progress until the gateway answers.

        Home Assistant tells the browser once, with a "data_entry_flow_progressed" event, that the
        task ended; the browser subscribes to that event only after it has drawn the spinner, so an
        answer that came in between went unheard and the spinner turned for ever (issue 15). So a
        quick answer (most are) comes with this very step, and a slower one is not reported before
        the browser has had LISTEN_GRACE to subscribe (_async_run).
        """
        self._request = _Request(command, payload, batch=batch or [])
        self._shown_at = None
        self._task = self.hass.async_create_task(self._async_run(self._request), f"blupow {command}")
        if QUICK_ANSWER > 0:
            await asyncio.wait({self._task}, timeout=QUICK_ANSWER)
        return self._progress()

    def _progress(self) -> FlowResult:
        """Called again by the flow manager when the task ends (under the step that started it)."""
        assert self._task is not None and self._request is not None
        if not self._task.done():
            if self._shown_at is None:
                self._shown_at = self.hass.loop.time()
            payload = self._request.payload
            return self.async_show_progress(
                progress_action=self._request.command,
                progress_task=self._task,
                description_placeholders=self._placeholders(
                    {
                        "seconds": str(payload.get("seconds", "")),
                        CONF_MAC_ADDRESS: str(payload.get(CONF_MAC_ADDRESS, "")),
                        "count": str(len(self._request.batch)),
                        "timeout": f"{FIRST_CONTACT_TIMEOUT:g}",
                    }
                ),
            )
        return self.async_show_progress_done(next_step_id="finish")

    async def _async_run(self, request: _Request) -> None:
        """Wait for the answer(s) and record the outcome (never raises: the flow reports it); then,
        if a spinner is showing, end no sooner than LISTEN_GRACE after it was shown."""
        await self._async_run_commands(request)
        if self._shown_at is None:
            return  # no spinner: the answer goes out with the step
        if (wait := self._shown_at + LISTEN_GRACE - self.hass.loop.time()) > 0:
            listening: asyncio.Future[None] = self.hass.loop.create_future()

            @callback  # on the event loop: a plain function would run in the executor
            def listened(_now: Any) -> None:
                if not listening.done():
                    listening.set_result(None)

            cancel = async_call_later(self.hass, wait, listened)
            try:
                await listening
            finally:
                cancel()

    async def _async_run_commands(self, request: _Request) -> None:
        if request.command == "add_device":
            await self._async_add(request)
            return
        if request.command not in BATCH_COMMANDS:
            command = SENT_AS.get(request.command, request.command)
            request.data = await self._async_send(request, command, request.payload)
            return
        for index, (label, payload) in enumerate(request.batch):
            if await self._async_send(request, BATCH_COMMANDS[request.command], payload) is not None:
                request.done.append(label)
            elif request.error_key == "gateway_error":  # this one refused: the others may still go
                request.failed.append(f"{label}: {_reason(request)}")
                request.error_key = None
            else:  # no answer, gateway offline, MQTT gone: the rest would fail the same way
                request.failed.append(f"{label}: {_reason(request)}")
                request.failed += [other for other, _ in request.batch[index + 1 :]]
                break

    async def _async_add(self, request: _Request) -> None:
        """add_device, then wait (bounded) for how the gateway's first poll of the unit went.

        The answer comes as soon as the record is saved; whether the device is there is only known
        after the gateway connected to it, so the dialog says "Found …" or "Not reachable" then.
        The events are watched before the command goes out: the first poll can be that quick.
        """
        if (hub := get_hub(self.hass)) is None:
            request.error_key = "gateway_offline"
            return
        with hub.watch_events(self._gateway_id, str(request.payload[CONF_MAC_ADDRESS])) as events:
            request.data = await self._async_send(request, "add_device", request.payload)
            if request.data is not None:
                unit_id = str(request.data.get("unit_id") or "")
                request.contact = await events.async_first_contact(unit_id, FIRST_CONTACT_TIMEOUT)

    async def _async_send(self, request: _Request, command: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The answer's data, or None with the error recorded in ``request``."""
        try:
            return await async_send_command(self.hass, self._gateway_id, command, payload)
        except GatewayCommandError as err:
            request.error_key, request.placeholders = "gateway_error", {"error": err.error}
        except GatewayNoResponseError as err:
            request.error_key, request.placeholders = "no_response", {"timeout": f"{err.timeout:g}"}
        except GatewayUnavailableError:
            request.error_key = "gateway_offline"
        except HomeAssistantError as err:  # publishing failed (MQTT went away)
            request.error_key, request.placeholders = "send_failed", {"error": str(err)}
        return None

    async def async_step_finish(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Report the gateway's answer: success, its error text word for word, or no answer."""
        request, self._task = self._request, None
        assert request is not None
        if request.command == "scan":
            return self._scan_finished(request)
        if request.command == "probe_module":
            return self._probe_finished(request)
        if request.command in BATCH_COMMANDS:
            return self._batch_finished(request)
        gateway = self._current_gateway()
        if request.data is not None:
            if request.command == "add_device":
                return self._added_finished(request, request.data)
            record = request.data
            mac = str(record.get(CONF_MAC_ADDRESS) or request.payload[CONF_MAC_ADDRESS])
            reason = "add_undone" if request.command == "undo_add" else "device_removed"
            name = str(record.get(CONF_NAME) or self._removal_name or mac)
            return self.async_abort(reason=reason, description_placeholders=self._placeholders(_named(name, mac)))
        if request.command == "undo_add":  # the unit stays added: say so with the gateway's reason
            return self.async_abort(
                reason="undo_failed",
                description_placeholders=self._placeholders({**self._unanswered, "error": _reason(request)}),
            )
        if gateway is None:
            return self._abort_offline()
        errors = {"base": request.error_key or "unknown"}
        if request.command == "add_device":
            return self._show_add_form(gateway, errors, request.placeholders)
        return self._show_remove_form(gateway, errors, request.placeholders)

    def _added_finished(self, request: _Request, record: dict[str, Any]) -> FlowResult:
        """ "Found …" when the first poll answered; otherwise why not, and keep it or not."""
        mac = str(record.get(CONF_MAC_ADDRESS) or request.payload[CONF_MAC_ADDRESS])
        named = _named(str(record.get(CONF_NAME) or mac), mac)
        contact = request.contact
        if contact is not None and contact.get("type") == "device_connected":
            found = _found_words(str(record.get(CONF_TYPE) or request.payload[CONF_TYPE]), contact.get("data"))
            return self.async_abort(
                reason="device_found", description_placeholders=self._placeholders({**named, "found": found})
            )
        if contact is None and self._current_gateway() is None:
            return self._abort_offline()  # the wait ended because BluPow unloaded or the gateway left
        data = contact.get("data") if contact is not None else None
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, str) or not error:
            error = f"no answer within {FIRST_CONTACT_TIMEOUT:g} seconds"
        self._removal_name = named[CONF_NAME]
        self._unanswered = {**named, "error": error}
        # by its Modbus id, which names the unit whether or not its module carries others
        modbus_id = record.get(CONF_MODBUS_ID)
        self._undo = {CONF_MAC_ADDRESS: mac, **({CONF_MODBUS_ID: modbus_id} if isinstance(modbus_id, int) else {})}
        return self._show_not_reachable()

    async def async_step_not_reachable(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        return self._show_not_reachable()

    def _show_not_reachable(self) -> FlowResult:
        return self.async_show_menu(
            step_id="not_reachable",
            menu_options=["keep_device", "undo_add"],
            description_placeholders=self._placeholders(self._unanswered),
        )

    async def async_step_keep_device(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Keep the unit that did not answer: the gateway goes on trying."""
        return self.async_abort(reason="device_kept", description_placeholders=self._placeholders(self._unanswered))

    async def async_step_undo_add(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Take back the unit that did not answer (a typo in the address, the wrong module)."""
        if self._task is not None:
            return self._progress()
        if self._current_gateway() is None:
            return self._abort_offline()
        return await self._start("undo_add", self._undo)

    def _scan_finished(self, request: _Request) -> FlowResult:
        if request.data is None:
            return self.async_abort(
                reason=request.error_key or "unknown", description_placeholders=self._placeholders(request.placeholders)
            )
        devices = request.data.get("devices")
        found = [
            item
            for item in (devices if isinstance(devices, list) else [])
            if isinstance(item, dict) and isinstance(item.get("mac_address"), str)
        ]
        if not any(not item.get("configured") for item in found):
            return self.async_abort(reason="no_devices_found", description_placeholders=self._placeholders())
        # New modules first; added ones stay listed: a bank or hub may carry devices not added yet.
        self._found = sorted(found, key=lambda item: bool(item.get("configured")))
        return self._show_scan_form()

    def _probe_finished(self, request: _Request) -> FlowResult:
        """The devices behind the module, to tick; or the add form, when nobody could be asked."""
        gateway = self._current_gateway()
        if gateway is None:
            return self._abort_offline()
        mac = str(request.payload[CONF_MAC_ADDRESS])
        if request.data is None:
            # A module that does not answer the identifying reads can still be added by hand.
            found = next((item for item in self._found if item["mac_address"] == mac), {})
            known = {item["type"] for item in gateway.supported_types}
            # A BT-TH module does not tell what it is attached to: the gateway lists the most likely first.
            if (likely := next((t for t in found.get("types") or [] if t in known), None)) is not None:
                self._add_input[CONF_TYPE] = likely
            error = request.placeholders.get("error") or request.error_key or "unknown"
            if request.error_key == "no_response":
                error = f"no answer within {request.placeholders['timeout']} seconds"
            return self._show_add_form(gateway, {"base": "probe_failed"}, {CONF_MAC_ADDRESS: mac, "error": error})
        self._probe = {**request.data, CONF_MAC_ADDRESS: mac}
        if not self._new_units():
            return self.async_abort(
                reason="nothing_new", description_placeholders=self._placeholders(self._probe_placeholders())
            )
        return self._show_probe_form()

    def _batch_finished(self, request: _Request) -> FlowResult:
        """All done, partly done (both named), or nothing done: the form again with why."""
        report = {
            "names": ", ".join(request.done),
            "failed": "; ".join(request.failed),
            CONF_MAC_ADDRESS: str(request.payload.get(CONF_MAC_ADDRESS, "")),
            CONF_BANK: str(request.payload.get(CONF_BANK, "")),
        }
        if request.done:
            outcome = request.command.removesuffix("_units")  # add, remove, bank
            reason = f"{outcome}_done" if not request.failed else f"{outcome}_partly_done"
            return self.async_abort(reason=reason, description_placeholders=self._placeholders(report))
        if (gateway := self._current_gateway()) is None:
            return self._abort_offline()
        errors = {"base": request.error_key or "batch_failed"}
        placeholders = {**request.placeholders, **report}
        if request.command == "add_units":
            return self._show_probe_form(errors, placeholders)
        if request.command == "bank_units":
            return self._show_bank_form(gateway, errors, None, placeholders)
        return self._show_remove_form(gateway, errors, placeholders)

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
        """Every placeholder a text of the current step may use (its errors too), so none is ever
        left unfilled: the frontend shows "Translation Error" for a missing one. The 2024.3 frontend
        renders a menu's title, and a step's title above its spinner, without any placeholders:
        those titles in strings.json have none (tests/e2e/test_browser_flows.py)."""
        return {**dict.fromkeys(PLACEHOLDERS, ""), CONF_GATEWAY_ID: self._gateway_id, **(extra or {})}


# Every {placeholder} of the options texts in strings.json (a test checks the list is complete).
PLACEHOLDERS = (
    "gateway_id", "error", "timeout", "seconds", "mac_address", "name", "count", "summary", "added",
    "names", "failed", "bank", "banks", "plan", "device", "found",
)  # fmt: skip


def _add_payload(
    gateway: Gateway, user_input: dict[str, Any], errors: dict[str, str], placeholders: dict[str, str]
) -> dict[str, Any] | None:
    """Validate the add form; fill `errors` and return None, or return the add_device payload."""
    if not user_input.get(CONF_TYPE):
        errors[CONF_TYPE] = "type_required"
        return None
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
    """`BT-TH-E3383D0E (C4:64:E3:38:3D:0E, -70 dBm): charge controller, battery`."""
    details = [item["mac_address"]]
    if isinstance(item.get("rssi"), int):
        details.append(f"{item['rssi']} dBm")
    label = f"{item.get('name') or '?'} ({', '.join(details)})"
    if item.get("configured"):
        return f"{label}: added already (pick it to look for more devices behind it)"
    types = [TYPE_WORDS.get(t, t).lower() for t in item.get("types") or [] if isinstance(t, str)]
    return f"{label}: {', '.join(types)}" if types else label


def _stream_type(gateway: Gateway, found: list[dict[str, Any]], mac: str) -> str | None:
    """The type of a scanned device that streams (no Modbus), when the scan says that is all it can be."""
    item = next((item for item in found if item["mac_address"] == mac), {})
    types = [t for t in item.get("types") or [] if isinstance(t, str)]
    infos = [gateway.type_info(t) or {} for t in types]
    if types and all(info.get("protocol") not in (None, "modbus") for info in infos):
        return types[0]
    return None


def _unit_label(unit: dict[str, Any]) -> str:
    """`Battery at Modbus id 48: RBT100LFP12S-G1, serial 2209…`."""
    label = f"{TYPE_WORDS.get(str(unit.get('type')), str(unit.get('type')))} at Modbus id {unit.get('modbus_id')}"
    details = [str(unit["model"]) for key in ("model",) if unit.get(key)]
    if unit.get("serial"):
        details.append(f"serial {unit['serial']}")
    return f"{label}: {', '.join(details)}" if details else label


def _unit_payloads(probe: dict[str, Any], units: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The add_device payload of each probed unit.

    Units that share a module get names that tell them apart from the start (`Battery 3D0E #48`,
    the gateway's own pattern for a second unit), so the first one is not just `Battery 3D0E`.
    """
    mac = str(probe[CONF_MAC_ADDRESS])
    shared = len(probe.get(CONF_UNITS) or []) > 1
    payloads = []
    for unit in units:
        payload: dict[str, Any] = {CONF_MAC_ADDRESS: mac, CONF_TYPE: unit["type"], CONF_MODBUS_ID: unit["modbus_id"]}
        if unit.get("variant"):
            payload[CONF_VARIANT] = unit["variant"]
        if shared:
            word = TYPE_WORDS.get(unit["type"], "Device")
            payload[CONF_NAME] = f"{word} {mac.replace(':', '')[-4:]} #{unit['modbus_id']}"
        payloads.append((unit, payload))
    return payloads


def _named(name: str, mac: str) -> dict[str, str]:
    """The device named once: "Van DCC (C4:…)", or the address alone when it has no name."""
    return {CONF_MAC_ADDRESS: mac, CONF_NAME: name, "device": mac if name == mac else f"{name} ({mac})"}


def _found_words(type_name: str, identity: Any) -> str:
    """What the unit said it is: "RNG-CTRL-RVR40, serial 1501FFFF, firmware V1.0.4" (the
    gateway's device_connected event); its type in words when its family does not tell."""
    said = identity if isinstance(identity, dict) else {}
    words = [str(said.get("model") or TYPE_WORDS.get(type_name, type_name))]
    words += [f"{key} {said[key]}" for key in ("serial", "firmware") if said.get(key)]
    return ", ".join(words)


def _reason(request: _Request) -> str:
    """Why a command failed, in a few words for a report: the gateway's own words when it refused."""
    if request.error_key == "gateway_error":
        return request.placeholders["error"]
    if request.error_key == "no_response":
        return f"no answer within {request.placeholders['timeout']} seconds"
    if request.error_key == "send_failed":
        return f"not sent ({request.placeholders['error']})"
    return "the gateway went offline"


def _battery_label(device: dict[str, Any]) -> str:
    """`Battery 3D0E #49 (C4:64:E3:38:3D:0E, Modbus id 49), in bank House`."""
    where = f"{device['mac_address']}, Modbus id {device.get('modbus_id')}"
    label = f"{device.get('name') or device['mac_address']} ({where})"
    return f"{label}, in bank {device[CONF_BANK]}" if device.get(CONF_BANK) else label


def _slug(name: str) -> str:
    """The gateway's bank key part: names with the same slug are the same bank (docs/mqtt-api.md)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")


def _removable(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Devices from the add-on options can only be removed there (the gateway refuses)."""
    return [device for device in devices if device.get("origin") != "options"]


def _type_options(gateway: Gateway) -> list[SelectOptionDict]:
    """The gateway's types as words, in TYPE_LABELS order; a type this integration does not know
    (a newer gateway) after them, by its key."""
    known = [t["type"] for t in gateway.supported_types if isinstance(t.get("type"), str)]
    ordered = [t for t in TYPE_LABELS if t in known] + [t for t in known if t not in TYPE_LABELS]
    return [SelectOptionDict(value=t, label=TYPE_LABELS.get(t, t)) for t in ordered]


def _device_label(device: dict[str, Any], shared: bool = False) -> str:
    """`Inverter (inverter, D8:B6:73:BF:4F:75)`; `Battery 3D10 #49 (battery, C4:…, Modbus id 49)` for a
    unit of a shared module; a device without a name of its own is named by its type."""
    mac = device["mac_address"]
    words = TYPE_WORDS.get(device.get("type") or "", device.get("type") or "device")
    where = f"{mac}, Modbus id {device.get('modbus_id')}" if shared and device.get("modbus_id") is not None else mac
    name = str(device.get("name") or "")
    if not name or name == mac:
        return f"{words} ({where})"
    return f"{name} ({words.lower()}, {where})"


def _removal_options(devices: list[dict[str, Any]]) -> list[SelectOptionDict]:
    """What the remove form lists: each removable device and, for a module carrying several, all of
    them at once first."""
    removable = _removable(devices)
    options: list[SelectOptionDict] = []
    for mac in dict.fromkeys(device["mac_address"] for device in removable):  # modules, in list order
        units = [device for device in removable if device["mac_address"] == mac]
        if len(units) > 1:  # a bank or a hub: all of it at once, or one unit
            names = ", ".join(str(device.get("name") or device.get("modbus_id")) for device in units)
            label = f"All {len(units)} devices on {mac} ({names})"
            options.append(SelectOptionDict(value=f"{MODULE_PREFIX}{mac}", label=label))
        options += [
            SelectOptionDict(value=_unit_value(devices, device), label=_device_label(device, len(units) > 1))
            for device in units
        ]
    return options


def _unit_value(devices: list[dict[str, Any]], device: dict[str, Any]) -> str:
    """What the remove form returns for ``device``: its MAC, or its unit id when the Bluetooth
    module carries several units (a battery bank, a hub), whose MACs are all the same."""
    if shares_module(devices, device) and device.get("unit_id"):
        return str(device["unit_id"])
    return str(device.get("mac_address"))


def _removal(devices: list[dict[str, Any]], value: str) -> dict[str, Any]:
    """The remove_device payload for a remove form value (_unit_value)."""
    for device in devices:
        if _unit_value(devices, device) == value:
            return unit_selector(devices, device)
    return {CONF_MAC_ADDRESS: value}
