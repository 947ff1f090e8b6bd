"""The gateway as users run it: ``blupow-gateway run`` as a subprocess, real bleak over the fake BlueZ
of ``blupow-sim``, a private Mosquitto with a password; signals, SIGKILL, broker restarts.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway.store import DeviceStore
from tests.plugins.gateway import GatewayProcess, gateway_options
from tests.plugins.mosquitto import Mosquitto, MqttRecorder, retained_snapshot

pytestmark = pytest.mark.slow

CMD = "blupow/gateway/command"
STATE = "blupow/gateway/state"


def mac_id(mac: str) -> str:
    return mac.replace(":", "")


def wait_online(recorder: MqttRecorder, since: int = 0, timeout: float = 20) -> None:
    recorder.wait_topic(STATE, timeout, since, lambda m: m.json() == {"state": "online"})


def test_end_to_end_over_ble_and_sigterm(
    mosquitto: Mosquitto,
    mqtt_recorder: Callable[..., MqttRecorder],
    gateway_process: Callable[..., GatewayProcess],
    sim_process: Callable[..., Any],
) -> None:
    sim = sim_process("controller,battery,dcc")
    controller, battery = sim.device("renogy_charge_controller"), sim.device("renogy_battery")
    recorder = mqtt_recorder()
    options = gateway_options(
        mosquitto, max_connections=1, devices=[{"mac_address": controller.mac, "type": "renogy_charge_controller"}]
    )
    gateway = gateway_process(options, env=sim.env())
    wait_online(recorder)
    state = recorder.wait_topic(f"blupow/{mac_id(controller.mac)}/state", 30).json()
    truth = sim.control("truth", mac=controller.mac)["truth"]
    assert state["model"] == truth["model"]
    assert state["battery_voltage"] == truth["battery_voltage"]

    timings = []
    for mac, type_name in (
        (battery.mac, "renogy_battery"),
        ("AA:BB:CC:00:00:01", "renogy_dcc"),
        ("AA:BB:CC:00:00:02", "renogy_dcc"),
    ):
        started = time.monotonic()
        response = recorder.request(CMD, {"command": "add_device", "mac_address": mac, "type": type_name})
        timings.append((time.monotonic() - started) * 1000)
        assert response["status"] == "ok", response
        time.sleep(0.2)
    print("add_device answered by the subprocess gateway in " + ", ".join(f"{t:.1f}" for t in timings) + " ms")
    assert sorted(timings)[1] < 100
    battery_state = recorder.wait_topic(f"blupow/{mac_id(battery.mac)}/state", 30).json()
    assert len(battery_state["cell_voltages"]) == 4
    recorder.wait_topic(f"blupow/{mac_id(battery.mac)}/availability", 10, match=lambda m: m.text == "online")
    # one connection at a time (max_connections: 1), measured by the fake BlueZ itself
    assert sim.control("stats")["stats"]["max_simultaneous_connections"] == 1
    assert gateway.heartbeat.exists()

    since = recorder.mark()
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(10) == 0
    stopped = time.monotonic() - started
    print(f"SIGTERM to exit: {stopped * 1000:.0f} ms")
    assert stopped < 5
    offline = recorder.wait_topic(STATE, 5, since)
    assert offline.json() == {"state": "offline"}
    assert json.loads(retained_snapshot(mosquitto, STATE)[STATE]) == {"state": "offline"}
    assert "Gateway stopped" in gateway.log()
    # every BLE connection was closed
    assert sim.control("stats")["stats"]["connections"] == 0


def test_password_is_in_no_log_and_no_topic(
    mosquitto: Mosquitto,
    mqtt_recorder: Callable[..., MqttRecorder],
    gateway_process: Callable[..., GatewayProcess],
    sim_process: Callable[..., Any],
) -> None:
    sim = sim_process("controller")
    controller = sim.device("renogy_charge_controller")
    recorder = mqtt_recorder()
    options = gateway_options(mosquitto, devices=[{"mac_address": controller.mac, "type": "renogy_charge_controller"}])
    gateway = gateway_process(options, env=sim.env())
    wait_online(recorder)
    recorder.wait_topic(f"blupow/{mac_id(controller.mac)}/state", 30)
    info = recorder.wait_topic("blupow/gateway/info", 5).json()
    assert info["settings"]["mqtt"] == {
        "host": mosquitto.host,
        "port": mosquitto.port,
        "username": mosquitto.username,
        "tls": False,
        "source": "options",
    }
    for command in ({"command": "health_check"}, {"command": "list_devices"}, {"command": "scan", "seconds": 1}):
        assert recorder.request(CMD, command)["status"] == "ok"
    mosquitto.restart()  # reconnect logging too
    wait_online(recorder, recorder.mark(), 30)
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(10) == 0
    secret = mosquitto.password.encode()
    assert len(recorder.messages) > 50
    leaked = [m.topic for m in recorder.messages if secret in m.payload or secret in m.topic.encode()]
    assert leaked == []
    log = gateway.log()
    assert "DEBUG" in log  # the most verbose level was on
    assert "Connected to the MQTT broker" in log
    assert mosquitto.password not in log


def test_devices_survive_sigkill_and_restart(
    mosquitto: Mosquitto,
    mqtt_recorder: Callable[..., MqttRecorder],
    gateway_process: Callable[..., GatewayProcess],
    sim_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    sim = sim_process("controller,dcc")
    controller, dcc = sim.device("renogy_charge_controller"), sim.device("renogy_dcc")
    recorder = mqtt_recorder()
    first = gateway_process(gateway_options(mosquitto), env=sim.env())
    wait_online(recorder)
    for device in (controller, dcc):
        response = recorder.request(CMD, {"command": "add_device", "mac_address": device.mac, "type": device.type_name})
        assert response["status"] == "ok"
    renamed = recorder.request(CMD, {"command": "update_device", "mac_address": dcc.mac, "name": "Van DCC"})
    assert renamed["status"] == "ok"
    since = recorder.mark()
    first.kill()  # SIGKILL right after the answers: no chance to flush anything
    # the broker publishes the last will
    assert recorder.wait_topic(STATE, 10, since).json() == {"state": "offline"}
    # BlueZ keeps the links a killed client had opened (the fake does the same), and a
    # connected module does not advertise: the restarted gateway must reuse those links.

    since = recorder.mark()
    second = gateway_process(gateway_options(mosquitto), env=sim.env())
    wait_online(recorder, since)
    listed = recorder.request(CMD, {"command": "list_devices"})["data"]["devices"]
    by_mac = {d["mac_address"]: d for d in listed}
    assert set(by_mac) == {controller.mac, dcc.mac}
    assert by_mac[dcc.mac]["name"] == "Van DCC"
    assert {d["origin"] for d in listed} == {"command"}
    for device in (controller, dcc):
        recorder.wait_topic(f"blupow/{mac_id(device.mac)}/state", 30, since)
    second.signal(signal.SIGTERM)
    assert second.wait(10) == 0


def test_sigkill_during_a_stream_of_changes_never_corrupts_the_registry(
    mosquitto: Mosquitto,
    mqtt_recorder: Callable[..., MqttRecorder],
    gateway_process: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    """Commands that were answered "ok" are on disk, whatever moment the SIGKILL hits."""
    recorder = mqtt_recorder()
    data_dir = tmp_path / "data"
    confirmed: dict[str, bool] = {}  # MAC -> present (True) / removed (False), as answered
    for round_no, kill_after in enumerate((3, 11, 19)):
        since = recorder.mark()
        gateway = gateway_process(gateway_options(mosquitto), data_dir=data_dir)
        wait_online(recorder, since)
        sent: dict[str, tuple[str, bool]] = {}
        for i in range(24):
            mac = f"AA:BB:CC:{round_no:02X}:00:{i:02X}"
            transaction = f"{round_no}-{i}"
            sent[transaction] = (mac, True)
            recorder.publish(
                CMD, {"command": "add_device", "mac_address": mac, "type": "renogy_dcc", "transaction": transaction}
            )
            if i % 4 == 3:  # remove one we added before
                old = f"AA:BB:CC:{round_no:02X}:00:{i - 2:02X}"
                sent[f"{transaction}r"] = (old, False)
                recorder.publish(
                    CMD, {"command": "remove_device", "mac_address": old, "transaction": f"{transaction}r"}
                )
        answered = 0
        deadline = time.monotonic() + 10
        while answered < kill_after and time.monotonic() < deadline:
            answered = sum(1 for m in recorder.on("blupow/gateway/response", since) if m.json()["transaction"] in sent)
            time.sleep(0.001)
        gateway.kill()
        answered_ok: set[str] = set()
        for message in recorder.on("blupow/gateway/response", since):
            body = message.json()
            if body["transaction"] in sent and body["status"] == "ok":
                mac, present = sent[body["transaction"]]
                confirmed[mac] = present
                answered_ok.add(body["transaction"])
        assert answered >= kill_after
        # A command can be on disk but unanswered (killed between the two); never the reverse.
        in_doubt = {mac for transaction, (mac, _) in sent.items() if transaction not in answered_ok}
        on_disk = {r.mac_address for r in DeviceStore(data_dir).load().devices}
        for mac, present in confirmed.items():
            if mac not in in_doubt:
                assert (mac in on_disk) is present, (mac, present)
        for mac in in_doubt:
            confirmed[mac] = mac in on_disk
        assert on_disk <= {mac for mac, _ in sent.values()} | set(confirmed)
    assert not list(data_dir.glob("devices.json.corrupt-*"))
    assert len(confirmed) >= 30


def test_broker_restart_is_survived(
    mosquitto: Mosquitto,
    mqtt_recorder: Callable[..., MqttRecorder],
    gateway_process: Callable[..., GatewayProcess],
    sim_process: Callable[..., Any],
) -> None:
    sim = sim_process("inverter")
    inverter = sim.device("renogy_inverter")
    recorder = mqtt_recorder()
    options = gateway_options(mosquitto, devices=[{"mac_address": inverter.mac, "type": "renogy_inverter"}])
    gateway = gateway_process(options, env=sim.env())
    wait_online(recorder)
    recorder.wait_topic(f"blupow/{mac_id(inverter.mac)}/state", 30)

    recorder.close()
    mosquitto.stop()
    time.sleep(3)  # the gateway retries meanwhile and must not crash
    assert gateway.running
    mosquitto.start()  # no persistence: every retained message is gone
    started = time.monotonic()
    recorder = mqtt_recorder()
    wait_online(recorder, 0, 40)
    print(f"gateway back online {time.monotonic() - started:.1f} s after the broker restart")
    config = f"homeassistant/sensor/blupow_{mac_id(inverter.mac)}_battery_voltage/config"
    recorder.wait_topic(config, 10)
    recorder.wait_topic(f"blupow/{mac_id(inverter.mac)}/availability", 10, match=lambda m: m.text == "online")
    recorder.wait_topic("blupow/gateway/info", 10)
    recorder.wait_topic(f"blupow/{mac_id(inverter.mac)}/state", 20)
    # commands work on the new connection
    assert recorder.request(CMD, {"command": "health_check"})["data"]["mqtt_connected"] is True
    assert "Lost the connection to the MQTT broker" in gateway.log()
    assert gateway.log().count("Traceback") == 0


def test_command_device_later_listed_in_options_is_taken_over(
    mosquitto: Mosquitto,
    mqtt_recorder: Callable[..., MqttRecorder],
    gateway_process: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    recorder = mqtt_recorder()
    first = gateway_process(gateway_options(mosquitto))
    wait_online(recorder)
    mac = "D8:B6:73:BF:4F:75"
    assert (
        recorder.request(CMD, {"command": "add_device", "mac_address": mac, "type": "renogy_inverter"})["status"]
        == "ok"
    )
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0

    since = recorder.mark()
    options = gateway_options(mosquitto, devices=[{"mac_address": mac, "type": "renogy_inverter", "name": "Main"}])
    second = gateway_process(options)
    wait_online(recorder, since)
    listed = recorder.request(CMD, {"command": "list_devices"})["data"]["devices"]
    assert [(d["mac_address"], d["origin"], d["name"]) for d in listed] == [(mac, "options", "Main")]
    second.wait_log("is now also listed in the add-on options: the options entry wins")
    assert json.loads((tmp_path / "data" / "devices.json").read_text())["devices"] == []
    second.signal(signal.SIGTERM)
    assert second.wait(10) == 0


def test_invalid_options_exit_with_an_error(
    mosquitto: Mosquitto, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_process(gateway_options(mosquitto, poll_interval=1))
    assert gateway.wait(10) == 1
    assert "options: poll_interval must be >= 5" in gateway.log()
