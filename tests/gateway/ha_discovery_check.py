"""Check discovery payloads with Home Assistant 2024.3 itself (run with .venv/ha/bin/python).

Reads ``{"configs": {topic: payload}, "states": {state_topic: state_json_text}}`` on
stdin and prints ``{"invalid": {topic: error}, "rendered": {topic: text},
"missing": {topic: text}}``: each payload is validated with the platform's
``DISCOVERY_SCHEMA`` (the schema MQTT discovery applies), and its value template is
rendered by Home Assistant's template engine once against the device's real state
and once against ``{}`` (every key missing).

Not a test module: ``tests/gateway/test_service_discovery.py`` runs it in the HA venv,
which has Home Assistant 2024.3.3 and paho-mqtt 1.6 (the gateway venv cannot import it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from typing import Any

from homeassistant.components.mqtt import binary_sensor, sensor, switch
from homeassistant.core import HomeAssistant
from homeassistant.helpers.template import Template

SCHEMAS = {
    "sensor": sensor.DISCOVERY_SCHEMA,
    "binary_sensor": binary_sensor.DISCOVERY_SCHEMA,
    "switch": switch.DISCOVERY_SCHEMA,
}


async def check(data: dict[str, Any]) -> dict[str, Any]:
    hass = HomeAssistant(tempfile.mkdtemp(prefix="blupow-ha-"))
    result: dict[str, dict[str, str]] = {"invalid": {}, "rendered": {}, "missing": {}}
    for topic, payload in data["configs"].items():
        component = topic.split("/")[-3]
        try:
            SCHEMAS[component](payload)
        except Exception as exc:
            result["invalid"][topic] = str(exc)
            continue
        template = Template(payload["value_template"], hass)
        state = data["states"].get(payload["state_topic"], "{}")
        result["rendered"][topic] = str(template.async_render_with_possible_json_value(state, ""))
        result["missing"][topic] = str(template.async_render_with_possible_json_value("{}", ""))
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(check(json.load(sys.stdin)))))
