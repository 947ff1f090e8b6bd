"""Upgrading from the release before modules and units loses nothing (issue 12, point 5).

``fixtures/release-0.1.0/`` was written by the release gateway itself (commit 24f5d1a), not
by hand: three devices (a Rover added by command with a name, a battery added with
``modbus_id: 48``, an inverter from the add-on options renamed by command), polled until
discovery was complete. It holds that gateway's ``devices.json`` (schema 1) and
``published.json``, and in ``release.json`` what it published: every discovery topic with
its unique_id, state and availability topics and device identifiers.

The current gateway is started on a copy of those files with the same options and the same
devices on the air; it must publish exactly the same topics and ids (dashboards, entity ids
and long-term statistics hang on them) and keep every record and override.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from blupow_gateway.settings import DeviceOption
from blupow_gateway.store import DeviceStore
from tests.plugins.gateway import GatewayFactory, SimWorld, wait_until
from tests.plugins.mosquitto import Mosquitto, aretained

RELEASE = Path(__file__).parent / "fixtures" / "release-0.1.0"


def published(retained: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """The identity of every discovery config, in the shape release.json keeps it."""
    configs = {}
    for topic, payload in retained.items():
        if topic.startswith("homeassistant/") and payload:
            config = json.loads(payload)
            configs[topic] = {
                "unique_id": config.get("unique_id"),
                "state_topic": config.get("state_topic"),
                "availability": config.get("availability"),
                "device_identifiers": config.get("device", {}).get("identifiers"),
                "command_topic": config.get("command_topic"),
            }
    return configs


async def test_a_release_installation_keeps_its_ids_topics_and_records(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    release = json.loads((RELEASE / "release.json").read_text())
    data = tmp_path / "data"
    data.mkdir()
    for name in ("devices.json", "published.json"):
        shutil.copy(RELEASE / name, data / name)
    original = (data / "devices.json").read_bytes()
    assert json.loads(original)["schema_version"] == 1
    for kind, mac in (
        ("controller", "C4:64:E3:00:01:01"),
        ("battery", "C4:64:E3:00:01:02"),
        ("inverter", "C4:64:E3:00:01:03"),
    ):
        sim_world.add(kind, mac=mac)
    options = tuple(DeviceOption(d["mac_address"], d["type"], name=d["name"]) for d in release["options_devices"])

    gateway = await gateway_factory(options, data_dir=data)
    keys = {"C464E3000101", "C464E3000102", "C464E3000103"}
    assert set(gateway.scheduler.units) == keys  # each record is its module's only unit, keyed by the MAC
    await wait_until(lambda: all(u.stats.successes for u in gateway.scheduler.units.values()), 10, "polled")
    await wait_until(lambda: keys <= set(gateway.publisher.discovered), 10, "discovery complete")
    await gateway.mqtt.flush()
    retained = await aretained(mosquitto)

    now = published(retained)
    # every entity of the release exactly as it was (same topics, unique_ids, state topics, devices)
    assert {topic: now.get(topic) for topic in release["discovery"]} == release["discovery"]
    # and nothing else but the energy counters added since (integrated by the gateway) and the
    # inverter's powers they integrate
    added = {topic.split("/")[2].split("_", 2)[2] for topic in set(now) - set(release["discovery"])}
    assert added == {
        "charge_energy",
        "discharge_energy",
        "load_energy",
        "solar_energy",
        "ac_input_power",
        "ac_input_energy",
        "battery_power",
        "battery_charge_energy",
        "battery_discharge_energy",
    }
    states = sorted(t for t in retained if t.endswith("/state") and not t.startswith("blupow/gateway"))
    assert states == release["state_topics"]
    # the records and the options override, as the release kept them
    by_key = {r.topic_id: r for r in gateway.records()}
    assert by_key["C464E3000101"].name == "Van solar"
    assert by_key["C464E3000102"].modbus_id == 48 and by_key["C464E3000102"].variant == "legacy"
    assert by_key["C464E3000103"].name == "Cabin inverter 2" and by_key["C464E3000103"].origin == "options"
    assert (data / "devices.json").read_bytes() == original  # loading alone rewrites nothing

    # the first change writes schema 2, which reads back to the same registry
    await gateway.processor.handle(b'{"command": "update_device", "mac_address": "C4:64:E3:00:01:01", "name": "Van"}')
    written = json.loads((data / "devices.json").read_text())
    assert written["schema_version"] == 2
    assert [d["unit_id"] for d in written["devices"]] == ["C464E3000101", "C464E3000102"]
    reloaded = DeviceStore(data).load()
    assert {r.topic_id for r in reloaded.devices} == {"C464E3000101", "C464E3000102"}
    assert reloaded.overrides == {"C464E3000103": {"name": "Cabin inverter 2"}}
    assert not list(data.glob("devices.json.*")), "nothing was rejected or moved aside"
