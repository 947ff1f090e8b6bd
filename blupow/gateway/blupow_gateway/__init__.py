"""BluPow gateway: Renogy BLE devices to MQTT and Home Assistant."""

__version__ = "0.2.0"
