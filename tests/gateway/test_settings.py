"""Settings: precedence of the sources, every validation error, device entries, secrets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway import devices
from blupow_gateway.schema import ConfigError
from blupow_gateway.settings import (
    REDACTED,
    DeviceOption,
    MqttOverride,
    Settings,
    defaults,
    env_variables,
    load_settings,
)

MAC = "AA:BB:CC:DD:EE:01"
GENERIC = {
    "blocks": [{"start": 256, "count": 2}],
    "fields": [{"key": "battery_soc", "register": 256, "type": "u16", "unit": "%"}],
}
LEVELS = "trace, debug, info, notice, warning, error, fatal"


def write_options(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "options.json"
    path.write_text(json.dumps(data), "utf-8")
    return path


def load_file(tmp_path: Path, data: Any) -> Settings:
    return load_settings(write_options(tmp_path, data), env={})


def file_error(tmp_path: Path, data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_file(tmp_path, data)
    return str(info.value)


# --- defaults and precedence -------------------------------------------------------------------


def test_defaults_only() -> None:
    settings = load_settings(None, env={})
    assert settings == Settings()
    assert settings.sources == ("defaults",)
    assert settings.log_level == "info"
    assert settings.poll_interval == 30
    assert settings.max_connections == 2
    assert settings.keep_connected is True
    assert settings.connect_timeout == 20
    assert settings.request_timeout == 3.0
    assert settings.adapter == "hci0"
    assert settings.base_topic == "blupow"
    assert settings.gateway_id == "gateway"
    assert settings.discovery_prefix == "homeassistant"
    assert settings.mqtt == MqttOverride()
    assert not settings.mqtt.is_set
    assert settings.devices == ()


def test_dataclass_defaults_match_the_schema_defaults() -> None:
    # The dataclass defaults and the schema's "default" keywords must not drift apart.
    redacted = Settings().redacted()
    expected = defaults()
    expected["mqtt"] = MqttOverride().redacted()
    assert redacted == expected


def test_supervisor_style_options_file(tmp_path: Path) -> None:
    # The Supervisor writes every option, with floats for float() types and ints for int().
    data = defaults() | {"poll_interval": 60, "request_timeout": 2.5, "log_level": "debug", "keep_connected": False}
    settings = load_file(tmp_path, data)
    assert (settings.poll_interval, settings.request_timeout) == (60, 2.5)
    assert settings.log_level == "debug"
    assert settings.keep_connected is False
    assert settings.sources == ("defaults", f"options {tmp_path / 'options.json'}")


@pytest.mark.parametrize(
    ("use_file", "use_env", "use_cli", "expected"),
    [
        (False, False, False, 30),
        (True, False, False, 10),
        (True, True, False, 20),
        (True, True, True, 40),
        (False, True, False, 20),
        (False, False, True, 40),
        (True, False, True, 40),
    ],
)
def test_precedence_defaults_file_env_cli(
    tmp_path: Path, use_file: bool, use_env: bool, use_cli: bool, expected: int
) -> None:
    path = write_options(tmp_path, {"poll_interval": 10}) if use_file else None
    env = {"BLUPOW_POLL_INTERVAL": "20"} if use_env else {}
    overrides = {"poll_interval": 40} if use_cli else None
    assert load_settings(path, env=env, overrides=overrides).poll_interval == expected


def test_every_scalar_setting_from_the_environment() -> None:
    env = {
        "BLUPOW_LOG_LEVEL": "trace",
        "BLUPOW_POLL_INTERVAL": "3600",
        "BLUPOW_MAX_CONNECTIONS": "5",
        "BLUPOW_KEEP_CONNECTED": "off",
        "BLUPOW_CONNECT_TIMEOUT": "120",
        "BLUPOW_REQUEST_TIMEOUT": "0.5",
        "BLUPOW_ADAPTER": "hci1",
        "BLUPOW_BASE_TOPIC": "home/solar",
        "BLUPOW_GATEWAY_ID": "shed-2",
        "BLUPOW_DISCOVERY_PREFIX": "ha",
        "BLUPOW_MQTT_HOST": "broker.lan",
        "BLUPOW_MQTT_PORT": "8883",
        "BLUPOW_MQTT_USERNAME": "solar",
        "BLUPOW_MQTT_PASSWORD": " s3cret with spaces ",
        "BLUPOW_MQTT_TLS": "YES",
    }
    s = load_settings(None, env=env)
    assert (s.log_level, s.poll_interval, s.max_connections, s.keep_connected) == ("trace", 3600, 5, False)
    assert (s.connect_timeout, s.request_timeout, s.adapter) == (120, 0.5, "hci1")
    assert (s.base_topic, s.gateway_id, s.discovery_prefix) == ("home/solar", "shed-2", "ha")
    assert s.mqtt == MqttOverride("broker.lan", 8883, "solar", " s3cret with spaces ", True)
    assert s.mqtt.is_set
    assert set(env) <= set(env_variables())


def test_env_variable_names() -> None:
    assert sorted(env_variables()) == sorted(
        [
            "BLUPOW_LOG_LEVEL",
            "BLUPOW_POLL_INTERVAL",
            "BLUPOW_MAX_CONNECTIONS",
            "BLUPOW_KEEP_CONNECTED",
            "BLUPOW_CONNECT_TIMEOUT",
            "BLUPOW_REQUEST_TIMEOUT",
            "BLUPOW_ADAPTER",
            "BLUPOW_BASE_TOPIC",
            "BLUPOW_GATEWAY_ID",
            "BLUPOW_DISCOVERY_PREFIX",
            "BLUPOW_MQTT_HOST",
            "BLUPOW_MQTT_PORT",
            "BLUPOW_MQTT_USERNAME",
            "BLUPOW_MQTT_PASSWORD",
            "BLUPOW_MQTT_TLS",
            "BLUPOW_DEVICES",
        ]
    )


def test_empty_and_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    path = write_options(tmp_path, {"adapter": "hci3"})
    env = {"BLUPOW_ADAPTER": "", "BLUPOW_MQTT_HOST": "  ", "BLUPOW_SUPERVISOR_URL": "http://x", "PATH": "/bin"}
    s = load_settings(path, env=env)
    assert s.adapter == "hci3"
    assert s.mqtt.host is None


def test_mqtt_is_merged_key_by_key(tmp_path: Path) -> None:
    path = write_options(tmp_path, {"mqtt": {"host": "a.lan", "username": "u", "password": "p", "tls": True}})
    s = load_settings(path, env={"BLUPOW_MQTT_HOST": "b.lan"}, overrides={"mqtt": {"port": 1884}})
    assert s.mqtt == MqttOverride("b.lan", 1884, "u", "p", True)


def test_devices_are_replaced_as_a_whole(tmp_path: Path) -> None:
    path = write_options(tmp_path, {"devices": [{"mac_address": MAC, "type": "renogy_inverter"}]})
    env = {"BLUPOW_DEVICES": json.dumps([{"mac_address": "AA:BB:CC:DD:EE:02", "type": "renogy_dcc"}])}
    s = load_settings(path, env=env)
    assert [(d.mac_address, d.type) for d in s.devices] == [("AA:BB:CC:DD:EE:02", "renogy_dcc")]


def test_command_line_none_values_are_not_overrides(tmp_path: Path) -> None:
    path = write_options(tmp_path, {"log_level": "error", "mqtt": {"host": "a.lan", "port": 1999}})
    s = load_settings(path, env={}, overrides={"log_level": None, "mqtt": {"host": None, "port": None}})
    assert s.log_level == "error"
    assert (s.mqtt.host, s.mqtt.port) == ("a.lan", 1999)
    assert s.sources == ("defaults", f"options {path}")


def test_sources_name_every_layer(tmp_path: Path) -> None:
    path = write_options(tmp_path, {})
    s = load_settings(path, env={"BLUPOW_LOG_LEVEL": "debug"}, overrides={"adapter": "hci2"})
    assert s.sources == ("defaults", f"options {path}", "environment variable BLUPOW_LOG_LEVEL", "command line adapter")


def test_empty_mqtt_host_means_ask_the_supervisor(tmp_path: Path) -> None:
    s = load_file(tmp_path, {"mqtt": {"host": "", "username": "x"}})
    assert s.mqtt.host is None
    assert not s.mqtt.is_set


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLUPOW_GATEWAY_ID", "from-os-env")
    assert load_settings(None).gateway_id == "from-os-env"


# --- options file errors -----------------------------------------------------------------------


def test_missing_options_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"options: cannot read {path} (No such file or directory)"


def _json_error(text: str) -> str:
    """The reason this Python's json gives (3.13 words a trailing comma differently from 3.11)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    raise AssertionError(f"{text!r} is valid JSON")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", _json_error("")),
        ('{"poll_interval": 10,}', _json_error('{"poll_interval": 10,}')),
        ('{"request_timeout": NaN}', "NaN is not allowed"),
        ('{"request_timeout": Infinity}', "Infinity is not allowed"),
    ],
)
def test_options_file_that_is_not_json(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "options.json"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"options: {path} is not valid JSON ({reason})"


def test_options_file_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_options(tmp_path, [1, 2])
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"options: {path} must contain a JSON object"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pol_interval": 10}, "options: the configuration: unknown key 'pol_interval'"),
        ({"log_level": "verbose"}, f"options: log_level must be one of {LEVELS}"),
        ({"log_level": 3}, f"options: log_level must be one of {LEVELS}"),
        ({"poll_interval": 4}, "options: poll_interval must be >= 5"),
        ({"poll_interval": 3601}, "options: poll_interval must be <= 3600"),
        ({"poll_interval": 7.5}, "options: poll_interval must be an integer"),
        ({"poll_interval": "30"}, "options: poll_interval must be an integer"),
        ({"max_connections": 0}, "options: max_connections must be >= 1"),
        ({"max_connections": 6}, "options: max_connections must be <= 5"),
        ({"keep_connected": "yes"}, "options: keep_connected must be true or false"),
        ({"connect_timeout": 4}, "options: connect_timeout must be >= 5"),
        ({"connect_timeout": 121}, "options: connect_timeout must be <= 120"),
        ({"request_timeout": 0.4}, "options: request_timeout must be >= 0.5"),
        ({"request_timeout": 30.5}, "options: request_timeout must be <= 30"),
        ({"request_timeout": True}, "options: request_timeout must be a number"),
        ({"adapter": "hci"}, "options: adapter has an invalid format ('hci')"),
        ({"adapter": "usb0"}, "options: adapter has an invalid format ('usb0')"),
        ({"base_topic": "solar/#"}, "options: base_topic has an invalid format ('solar/#')"),
        ({"base_topic": "solar/+/x"}, "options: base_topic has an invalid format ('solar/+/x')"),
        ({"base_topic": "a//b"}, "options: base_topic has an invalid format ('a//b')"),
        ({"base_topic": "/blupow"}, "options: base_topic has an invalid format ('/blupow')"),
        ({"base_topic": "blupow/"}, "options: base_topic has an invalid format ('blupow/')"),
        ({"base_topic": "$SYS"}, "options: base_topic has an invalid format ('$SYS')"),
        ({"base_topic": "my topic"}, "options: base_topic has an invalid format ('my topic')"),
        ({"base_topic": ""}, "options: base_topic has an invalid format ('')"),
        ({"base_topic": "a" * 101}, "options: base_topic must be at most 100 characters long"),
        ({"gateway_id": "shed 1"}, "options: gateway_id has an invalid format ('shed 1')"),
        ({"gateway_id": "a/b"}, "options: gateway_id has an invalid format ('a/b')"),
        ({"gateway_id": "g" * 65}, "options: gateway_id must be at most 64 characters long"),
        ({"discovery_prefix": "home+assistant"}, "options: discovery_prefix has an invalid format ('home+assistant')"),
        ({"mqtt": "core-mosquitto"}, "options: mqtt must be an object"),
        ({"mqtt": {"server": "x"}}, "options: mqtt: unknown key 'server'"),
        ({"mqtt": {"port": 0}}, "options: mqtt.port must be >= 1"),
        ({"mqtt": {"port": 65536}}, "options: mqtt.port must be <= 65535"),
        ({"mqtt": {"tls": "true"}}, "options: mqtt.tls must be true or false"),
        ({"mqtt": {"password": 1234}}, "options: mqtt.password must be a string"),
        ({"devices": {}}, "options: devices must be a list"),
        ({"devices": [MAC]}, "options: devices[0] must be an object"),
        ({"devices": [{"type": "renogy_dcc"}]}, "options: devices[0].mac_address is required"),
        ({"devices": [{"mac_address": MAC}]}, "options: devices[0].type is required"),
        (
            {"devices": [{"mac_address": "AA:BB:CC:DD:EE", "type": "renogy_dcc"}]},
            "options: devices[0].mac_address has an invalid format ('AA:BB:CC:DD:EE')",
        ),
        (
            {"devices": [{"mac_address": "AA-BB-CC-DD-EE-FF", "type": "renogy_dcc"}]},
            "options: devices[0].mac_address has an invalid format ('AA-BB-CC-DD-EE-FF')",
        ),
        (
            {"devices": [{"mac_address": MAC, "type": "renogy_dcc", "modbus_id": 256}]},
            "options: devices[0].modbus_id must be <= 255",
        ),
        (
            {"devices": [{"mac_address": MAC, "type": "renogy_dcc", "modbus_id": -1}]},
            "options: devices[0].modbus_id must be >= 0",
        ),
        (
            {"devices": [{"mac_address": MAC, "type": "renogy_dcc", "config": 5}]},
            "options: devices[0].config must be an object or a string",
        ),
        (
            {"devices": [{"mac_address": MAC, "type": "renogy_dcc", "alias": "x"}]},
            "options: devices[0]: unknown key 'alias'",
        ),
    ],
)
def test_options_validation_errors(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    assert file_error(tmp_path, data) == message


@pytest.mark.parametrize("topic", ["blupow", "home/solar/blupow", "solar-1_a.b", "ÄÖÜ"])
def test_valid_topics(tmp_path: Path, topic: str) -> None:
    assert load_file(tmp_path, {"base_topic": topic, "discovery_prefix": topic}).base_topic == topic


# --- environment and command-line errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BLUPOW_POLL_INTERVAL": "abc"}, "environment variable BLUPOW_POLL_INTERVAL must be an integer (got 'abc')"),
        ({"BLUPOW_POLL_INTERVAL": "7.5"}, "environment variable BLUPOW_POLL_INTERVAL must be an integer (got '7.5')"),
        ({"BLUPOW_POLL_INTERVAL": "2"}, "environment variable BLUPOW_POLL_INTERVAL: poll_interval must be >= 5"),
        (
            {"BLUPOW_KEEP_CONNECTED": "maybe"},
            "environment variable BLUPOW_KEEP_CONNECTED must be true or false (got 'maybe')",
        ),
        ({"BLUPOW_REQUEST_TIMEOUT": "nan"}, "environment variable BLUPOW_REQUEST_TIMEOUT must be a number (got 'nan')"),
        ({"BLUPOW_REQUEST_TIMEOUT": "inf"}, "environment variable BLUPOW_REQUEST_TIMEOUT must be a number (got 'inf')"),
        (
            {"BLUPOW_REQUEST_TIMEOUT": "fast"},
            "environment variable BLUPOW_REQUEST_TIMEOUT must be a number (got 'fast')",
        ),
        ({"BLUPOW_LOG_LEVEL": "loud"}, f"environment variable BLUPOW_LOG_LEVEL: log_level must be one of {LEVELS}"),
        ({"BLUPOW_MQTT_PORT": "99999"}, "environment variable BLUPOW_MQTT_PORT: mqtt.port must be <= 65535"),
        ({"BLUPOW_MQTT_TLS": "2"}, "environment variable BLUPOW_MQTT_TLS must be true or false (got '2')"),
        (
            {"BLUPOW_DEVICES": "[{"},
            "environment variable BLUPOW_DEVICES is not valid JSON "
            "(Expecting property name enclosed in double quotes at line 1 column 3)",
        ),
        ({"BLUPOW_DEVICES": '{"a": 1}'}, "environment variable BLUPOW_DEVICES: devices must be a list"),
        (
            {"BLUPOW_DEVICES": json.dumps([{"mac_address": MAC, "type": "renogy_solar"}])},
            "environment variable BLUPOW_DEVICES: devices[0]: unknown type 'renogy_solar' (known: "
            + ", ".join(devices.known_types())
            + ")",
        ),
    ],
)
def test_environment_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env=env)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"log_level": "chatty"}, f"command line: log_level must be one of {LEVELS}"),
        ({"mqtt": {"port": 0}}, "command line: mqtt.port must be >= 1"),
        ({"mqtt": {"host": 5}}, "command line: mqtt.host must be a string"),
        ({"polling": 5}, "command line: the configuration: unknown key 'polling'"),
    ],
)
def test_command_line_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={}, overrides=overrides)
    assert str(info.value) == message


def test_the_error_names_the_layer_that_set_the_bad_devices(tmp_path: Path) -> None:
    # The file's devices are fine; the command line replaces them with a bad one.
    path = write_options(tmp_path, {"devices": [{"mac_address": MAC, "type": "renogy_dcc"}]})
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={}, overrides={"devices": [{"mac_address": MAC, "type": "renogy_dcc", "variant": "x"}]})
    assert str(info.value) == "command line: devices[0]: unknown variant 'x' for renogy_dcc (known: standard, g6)"


# --- devices -----------------------------------------------------------------------------------


def test_device_entries_are_normalised(tmp_path: Path) -> None:
    s = load_file(
        tmp_path,
        {
            "devices": [
                {"mac_address": "aa:bb:cc:dd:ee:0f", "type": "renogy_battery", "variant": "pro", "name": " House "},
                {"mac_address": "AA:BB:CC:DD:EE:10", "type": "renogy_inverter", "modbus_id": 33, "name": ""},
                {"mac_address": "AA:BB:CC:DD:EE:11", "type": "renogy_charge_controller", "variant": "", "config": ""},
            ]
        },
    )
    assert s.devices == (
        DeviceOption("AA:BB:CC:DD:EE:0F", "renogy_battery", "House", None, "pro", None),
        DeviceOption("AA:BB:CC:DD:EE:10", "renogy_inverter", None, 33, None, None),
        DeviceOption("AA:BB:CC:DD:EE:11", "renogy_charge_controller", None, None, None, None),
    )
    battery, inverter, controller = (d.create() for d in s.devices)
    assert (type(battery).type_name, battery.variant, battery.modbus_id) == ("renogy_battery", "pro", 255)
    assert (type(inverter).type_name, inverter.modbus_id) == ("renogy_inverter", 33)
    assert controller.modbus_id == 255


def test_every_known_type_is_accepted(tmp_path: Path) -> None:
    entries = []
    for index, type_name in enumerate(devices.known_types()):
        entry: dict[str, Any] = {"mac_address": f"AA:BB:CC:DD:EE:{index:02X}", "type": type_name}
        if devices.driver(type_name).requires_config:
            entry["config"] = GENERIC
        entries.append(entry)
    s = load_file(tmp_path, {"devices": entries})
    assert [d.type for d in s.devices] == devices.known_types()


def test_duplicate_mac_addresses(tmp_path: Path) -> None:
    data = {
        "devices": [
            {"mac_address": "aa:bb:cc:dd:ee:01", "type": "renogy_dcc"},
            {"mac_address": "AA:BB:CC:DD:EE:02", "type": "renogy_dcc"},
            {"mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_battery"},
        ]
    }
    assert file_error(tmp_path, data) == (
        "options: devices[2].mac_address AA:BB:CC:DD:EE:01 is already used by devices[0]: several devices "
        "behind one Bluetooth module each need their own modbus_id (e.g. 48, 49, ... for a battery bank)"
    )


def test_units_behind_one_module(tmp_path: Path) -> None:
    """A battery bank on one BT-2: one MAC, one entry per battery, each at its own Modbus ID."""
    bank = [{"mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_battery", "modbus_id": i} for i in (48, 49, 50)]
    s = load_file(tmp_path, {"devices": bank})
    assert [(d.mac_address, d.modbus_id) for d in s.devices] == [("AA:BB:CC:DD:EE:01", i) for i in (48, 49, 50)]
    twice = [*bank, {"mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_battery", "modbus_id": 49}]
    assert file_error(tmp_path, {"devices": twice}) == (
        "options: devices[3]: AA:BB:CC:DD:EE:01 with modbus_id 49 is already devices[1]"
    )
    broadcast = [bank[0], {"mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_charge_controller", "modbus_id": 255}]
    assert file_error(tmp_path, {"devices": broadcast}) == (
        "options: devices[1]: modbus_id 255 reaches every device on a shared bus (AA:BB:CC:DD:EE:01 is already "
        "used by devices[0]); give each its own modbus_id"
    )


def test_a_battery_names_its_bank(tmp_path: Path) -> None:
    """``bank`` groups batteries across modules (banks.py); stripped, and empty means none."""
    s = load_file(
        tmp_path,
        {
            "devices": [
                {"mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_battery", "bank": " House bank "},
                {"mac_address": "AA:BB:CC:DD:EE:02", "type": "renogy_battery", "bank": "   "},
                {"mac_address": "AA:BB:CC:DD:EE:03", "type": "renogy_battery"},
            ]
        },
    )
    assert [d.bank for d in s.devices] == ["House bank", None, None]
    assert s.redacted()["devices"][0]["bank"] == "House bank"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"type": "renogy_charge_controller", "bank": "House"},
            "options: devices[0].bank is only used by type renogy_battery",
        ),
        (
            {"type": "renogy_battery", "bank": "x" * 41},
            "options: devices[0].bank must be at most 40 characters long",
        ),
        (
            {"type": "renogy_battery", "bank": "!?"},
            "options: devices[0].bank must contain a letter or a digit (A-Z, 0-9): the bank's topics are named "
            "after it",
        ),
        (
            {"type": "renogy_battery", "bank": 7},
            "options: devices[0].bank must be a string",
        ),
        (
            {"type": "renogy_battery", "variant": "ultra"},
            "options: devices[0]: unknown variant 'ultra' for renogy_battery (known: legacy, pro, rngpro)",
        ),
        (
            {"type": "renogy_inverter", "variant": "pro"},
            "options: devices[0].variant: renogy_inverter has no variants",
        ),
        (
            {"type": "renogy_dcc", "config": GENERIC},
            "options: devices[0].config is only used by type generic_modbus",
        ),
        (
            {"type": "generic_modbus"},
            "options: devices[0]: generic_modbus config: a config block is required",
        ),
        (
            {"type": "generic_modbus", "config": "  "},
            "options: devices[0]: generic_modbus config: a config block is required",
        ),
        (
            {"type": "generic_modbus", "config": '{"blocks": [}'},
            "options: devices[0].config is not valid JSON (Expecting value at line 1 column 13)",
        ),
        (
            {"type": "generic_modbus", "config": "[1, 2]"},
            "options: devices[0].config must be a JSON object (got a list)",
        ),
        (
            {"type": "generic_modbus", "config": '"text"'},
            "options: devices[0].config must be a JSON object (got a str)",
        ),
        (
            {"type": "generic_modbus", "config": '{"blocks": [{"start": 1, "count": 1}], "fields": NaN}'},
            "options: devices[0].config is not valid JSON (NaN is not allowed)",
        ),
        (
            {"type": "generic_modbus", "config": {"blocks": [{"start": 1, "count": 1}]}},
            "options: devices[0]: generic_modbus config: fields is required",
        ),
        (
            {
                "type": "generic_modbus",
                "config": json.dumps({**GENERIC, "fields": [{**GENERIC["fields"][0], "scale": "x"}]}),
            },
            "options: devices[0]: generic_modbus config: fields[0].scale must be a number",
        ),
        (
            # the add-on UI holds the config as a one-line JSON string; 1e308 parses to a finite float
            {
                "type": "generic_modbus",
                "config": json.dumps({**GENERIC, "fields": [{**GENERIC["fields"][0], "scale": 1e308}]}),
            },
            'options: devices[0]: generic_modbus config: fields[0] "battery_soc": scale 1e+308 is out of range '
            "(allowed 1e-09 … 1e+09)",
        ),
        (
            {"type": "generic_modbus", "config": {**GENERIC, "fields": [{**GENERIC["fields"][0], "register": 300}]}},
            "options: devices[0]: generic_modbus config: fields[0].register 300 is not read by any block",
        ),
    ],
)
def test_device_errors(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    assert file_error(tmp_path, {"devices": [{"mac_address": MAC, **entry}]}) == message


@pytest.mark.parametrize("as_string", [False, True])
def test_generic_config_as_object_or_string(tmp_path: Path, as_string: bool) -> None:
    config: Any = json.dumps(GENERIC) if as_string else GENERIC
    s = load_file(tmp_path, {"devices": [{"mac_address": MAC, "type": "generic_modbus", "config": config}]})
    (device,) = s.devices
    assert dict(device.config or {}) == GENERIC
    driver = device.create()
    assert [f.key for f in driver.active_fields()] == ["battery_soc"]
    assert driver.decode({256: 87, 257: 0})["battery_soc"] == 87
    # The stored config is read-only and driver instances do not share it.
    with pytest.raises(TypeError):
        device.config["blocks"] = []  # type: ignore[index]
    driver.config["fields"].clear()
    assert device.create().config["fields"] == GENERIC["fields"]


# --- secrets -----------------------------------------------------------------------------------


def test_password_never_in_repr_or_redacted(tmp_path: Path) -> None:
    password = "pw-5f1d0b2e-never-show"
    s = load_file(tmp_path, {"mqtt": {"host": "broker.lan", "username": "solar", "password": password}})
    assert s.mqtt.password == password
    assert password not in repr(s)
    assert password not in str(s)
    assert password not in repr(s.mqtt)
    redacted = s.redacted()
    assert password not in json.dumps(redacted)
    assert redacted["mqtt"] == {
        "host": "broker.lan",
        "port": None,
        "username": "solar",
        "password": REDACTED,
        "tls": None,
    }


def test_redacted_is_complete_plain_json(tmp_path: Path) -> None:
    s = load_file(
        tmp_path, {"devices": [{"mac_address": MAC, "type": "generic_modbus", "config": json.dumps(GENERIC)}]}
    )
    redacted = s.redacted()
    assert json.loads(json.dumps(redacted)) == redacted
    assert set(redacted) == {f.name for f in dataclasses.fields(Settings)} - {"sources"}
    assert redacted["devices"][0]["config"] == GENERIC
    assert redacted["mqtt"]["password"] is None


def test_settings_are_frozen() -> None:
    s = load_settings(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.poll_interval = 5  # type: ignore[misc]
