"""An in-memory Modbus link to a simulated device (the ``ModbusLink`` protocol of devices/base.py).

It goes through the same bytes as the BLE transport: the request frame is
built with :mod:`..modbus`, answered by :meth:`SimulatedDevice.handle`, split
into notifications by :meth:`SimulatedDevice.chunks` and put back together by
:class:`..modbus.ResponseAssembler`. Drivers, the gateway's poll loop and the
benchmarks use it at zero latency; no BlueZ, no D-Bus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NoReturn

from .. import modbus

# The BLE link's error, so callers catch one class for both links (it is a
# TimeoutError). Importing transport pulls in bleak, which the gateway needs anyway.
from ..transport import ReplyTimeout
from .base import SimulatedDevice

__all__ = ["ReplyTimeout", "SimulatedLink"]


class SimulatedLink:
    """Talk Modbus to one :class:`SimulatedDevice`, one request at a time like a BLE link."""

    def __init__(self, device: SimulatedDevice, *, timeout: float = 2.0, latency: float | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.device = device
        self.timeout = timeout
        self.latency = latency  # None: the device's behaviour.latency
        self.sent: list[bytes] = []
        self.timeouts = 0
        self._lock = asyncio.Lock()

    async def read_registers(self, slave_id: int, start: int, count: int) -> list[int]:
        words = await self.exchange(modbus.Request.read(slave_id, start, count))
        assert isinstance(words, list)
        return words

    async def write_register(self, slave_id: int, register: int, value: int) -> None:
        await self.exchange(modbus.Request.write_single(slave_id, register, value))

    async def write_registers(self, slave_id: int, start: int, values: Sequence[int]) -> None:
        await self.exchange(modbus.Request.write_multiple(slave_id, start, values))

    async def exchange(self, request: modbus.Request) -> list[int] | int:
        """Send one request and return the parsed reply.

        Raises :class:`ReplyTimeout` (a TimeoutError) when no valid frame
        arrives within ``timeout`` (no answer, wrong id, bad CRC, model gap)
        and :class:`..modbus.ModbusException` for an exception reply.
        """
        async with self._lock:
            self.sent.append(request.frame)
            reply = self.device.handle(request.frame)
            latency = self.device.behaviour.latency if self.latency is None else self.latency
            if reply is None or latency >= self.timeout:
                await self._time_out(request, self.timeout)
            await asyncio.sleep(latency)
            assembler = modbus.ResponseAssembler(request)
            for chunk in self.device.chunks(reply):
                frame = assembler.feed(chunk)
                if frame is not None:
                    return modbus.parse_response(frame, request)
            # bytes arrived but never formed a valid frame (e.g. corrupted CRC)
            await self._time_out(request, self.timeout - latency)

    async def _time_out(self, request: modbus.Request, wait: float) -> NoReturn:
        await asyncio.sleep(max(0.0, wait))
        self.timeouts += 1
        raise ReplyTimeout(
            f"no reply from id {request.slave_id:#04x} to function {request.function:#04x} "
            f"at {request.address:#06x} within {self.timeout:g} s"
        )
