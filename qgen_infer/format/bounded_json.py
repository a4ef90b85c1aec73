"""JSON for the ``.qgen`` metadata values: written canonically, read only after size/depth checks.

The safetensors header itself is parsed by safetensors (Rust, serde_json); this module parses only
the *values* of ``__metadata__`` that qgen-infer wrote. A hostile value could be megabytes long or
nested thousands of levels deep (Python's ``json`` would then raise ``RecursionError``), so the
length and the bracket depth are checked on the raw text first, with a scan that never recurses.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from qgen_infer.errors import FormatError

MAX_VALUE_CHARS = 1 << 20  # one metadata value; a real config or layer list is a few KiB
MAX_DEPTH = 16  # our deepest value (layers -> layer -> shape list) is 3 levels

# A JSON string literal; removing them leaves only the structural characters to count.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def dumps(value: Any) -> str:
    """Compact, key-sorted JSON, rejecting NaN/inf (they are not JSON)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def nesting_depth(text: str) -> int:
    """The maximum bracket nesting depth of JSON ``text`` (brackets inside strings don't count)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    """A JSON number literal as a float; ``1e400`` (which Python reads as infinity) is refused."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} overflows a float")
    return value


def loads(text: str, what: str) -> Any:
    """Parse the metadata value ``what`` after bounding its size and depth; ``FormatError`` on any
    problem (too long, too deep, not JSON, NaN/Infinity, a number beyond the float range)."""
    if len(text) > MAX_VALUE_CHARS:
        raise FormatError(f"metadata {what!r} is {len(text)} characters long "
                          f"(limit {MAX_VALUE_CHARS})")
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise FormatError(f"metadata {what!r} is nested {depth} levels deep (limit {MAX_DEPTH})")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"metadata {what!r} is not valid JSON ({first})") from None
    return value


def finite_number(value: Any, what: str) -> float:
    """``value`` as a finite float; bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"{what} must be a finite number, got {value!r}")
    return float(value)
