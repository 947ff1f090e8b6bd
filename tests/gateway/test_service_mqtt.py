"""The asyncio MQTT client on its own: last will, refused logins, a broker that is away, resubscribing."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import pytest

from blupow_gateway.mqtt import Message, MqttClient, Will, encode
from blupow_gateway.supervisor import BrokerConfig
from tests.plugins.gateway import wait_until
from tests.plugins.mosquitto import Mosquitto, aretained

WILL = Will("test/gw/state", json.dumps({"state": "offline"}))


def broker(mosquitto: Mosquitto, password: str | None = None) -> BrokerConfig:
    return BrokerConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        username=mosquitto.username,
        password=password or mosquitto.password,
        tls=False,
        source="options",
    )


def test_encode() -> None:
    assert encode(None) == b""
    assert encode("online") == b"online"
    assert encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_encode_refuses_non_finite_numbers(number: float) -> None:
    """Python's json writes NaN/Infinity, which is not JSON: Home Assistant would reject the state."""
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode({"pv_power": number})
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode({"cells": [3.3, number]})


async def test_a_non_finite_payload_is_refused_not_published(
    mosquitto: Mosquitto, mqtt_recorder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = mqtt_recorder()
    client = MqttClient(broker(mosquitto), client_id="t7", will=WILL)
    await client.start()
    await wait_until(lambda: client.connected, 10)
    with caplog.at_level(logging.ERROR, logger="blupow_gateway.mqtt"):
        assert client.publish("test/bad", {"pv_power": math.inf}, qos=1, retain=True) is False
        assert client.publish("test/bad", {"x": math.nan}, qos=1, queue_offline=True) is False
    assert [r.getMessage() for r in caplog.records] == [
        "Not publishing to test/bad: the payload holds NaN or Infinity, which is not JSON"
    ] * 2
    # the client carries on: the next message goes out, the refused ones never did
    assert client.publish("test/good", {"pv_power": 1.5}, qos=1)
    assert (await recorder.await_topic("test/good", 5)).json() == {"pv_power": 1.5}
    assert recorder.on("test/bad") == []
    # the last messages at shutdown go through the same check
    await client.stop(last=[("test/last", {"x": -math.inf}, 1, True), ("test/gw/state", {"state": "offline"}, 1, True)])
    retained = await aretained(mosquitto, "test/#")
    assert "test/last" not in retained and "test/bad" not in retained
    assert json.loads(retained["test/gw/state"]) == {"state": "offline"}


async def test_connect_publish_subscribe_and_last_will(mosquitto: Mosquitto, mqtt_recorder: Any) -> None:
    recorder = mqtt_recorder()
    received: list[Message] = []
    connects: list[int] = []
    client = MqttClient(broker(mosquitto), client_id="t1", will=WILL, keepalive=5)
    client._on_connect_cb = lambda: connects.append(1)
    client.subscribe("test/in/#", received.append)
    await client.start()
    await wait_until(lambda: client.connected, 10)
    assert connects == [1]
    assert client.publish("test/out", {"x": 1}, qos=1, retain=True)
    await recorder.apublish("test/in/a", "hello")
    await wait_until(lambda: bool(received), 5)
    assert (received[0].topic, received[0].payload, received[0].retain) == ("test/in/a", b"hello", False)
    out = await recorder.await_topic("test/out", 5)
    assert out.json() == {"x": 1}
    # a vanished client (no DISCONNECT) makes the broker publish the will
    since = recorder.mark()
    client._client.socket().close()  # type: ignore[union-attr]
    will = await recorder.await_topic("test/gw/state", 15, since)
    assert will.json() == {"state": "offline"}
    await client.stop()


async def test_clean_stop_publishes_its_last_messages(mosquitto: Mosquitto) -> None:
    client = MqttClient(broker(mosquitto), client_id="t2", will=WILL)
    await client.start()
    await wait_until(lambda: client.connected, 10)
    started = time.monotonic()
    await client.stop(last=[("test/gw/state", {"state": "offline"}, 1, True)], grace=2)
    assert time.monotonic() - started < 2
    retained = await aretained(mosquitto, "test/#")
    assert json.loads(retained["test/gw/state"]) == {"state": "offline"}


async def test_wrong_password_is_retried_quietly_and_never_crashes(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    client = MqttClient(broker(mosquitto, "wrong-password"), client_id="t3", will=WILL, reconnect_max=1)
    with caplog.at_level(logging.DEBUG, logger="blupow_gateway.mqtt"):
        await client.start()
        await wait_until(lambda: client._failures >= 3, 15, "three refused attempts")
        assert not client.connected
        assert client.publish("test/x", "dropped") is False  # not connected: not queued
        await client.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # the first refusal is an error; the retries do not flood the log
    assert "refused the connection: Not authorized" in errors[0].getMessage()
    assert "wrong-password" not in caplog.text


async def test_broker_down_at_start_then_up(mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    mosquitto.stop()
    client = MqttClient(broker(mosquitto), client_id="t4", will=WILL, reconnect_max=2)
    received: list[Message] = []
    client.subscribe("test/in", received.append)
    with caplog.at_level(logging.INFO, logger="blupow_gateway.mqtt"):
        await client.start()
        await asyncio.sleep(1.5)
        assert not client.connected
        await asyncio.to_thread(mosquitto.start)
        await wait_until(lambda: client.connected, 15, "connected once the broker is up")
    assert "Cannot reach the MQTT broker" in caplog.text
    # subscriptions made before the first connection are in place
    from tests.plugins.mosquitto import MqttRecorder

    recorder = MqttRecorder(mosquitto).connect()
    try:
        await recorder.apublish("test/in", "x")
        await wait_until(lambda: bool(received), 5)
    finally:
        recorder.close()
        await client.stop()


async def test_subscriptions_are_renewed_after_a_broker_restart(mosquitto: Mosquitto) -> None:
    client = MqttClient(broker(mosquitto), client_id="t5", will=WILL, reconnect_max=2)
    received: list[Message] = []
    client.subscribe("test/in", received.append)
    await client.start()
    await wait_until(lambda: client.connected, 10)
    await asyncio.to_thread(mosquitto.restart)
    await wait_until(lambda: client.connections == 2 and client.connected, 20, "reconnected")
    from tests.plugins.mosquitto import MqttRecorder

    recorder = MqttRecorder(mosquitto).connect()
    try:
        await recorder.apublish("test/in", "after restart")
        await wait_until(lambda: bool(received), 5)
        assert received[0].payload == b"after restart"
    finally:
        recorder.close()
        await client.stop()


async def test_a_failing_handler_does_not_stop_delivery(mosquitto: Mosquitto, mqtt_recorder: Any) -> None:
    recorder = mqtt_recorder()
    client = MqttClient(broker(mosquitto), client_id="t6", will=WILL)
    seen: list[bytes] = []

    def handler(message: Message) -> None:
        seen.append(message.payload)
        if message.payload == b"boom":
            raise RuntimeError("handler bug")

    client.subscribe("test/in", handler)
    await client.start()
    await wait_until(lambda: client.connected, 10)
    await recorder.apublish("test/in", "boom")
    await recorder.apublish("test/in", "fine")
    await wait_until(lambda: seen == [b"boom", b"fine"], 5)
    assert client.connected
    await client.stop()


def tls_broker(mosquitto_tls: Mosquitto) -> BrokerConfig:
    return BrokerConfig(
        host=mosquitto_tls.host,
        port=mosquitto_tls.port,
        username=mosquitto_tls.username,
        password=mosquitto_tls.password,
        tls=True,
        source="options",
    )


async def test_tls_with_a_trusted_certificate(mosquitto_tls: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(mosquitto_tls.ca_path))  # the CA the system would trust
    from tests.plugins.mosquitto import MqttRecorder

    recorder = MqttRecorder(mosquitto_tls).connect()
    client = MqttClient(tls_broker(mosquitto_tls), client_id="tls1", will=WILL)
    assert client.endpoint.startswith("mqtts://")
    try:
        await client.start()
        await wait_until(lambda: client.connected, 10)
        client.publish("test/tls", "secret-free", qos=1)
        message = await recorder.await_topic("test/tls", 5)
        assert message.payload == b"secret-free"
    finally:
        recorder.close()
        await client.stop()


async def test_tls_refuses_an_untrusted_certificate(
    mosquitto_tls: Mosquitto, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    empty = tmp_path / "no-ca.pem"
    empty.write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    client = MqttClient(tls_broker(mosquitto_tls), client_id="tls2", will=WILL, reconnect_max=1)
    with caplog.at_level(logging.WARNING, logger="blupow_gateway.mqtt"):
        await client.start()
        await wait_until(lambda: client._failures >= 2, 15, "two failed attempts")
        assert not client.connected
        await client.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
