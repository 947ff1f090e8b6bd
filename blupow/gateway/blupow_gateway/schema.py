"""JSON-Schema validation with one short, specific message per problem.

jsonschema's own messages quote whole instances ("{...} is not of type
'number'"); users need the path and the rule instead:
``fields[2].scale must be a number``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

_TYPE_WORDS = {
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending field."""


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("blupow_gateway.schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


def json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(error: ValidationError) -> str:
    """One human sentence for one jsonschema error."""
    path = json_path(error.absolute_path)
    where = path or "the configuration"
    v = error.validator
    if v == "type":
        expected = error.validator_value
        words = [_TYPE_WORDS.get(t, t) for t in (expected if isinstance(expected, list) else [expected])]
        return f"{where} must be {' or '.join(words)}"
    if v == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "a key"
        return f"{json_path([*error.absolute_path, missing])} is required"
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: unknown key {', '.join(repr(e) for e in extra)}"
    if v == "enum":
        return f"{where} must be one of {', '.join(str(x) for x in error.validator_value)}"
    if v == "const":
        return f"{where} must be {error.validator_value!r}"
    if v == "pattern":
        return f"{where} has an invalid format ({error.instance!r})"
    if v in ("minimum", "exclusiveMinimum"):
        op = ">=" if v == "minimum" else ">"
        return f"{where} must be {op} {error.validator_value}"
    if v in ("maximum", "exclusiveMaximum"):
        op = "<=" if v == "maximum" else "<"
        return f"{where} must be {op} {error.validator_value}"
    if v in ("minItems", "maxItems"):
        bound = "at least" if v == "minItems" else "at most"
        return f"{where} must have {bound} {error.validator_value} entries"
    if v in ("minLength", "maxLength"):
        bound = "at least" if v == "minLength" else "at most"
        return f"{where} must be {bound} {error.validator_value} characters long"
    if v == "propertyNames":
        return f"{where} has an invalid key"
    return f"{where}: {error.message}"


MAX_DEPTH = 32


class InputError(ValueError):
    """Structurally unusable input (too deep, not valid Unicode); the message is for users."""


def clean(value: Any, depth: int = 0) -> Any:
    """Check and normalise data parsed from JSON before it is validated or stored.

    * nesting deeper than ``MAX_DEPTH`` is refused (deep copies and schema
      checks recurse; a 64 KiB payload can nest a thousand levels),
    * strings holding lone UTF-16 surrogates (``"\\ud800"``) are refused: they
      are not text and cannot be written back out as UTF-8,
    * integral floats become ints: JSON Schema counts ``48.0`` as an integer,
      Python's ``range()`` and our registry do not; numbers too large for a
      float (``1e400``) are refused.
    """
    if depth > MAX_DEPTH:
        raise InputError(f"nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(value, dict):
        return {clean(k, depth + 1): clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v, depth + 1) for v in value]
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"text {value[:20]!r} contains a lone UTF-16 surrogate") from None
    if isinstance(value, float):
        if not math.isfinite(value):  # 1e400 parses as inf, which cannot be sent back as JSON
            raise InputError(f"number {value} is out of range")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def errors(name: str, instance: Any) -> list[str]:
    validator = _validator(name)
    found = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    return [describe(e) for e in found]


def validate(name: str, instance: Any, prefix: str) -> None:
    """Raise :class:`ConfigError` with the first problem, prefixed (``generic_modbus config: …``)."""
    problems = errors(name, instance)
    if problems:
        raise ConfigError(f"{prefix}: {problems[0]}")
