"""AppArmor profile, Dockerfile (install steps, health check), .dockerignore, docker-compose.yml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from blupow_gateway.settings import load_settings
from tests.addon.supervisor_rules import ADDON, ROOT, load_yaml, manifest

APPARMOR = ADDON / "apparmor.txt"
DOCKERFILE = ADDON / "Dockerfile"
HEARTBEAT = "/tmp/blupow-heartbeat"


# --- AppArmor ------------------------------------------------------------------------------------


def apparmor_rules() -> list[str]:
    """Rule text without comments (``#include`` is a directive, not a comment)."""
    rules = []
    for line in APPARMOR.read_text("utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#include") or (stripped and not stripped.startswith("#")):
            rules.append(stripped)
    return rules


def test_apparmor_has_exactly_one_profile_named_after_the_slug() -> None:
    # The Supervisor reads the profile name from the only "profile" line and renames it.
    profiles = [line for line in apparmor_rules() if re.match(r"^profile\s", line)]
    assert len(profiles) == 1
    assert re.match(rf"^profile {manifest()['slug']} flags=\(attach_disconnected,mediate_deleted\) \{{$", profiles[0])


def test_apparmor_structure() -> None:
    rules = apparmor_rules()
    text = "\n".join(rules)
    assert rules[0] == "#include <tunables/global>"
    assert "#include <abstractions/base>" in rules
    assert text.count("{") == text.count("}")
    expected = [
        # s6-overlay v3 and bashio
        "/init ix,",
        "/bin/** ix,",
        "/usr/bin/** ix,",
        "/run/{s6,s6-rc*,service}/** ix,",
        "/package/** ix,",
        "/command/** ix,",
        "/run/{,**} rwk,",
        "/usr/lib/bashio/** ix,",
        "/tmp/** rwk,",
        # the gateway
        "/usr/local/bin/** ix,",
        "/data/** rw,",
        "network inet stream,",
        "network inet6 stream,",
        "network unix stream,",
        # BlueZ over the system bus
        "dbus (send, receive) bus=system peer=(name=org.bluez, label=unconfined),",
        "dbus (send, receive) bus=system interface=org.freedesktop.DBus peer=(label=unconfined),",
    ]
    missing = [rule for rule in expected if rule not in rules]
    assert missing == []
    assert "interface=org.bluez.*" in text
    assert "path=/org/bluez{,/**}" in text


def test_apparmor_grants_nothing_dangerous() -> None:
    text = "\n".join(apparmor_rules())
    assert "capability," not in text  # no blanket capabilities
    assert not re.search(r"^\s*network,\s*$", text, re.MULTILINE)  # no blanket network (raw, bluetooth ...)
    assert "mount" not in text
    assert "complain" not in text  # the learning mode must not ship


def find_apparmor_parser() -> str | None:
    found = shutil.which("apparmor_parser")
    return found or next((p for p in ("/usr/sbin/apparmor_parser", "/sbin/apparmor_parser") if Path(p).exists()), None)


def test_apparmor_parses() -> None:
    parser = find_apparmor_parser()
    if parser is None:
        pytest.skip("apparmor_parser is not installed (apt-get install apparmor); structure was checked above")
    # -Q: parse and compile only, never load into the kernel; -K: no cache.
    result = subprocess.run(
        [parser, "-Q", "-K", str(APPARMOR)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_apparmor_parser_catches_mistakes(tmp_path: Path) -> None:
    """The parse test above can fail: a broken copy of the profile is rejected."""
    parser = find_apparmor_parser()
    if parser is None:
        pytest.skip("apparmor_parser is not installed")
    broken = tmp_path / "broken.txt"
    broken.write_text(APPARMOR.read_text("utf-8").replace("dbus (send, receive)", "dbus (sned, receive)", 1), "utf-8")
    result = subprocess.run([parser, "-Q", "-K", str(broken)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


# --- Dockerfile ----------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text("utf-8").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1].strip() + " "
            continue
        joined.append((current + line.strip()).strip())
        current = ""
    assert current == "", "dangling line continuation"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


def args_of(name: str) -> list[str]:
    return [args for instr, args in instructions() if instr == name]


def test_base_image_is_pinned() -> None:
    (base,) = args_of("FROM")
    assert base == "ghcr.io/home-assistant/base-python:3.13-alpine3.22"
    assert instructions()[0][0] == "FROM"


def test_build_args() -> None:
    names = {a.split("=", 1)[0] for a in args_of("ARG")}
    assert {"BUILD_ARCH", "BUILD_VERSION"} <= names


def test_installs_exactly_the_tested_requirements_then_the_package() -> None:
    runs = args_of("RUN")
    copies = args_of("COPY")
    req_copy = next(i for i, (ins, a) in enumerate(instructions()) if ins == "COPY" and "requirements.txt" in a)
    req_install = next(i for i, (ins, a) in enumerate(instructions()) if ins == "RUN" and "-r " in a)
    pkg_install = next(i for i, (ins, a) in enumerate(instructions()) if ins == "RUN" and "--no-deps" in a)
    assert req_copy < req_install < pkg_install
    assert any(c.split()[0] == "gateway/requirements.txt" for c in copies)
    assert any(c.split()[0] == "gateway/" for c in copies)
    req_run = next(r for r in runs if "-r " in r)
    assert re.search(r"pip install .*-r \S*requirements\.txt", req_run)
    pkg_run = next(r for r in runs if "--no-deps" in r)
    assert re.search(r"pip install .*--no-deps \S*gateway", pkg_run)
    assert "rootfs /" in copies


def test_every_copy_source_exists() -> None:
    for args in args_of("COPY"):
        source = args.split()[0]
        assert (ADDON / source).exists(), source


def test_requirements_pin_every_runtime_dependency() -> None:
    pyproject = tomllib.loads((ADDON / "gateway" / "pyproject.toml").read_text("utf-8"))
    wanted = {re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0].lower() for dep in pyproject["project"]["dependencies"]}
    pins = {}
    for raw in (ADDON / "gateway" / "requirements.txt").read_text("utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[name.lower()] = version
    assert wanted <= set(pins)


def test_environment_and_labels() -> None:
    assert "PYTHONUNBUFFERED=1" in args_of("ENV")
    labels = " ".join(args_of("LABEL"))
    for label in (
        "org.opencontainers.image.title",
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
        "io.hass.arch",
        "io.hass.type",
    ):
        assert label in labels, label


def healthcheck_command() -> list[str]:
    (args,) = args_of("HEALTHCHECK")
    assert re.search(r"--interval=\d+s", args) and re.search(r"--start-period=\d+s", args)
    command: list[str] = json.loads(args[args.index("CMD") + 3 :].strip())
    assert command[0] == "python3"
    return command


def run_healthcheck(heartbeat: Path) -> int:
    command = healthcheck_command()
    assert sum(HEARTBEAT in part for part in command) == 1
    command = [sys.executable, *(part.replace(HEARTBEAT, str(heartbeat)) for part in command[1:])]
    return subprocess.run(command, check=False, capture_output=True, timeout=30).returncode


def test_healthcheck_reads_the_documented_heartbeat(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"
    assert run_healthcheck(heartbeat) == 1  # not started yet
    heartbeat.touch()
    assert run_healthcheck(heartbeat) == 0  # fresh
    old = time.time() - 600
    os.utime(heartbeat, (old, old))
    assert run_healthcheck(heartbeat) == 1  # stuck


def test_healthcheck_path_matches_the_gateway() -> None:
    from blupow_gateway import service

    assert service.HEARTBEAT_DEFAULT == HEARTBEAT


def test_dockerignore_keeps_caches_and_tests_out() -> None:
    patterns = {
        line.strip()
        for line in (ADDON / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"**/__pycache__", "**/*.egg-info", "**/.pytest_cache", "gateway/tests"} <= patterns
    assert not {"gateway", "gateway/", "rootfs", "rootfs/"} & patterns


# --- docker compose (no Supervisor) --------------------------------------------------------------


def test_compose_runs_the_addon_image_with_options_and_dbus() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    service = compose["services"]["blupow"]
    assert (ROOT / service["build"]["context"] / "Dockerfile") == DOCKERFILE
    volumes = service["volumes"]
    assert "./options.json:/data/options.json:ro" in volumes
    assert "/run/dbus:/run/dbus:ro" in volumes
    assert any(v.split(":")[1] == "/data" for v in volumes)
    assert not service.get("privileged")
    assert "cap_add" not in service
    grace = service["stop_grace_period"]
    assert int(grace.rstrip("s")) == manifest()["timeout"]


def test_example_options_are_valid(tmp_path: Path) -> None:
    example = ROOT / "docs" / "options.example.json"
    settings = load_settings(example, env={})
    assert settings.mqtt.is_set  # without a Supervisor the broker must be given
    assert settings.devices


def test_standalone_docs() -> None:
    text = (ROOT / "docs" / "standalone.md").read_text("utf-8")
    for needle in ("docker compose up", "/run/dbus", "options.json", "BLUPOW_MQTT_PASSWORD", "mqtt.host"):
        assert needle in text, needle
