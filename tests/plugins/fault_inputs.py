"""Seeded generators of hostile input for the fault suite (tests/gateway/test_faults.py).

* :class:`CommandFuzzer` makes command payloads: valid commands of every kind,
  then mutated (keys dropped or added, values of the wrong type, huge strings,
  unusual Unicode, nested junk, extreme numbers, mangled MACs) and sometimes
  broken at the byte level (truncated, invalid UTF-8, trailing garbage, not an
  object). Every item says which ``transaction`` its response must echo.
* :func:`notification_stream` makes the bytes a BLE module might notify for one
  request: the genuine reply, chunked at random, mixed with junk, bit flips,
  truncation, duplicates and valid frames that answer other requests.

A fixed seed makes every run identical, so a failure can be replayed.
"""

from __future__ import annotations

import copy
import json
import math
import random
import string
from dataclasses import dataclass
from typing import Any

from blupow_gateway import modbus
from blupow_gateway.commands import MAX_PAYLOAD
from blupow_gateway.devices import drivers

MAC_POOL = tuple(f"AA:BB:CC:00:00:{i:02X}" for i in range(12))
GENERIC_CONFIG: dict[str, Any] = {
    "modbus_id": 1,
    "blocks": [{"start": 0x0100, "count": 2}],
    "fields": [
        {"key": "voltage", "register": 0x0100, "type": "u16", "scale": 0.1, "unit": "V"},
        {"key": "current", "register": 0x0101, "type": "s16", "scale": 0.01, "unit": "A"},
    ],
}
UNICODE_SAMPLES = (
    "Wohnmobil ☀️ Batterie",
    "\u202eevil\u202c",  # right-to-left override
    "zero\u200bwidth",
    "e\u0301\u0301\u0301",  # stacked combining marks
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀",  # astral plane
    "tab\tnew\nline",
    "nul\x00byte",
    "中文名称",
    "\ufeffbom",
    "\uffff\ufffe",
)
LONE_SURROGATES = ("\ud800", "x\udc00y", "\udbff")
EXTREME_NUMBERS: tuple[Any, ...] = (
    -1,
    0,
    255,
    256,
    2**31,
    2**63,
    10**300,
    1.5,
    -0.0,
    48.0,  # JSON Schema counts it as an integer; the gateway must store 48
    1e308,
    True,
    False,
    None,
)
RAW_NUMBERS = ("1e400", "-1e400", "1" + "0" * 400, "0.000000000000000000000000000001", "-0")
RAW_MARK = "\x01RAW\x01"  # replaced by a raw JSON number after serialising


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


@dataclass
class Fuzzed:
    """One payload and what its response must carry."""

    index: int
    payload: bytes
    transaction: Any  # what the response's ``transaction`` must be (None for non-objects)
    command: Any  # the request's "command" value, MISSING if it has none / is not an object
    mutations: list[str]

    def __repr__(self) -> str:
        shown = self.payload[:160] + (b"..." if len(self.payload) > 160 else b"")
        return f"Fuzzed(#{self.index} {self.mutations} {shown!r})"


def expected_envelope(payload: bytes) -> tuple[Any, Any]:
    """(transaction, command) a response must echo, from the documented rules, or (None, MISSING)."""
    if len(payload) > MAX_PAYLOAD:
        return None, MISSING
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, MISSING
    if not isinstance(data, dict):
        return None, MISSING
    return _echoable(data.get("transaction")), data.get("command", MISSING)


def _echoable(value: Any) -> Any:
    """A transaction that is not valid Unicode (a lone surrogate) cannot be echoed: the answer says null."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None
    except (RecursionError, ValueError):
        pass
    return value


def _reject(name: str) -> Any:
    raise ValueError(name)


class CommandFuzzer:
    """Valid commands, mutated; see the module docstring. ``surrogates`` adds lone UTF-16 surrogates."""

    def __init__(self, seed: int, *, surrogates: bool = False) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.surrogates = surrogates
        self.types = {name: [v.name for v in cls.variants] for name, cls in drivers().items()}

    # --- valid commands ---

    def mac(self) -> str:
        mac = self.rng.choice(MAC_POOL)
        style = self.rng.random()
        if style < 0.2:
            return mac.replace(":", "-").lower()
        if style < 0.3:
            return mac.replace(":", "")
        return mac

    def valid(self) -> dict[str, Any]:
        rng = self.rng
        command = rng.choices(
            ["add_device", "remove_device", "update_device", "list_devices", "scan", "poll_now", "health_check"],
            weights=[30, 15, 20, 5, 3, 7, 5],
        )[0]
        body: dict[str, Any] = {"command": command}
        if command == "add_device":
            type_name = rng.choice(sorted(self.types))
            body.update(mac_address=self.mac(), type=type_name)
            if type_name == "generic_modbus":
                body["config"] = copy.deepcopy(GENERIC_CONFIG)
            if rng.random() < 0.4:
                body["name"] = rng.choice(["Van", "Shed battery", "  padded  ", "Ünïcødé"])
            if rng.random() < 0.3:
                body["modbus_id"] = rng.choice([None, 1, 16, 48, 255])
            if self.types[type_name] and rng.random() < 0.3:
                body["variant"] = rng.choice(self.types[type_name])
            if rng.random() < 0.2:
                body["enabled"] = rng.random() < 0.5
        elif command == "remove_device":
            body["mac_address"] = self.mac()
        elif command == "update_device":
            body["mac_address"] = self.mac()
            for key, values in (
                ("name", ["Renamed", "Other name"]),
                ("enabled", [True, False]),
                ("modbus_id", [None, 1, 32, 255]),
                ("variant", [None]),
            ):
                if rng.random() < 0.35:
                    body[key] = rng.choice(values)
        elif command == "scan":
            body["seconds"] = rng.choice([1, 2, 5])
        elif command == "poll_now" and rng.random() < 0.5:
            body["mac_address"] = self.mac()
        return body

    # --- mutations ---

    def junk(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return rng.choice(EXTREME_NUMBERS)
        if kind == 1:
            return self.text()
        if kind == 2:
            return RAW_MARK
        if kind == 3:
            return ""
        if kind == 4:
            return rng.choice([[], {}, [None], {"": None}])
        if kind == 5:
            return self.nested(rng.randrange(1, 80))
        if kind == 6:
            return [self.junk(depth + 1) for _ in range(rng.randrange(1, 4))]
        if kind == 7:
            return {self.text()[:20] or "k": self.junk(depth + 1) for _ in range(rng.randrange(1, 4))}
        return rng.random() * 10 ** rng.randrange(-5, 20)

    def text(self) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.4:
            return rng.choice(UNICODE_SAMPLES)
        if pick < 0.5 and self.surrogates:
            return rng.choice(LONE_SURROGATES)
        if pick < 0.7:
            return "".join(rng.choice(string.printable) for _ in range(rng.randrange(0, 40)))
        return "".join(chr(rng.randrange(0x20, 0xD7FF)) for _ in range(rng.randrange(1, 30)))

    def nested(self, depth: int) -> Any:
        value: Any = self.rng.choice([1, "x", None, True])
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"a": value}
        return value

    def mangle_mac(self) -> str:
        rng = self.rng
        return rng.choice(
            [
                "AA:BB:CC:00:00",
                "AA:BB:CC:00:00:0G",
                "AA:BB-CC:00:00:01",
                " AA:BB:CC:00:00:01 ",
                "AABBCC0000011",
                "::::::",
                "aa:bb:cc:00:00:01\n",
                "ＡＡ:BB:CC:00:00:01",
                "",
            ]
        )

    def mutate(self, body: dict[str, Any], names: list[str]) -> None:
        rng = self.rng
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            op = rng.randrange(8)
            keys = list(body)
            if op == 0 and keys:
                key = rng.choice(keys)
                del body[key]
                names.append(f"drop {key}")
            elif op == 1:
                key = rng.choice(["modbusid", "mac", "Type", "extra", "", "command ", "__proto__", self.text()[:10]])
                body[key] = self.junk()
                names.append(f"add {key!r}")
            elif op == 2 and keys:
                key = rng.choice(keys)
                body[key] = self.junk()
                names.append(f"junk {key}")
            elif op == 3:
                key = rng.choice(["name", "mac_address", "type", "command", "variant", "transaction"])
                body[key] = "x" * rng.choice([300, 5_000, 40_000, 70_000])
                names.append(f"huge {key}")
            elif op == 4:
                key = rng.choice(["name", "type", "variant", "command", "transaction"])
                body[key] = self.text()
                names.append(f"unicode {key}")
            elif op == 5:
                key = rng.choice(["modbus_id", "seconds", "enabled", "transaction", "name"])
                body[key] = rng.choice(EXTREME_NUMBERS) if rng.random() < 0.7 else RAW_MARK
                names.append(f"number {key}")
            elif op == 6:
                body["mac_address"] = self.mangle_mac()
                names.append("bad mac")
            else:
                key = rng.choice(["config", "name", "transaction", "modbus_id"])
                body[key] = self.nested(
                    rng.choice([5, 50, 200])
                )  # deeper: test_deeply_nested_config_gets_a_clear_error
                names.append(f"nested {key}")

    def serialise(self, body: dict[str, Any], names: list[str]) -> bytes:
        text = json.dumps(body, ensure_ascii=self.rng.random() < 0.5)
        while json.dumps(RAW_MARK)[1:-1] in text:  # the mark as it appears inside the JSON text
            text = text.replace(json.dumps(RAW_MARK), self.rng.choice(RAW_NUMBERS), 1)
        payload = text.encode("utf-8", errors="surrogatepass")
        rng = self.rng
        if rng.random() < 0.15:
            op = rng.randrange(7)
            if op == 0:
                payload = payload[: rng.randrange(0, max(1, len(payload)))]
                names.append("truncated")
            elif op == 1:
                data = bytearray(payload)
                for _ in range(rng.randrange(1, 4)):
                    if data:
                        data[rng.randrange(len(data))] = rng.randrange(256)
                payload = bytes(data)
                names.append("flipped bytes")
            elif op == 2:
                position = rng.randrange(len(payload) + 1)
                payload = (
                    payload[:position]
                    + rng.choice([b"\xff", b"\xc0\x80", b"\x80", b"\xed\xa0\x80"])
                    + payload[position:]
                )
                names.append("invalid utf-8")
            elif op == 3:
                payload += rng.choice([b"}", b" trailing", b"\x00", b"{}"])
                names.append("trailing garbage")
            elif op == 4:
                payload = rng.choice(
                    [b"[" + payload + b"]", b'"' + payload[:20].replace(b'"', b"") + b'"', b"42", b"null"]
                )
                names.append("not an object")
            elif op == 5:
                payload = rng.choice([b"", b"   ", b"\n", b"\xef\xbb\xbf" + payload])
                names.append("empty / bom")
            else:
                payload = payload + b" " * rng.randrange(MAX_PAYLOAD - len(payload) - 5, MAX_PAYLOAD + 100)
                names.append("padded to the size limit")
        return payload

    def item(self, index: int) -> Fuzzed:
        body = self.valid()
        rng = self.rng
        roll = rng.random()
        if roll < 0.75:
            body["transaction"] = f"t{self.seed}-{index}"
        elif roll < 0.85:
            body["transaction"] = index
        names: list[str] = [str(body["command"])]
        self.mutate(body, names)
        payload = self.serialise(body, names)
        transaction, command = expected_envelope(payload)
        return Fuzzed(index, payload, transaction, command, names)


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def same_transaction(got: Any, wanted: Any) -> bool:
    """The echoed transaction: the same value and type, except that numbers compare as numbers
    (``2.0`` may come back as ``2``: integral floats are normalised), and a number too large for
    JSON (``1e400`` parses as infinity) is not echoed at all: infinity is not valid JSON."""
    numbers = (int, float)
    if _non_finite(wanted):
        return got is None
    if isinstance(got, numbers) and isinstance(wanted, numbers) and not isinstance(got, bool):
        return not isinstance(wanted, bool) and got == wanted
    return bool(got == wanted and type(got) is type(wanted))


# --- notification streams ---------------------------------------------------------------------------


@dataclass
class Stream:
    chunks: list[bytes]
    genuine: bytes  # the intact reply to the request
    intact: bool  # the genuine reply is in the stream, unbroken and contiguous
    mutations: list[str]


def notification_stream(rng: random.Random, request: modbus.Request, genuine: bytes) -> Stream:
    """Bytes a module might notify while ``request`` waits for its reply (see the module docstring)."""
    parts: list[bytes] = []
    names: list[str] = []
    for _ in range(rng.randrange(0, 3)):  # junk before the reply
        parts.append(_junk(rng, request, names))
    reply = genuine
    op = rng.randrange(6)
    if op == 0:
        data = bytearray(reply)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        reply = bytes(data)
        names.append("bit flips")
    elif op == 1:
        reply = reply[: rng.randrange(1, len(reply))]
        names.append("truncated")
    elif op == 2:
        reply = reply + reply
        names.append("duplicated")
    elif op == 3:
        cut = rng.randrange(1, len(reply))
        reply = reply[:cut] + _junk(rng, request, names) + reply[cut:]  # junk inside the reply
        names.append("junk inside")
    parts.append(reply)
    if genuine not in reply and rng.random() < 0.3:  # a retransmission that does arrive intact
        parts.append(genuine)
        names.append("resent intact")
    for _ in range(rng.randrange(0, 2)):
        parts.append(_junk(rng, request, names))
    stream = b"".join(parts)
    chunks, position = [], 0
    while position < len(stream):
        size = rng.choice([1, 2, 3, 7, 19, 20, 20, 20, 64, 244])
        chunks.append(stream[position : position + size])
        position += size
    # Decided on the bytes, not on the recipe: junk can happen to rebuild what it interrupted.
    return Stream(chunks, genuine, genuine in stream, names)


def _junk(rng: random.Random, request: modbus.Request, names: list[str]) -> bytes:
    """Bytes that are not a valid reply to ``request`` (they may look like one)."""
    kind = rng.randrange(6)
    slave, function = request.slave_id, request.function
    if kind == 0:
        names.append("random bytes")
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    if kind == 1:
        names.append("header-like junk")
        head = bytes([slave, function, 2 * request.count_or_value & 0xFF])
        return head + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2 * request.count_or_value + 2)))
    if kind == 2:
        names.append("ascii ack")
        return rng.choice([b"OK\r\n", b"AT+OK", b"\x00\x00\x00"])
    if kind == 3:
        # a valid frame for a different request (another register count): must not be taken
        other = max(1, (request.count_or_value % 100) + rng.randrange(1, 20))
        names.append("reply to another read")
        body = bytes([slave, modbus.READ_HOLDING, 2 * other]) + bytes(rng.randrange(256) for _ in range(2 * other))
        return modbus.with_crc(body)
    if kind == 4:
        names.append("reply from another id")
        body = bytes([(slave + 1) & 0xFF, function, 2 * request.count_or_value & 0xFF])
        body += bytes(rng.randrange(256) for _ in range(2 * request.count_or_value))
        return modbus.with_crc(body)
    names.append("exception with a bad crc")
    frame = bytearray(modbus.with_crc(bytes([slave, function | 0x80, 0x02])))
    frame[-1] ^= 0x55
    return bytes(frame)
