"""An in-memory Modbus link to a simulated device or module (the ``ModbusLink`` protocol of devices/base.py).

It goes through the same bytes as the BLE transport: the request frame is
built with :mod:`..modbus`, answered by ``respond`` of a
:class:`~.base.SimulatedDevice` or of a :class:`~.module.SimulatedModule` (which
routes it to the unit at the addressed ID), split into notifications by
``chunks`` and put back together by :class:`..modbus.ResponseAssembler`.
Drivers, the gateway's poll loop and the benchmarks use it at zero latency; no
BlueZ, no D-Bus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NoReturn

from .. import modbus

# The BLE link's error, so callers catch one class for both links (it is a
# TimeoutError). Importing transport pulls in bleak, which the gateway needs anyway.
from ..transport import ReplyTimeout
from .base import Responder

__all__ = ["ReplyTimeout", "SimulatedLink"]


class SimulatedLink:
    """Talk Modbus to one simulated device or module, one request at a time like a BLE link."""

    def __init__(self, device: Responder, *, timeout: float = 2.0, latency: float | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.device = device
        self.timeout = timeout
        # None: the answering device's behaviour.latency; a number replaces it, but
        # a unit with the "late" fault still answers late
        self.latency = latency
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
        arrives within ``timeout`` (no answer, wrong id, bad CRC, model gap,
        a collision on a module's bus)
        and :class:`..modbus.ModbusException` for an exception reply.
        """
        async with self._lock:
            self.sent.append(request.frame)
            answer = self.device.respond(request.frame, self.latency)
            if answer is None or answer[1] >= self.timeout:
                await self._time_out(request, self.timeout)
            reply, latency = answer
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
