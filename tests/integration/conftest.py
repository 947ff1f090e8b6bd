"""Fixtures and helpers for the companion integration's tests (Home Assistant 2024.3.3 via phacc).

Run from this directory with the .venv/ha interpreter (see pytest.ini). The MQTT client is phacc's
`mqtt_mock`: the real Home Assistant MQTT integration on a mocked paho client, so subscriptions,
topic matching, retained-message handling and MQTT discovery are Home Assistant's own code.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResult, FlowResultType
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow import config_flow
from custom_components.blupow.const import DOMAIN

INTEGRATION_DIR = Path(__file__).resolve().parents[2] / "custom_components" / "blupow"
EN = json.loads((INTEGRATION_DIR / "translations" / "en.json").read_text(encoding="utf-8"))

# A gateway description as the gateway publishes it (docs/mqtt-api.md), trimmed to what matters.
GATEWAY_INFO: dict[str, Any] = {
    "gateway_id": "gateway",
    "version": "0.1.0",
    "base_topic": "blupow",
    "adapter": "hci0",
    "command_topic": "blupow/gateway/command",
    "response_topic": "blupow/gateway/response",
    "supported_types": [
        {
            "type": "renogy_battery",
            "default_modbus_id": 48,
            "variants": [{"name": "legacy", "modbus_id": 48}, {"name": "pro", "modbus_id": 255}],
            "requires_config": False,
        },
        {"type": "renogy_charge_controller", "default_modbus_id": 255, "variants": [], "requires_config": False},
        {"type": "renogy_inverter", "default_modbus_id": 32, "variants": [], "requires_config": False},
        {"type": "generic_modbus", "requires_config": True},
    ],
    "settings": {
        "poll_interval": 30,
        "mqtt": {"host": "core-mosquitto", "port": 1883, "username": "addons", "tls": False},
    },
}

DEVICE_FROM_OPTIONS: dict[str, Any] = {
    "mac_address": "C4:64:E3:38:3D:0E",
    "type": "renogy_charge_controller",
    "name": "Rover",
    "origin": "options",
    "status": "online",
    "stats": {"attempts": 10, "successes": 10, "failures": 0},
}
DEVICE_FROM_COMMAND: dict[str, Any] = {
    "mac_address": "D8:B6:73:BF:4F:75",
    "type": "renogy_inverter",
    "name": "Inverter",
    "unit_id": "D8B673BF4F75",
    "modbus_id": 32,
    "origin": "command",
    "status": "online",
    "stats": {"attempts": 120, "successes": 118, "failures": 2, "last_latency_ms": 412},
}


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Let Home Assistant load custom_components/blupow."""


@pytest.fixture(autouse=True)
async def no_lingering_mqtt_misc_timer(hass: HomeAssistant) -> AsyncIterator[None]:
    """Stop the MQTT client's 1 s housekeeping timer after each test, as a closing socket does.

    From Home Assistant 2024.x the MQTT client runs that timer while its socket is open; the test
    plugin's mocked paho client never closes one, so every test would end with it pending and fail
    the plugin's own lingering-timer check (62 teardowns on 2025.4.4). BluPow's timers are still
    checked: only this one, which is not ours, is stopped.
    """
    yield
    client = getattr(hass.data.get("mqtt"), "client", None)
    if (timer := getattr(client, "_misc_timer", None)) is not None:
        timer.cancel()
        client._misc_timer = None


@pytest.fixture(autouse=True)
def answers_after_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests answer a command after the step that sent it returned, as a slow gateway does: the
    step must not wait for a quick answer first, nor the end for a browser to listen
    (test_progress.py covers both)."""
    monkeypatch.setattr(config_flow, "QUICK_ANSWER", 0)
    monkeypatch.setattr(config_flow, "LISTEN_GRACE", 0)


@pytest.fixture
async def entry(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> MockConfigEntry:
    """The BluPow config entry, loaded on top of MQTT."""
    config_entry = MockConfigEntry(domain=DOMAIN, title="BluPow", data={}, unique_id=DOMAIN)
    config_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    return config_entry


def gateway_info(gateway_id: str = "gateway", **changes: Any) -> dict[str, Any]:
    info = copy.deepcopy(GATEWAY_INFO)
    info.update(gateway_id=gateway_id, command_topic=f"blupow/{gateway_id}/command", **changes)
    return info


def announce_gateway(
    hass: HomeAssistant,
    gateway_id: str = "gateway",
    *,
    state: str = "online",
    devices: list[dict[str, Any]] | None = None,
    info: dict[str, Any] | None = None,
    retain: bool = True,
) -> None:
    """Deliver a gateway's retained topics, as the broker does on subscription.

    Home Assistant passes a retained message on a topic to a subscription only once (the broker sets
    the flag only when the subscription is made): later updates must use retain=False.
    """
    base = f"blupow/{gateway_id}"
    async_fire_mqtt_message(hass, f"{base}/info", json.dumps(info or gateway_info(gateway_id)), 1, retain)
    async_fire_mqtt_message(hass, f"{base}/state", json.dumps({"state": state}), 1, retain)
    async_fire_mqtt_message(hass, f"{base}/devices", json.dumps(devices or []), 1, retain)


def set_gateway_state(hass: HomeAssistant, gateway_id: str, state: str) -> None:
    """A live (not retained) state change, e.g. the last will."""
    async_fire_mqtt_message(hass, f"blupow/{gateway_id}/state", json.dumps({"state": state}), 1, False)


def commands(mqtt_mock: MqttMockHAClient, gateway_id: str = "gateway") -> list[tuple[dict[str, Any], int, bool]]:
    """Every (payload, qos, retain) published on the gateway's command topic so far."""
    return [
        (json.loads(call[0][1]), call[0][2], call[0][3])
        for call in mqtt_mock.async_publish.call_args_list
        if call[0][0] == f"blupow/{gateway_id}/command"
    ]


async def next_command(mqtt_mock: MqttMockHAClient, gateway_id: str = "gateway", seen: int = 0) -> dict[str, Any]:
    """Wait (yielding to the loop, never block_till_done) for command number `seen` + 1 and return it."""
    for attempt in range(400):
        published = commands(mqtt_mock, gateway_id)
        if len(published) > seen:
            payload, qos, retain = published[seen]
            assert (qos, retain) == (1, False), "commands must be QoS 1 and never retained"
            return payload
        # Yield first; then give timers (MQTT's own debounce) a moment too, up to about 2 s.
        await asyncio.sleep(0 if attempt < 200 else 0.01)
    raise AssertionError(f"no command was published to blupow/{gateway_id}/command")


def respond(
    hass: HomeAssistant,
    request: dict[str, Any],
    *,
    gateway_id: str = "gateway",
    data: dict[str, Any] | None = None,
    error: str | None = None,
    transaction: Any = None,
) -> None:
    """Answer `request` the way the gateway does (same transaction unless told otherwise)."""
    response = {
        "command": request["command"],
        "transaction": request["transaction"] if transaction is None else transaction,
        "status": "error" if error else "ok",
        "data": {} if error else (data or {}),
        "error": error,
    }
    async_fire_mqtt_message(hass, f"blupow/{gateway_id}/response", json.dumps(response), 1, False)


def gateway_event(
    hass: HomeAssistant,
    kind: str,
    unit_id: str = "D8B673BF4F75",
    data: dict[str, Any] | None = None,
    *,
    mac: str = "D8:B6:73:BF:4F:75",
    gateway_id: str = "gateway",
) -> None:
    """An event as the gateway publishes it (docs/mqtt-api.md, "Events")."""
    event = {"type": kind, "mac_address": mac, "unit_id": unit_id, "time": "2026-12-03T19:00:00Z", "data": data or {}}
    async_fire_mqtt_message(hass, f"blupow/{gateway_id}/event", json.dumps(event), 1, False)


def suggested_values(result: FlowResult) -> dict[str, Any]:
    """The suggested (prefilled) values of a form."""
    return {
        str(key): key.description["suggested_value"]
        for key in result["data_schema"].schema
        if key.description and "suggested_value" in key.description
    }


def select_options(result: FlowResult, field: str) -> list[str]:
    """The values a select field of a form offers."""
    for key, selector in result["data_schema"].schema.items():
        if str(key) == field:
            return [opt if isinstance(opt, str) else opt["value"] for opt in selector.config["options"]]
    raise AssertionError(f"no field {field}")


_PLACEHOLDER = re.compile(r"{(\w+)}")


def _check_text(text: str, placeholders: dict[str, Any] | None, where: str) -> None:
    missing = set(_PLACEHOLDER.findall(text)) - set(placeholders or {})
    assert not missing, f"{where}: placeholders {missing} not provided"


def assert_translated(result: FlowResult, section: str = "options") -> FlowResult:
    """Fail when a result shows a text that en.json lacks or leaves a placeholder unfilled."""
    strings = EN[section]
    placeholders = result.get("description_placeholders")
    kind = result["type"]
    if kind == FlowResultType.ABORT:
        text = strings["abort"].get(result["reason"])
        assert text is not None, f"abort reason {result['reason']!r} is not translated"
        _check_text(text, placeholders, f"abort {result['reason']}")
    elif kind == FlowResultType.SHOW_PROGRESS:
        text = strings["progress"].get(result["progress_action"])
        assert text is not None, f"progress {result['progress_action']!r} is not translated"
        _check_text(text, placeholders, f"progress {result['progress_action']}")
    elif kind in (FlowResultType.FORM, FlowResultType.MENU):
        step = strings["step"].get(result["step_id"])
        assert step is not None, f"step {result['step_id']!r} is not translated"
        for key in ("title", "description"):
            _check_text(step.get(key, ""), placeholders, f"step {result['step_id']} {key}")
        if kind == FlowResultType.MENU:
            assert set(result["menu_options"]) <= set(step["menu_options"])
        else:
            for key in result["data_schema"].schema if result["data_schema"] else []:
                assert str(key) in step["data"], f"field {key} of {result['step_id']} has no label"
                assert str(key) in step["data_description"], f"field {key} of {result['step_id']} has no description"
            for error in (result.get("errors") or {}).values():
                assert error in strings["error"], f"error {error!r} is not translated"
                _check_text(strings["error"][error], placeholders, f"error {error}")
    return result
