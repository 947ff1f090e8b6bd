"""``blupow-gateway``: run the gateway, or decode / probe / scan from a shell.

Exit codes: 0 success, 1 the device or adapter failed (probe/scan), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, modbus
from .devices import create_device, known_types
from .devices._stream import StreamDevice
from .schema import ConfigError


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit code 2."""


def _int(text: str) -> int:
    """Accept decimal or 0x-prefixed register numbers and ids."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blupow-gateway", description="Renogy BLE to MQTT gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway service")
    run.add_argument("--options", type=Path, help="add-on options file (JSON), e.g. /data/options.json")
    run.add_argument("--data-dir", type=Path, default=Path("/data"), help="where the device registry is kept")
    run.add_argument("--log-level", help="override log_level")
    run.add_argument("--mqtt-host", help="override mqtt.host (skips the Supervisor lookup)")
    run.add_argument("--mqtt-port", type=int, help="override mqtt.port")

    decode = sub.add_parser(
        "decode", help="decode one Modbus read reply, or one notified frame of a stream device (hex), into values"
    )
    decode.add_argument("--type", required=True, dest="type_name", help=f"device type ({', '.join(known_types())})")
    decode.add_argument("--start", type=_int, help="first register of the read, e.g. 0x0100 or 256 (Modbus types only)")
    decode.add_argument("--variant", help="device variant, e.g. legacy or pro for renogy_battery")
    decode.add_argument("--id", type=_int, dest="slave_id", help="require this Modbus id in the reply")
    decode.add_argument("--config", type=Path, help="generic_modbus config file (JSON)")
    decode.add_argument("hex", nargs="+", help="the reply bytes in hex; spaces and colons are ignored")

    probe = sub.add_parser("probe", help="connect once, read everything, print values and timings")
    probe.add_argument("mac", help="Bluetooth address, e.g. C4:64:E3:38:3D:0E")
    probe.add_argument("--type", required=True, dest="type_name")
    probe.add_argument("--id", type=_int, dest="slave_id", help="Modbus id (default depends on type)")
    probe.add_argument("--variant")
    probe.add_argument("--config", type=Path, help="generic_modbus config file (JSON)")
    probe.add_argument("--adapter", default="hci0")
    probe.add_argument("--connect-timeout", type=float, default=20.0)
    probe.add_argument("--request-timeout", type=float, default=3.0)

    module = sub.add_parser(
        "probe-module", help="list the devices behind one Bluetooth module (hub, daisy chain); read-only"
    )
    module.add_argument("mac", help="Bluetooth address of the BT-1/BT-2 or hub module")
    module.add_argument("--adapter", default="hci0")
    module.add_argument("--connect-timeout", type=float, default=20.0)
    module.add_argument("--wait", type=float, default=1.0, help="seconds each Modbus id may take to answer")
    module.add_argument("--json", action="store_true", help="print JSON instead of a table")

    scan = sub.add_parser("scan", help="list nearby BLE devices and the types they may be")
    scan.add_argument("--seconds", type=float, default=5.0)
    scan.add_argument("--adapter", default="hci0")
    scan.add_argument("--all", action="store_true", help="also list devices that are not recognised")
    scan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _load_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must hold a JSON object")
    return data


def _device(args: argparse.Namespace):
    try:
        return create_device(
            args.type_name,
            modbus_id=getattr(args, "slave_id", None),
            variant=args.variant,
            config=_load_config(args.config),
        )
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def parse_hex(parts: Sequence[str]) -> bytes:
    text = "".join(parts).replace(" ", "").replace(":", "").replace("0x", "")
    if len(text) % 2:
        raise UsageError(f"odd number of hex digits ({len(text)})")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError("not valid hex") from None


def cmd_decode(args: argparse.Namespace) -> int:
    device = _device(argparse.Namespace(**{**vars(args), "slave_id": None}))
    frame = parse_hex(args.hex)
    if isinstance(device, StreamDevice):
        return _decode_stream_frame(device, frame)
    if args.start is None:
        raise UsageError(f"--start is required for {device.type_name} (the first register of the read)")
    try:
        regs = modbus.parse_read_frame(frame, args.start, slave_id=args.slave_id)
    except (modbus.FrameError, modbus.ModbusException) as exc:
        raise UsageError(str(exc)) from None
    values = device.decode(regs)
    if not values:
        raise UsageError(
            f"no {device.type_name} field lies in registers {args.start:#06x}..{args.start + len(regs) - 1:#06x}"
        )
    print(json.dumps(values, ensure_ascii=False))
    return 0


def _decode_stream_frame(device: StreamDevice, frame: bytes) -> int:
    """One frame (a prefix is fine), checked as the gateway checks it: a rejected frame gives no values."""
    values, reason = device.decode_frame(frame)
    if reason is not None:
        raise UsageError(f"frame rejected ({reason.replace('_', ' ')}): the gateway would publish nothing from it")
    print(json.dumps(values, ensure_ascii=False))
    return 0


async def _probe(args: argparse.Namespace) -> int:
    from .transport import BleLink, LinkOptions, TransportError

    device = _device(args)
    options = LinkOptions(
        adapter=args.adapter, connect_timeout=args.connect_timeout, request_timeout=args.request_timeout
    )
    try:
        link = BleLink(args.mac, device, options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    started = time.monotonic()
    try:
        await link.connect()
        connected = time.monotonic()
        detected = None if args.variant else device.variant_for_name(link.name)
        if detected and detected != device.variant:
            # e.g. an RNGRBP… name means a Pro battery: other Modbus id and current scale
            device = _device(argparse.Namespace(**{**vars(args), "variant": detected}))
            link.device = device
        reading = await device.read(link)
        done = time.monotonic()
    except (TransportError, modbus.ModbusException) as exc:
        print(f"probe failed: {exc}", file=sys.stderr)
        return 1
    finally:
        await link.disconnect()
    report = {
        "mac_address": link.address,
        "name": link.name,
        "rssi": link.rssi,
        "type": device.type_name,
        "variant": device.variant,
        "modbus_id": device.modbus_id,
        "timings_ms": {
            "connect": round((connected - started) * 1000),
            "read": round((done - connected) * 1000),
            "requests": link.stats.requests,
        },
        "skipped": reading.skipped,
        "values": reading.values,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


async def _probe_module(args: argparse.Namespace) -> int:
    from . import probe
    from .devices import create_device
    from .transport import BleLink, LinkOptions, TransportError

    options = LinkOptions(adapter=args.adapter, connect_timeout=args.connect_timeout)
    try:  # every BT-1/BT-2 module has the same GATT layout: any of their drivers serves
        link = BleLink(args.mac, create_device("renogy_charge_controller"), options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        await link.connect()
        result = await probe.probe(link, args.wait)
    except TransportError as exc:
        print(f"{link.address} did not answer: {exc}", file=sys.stderr)
        return 1
    finally:
        await link.disconnect()
    if args.json:
        units = [u.to_json() for u in result.units]
        print(json.dumps({"mac_address": link.address, "summary": result.summary(), "units": units}, indent=2))
        return 0 if result.units else 1
    print(f"{link.address}: {result.summary()} ({result.seconds:g} s, Modbus ids tried: {len(result.tried)})")
    for u in result.units:
        print(f"  {u.modbus_id:>3}  {u.type:26} {u.variant or '-':9} {u.model or '-':18} {u.serial or '-'}")
    return 0 if result.units else 1


async def _scan(args: argparse.Namespace) -> int:
    from .transport import TransportError, scan

    try:
        results = await scan(args.seconds, args.adapter)
    except TransportError as exc:
        print(f"scan failed: {exc}", file=sys.stderr)
        return 1
    if not args.all:
        results = [r for r in results if r.types]
    if args.json:
        print(
            json.dumps(
                [{"mac_address": r.address, "name": r.name, "rssi": r.rssi, "types": list(r.types)} for r in results],
                indent=2,
            )
        )
        return 0
    print(f"{'MAC':17}  {'RSSI':>4}  {'NAME':24}  TYPES")
    for r in results:
        rssi = "" if r.rssi is None else str(r.rssi)
        print(f"{r.address:17}  {rssi:>4}  {(r.name or '-'):24}  {', '.join(r.types) or '-'}")
    if not results:
        print("no Renogy devices found (use --all to list every advertisement)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .service import main as service_main

    overrides: dict[str, Any] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.mqtt_host:
        overrides.setdefault("mqtt", {})["host"] = args.mqtt_host
    if args.mqtt_port:
        overrides.setdefault("mqtt", {})["port"] = args.mqtt_port
    return service_main(args.options, args.data_dir, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "decode":
            return cmd_decode(args)
        if args.command == "probe":
            return asyncio.run(_probe(args))
        if args.command == "scan":
            return asyncio.run(_scan(args))
        if args.command == "probe-module":
            return asyncio.run(_probe_module(args))
        return cmd_run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
