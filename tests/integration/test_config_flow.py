"""Set-up flows: user confirm, MQTT missing, MQTT discovery (real and direct), single instance."""

from __future__ import annotations

import json

from conftest import EN, assert_translated, gateway_info
from homeassistant import config_entries
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow.const import DOMAIN
from custom_components.blupow.gateway import get_hub


def _service_info(payload: str, topic: str = "blupow/gateway/info") -> MqttServiceInfo:
    return MqttServiceInfo(
        topic=topic,
        payload=payload,
        qos=1,
        retain=True,
        subscribed_topic="blupow/+/info",
        timestamp=dt_util.utcnow(),
    )


async def test_user_flow_creates_entry_and_loads(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert result["type"] == FlowResultType.FORM
    assert result["step_id"] == "user"
    assert_translated(result, "config")

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    await hass.async_block_till_done()

    assert result["type"] == FlowResultType.CREATE_ENTRY
    assert result["title"] == "BluPow"
    assert result["data"] == {}
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    assert entry.unique_id == DOMAIN
    assert entry.state == ConfigEntryState.LOADED
    assert get_hub(hass) is not None


async def test_user_flow_aborts_when_mqtt_is_not_set_up(hass: HomeAssistant) -> None:
    # No mqtt_mock: the mqtt component loads as a dependency, but has no config entry.
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_available"
    assert_translated(result, "config")
    assert hass.config_entries.async_entries(DOMAIN) == []


async def test_second_instance_is_refused(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    MockConfigEntry(domain=DOMAIN, data={}, unique_id=DOMAIN).add_to_hass(hass)

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "single_instance_allowed"
    assert_translated(result, "config")


async def test_info_message_starts_discovery(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    """The manifest's `blupow/+/info` makes Home Assistant's MQTT integration offer BluPow."""
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []

    async_fire_mqtt_message(hass, "blupow/shed/info", json.dumps(gateway_info("shed")), 1, True)
    await hass.async_block_till_done()

    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert len(flows) == 1
    assert flows[0]["context"]["source"] == config_entries.SOURCE_MQTT
    assert flows[0]["context"]["title_placeholders"] == {"gateway_id": "shed"}
    assert flows[0]["step_id"] == "confirm"

    result = await hass.config_entries.flow.async_configure(flows[0]["flow_id"], {})
    await hass.async_block_till_done()

    assert result["type"] == FlowResultType.CREATE_ENTRY
    assert hass.config_entries.async_entries(DOMAIN)[0].state == ConfigEntryState.LOADED

    # Configured: another gateway's info starts no new flow.
    async_fire_mqtt_message(hass, "blupow/garage/info", json.dumps(gateway_info("garage")), 1, True)
    await hass.async_block_till_done()
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []


async def test_mqtt_step_shows_confirm_with_gateway_id(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_service_info(json.dumps(gateway_info()))
    )

    assert result["type"] == FlowResultType.FORM
    assert result["step_id"] == "confirm"
    assert result["description_placeholders"] == {"gateway_id": "gateway"}
    assert_translated(result, "config")
    assert "{gateway_id}" in EN["config"]["flow_title"]  # the discovered card names the gateway

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    await hass.async_block_till_done()
    assert result["type"] == FlowResultType.CREATE_ENTRY
    assert result["title"] == "BluPow"


async def test_second_discovery_while_one_is_pending_aborts(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    first = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_service_info(json.dumps(gateway_info()))
    )
    assert first["type"] == FlowResultType.FORM

    second = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": config_entries.SOURCE_MQTT},
        data=_service_info(json.dumps(gateway_info("garage")), "blupow/garage/info"),
    )

    assert second["type"] == FlowResultType.ABORT
    assert second["reason"] == "already_in_progress"
    assert_translated(second, "config")


async def test_user_flow_wins_over_pending_discovery(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    discovered = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_service_info(json.dumps(gateway_info()))
    )
    assert discovered["type"] == FlowResultType.FORM

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert result["type"] == FlowResultType.FORM
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    await hass.async_block_till_done()

    assert result["type"] == FlowResultType.CREATE_ENTRY
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []
    assert len(hass.config_entries.async_entries(DOMAIN)) == 1


async def test_discovery_with_an_invalid_payload_aborts(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    for payload, topic in (
        ("not json", "blupow/gateway/info"),
        ("", "blupow/gateway/info"),
        ("[1, 2]", "blupow/gateway/info"),
        (json.dumps(gateway_info()), "blupow/extra/level/info"),
    ):
        result = await hass.config_entries.flow.async_init(
            DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_service_info(payload, topic)
        )
        assert result["type"] == FlowResultType.ABORT, payload
        assert result["reason"] == "invalid_discovery_info"
        assert_translated(result, "config")


async def test_discovery_when_configured_aborts(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    MockConfigEntry(domain=DOMAIN, data={}, unique_id=DOMAIN).add_to_hass(hass)

    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_service_info(json.dumps(gateway_info()))
    )

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "single_instance_allowed"


async def test_ignored_discovery_stays_ignored(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    """ "Ignore" on the discovered card sticks; setting BluPow up by hand later still works."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_service_info(json.dumps(gateway_info()))
    )
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_IGNORE}, data={"unique_id": DOMAIN, "title": "BluPow"}
    )
    assert result["type"] == FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()

    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_service_info(json.dumps(gateway_info()))
    )
    # refused, whichever check comes first (ours: already_configured; Home Assistant's own
    # single-instance check from 2024.x on: single_instance_allowed), and no card shows up again
    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] in ("already_configured", "single_instance_allowed")
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    await hass.async_block_till_done()
    assert result["type"] == FlowResultType.CREATE_ENTRY
    entries = hass.config_entries.async_entries(DOMAIN)
    assert [e.source for e in entries] == [config_entries.SOURCE_USER]
    assert entries[0].state == ConfigEntryState.LOADED


async def test_no_discovery_while_a_user_flow_is_open(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    user = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert user["type"] == FlowResultType.FORM

    discovered = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_service_info(json.dumps(gateway_info()))
    )
    assert discovered["type"] == FlowResultType.ABORT
    assert discovered["reason"] == "already_in_progress"

    result = await hass.config_entries.flow.async_configure(user["flow_id"], {})
    await hass.async_block_till_done()
    assert result["type"] == FlowResultType.CREATE_ENTRY
    assert len(hass.config_entries.async_entries(DOMAIN)) == 1
