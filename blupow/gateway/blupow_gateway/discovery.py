"""Home Assistant MQTT discovery payloads, built from each driver's Field and Control tables.

Per-component discovery (works from Home Assistant 2024.3 on):
``<prefix>/<component>/blupow_<MAC>_<key>/config``, retained. Deliberately
absent: ``object_id`` (deprecated in 2025.10) and ``model_id`` (rejected by
2024.3's strict device schema); naming is the entity's own name under the
device's name.

How a value that was not read shows up in Home Assistant 2024.3 (checked in
``homeassistant/components/mqtt/{sensor,binary_sensor,switch}.py`` of 2024.3.3):

* numeric sensors (unit, device/state class or precision set): a rendered
  ``None`` becomes ``unknown``;
* text sensors: 2024.3 keeps a rendered ``None`` as the text "None", so their
  template renders ``unknown``, which is the unknown state itself;
* binary sensors and switches: ``None`` becomes unknown.

From 2025 a text sensor's rendered "None" is unknown too, so a list of names
with nothing in it (no fault) reads NOTHING_SET, never "None".

The functions here are pure: they return ``{topic: payload}`` and the gateway
decides what to publish, diff and clear.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .devices import BaseDevice, Category, Enc, Field
from .store import DeviceRecord, mac_id

ORIGIN_URL = "https://github.com/blupow/blupow"
COMPONENTS = ("sensor", "binary_sensor", "switch")
MAX_STATE_LENGTH = 255  # Home Assistant rejects longer states
_LIST_ENCODINGS = (Enc.ARRAY_U16, Enc.ARRAY_S16)


@dataclass(frozen=True)
class Topics:
    """Every topic of one gateway (docs/mqtt-api.md, "Topic overview")."""

    base: str
    gateway_id: str
    prefix: str

    @property
    def gateway(self) -> str:
        return f"{self.base}/{self.gateway_id}"

    @property
    def state(self) -> str:
        return f"{self.gateway}/state"

    @property
    def info(self) -> str:
        return f"{self.gateway}/info"

    @property
    def devices(self) -> str:
        return f"{self.gateway}/devices"

    @property
    def health(self) -> str:
        return f"{self.gateway}/health"

    @property
    def command(self) -> str:
        return f"{self.gateway}/command"

    @property
    def response(self) -> str:
        return f"{self.gateway}/response"

    @property
    def event(self) -> str:
        return f"{self.gateway}/event"

    @property
    def ha_status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def control_wildcard(self) -> str:
        return f"{self.base}/+/+/set"

    # ``key``: a unit's key (modules.Unit.key, used as is); a MAC works too, as the key of its
    # only unit.
    def device_state(self, key: str) -> str:
        return f"{self.base}/{_topic_id(key)}/state"

    def availability(self, key: str) -> str:
        return f"{self.base}/{_topic_id(key)}/availability"

    def control_set(self, key: str, control: str) -> str:
        return f"{self.base}/{_topic_id(key)}/{control}/set"

    def config(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{object_id}/config"

    @property
    def gateway_identifier(self) -> str:
        return f"blupow_gateway_{self.gateway_id}"


def _topic_id(key: str) -> str:
    return mac_id(key) if ":" in key else key


def origin(version: str) -> dict[str, str]:
    return {"name": "BluPow", "sw_version": version, "support_url": ORIGIN_URL}


def _gateway_availability(topics: Topics) -> dict[str, str]:
    return {"topic": topics.state, "value_template": "{{ value_json.state }}"}


# --- value templates --------------------------------------------------------------------------


def numeric_expected(f: Field) -> bool:
    """Whether Home Assistant parses this sensor's state as a number."""
    if f.is_text:
        return False
    return bool(f.unit or f.device_class or f.state_class) or f.precision is not None


def _missing(numeric: bool) -> str:
    return "None" if numeric else "'unknown'"


def _present(key: str) -> str:
    # ``value_json is defined`` first: when a device is removed its state topic is cleared,
    # and Home Assistant may render that empty payload before the entity is gone.
    return f"value_json is defined and value_json.{key} is defined"


def value_template(f: Field) -> str:
    if f.options:  # the state JSON has the key; Home Assistant shows the words
        words = _jinja_dict(f.value_labels())
        return f"{{{{ {words}.get(value_json.{f.key}, value_json.{f.key}) if {_present(f.key)} else 'unknown' }}}}"
    return f"{{{{ value_json.{f.key} if {_present(f.key)} else {_missing(numeric_expected(f))} }}}}"


# What an empty list of names (faults, warnings, alarms) reads: Home Assistant's own word for
# "no problem". Not "None": Home Assistant 2025 shows that as unknown.
NOTHING_SET = "OK"


def list_text_template(f: Field) -> str:
    """A list of names (faults) as one text in words: ``PV input over voltage, Fan alarm`` or ``OK``."""
    key, words = f.key, _jinja_dict(f.value_labels())
    shown = f"{{% for v in value_json.{key} %}}{{% set ns.t = ns.t + [w.get(v, v)] %}}{{% endfor %}}"
    text = f"{{{{ (ns.t | join(', '))[:{MAX_STATE_LENGTH}] if ns.t else '{NOTHING_SET}' }}}}"
    return (
        f"{{% if {_present(key)} %}}{{% set w = {words} %}}{{% set ns = namespace(t=[]) %}}{shown}{text}"
        "{% else %}unknown{% endif %}"
    )


def _jinja_dict(words: Mapping[str, str]) -> str:
    """A dict literal for a template: JSON strings are valid Jinja string literals."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in words.items()) + "}"


def item_template(key: str, index: int, numeric: bool) -> str:
    return (
        f"{{{{ value_json.{key}[{index}] if {_present(key)} and value_json.{key} | length > {index} "
        f"else {_missing(numeric)} }}}}"
    )


def boolean_template(key: str) -> str:
    return f"{{{{ ('ON' if value_json.{key} else 'OFF') if {_present(key)} else 'None' }}}}"


# --- device ---------------------------------------------------------------------------------


def device_block(topics: Topics, record: DeviceRecord, device: BaseDevice, values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``device`` block shared by all of a device's entities."""
    identity = device.identity(values)
    block: dict[str, Any] = {
        "identifiers": [f"blupow_{record.topic_id}"],
        "name": record.name,
        "manufacturer": device.manufacturer,
        "model": identity.get("model") or device.model_hint or device.type_name,
        "via_device": topics.gateway_identifier,
    }
    if record.unit_id is None:
        # Only the module's first unit: Home Assistant merges devices that share a connection,
        # so the batteries of one BT-2 would become one device.
        block["connections"] = [["mac", record.mac_address]]
    if "firmware" in identity:
        block["sw_version"] = identity["firmware"]
    if "serial" in identity:
        block["serial_number"] = identity["serial"]
    return block


def singular(key: str) -> str:
    """``cell_voltages`` -> ``cell_voltage`` (per-item entity keys: ``cell_voltage_1``)."""
    return key[:-1] if key.endswith("s") else key


def _entity_category(f_category: Category | None, component: str) -> str | None:
    if f_category is None:
        return None
    # Sensors may not be "config" entities (Home Assistant refuses them); show them as diagnostic.
    if component in ("sensor", "binary_sensor"):
        return "diagnostic"
    return str(f_category)


@dataclass(frozen=True)
class EntitySpec:
    """One entity before it becomes a payload: component, key and the component-specific keys."""

    component: str
    key: str
    field: Field
    payload: dict[str, Any]


def _sensor_payload(f: Field, template: str, name: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": name, "value_template": template}
    if f.options and f.enc is not Enc.BITS:
        # one of a few states. No `options` list: MQTT discovery accepts it from Home Assistant
        # 2024.9 on and refuses the whole entity before (our floor is 2024.3)
        payload["device_class"] = "enum"
    if numeric_expected(f):
        if f.unit:
            payload["unit_of_measurement"] = f.unit
        if f.device_class:
            payload["device_class"] = f.device_class
        if f.state_class:
            payload["state_class"] = f.state_class
        if f.precision is not None:
            payload["suggested_display_precision"] = f.precision
    return payload


def field_entities(device: BaseDevice, values: Mapping[str, Any]) -> list[EntitySpec]:
    """The entities of one device's fields; list fields expand once a state told their length."""
    state_fields = {c.state_field for c in device.controls if c.component == "switch"}
    specs: list[EntitySpec] = []
    for f in device.active_fields():
        if f.key in state_fields and f.component == "binary_sensor":
            continue  # the switch shows this state
        if f.enc in _LIST_ENCODINGS:
            items = values.get(f.key)
            if not isinstance(items, list):
                continue  # length unknown until the first state
            numeric = numeric_expected(f)
            for i in range(len(items)):
                name = f"{singular(f.display_name)} {i + 1}"
                payload = _sensor_payload(f, item_template(f.key, i, numeric), name)
                specs.append(EntitySpec("sensor", f"{singular(f.key)}_{i + 1}", f, payload))
            continue
        if f.enc is Enc.BITS:
            payload = {"name": f.display_name, "value_template": list_text_template(f)}
            specs.append(EntitySpec("sensor", f.key, f, payload))
            continue
        if f.component == "binary_sensor" or f.boolean:
            payload = {
                "name": f.display_name,
                "value_template": boolean_template(f.key),
                "payload_on": "ON",
                "payload_off": "OFF",
            }
            if f.device_class:
                payload["device_class"] = f.device_class
            specs.append(EntitySpec("binary_sensor", f.key, f, payload))
            continue
        specs.append(EntitySpec("sensor", f.key, f, _sensor_payload(f, value_template(f), f.display_name)))
    return specs


def config_inputs(record: DeviceRecord, device: BaseDevice, values: Mapping[str, Any]) -> tuple[Any, ...]:
    """Everything :func:`device_configs` reads that can change while the gateway runs.

    Equal inputs give equal configs, so a caller can skip rebuilding and encoding
    a device's 20-40 configs after every poll when this has not changed: only the
    device block's texts and the lengths of list fields come from the values.
    The driver object itself is part of it (a new config block builds a new one).
    """
    lengths = tuple(
        (f.key, len(items))
        for f in device.active_fields()
        if f.enc in _LIST_ENCODINGS and isinstance(items := values.get(f.key), list)
    )
    texts = tuple(device.identity(values).items())
    return (record, device, device.variant, texts, lengths)


def device_configs(
    topics: Topics, record: DeviceRecord, device: BaseDevice, values: Mapping[str, Any], version: str
) -> dict[str, dict[str, Any]]:
    """Every discovery config of one device: ``{topic: payload}``."""
    block = device_block(topics, record, device, values)
    common = {
        "state_topic": topics.device_state(record.topic_id),
        "availability": [_gateway_availability(topics), {"topic": topics.availability(record.topic_id)}],
        "availability_mode": "all",
        "device": block,
        "origin": origin(version),
    }
    configs: dict[str, dict[str, Any]] = {}
    for spec in field_entities(device, values):
        object_id = f"blupow_{record.topic_id}_{spec.key}"
        payload = {**spec.payload, "unique_id": object_id, **common}
        _decorate(payload, spec.field, spec.component)
        configs[topics.config(spec.component, object_id)] = payload
    for control in device.controls:
        if control.component != "switch":
            continue
        object_id = f"blupow_{record.topic_id}_{control.key}"
        payload = {
            "name": control.display_name,
            "unique_id": object_id,
            "command_topic": topics.control_set(record.topic_id, control.key),
            "value_template": boolean_template(control.state_field),
            "payload_on": "ON",
            "payload_off": "OFF",
            "state_on": "ON",
            "state_off": "OFF",
            "qos": 1,
            "retain": False,
            **common,
        }
        if control.icon:
            payload["icon"] = control.icon
        if control.category is not None:
            payload["entity_category"] = str(control.category)
        configs[topics.config("switch", object_id)] = payload
    return configs


def _decorate(payload: dict[str, Any], f: Field, component: str) -> None:
    category = _entity_category(f.category, component)
    if category:
        payload["entity_category"] = category
    if f.icon:
        payload["icon"] = f.icon
    if not f.enabled_default:
        payload["enabled_by_default"] = False


# --- gateway ---------------------------------------------------------------------------------


def gateway_device(topics: Topics, version: str) -> dict[str, Any]:
    name = "BluPow gateway" if topics.gateway_id == "gateway" else f"BluPow gateway {topics.gateway_id}"
    return {
        "identifiers": [topics.gateway_identifier],
        "name": name,
        "manufacturer": "BluPow",
        "model": "Bluetooth gateway",
        "sw_version": version,
    }


def gateway_configs(topics: Topics, version: str) -> dict[str, dict[str, Any]]:
    """The gateway device's diagnostic entities."""
    device = gateway_device(topics, version)
    ident = topics.gateway_identifier
    common = {"device": device, "origin": origin(version), "entity_category": "diagnostic"}
    available = {"availability": [_gateway_availability(topics)]}
    return {
        topics.config("binary_sensor", f"{ident}_connectivity"): {
            "name": "Connectivity",
            "unique_id": f"{ident}_connectivity",
            "state_topic": topics.state,
            "value_template": "{{ value_json.state }}",
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            **common,
        },
        topics.config("sensor", f"{ident}_version"): {
            "name": "Version",
            "unique_id": f"{ident}_version",
            "state_topic": topics.info,
            "value_template": f"{{{{ value_json.version if {_present('version')} else 'unknown' }}}}",
            "icon": "mdi:tag-outline",
            **available,
            **common,
        },
        topics.config("sensor", f"{ident}_devices_online"): {
            "name": "Devices online",
            "unique_id": f"{ident}_devices_online",
            "state_topic": topics.health,
            "value_template": f"{{{{ value_json.devices_online if {_present('devices_online')} else None }}}}",
            "state_class": "measurement",
            "suggested_display_precision": 0,
            "icon": "mdi:bluetooth-connect",
            **available,
            **common,
        },
        topics.config("sensor", f"{ident}_last_cycle"): {
            "name": "Last poll cycle",
            "unique_id": f"{ident}_last_cycle",
            "state_topic": topics.health,
            "value_template": f"{{{{ value_json.last_cycle_s if {_present('last_cycle_s')} else None }}}}",
            "unit_of_measurement": "s",
            "device_class": "duration",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            **available,
            **common,
        },
    }
