"""The gateway started the way the add-on container starts it.

``blupow-gateway run --options options.json --data-dir DIR`` with the Supervisor's
environment (``SUPERVISOR_TOKEN``; the Supervisor's address redirected to a fake
Supervisor on loopback), against a private Mosquitto that requires a password.
With ``mqtt: {}`` in the options the only place the credentials can come from is
the services API; with a broker host set in the options the Supervisor must not
be asked at all.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plugins.gateway import GatewayProcess
from tests.plugins.mosquitto import Mosquitto, MqttRecorder
from tests.plugins.supervisor import FakeSupervisor

pytestmark = pytest.mark.slow

STATE = "blupow/gateway/state"
ADDON_OPTIONS = {  # what the Supervisor writes to /data/options.json for the defaults
    "log_level": "debug",
    "poll_interval": 30,
    "max_connections": 2,
    "keep_connected": True,
    "connect_timeout": 20,
    "request_timeout": 3.0,
    "adapter": "hci0",
    "base_topic": "blupow",
    "gateway_id": "gateway",
    "discovery_prefix": "homeassistant",
    "mqtt": {},
    "devices": [],
}


def container_env(supervisor: FakeSupervisor) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLUPOW_", "SUPERVISOR_", "HASSIO_"))}
    return env | supervisor.env()


def wait_online(recorder: MqttRecorder, timeout: float = 30) -> None:
    recorder.wait_topic(STATE, timeout, 0, lambda m: m.json() == {"state": "online"})


def test_credentials_come_only_from_the_services_api(
    mosquitto: Mosquitto,
    fake_supervisor: FakeSupervisor,
    gateway_process: Callable[..., GatewayProcess],
    mqtt_recorder: Callable[..., MqttRecorder],
    tmp_path: Path,
) -> None:
    fake_supervisor.set_broker(mosquitto.host, mosquitto.port, mosquitto.username, mosquitto.password)
    # at boot the broker add-on has not registered yet: the gateway must wait for it
    fake_supervisor.queue(400)
    recorder = mqtt_recorder()
    gateway = gateway_process(ADDON_OPTIONS, env=container_env(fake_supervisor), data_dir=tmp_path / "data")
    wait_online(recorder)

    assert [r.path for r in fake_supervisor.requests][:2] == ["/services/mqtt", "/services/mqtt"]
    assert all(r.authorization == f"Bearer {fake_supervisor.token}" for r in fake_supervisor.requests)
    log = gateway.log()
    assert "not registered" in log  # the boot race is explained in the log
    assert mosquitto.password not in log and fake_supervisor.token not in log
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(15) == 0


def test_wrong_supervisor_credentials_are_refused_by_the_broker(
    mosquitto: Mosquitto,
    fake_supervisor: FakeSupervisor,
    gateway_process: Callable[..., GatewayProcess],
    mqtt_recorder: Callable[..., MqttRecorder],
    tmp_path: Path,
) -> None:
    """Control case: the broker really checks the password the services API hands over."""
    fake_supervisor.set_broker(mosquitto.host, mosquitto.port, mosquitto.username, "not-the-password")
    recorder = mqtt_recorder()
    gateway = gateway_process(ADDON_OPTIONS, env=container_env(fake_supervisor), data_dir=tmp_path / "data")
    with pytest.raises(TimeoutError):
        recorder.wait_topic(STATE, 4, 0, lambda m: m.json() == {"state": "online"})
    assert gateway.running  # keeps retrying instead of crashing
    assert "not-the-password" not in gateway.log()


def test_a_broker_override_ignores_the_supervisor(
    mosquitto: Mosquitto,
    fake_supervisor: FakeSupervisor,
    gateway_process: Callable[..., GatewayProcess],
    mqtt_recorder: Callable[..., MqttRecorder],
    tmp_path: Path,
) -> None:
    # the Supervisor would hand out a broker that does not exist
    fake_supervisor.set_broker("127.0.0.1", 1, "addons", "wrong")
    options = ADDON_OPTIONS | {"mqtt": mosquitto.options()}
    recorder = mqtt_recorder()
    gateway = gateway_process(options, env=container_env(fake_supervisor), data_dir=tmp_path / "data")
    wait_online(recorder)
    assert fake_supervisor.requests == []
    assert mosquitto.password not in gateway.log()
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(15) == 0


def test_no_access_to_the_mqtt_service_is_a_clear_failure(
    fake_supervisor: FakeSupervisor,
    gateway_process: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    fake_supervisor.status = 403
    gateway = gateway_process(ADDON_OPTIONS, env=container_env(fake_supervisor), data_dir=tmp_path / "data")
    assert gateway.wait(30) != 0  # the s6 finish script then halts the container
    assert "mqtt:need" in gateway.log()
