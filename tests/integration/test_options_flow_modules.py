"""Options flow for modules with several devices: scan → probe → tick → add; remove a whole
module; group batteries on different modules into one battery bank (docs/mqtt-api.md)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import (
    DEVICE_FROM_COMMAND,
    EN,
    announce_gateway,
    assert_translated,
    commands,
    gateway_info,
    next_command,
    respond,
    select_options,
    suggested_values,
)
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResult, FlowResultType
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow import config_flow, gateway

HUB = "C4:64:E3:38:3D:10"
SCAN_FOUND = [
    {"mac_address": "C4:64:E3:38:3D:0E", "name": "BT-TH-E3383D0E", "rssi": -70, "types": [], "configured": True},
    {
        "mac_address": HUB,
        "name": "BT-TH-E3383D10",
        "rssi": -61,
        "types": ["renogy_charge_controller", "renogy_battery"],
        "configured": False,
    },
    {"mac_address": "11:22:33:44:55:66", "name": "RNGRBP-X", "types": ["renogy_dcc"], "configured": False},
]


def _battery(modbus_id: int, **extra: Any) -> dict[str, Any]:
    return {"modbus_id": modbus_id, "type": "renogy_battery", "variant": "legacy", "model": "RBT100LFP12S-G1",
            "serial": f"S{modbus_id}", "configured": False, **extra}  # fmt: skip


PROBED = {
    "mac_address": HUB,
    "summary": "3 batteries (48, 49, 50) and a charge controller (97)",
    "seconds": 12.4,
    "units": [
        _battery(48, configured=True),
        _battery(49),
        _battery(50),
        {"modbus_id": 97, "type": "renogy_charge_controller", "variant": None, "model": "RNG-CTRL-RVR40",
         "serial": None, "configured": False},
    ],
}  # fmt: skip


async def _step(hass: HomeAssistant, result: FlowResult, user_input: dict[str, Any] | None = None) -> FlowResult:
    return assert_translated(await hass.config_entries.options.async_configure(result["flow_id"], user_input))


async def _menu(hass: HomeAssistant, entry: MockConfigEntry, choice: str) -> FlowResult:
    result = assert_translated(await hass.config_entries.options.async_init(entry.entry_id))
    return await _step(hass, result, {"next_step_id": choice})


async def _finish(hass: HomeAssistant, result: FlowResult) -> FlowResult:
    await hass.async_block_till_done()
    return await _step(hass, result)


def _labels(result: FlowResult, field: str) -> list[str]:
    for key, selector in result["data_schema"].schema.items():
        if str(key) == field:
            return [opt["label"] for opt in selector.config["options"]]
    raise AssertionError(f"no field {field}")


def _default(result: FlowResult, field: str) -> Any:
    key = next(k for k in result["data_schema"].schema if str(k) == field)
    return key.default()


async def _probed(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, **answer: Any
) -> FlowResult:
    """Scan, pick the hub, and answer its probe with ``answer`` (PROBED by default)."""
    announce_gateway(hass)
    result = await _menu(hass, entry, "scan")
    respond(hass, await next_command(mqtt_mock), data={"devices": SCAN_FOUND})
    result = await _finish(hass, result)
    result = await _step(hass, result, {"mac_address": HUB})
    assert result["type"] == FlowResultType.SHOW_PROGRESS and result["progress_action"] == "probe_module"
    assert result["description_placeholders"]["mac_address"] == HUB
    request = await next_command(mqtt_mock, seen=1)
    assert request == {"command": "probe_module", "mac_address": HUB, "transaction": request["transaction"]}
    respond(hass, request, **(answer or {"data": PROBED}))
    return await _finish(hass, result)


async def test_scan_lists_new_modules_first_and_added_ones_too(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    """A module added already may carry more devices (a bank grows): it stays pickable, last."""
    announce_gateway(hass)
    result = await _menu(hass, entry, "scan")
    respond(hass, await next_command(mqtt_mock), data={"devices": SCAN_FOUND})
    result = await _finish(hass, result)

    assert result["step_id"] == "scan_result"
    assert select_options(result, "mac_address") == [HUB, "11:22:33:44:55:66", "C4:64:E3:38:3D:0E"]
    labels = _labels(result, "mac_address")
    assert labels[0] == "BT-TH-E3383D10 (C4:64:E3:38:3D:10, -61 dBm): charge controller, battery"
    assert labels[2].endswith("added already (pick it to look for more devices behind it)")


async def test_probe_then_add_the_ticked_devices_in_one_step(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _probed(hass, entry, mqtt_mock)

    assert result["type"] == FlowResultType.FORM and result["step_id"] == "probe_result"
    placeholders = result["description_placeholders"]
    assert placeholders["summary"] == PROBED["summary"]  # in words, as the gateway wrote it
    assert placeholders["added"] == "Battery at Modbus id 48: RBT100LFP12S-G1, serial S48"
    assert select_options(result, "units") == ["49", "50", "97"]  # not the one added already
    assert _labels(result, "units")[2] == "Charge controller at Modbus id 97: RNG-CTRL-RVR40"
    assert _default(result, "units") == ["49", "50", "97"]  # everything new is ticked

    result = await _step(hass, result, {"units": ["49", "97"]})
    assert result["type"] == FlowResultType.SHOW_PROGRESS and result["progress_action"] == "add_units"
    assert result["description_placeholders"]["count"] == "2"
    first = await next_command(mqtt_mock, seen=2)
    assert first == {
        "command": "add_device",
        "mac_address": HUB,
        "type": "renogy_battery",
        "modbus_id": 49,
        "variant": "legacy",
        "name": "Battery 3D10 #49",  # siblings tell apart from the start
        "transaction": first["transaction"],
    }
    respond(hass, first, data={"mac_address": HUB, "name": "Battery 3D10 #49"})
    second = await next_command(mqtt_mock, seen=3)  # one after the other: the first was answered
    assert {k: second[k] for k in ("type", "modbus_id", "name")} == {
        "type": "renogy_charge_controller",
        "modbus_id": 97,
        "name": "Charge controller 3D10 #97",
    }
    assert "variant" not in second
    respond(hass, second, data={"mac_address": HUB})
    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "add_done"
    assert result["description_placeholders"]["names"] == (
        "Battery at Modbus id 49: RBT100LFP12S-G1, serial S49, Charge controller at Modbus id 97: RNG-CTRL-RVR40"
    )
    assert len(commands(mqtt_mock)) == 4


async def test_a_lone_device_keeps_the_gateways_default_name(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    alone = {**PROBED, "summary": "a charge controller (255)", "units": [
        {"modbus_id": 255, "type": "renogy_charge_controller", "variant": None, "model": "RNG-CTRL-RVR40",
         "serial": None, "configured": False}]}  # fmt: skip
    result = await _probed(hass, entry, mqtt_mock, data=alone)
    result = await _step(hass, result, {"units": ["255"]})
    request = await next_command(mqtt_mock, seen=2)
    assert "name" not in request and request["modbus_id"] == 255


async def test_nothing_ticked_is_refused(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _probed(hass, entry, mqtt_mock)
    result = await _step(hass, result, {"units": []})
    assert result["step_id"] == "probe_result" and result["errors"] == {"base": "nothing_selected"}
    assert len(commands(mqtt_mock)) == 2


async def test_one_refused_the_others_added_and_both_named(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _probed(hass, entry, mqtt_mock)
    result = await _step(hass, result, {"units": ["49", "50"]})
    refused = "device C4:64:E3:38:3D:10 already has a unit at Modbus id 49 (units: 48, 49)"
    respond(hass, await next_command(mqtt_mock, seen=2), error=refused)
    respond(hass, await next_command(mqtt_mock, seen=3), data={"mac_address": HUB})
    result = await _finish(hass, result)

    assert result["reason"] == "add_partly_done"
    assert result["description_placeholders"]["names"] == "Battery at Modbus id 50: RBT100LFP12S-G1, serial S50"
    assert (
        result["description_placeholders"]["failed"]
        == f"Battery at Modbus id 49: RBT100LFP12S-G1, serial S49: {refused}"
    )


async def test_all_refused_shows_the_form_again_with_why(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _probed(hass, entry, mqtt_mock)
    result = await _step(hass, result, {"units": ["50"]})
    respond(hass, await next_command(mqtt_mock, seen=2), error="could not save the device registry (disk full)")
    result = await _finish(hass, result)

    assert result["step_id"] == "probe_result" and result["errors"] == {"base": "batch_failed"}
    assert result["description_placeholders"]["failed"].endswith("could not save the device registry (disk full)")


async def test_no_answer_stops_the_batch(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a command goes unanswered the rest are not sent (they would wait as long for nothing)."""
    result = await _probed(hass, entry, mqtt_mock)
    monkeypatch.setattr(gateway, "COMMAND_TIMEOUT", 0.05)
    result = await _step(hass, result, {"units": ["49", "50", "97"]})
    respond(hass, await next_command(mqtt_mock, seen=2), data={"mac_address": HUB})
    await next_command(mqtt_mock, seen=3)  # never answered
    result = await _finish(hass, result)

    assert result["reason"] == "add_partly_done"
    failed = result["description_placeholders"]["failed"]
    assert "serial S50: no answer within 0.05 seconds" in failed
    assert failed.endswith("Charge controller at Modbus id 97: RNG-CTRL-RVR40")
    assert len(commands(mqtt_mock)) == 4  # the controller's add was never sent


async def test_everything_added_already(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    done = {**PROBED, "units": [{**unit, "configured": True} for unit in PROBED["units"]]}
    result = await _probed(hass, entry, mqtt_mock, data=done)
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "nothing_new"
    assert result["description_placeholders"]["summary"] == PROBED["summary"]


async def test_probe_failure_falls_back_to_adding_by_hand(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    error = "C4:64:E3:38:3D:10 did not answer: device not found"
    result = await _probed(hass, entry, mqtt_mock, error=error)

    assert result["step_id"] == "add_device" and result["errors"] == {"base": "probe_failed"}
    assert result["description_placeholders"]["error"] == error
    # The most likely type from the scan, for the user to check.
    assert suggested_values(result) == {"mac_address": HUB, "type": "renogy_charge_controller"}


async def test_probe_waits_for_its_sweep(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe takes far longer than a command; its own timeout, then the add form says so."""
    assert gateway.command_timeout("probe_module", {}) > 30
    monkeypatch.setattr(gateway, "PROBE_TIMEOUT", 0.05)
    announce_gateway(hass)
    result = await _menu(hass, entry, "scan")
    respond(hass, await next_command(mqtt_mock), data={"devices": SCAN_FOUND})
    result = await _finish(hass, result)
    result = await _step(hass, result, {"mac_address": "11:22:33:44:55:66"})
    result = await _finish(hass, result)

    assert result["errors"] == {"base": "probe_failed"}
    assert result["description_placeholders"]["error"] == "no answer within 0.05 seconds"
    assert suggested_values(result) == {"mac_address": "11:22:33:44:55:66"}  # renogy_dcc: not this gateway's


# -- remove a whole module -------------------------------------------------------------------------

BANK_UNITS = [
    {"mac_address": HUB, "unit_id": unit_id, "modbus_id": modbus_id, "type": "renogy_battery",
     "name": f"Battery {modbus_id}", "origin": "command", "status": "online", "stats": {}}
    for unit_id, modbus_id in (("C464E3383D10", 48), ("C464E3383D10_49", 49))
]  # fmt: skip


async def test_remove_a_whole_module(hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient) -> None:
    announce_gateway(hass, devices=[*BANK_UNITS, DEVICE_FROM_COMMAND])
    result = await _menu(hass, entry, "remove_device")
    assert _labels(result, "mac_address")[0] == f"All 2 devices on {HUB} (Battery 48, Battery 49)"

    result = await _step(hass, result, {"mac_address": f"module:{HUB}"})
    assert result["step_id"] == "remove_confirm"
    assert result["description_placeholders"]["device"] == f"all 2 devices on {HUB} (Battery 48, Battery 49)"
    result = await _step(hass, result, {})
    assert result["progress_action"] == "remove_units"
    for seen, modbus_id in enumerate((48, 49)):
        request = await next_command(mqtt_mock, seen=seen)
        assert request == {
            "command": "remove_device",
            "mac_address": HUB,
            "modbus_id": modbus_id,
            "transaction": request["transaction"],
        }
        respond(hass, request, data={"mac_address": HUB, "modbus_id": modbus_id})
    result = await _finish(hass, result)

    assert result["reason"] == "remove_done"
    assert result["description_placeholders"]["names"] == (
        f"Battery 48 (battery, {HUB}, Modbus id 48), Battery 49 (battery, {HUB}, Modbus id 49)"
    )
    assert len(commands(mqtt_mock)) == 2  # the inverter stays


# -- battery bank across modules -------------------------------------------------------------------

LONE = {"mac_address": "C4:64:E3:00:00:77", "unit_id": "C464E3000077", "modbus_id": 48, "type": "renogy_battery",
        "name": "Starter", "origin": "options", "status": "online", "stats": {}}  # fmt: skip


async def test_group_batteries_of_two_modules_into_a_bank(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass, devices=[*BANK_UNITS, LONE, DEVICE_FROM_COMMAND])
    result = await _menu(hass, entry, "bank")
    assert result["step_id"] == "bank"
    assert select_options(result, "units") == ["C464E3383D10", "C464E3383D10_49", "C4:64:E3:00:00:77"]
    assert _labels(result, "units")[2] == "Starter (C4:64:E3:00:00:77, Modbus id 48)"
    assert suggested_values(result) == {"bank": "", "units": []}  # no bank yet: a new one
    assert result["description_placeholders"]["banks"] == "none"

    result = await _step(hass, result, {"bank": "  House bank ", "units": ["C464E3383D10_49", "C4:64:E3:00:00:77"]})
    assert result["progress_action"] == "bank_units"
    unit = await next_command(mqtt_mock)
    assert unit == {  # a unit on a shared module is named by its Modbus id
        "command": "update_device",
        "mac_address": HUB,
        "modbus_id": 49,
        "bank": "House bank",
        "transaction": unit["transaction"],
    }
    respond(hass, unit, data={})
    lone = await next_command(mqtt_mock, seen=1)
    # alone on its module: no modbus_id (there it would mean "change the ID")
    assert lone == {"command": "update_device", "mac_address": "C4:64:E3:00:00:77", "bank": "House bank",
                    "transaction": lone["transaction"]}  # fmt: skip
    respond(hass, lone, data={})
    result = await _finish(hass, result)

    assert result["reason"] == "bank_done"
    assert result["description_placeholders"]["bank"] == "House bank"


async def test_edit_and_dissolve_a_bank(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    members = [{**BANK_UNITS[1], "bank": "House"}, {**LONE, "bank": "House"}]
    announce_gateway(hass, devices=[BANK_UNITS[0], *members])
    result = await _menu(hass, entry, "bank")
    # The one bank there is opens for editing, with its members ticked.
    assert suggested_values(result) == {"bank": "House", "units": ["C464E3383D10_49", "C4:64:E3:00:00:77"]}
    assert _labels(result, "units")[1].endswith(", in bank House")

    result = await _step(hass, result, {"bank": "House", "units": ["C4:64:E3:00:00:77"]})
    assert result["errors"] == {"base": "bank_needs_two"}
    result = await _step(hass, result, {"bank": "house", "units": ["C464E3383D10_49", "C4:64:E3:00:00:77"]})
    assert result["progress_action"] == "bank_units"  # a new spelling is sent to both
    for seen in range(2):
        respond(hass, await next_command(mqtt_mock, seen=seen), data={})
    await _finish(hass, result)

    result = await _menu(hass, entry, "bank")
    result = await _step(hass, result, {"bank": "House", "units": []})
    cleared = []
    for seen in (2, 3):  # one after the other: each once the one before was answered
        cleared.append(await next_command(mqtt_mock, seen=seen))
        respond(hass, cleared[-1], data={})
    assert [c["bank"] for c in cleared] == [None, None]  # untick all: the bank is dissolved
    assert [c["mac_address"] for c in cleared] == [HUB, "C4:64:E3:00:00:77"]
    result = await _finish(hass, result)
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "bank_done"


@pytest.mark.parametrize("name", ["", "  ", "---", "x" * 41])
async def test_bank_name_is_checked(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, name: str
) -> None:
    announce_gateway(hass, devices=[*BANK_UNITS, LONE])
    result = await _menu(hass, entry, "bank")
    result = await _step(hass, result, {"bank": name, "units": ["C464E3383D10", "C4:64:E3:00:00:77"]})
    assert result["errors"] == {"bank": "invalid_bank_name"}
    assert not commands(mqtt_mock)


async def test_unchanged_bank_sends_nothing(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass, devices=[{**BANK_UNITS[0], "bank": "House"}, {**LONE, "bank": "House"}])
    result = await _menu(hass, entry, "bank")
    result = await _step(hass, result, {"bank": "House", "units": ["C4:64:E3:38:3D:10", "C4:64:E3:00:00:77"]})
    assert result["errors"] == {"base": "bank_unchanged"}
    assert not commands(mqtt_mock)


async def test_a_bank_needs_two_batteries(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    announce_gateway(hass, devices=[LONE, DEVICE_FROM_COMMAND])
    result = await _menu(hass, entry, "bank")
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "not_enough_batteries"


def test_every_placeholder_is_always_filled() -> None:
    """The flow fills every {placeholder} of the options texts (errors too): an unfilled one shows
    as "Translation Error" in the browser."""
    texts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, str):
            texts.append(node)

    walk(EN["options"])
    used = {name for text in texts for name in re.findall(r"{(\w+)}", text)}
    assert used <= set(config_flow.PLACEHOLDERS), used - set(config_flow.PLACEHOLDERS)


def test_no_title_needs_a_placeholder() -> None:
    """The 2024.3 frontend fills no placeholders in a menu's title, nor in the title above a
    spinner (the step's title is reused there): one in a title reads "Translation Error"."""
    titled = {step: texts["title"] for step, texts in EN["options"]["step"].items() if "title" in texts}
    assert titled and not {step: title for step, title in titled.items() if "{" in title}


async def test_a_shunt_is_not_probed_but_added_by_type(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    """The Smart Shunt streams notifications: no Modbus ids to ask; the add form opens with its type."""
    info = gateway_info()
    info["supported_types"].append({"type": "renogy_shunt", "protocol": "notify_stream", "requires_config": False})
    announce_gateway(hass, info=info)
    shunt = {"mac_address": "4C:E1:74:57:85:E3", "name": "RTMShunt30017000621", "types": ["renogy_shunt"]}
    result = await _menu(hass, entry, "scan")
    respond(hass, await next_command(mqtt_mock), data={"devices": [shunt, *SCAN_FOUND]})
    result = await _finish(hass, result)
    result = await _step(hass, result, {"mac_address": shunt["mac_address"]})

    assert result["step_id"] == "add_device"
    assert suggested_values(result) == {"mac_address": shunt["mac_address"], "type": "renogy_shunt"}
    assert len(commands(mqtt_mock)) == 1  # the scan only, no probe_module
