"""blupow/config.yaml, translations and repository.yaml against the Supervisor's rules and the gateway."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

import blupow_gateway
from blupow_gateway import devices
from blupow_gateway.schema import ConfigError, load_schema
from blupow_gateway.settings import Settings, defaults, load_settings
from tests.addon.supervisor_rules import (
    ADDON,
    KNOWN_KEYS,
    LINTER_DEFAULTS,
    RE_SCHEMA_ELEMENT,
    RE_SERVICE,
    RE_SLUG,
    REQUIRED_KEYS,
    ROOT,
    SUPPORTED_ARCH,
    accepts,
    base_type,
    is_optional,
    leaves,
    load_yaml,
    manifest,
    parse_type,
)

CONFIG = manifest()
SCHEMA: dict[str, Any] = CONFIG["schema"]
OPTIONS: dict[str, Any] = CONFIG["options"]
GATEWAY = load_schema("settings")
DEVICE_ITEM = GATEWAY["properties"]["devices"]["items"]


# --- manifest keys -------------------------------------------------------------------------------


def test_required_keys_and_types() -> None:
    assert set(CONFIG) >= REQUIRED_KEYS
    for key in ("name", "version", "slug", "description"):
        assert isinstance(CONFIG[key], str) and CONFIG[key].strip(), key
    assert CONFIG["name"] == "BluPow"
    assert RE_SLUG.match(CONFIG["slug"])
    assert CONFIG["slug"] == ADDON.name == "blupow"
    assert isinstance(CONFIG["arch"], list) and CONFIG["arch"]
    assert set(CONFIG["arch"]) == SUPPORTED_ARCH
    assert re.match(r"^https?://", CONFIG["url"])


def test_version_is_one_everywhere() -> None:
    version = CONFIG["version"]
    assert isinstance(version, str)  # quoted in YAML; an unquoted 0.1 would be a float
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert version == blupow_gateway.__version__
    pyproject = tomllib.loads((ADDON / "gateway" / "pyproject.toml").read_text("utf-8"))
    assert pyproject["project"]["version"] == version
    changelog = (ADDON / "CHANGELOG.md").read_text("utf-8")
    assert re.search(r"^## (\S+)", changelog, re.MULTILINE)[1] == version  # type: ignore[index]
    dockerfile = (ADDON / "Dockerfile").read_text("utf-8")
    assert re.search(r"^ARG BUILD_VERSION=(\S+)$", dockerfile, re.MULTILINE)[1] == version  # type: ignore[index]


def test_no_unknown_keys() -> None:
    assert set(CONFIG) - KNOWN_KEYS == set()


def test_no_key_equals_a_linter_default() -> None:
    redundant = {
        key: value for key, value in CONFIG.items() if key in LINTER_DEFAULTS and LINTER_DEFAULTS[key] == value
    }
    assert redundant == {}


def test_runtime_settings() -> None:
    assert CONFIG["init"] is False  # s6-overlay v3 must be PID 1
    assert CONFIG["host_dbus"] is True  # BlueZ over the host's D-Bus
    assert CONFIG["services"] == ["mqtt:need"]
    assert all(RE_SERVICE.match(s) for s in CONFIG["services"])
    assert isinstance(CONFIG["timeout"], int) and 10 <= CONFIG["timeout"] <= 300
    assert CONFIG["timeout"] >= 20  # room to publish "offline" and disconnect on stop


def test_no_privileges_beyond_host_dbus() -> None:
    granted = {
        key
        for key in (
            "host_network", "host_pid", "host_ipc", "host_uts", "privileged", "full_access", "docker_api",
            "hassio_api", "homeassistant_api", "auth_api", "usb", "uart", "udev", "gpio", "devices",
            "kernel_modules", "devicetree", "video", "audio", "map", "ports", "ingress",
        )
        if CONFIG.get(key)
    }  # fmt: skip
    assert granted == set()
    assert "apparmor" not in CONFIG  # the custom apparmor.txt is used (true is the default)
    assert (ADDON / "apparmor.txt").is_file()


def test_image_has_no_tag_when_set() -> None:
    image = CONFIG.get("image")
    if image is not None:
        assert ":" not in image.rsplit("/", 1)[-1]


def test_no_build_yaml() -> None:
    assert not any((ADDON / f"build.{ext}").exists() for ext in ("yaml", "yml", "json"))


# --- options and schema --------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "type_str"), [(p, t) for p, t, _ in leaves(SCHEMA)])
def test_every_schema_leaf_matches_the_supervisor_grammar(path: str, type_str: str) -> None:
    assert RE_SCHEMA_ELEMENT.match(type_str), f"{path}: {type_str!r}"
    match = parse_type(type_str)
    # Negative bounds need a 2026-03 Supervisor; keep the manifest usable on older ones.
    for bound in ("i_min", "i_max", "f_min", "f_max"):
        assert not (match[bound] or "").startswith("-"), path


def test_grammar_helper_rejects_what_the_supervisor_rejects() -> None:
    # The helper must be able to fail: these are rejected by the real regex.
    for bad in ("int(1, 3600)", "list()", "integer", "string", "bool??"):
        assert RE_SCHEMA_ELEMENT.match(bad) is None, bad
    for good in ("int(1,3600)?", "float(0.5,)", "match(^hci[0-9]+$)?", "port?", "password?", "device(subsystem=tty)"):
        assert RE_SCHEMA_ELEMENT.match(good), good


def test_schema_structure_is_what_the_supervisor_supports() -> None:
    # Leaf, dict of leaves, or a one-element list of a leaf or a dict of leaves; never deeper.
    for key, node in SCHEMA.items():
        if isinstance(node, str):
            continue
        if isinstance(node, dict):
            assert all(isinstance(v, str) for v in node.values()), key
            continue
        assert isinstance(node, list) and len(node) == 1, key
        (item,) = node
        assert isinstance(item, str) or (isinstance(item, dict) and all(isinstance(v, str) for v in item.values())), key


def test_options_and_schema_have_the_same_keys() -> None:
    assert list(OPTIONS) == list(SCHEMA)


def test_every_required_option_has_a_default() -> None:
    for key, node in SCHEMA.items():
        if isinstance(node, str) and not is_optional(node):
            assert OPTIONS.get(key) is not None, key
        else:
            assert key in OPTIONS, key


@pytest.mark.parametrize("key", list(OPTIONS))
def test_defaults_are_valid_under_their_schema_type(key: str) -> None:
    value, node = OPTIONS[key], SCHEMA[key]
    if isinstance(node, str):
        assert accepts(node, value), f"{key}: {value!r} vs {node}"
    elif isinstance(node, dict):
        assert isinstance(value, dict)
        assert set(value) <= set(node)
        assert all(accepts(node[k], v) for k, v in value.items())
        assert all(is_optional(t) for k, t in node.items() if k not in value)
    else:
        assert isinstance(value, list)
        for entry in value:
            assert all(accepts(node[0][k], v) for k, v in entry.items())


def test_accepts_helper_can_fail() -> None:
    assert not accepts("int(5,3600)", 4)
    assert not accepts("int(5,3600)", True)
    assert not accepts("float(0.5,30)", 31)
    assert not accepts("match(^hci[0-9]+$)", "hci")
    assert not accepts("list(a|b)", "c")
    assert not accepts("port?", 0)
    assert not accepts("bool", "true")
    assert not accepts("str?", None)
    assert accepts("float(0.5,30)", 3)


# --- agreement with the gateway ------------------------------------------------------------------


def _json_kind(spec: dict[str, Any]) -> dict[str, Any]:
    """The gateway schema spec with $ref resolved."""
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return {**GATEWAY["$defs"][name], **{k: v for k, v in spec.items() if k != "$ref"}}
    return spec


def _check_leaf(path: str, type_str: str, spec: dict[str, Any]) -> None:
    """The add-on type and the gateway's JSON Schema must accept the same values."""
    spec = _json_kind(spec)
    match = parse_type(type_str)
    kind = base_type(type_str)
    if kind.startswith("int"):
        assert spec["type"] == "integer", path
        assert (int(match["i_min"]), int(match["i_max"])) == (spec["minimum"], spec["maximum"]), path
    elif kind.startswith("float"):
        assert spec["type"] == "number", path
        assert (float(match["f_min"]), float(match["f_max"])) == (spec["minimum"], spec["maximum"]), path
    elif kind == "bool":
        assert spec["type"] == "boolean", path
    elif kind == "port":
        assert (spec["type"], spec["minimum"], spec["maximum"]) == ("integer", 1, 65535), path
    elif kind.startswith("match("):
        assert spec["pattern"] == match["match"], path
    elif kind.startswith("list("):
        assert match["list"].split("|") == spec["enum"], path
    else:
        assert kind in ("str", "password"), path
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        assert "string" in types, path  # devices.config: the gateway also takes an object


def test_schema_keys_match_the_gateway_settings() -> None:
    assert set(SCHEMA) == set(GATEWAY["properties"])
    assert set(SCHEMA["mqtt"]) == set(GATEWAY["properties"]["mqtt"]["properties"])
    assert set(SCHEMA["devices"][0]) == set(DEVICE_ITEM["properties"])


def test_schema_types_match_the_gateway_settings() -> None:
    props = GATEWAY["properties"]
    for key, node in SCHEMA.items():
        if isinstance(node, str):
            _check_leaf(key, node, props[key])
    for key, type_str in SCHEMA["mqtt"].items():
        assert is_optional(type_str), key  # every manual broker field is optional
        _check_leaf(f"mqtt.{key}", type_str, props["mqtt"]["properties"][key])
    for key, type_str in SCHEMA["devices"][0].items():
        if key == "type":
            continue
        _check_leaf(f"devices.{key}", type_str, DEVICE_ITEM["properties"][key])
        assert is_optional(type_str) == (key not in DEVICE_ITEM["required"]), key


def test_device_type_list_is_the_driver_registry() -> None:
    type_str = SCHEMA["devices"][0]["type"]
    assert not is_optional(type_str)
    assert parse_type(type_str)["list"].split("|") == devices.known_types()


def test_defaults_are_the_gateway_defaults() -> None:
    assert defaults() == OPTIONS


def test_options_written_from_the_defaults_load_as_the_default_settings(tmp_path: Path) -> None:
    # At every start the Supervisor writes the validated options to /data/options.json.
    path = tmp_path / "options.json"
    path.write_text(json.dumps(OPTIONS), "utf-8")
    assert load_settings(path, env={}) == Settings()


def test_a_full_ui_configuration_loads(tmp_path: Path) -> None:
    config = {
        "blocks": [{"start": 256, "count": 1}],
        "fields": [{"key": "battery_soc", "register": 256, "type": "u16"}],
    }
    options = {
        **OPTIONS,
        "mqtt": {"host": "broker.lan", "port": 8883, "username": "u", "password": "p", "tls": True},
        "devices": [
            {"mac_address": "c4:64:e3:38:3d:0e", "type": "renogy_charge_controller", "name": "Rover", "modbus_id": 17},
            {"mac_address": "D8:B6:73:BF:4F:75", "type": "renogy_battery", "variant": "pro"},
            {"mac_address": "AA:BB:CC:DD:EE:FF", "type": "generic_modbus", "config": json.dumps(config)},
        ],
    }
    item = SCHEMA["devices"][0]
    for entry in options["devices"]:
        assert all(accepts(item[k], v) for k, v in entry.items())
    assert all(accepts(SCHEMA["mqtt"][k], v) for k, v in options["mqtt"].items())
    path = tmp_path / "options.json"
    path.write_text(json.dumps(options), "utf-8")
    settings = load_settings(path, env={})
    assert [d.mac_address for d in settings.devices] == ["C4:64:E3:38:3D:0E", "D8:B6:73:BF:4F:75", "AA:BB:CC:DD:EE:FF"]
    assert settings.mqtt.is_set


SAMPLES: dict[str, list[Any]] = {
    "log_level": ["trace", "debug", "info", "notice", "warning", "error", "fatal", "verbose", "INFO"],
    "poll_interval": [4, 5, 30, 3600, 3601],
    "max_connections": [0, 1, 5, 6],
    "connect_timeout": [4, 5, 120, 121],
    "request_timeout": [0.4, 0.5, 3, 30, 30.5],
    "adapter": ["hci0", "hci12", "hci", "usb0", "hci0 "],
    "base_topic": ["blupow", "a/b", "a/#", "a/+", "$SYS", "a//b", "/a", "a/", "a b"],
    "gateway_id": ["gateway", "shed-2_b", "a b", "a/b", "ä"],
    "discovery_prefix": ["homeassistant", "ha/x", "ha/#"],
}


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, values in SAMPLES.items() for v in values])
def test_the_addon_ui_and_the_gateway_agree_on_values(tmp_path: Path, key: str, value: Any) -> None:
    """A value the add-on UI accepts must start the gateway; one it rejects, the gateway rejects too."""
    addon_ok = accepts(SCHEMA[key], value)
    path = tmp_path / "options.json"
    path.write_text(json.dumps({**OPTIONS, key: value}), "utf-8")
    try:
        load_settings(path, env={})
        gateway_ok = True
    except ConfigError:
        gateway_ok = False
    assert addon_ok == gateway_ok


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mac_address", "C4:64:E3:38:3D:0E"),
        ("mac_address", "c4:64:e3:38:3d:0e"),
        ("mac_address", "C4:64:E3:38:3D"),
        ("mac_address", "C4-64-E3-38-3D-0E"),
        ("modbus_id", 0),
        ("modbus_id", 255),
        ("modbus_id", 256),
        ("type", "renogy_dcc"),
        ("type", "renogy_rover"),
    ],
)
def test_the_addon_ui_and_the_gateway_agree_on_device_values(tmp_path: Path, field: str, value: Any) -> None:
    entry = {"mac_address": "C4:64:E3:38:3D:0E", "type": "renogy_dcc", field: value}
    addon_ok = accepts(SCHEMA["devices"][0][field], value)
    path = tmp_path / "options.json"
    path.write_text(json.dumps({**OPTIONS, "devices": [entry]}), "utf-8")
    try:
        load_settings(path, env={})
        gateway_ok = True
    except ConfigError:
        gateway_ok = False
    assert addon_ok == gateway_ok


# --- translations --------------------------------------------------------------------------------

TRANSLATIONS = load_yaml(ADDON / "translations" / "en.yaml")


def test_translations_cover_every_option() -> None:
    assert set(TRANSLATIONS) <= {"configuration", "network"}
    configuration = TRANSLATIONS["configuration"]
    assert list(configuration) == list(SCHEMA)
    for key, entry in configuration.items():
        assert isinstance(entry["name"], str) and entry["name"].strip(), key
        assert isinstance(entry.get("description"), str) and entry["description"].strip(), key
        assert set(entry) <= {"name", "description", "fields"}, key


@pytest.mark.parametrize("key", ["mqtt", "devices"])
def test_nested_translations_use_fields(key: str) -> None:
    nested = SCHEMA[key] if isinstance(SCHEMA[key], dict) else SCHEMA[key][0]
    fields = TRANSLATIONS["configuration"][key]["fields"]
    assert list(fields) == list(nested)
    for name, entry in fields.items():
        assert set(entry) <= {"name", "description"}, name
        assert entry["name"].strip() and entry["description"].strip(), name


def test_scalar_options_have_no_fields() -> None:
    for key, entry in TRANSLATIONS["configuration"].items():
        if isinstance(SCHEMA[key], str):
            assert "fields" not in entry, key


# --- repository.yaml and stray manifests ---------------------------------------------------------


def test_repository_yaml() -> None:
    repo = load_yaml(ROOT / "repository.yaml")
    assert set(repo) <= {"name", "url", "maintainer"}
    assert isinstance(repo["name"], str) and repo["name"].strip()
    assert re.match(r"^https?://[^\s/]+\.[^\s]+$", repo["url"])
    assert isinstance(repo.get("maintainer", ""), str)


def _repo_files() -> set[Path]:
    skip = {".git", ".venv", ".develop", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}
    found: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        found.update(Path(dirpath, f).relative_to(ROOT) for f in filenames)
    return found


def test_the_only_addon_manifest_is_blupow_config_yaml() -> None:
    # The Supervisor takes every config.{yaml,yml,json} in the repository for an add-on.
    names = {"config.yaml", "config.yml", "config.json"}
    on_disk = {p for p in _repo_files() if p.name in names}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    in_git = {Path(line) for line in tracked.splitlines() if Path(line).name in names}
    assert on_disk | in_git == {Path("blupow/config.yaml")}


# --- presentation files --------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_icon_and_logo() -> None:
    assert _png_size(ADDON / "icon.png") == (128, 128)
    width, height = _png_size(ADDON / "logo.png")
    assert 200 <= width <= 300 and 80 <= height <= 120


def test_docs_describe_every_option() -> None:
    docs = (ADDON / "DOCS.md").read_text("utf-8")
    for key in SCHEMA:
        assert f"### Option: `{key}`" in docs, key
    for key in [*SCHEMA["mqtt"], *SCHEMA["devices"][0]]:
        assert f"| `{key}` |" in docs, key
    for type_name in devices.known_types():
        assert f"`{type_name}`" in docs, type_name


def test_readme_and_changelog_exist() -> None:
    assert (ADDON / "README.md").read_text("utf-8").startswith("# BluPow")
    assert "## " in (ADDON / "CHANGELOG.md").read_text("utf-8")
