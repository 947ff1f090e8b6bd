"""Constants of the BluPow companion integration (topics follow docs/mqtt-api.md)."""

from __future__ import annotations

from typing import Final

DOMAIN: Final = "blupow"

# The gateway's `base_topic` option. The manifest's MQTT discovery filter (`blupow/+/info`) is
# fixed, so the integration follows the default base topic.
BASE_TOPIC: Final = "blupow"

# Seconds to wait for the gateway's answer to a command. A scan waits for its own duration on top.
COMMAND_TIMEOUT: Final = 10.0
SCAN_SECONDS: Final = 5
# probe_module asks about 18 Modbus ids for at most 1 s each, after connecting (docs/mqtt-api.md).
PROBE_TIMEOUT: Final = 60.0

# The gateway's types in words, for the labels a person reads (the keys are for machines).
TYPE_WORDS: Final = {
    "renogy_battery": "Battery",
    "renogy_charge_controller": "Charge controller",
    "renogy_dcc": "DC-DC charger",
    "renogy_inverter": "Inverter",
    "renogy_shunt": "Smart Shunt",
    "generic_modbus": "Modbus device",
}

# What the add form offers, in this order: a person picks the family by the product names they know.
# A generic Modbus device needs a JSON description: it comes last, for those who mean it.
TYPE_LABELS: Final = {
    "renogy_charge_controller": "Charge controller: Rover, Wanderer, Adventurer",
    "renogy_battery": "Battery: Renogy smart lithium (RBT…, RNGRBP…)",
    "renogy_dcc": "DC-DC charger: DCC30S, DCC50S (with or without solar input)",
    "renogy_inverter": "Inverter or inverter/charger: RIV…, REGO",
    "renogy_shunt": "Smart Shunt 300",
    "generic_modbus": "Other Modbus device (described in JSON)",
}

CONF_GATEWAY_ID: Final = "gateway_id"
CONF_MAC_ADDRESS: Final = "mac_address"
CONF_TYPE: Final = "type"
CONF_NAME: Final = "name"
CONF_MODBUS_ID: Final = "modbus_id"
CONF_VARIANT: Final = "variant"
CONF_CONFIG: Final = "config"
CONF_UNITS: Final = "units"
CONF_BANK: Final = "bank"

SERVICE_ADD_DEVICE: Final = "add_device"
SERVICE_REMOVE_DEVICE: Final = "remove_device"

GATEWAY_ONLINE: Final = "online"
