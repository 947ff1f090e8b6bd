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

CONF_GATEWAY_ID: Final = "gateway_id"
CONF_MAC_ADDRESS: Final = "mac_address"
CONF_TYPE: Final = "type"
CONF_NAME: Final = "name"
CONF_MODBUS_ID: Final = "modbus_id"
CONF_VARIANT: Final = "variant"
CONF_CONFIG: Final = "config"

SERVICE_ADD_DEVICE: Final = "add_device"
SERVICE_REMOVE_DEVICE: Final = "remove_device"

GATEWAY_ONLINE: Final = "online"
