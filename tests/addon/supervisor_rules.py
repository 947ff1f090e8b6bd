"""The Supervisor's and the add-on linter's manifest rules, re-stated for tests (no Docker, no supervisor package).

Sources (see /work/shared/reference/addon-conventions.md §1.3-1.5, §5.1, §6): supervisor
``apps/validate.py`` (keys, allowed values), ``apps/options.py`` (``RE_SCHEMA_ELEMENT`` and
``AppOptions._single_validate``), frenck/action-addon-linter ``src/config.schema.json`` (defaults
it rejects, unknown keys).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "blupow"
S6_RC = ADDON / "rootfs" / "etc" / "s6-overlay" / "s6-rc.d"

REQUIRED_KEYS = {"name", "version", "slug", "description", "arch"}
RE_SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_SERVICE = re.compile(r"^(?P<service>mqtt|mysql):(?P<rights>provide|want|need)$")
SUPPORTED_ARCH = {"aarch64", "amd64"}

# Every manifest key the Supervisor knows today (unknown keys are dropped by the Supervisor and
# rejected by the linter). Deprecated keys are left out on purpose.
KNOWN_KEYS = {
    "name", "version", "slug", "description", "arch", "url", "machine", "startup", "boot", "init",
    "stage", "host_dbus", "host_network", "host_ipc", "host_uts", "host_pid", "privileged",
    "apparmor", "devices", "usb", "uart", "gpio", "udev", "video", "audio", "kernel_modules",
    "devicetree", "realtime", "journald", "map", "environment", "options", "schema", "services",
    "discovery", "hassio_api", "hassio_role", "homeassistant_api", "auth_api", "docker_api",
    "full_access", "stdin", "legacy", "ingress", "ingress_port", "ingress_entry", "ingress_stream",
    "panel_icon", "panel_title", "panel_admin", "ports", "ports_description", "webui", "backup",
    "backup_pre", "backup_post", "backup_exclude", "image", "timeout", "tmpfs", "ulimits",
    "homeassistant", "breaking_versions",
}  # fmt: skip

# Values the linter reports as "should be removed, it uses a default value".
LINTER_DEFAULTS: dict[str, Any] = {
    "startup": "application",
    "boot": "auto",
    "init": True,
    "apparmor": True,
    "stage": "stable",
    "backup": "hot",
    "hassio_role": "default",
    "timeout": 10,
    "ingress_port": 8099,
    "ingress_entry": "/",
    "panel_icon": "mdi:puzzle",
    "panel_admin": True,
    "host_dbus": False,
    "host_network": False,
    "host_ipc": False,
    "host_uts": False,
    "host_pid": False,
    "usb": False,
    "uart": False,
    "gpio": False,
    "udev": False,
    "video": False,
    "audio": False,
    "kernel_modules": False,
    "devicetree": False,
    "realtime": False,
    "journald": False,
    "hassio_api": False,
    "homeassistant_api": False,
    "auth_api": False,
    "docker_api": False,
    "full_access": False,
    "stdin": False,
    "legacy": False,
    "ingress": False,
    "ingress_stream": False,
    "tmpfs": False,
    "map": [],
    "breaking_versions": [],
}

# The Supervisor's option type grammar (RE_SCHEMA_ELEMENT), one alternative per line.
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool|email|url|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?"
    r"|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text("utf-8"))


def manifest() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ADDON / "config.yaml")
    return data


def is_optional(type_str: str) -> bool:
    return type_str.endswith("?")


def base_type(type_str: str) -> str:
    return type_str[:-1] if is_optional(type_str) else type_str


def parse_type(type_str: str) -> re.Match[str]:
    match = RE_SCHEMA_ELEMENT.match(type_str)
    if match is None:
        raise ValueError(f"not a Supervisor option type: {type_str!r}")
    return match


def _in_range(value: float, low: str | None, high: str | None) -> bool:
    return (low is None or value >= float(low)) and (high is None or value <= float(high))


def accepts(type_str: str, value: Any) -> bool:
    """Would the Supervisor accept ``value`` for a leaf of this type (AppOptions._single_validate)?

    Stricter than the Supervisor on one point: no coercion from strings, because a default in our
    manifest should already have the right type.
    """
    match = parse_type(type_str)
    kind = base_type(type_str)
    if value is None:
        return False  # "Missing required option"
    if kind.startswith("str") or kind.startswith("password"):
        low, high = match["s_min"] or match["p_min"], match["s_max"] or match["p_max"]
        return isinstance(value, str) and _in_range(len(value), low, high)
    if kind.startswith("int"):
        return (
            isinstance(value, int) and not isinstance(value, bool) and _in_range(value, match["i_min"], match["i_max"])
        )
    if kind.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok and _in_range(float(value), match["f_min"], match["f_max"])
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "port":
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
    if kind.startswith("match("):
        return re.match(match["match"], str(value)) is not None
    if kind.startswith("list("):
        return str(value) in match["list"].split("|")
    raise ValueError(f"type {type_str!r} is not handled by this test helper")


def leaves(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, str, int]]:
    """(path, type string, depth) of every leaf in a manifest schema."""
    found: list[tuple[str, str, int]] = []

    def walk(node: Any, path: str, depth: int) -> None:
        if isinstance(node, str):
            found.append((path, node, depth))
        elif isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else key, depth + 1)
        elif isinstance(node, list):
            for child in node:
                walk(child, f"{path}[]", depth + 1)
        else:
            raise TypeError(f"{path}: unexpected schema node {node!r}")

    walk(schema, prefix, 0)
    return found
