"""Human units in configuration values: sizes, durations, rates."""
from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*$", re.I)
_SIZE_FACTORS = {
    "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
    "gb": 1000**3, "gib": 1024**3, "tb": 1000**4, "tib": 1024**4,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|min|h|d)")
_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|m|min|h|hour|d|day)\s*$", re.I)
_RATE_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_size(value: object) -> int:
    """``"25MB"`` → 25_000_000 bytes; a bare integer is bytes. Sizes use SI (MB) or IEC (MiB)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as \"25MB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as \"25MB\", got {value!r}")
    number, unit = match.groups()
    return int(float(number) * _SIZE_FACTORS[(unit or "b").lower()])


def parse_duration(value: object) -> float:
    """``"72h"``, ``"1h30m"``, ``"500ms"`` → seconds; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"30s\"")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    text = str(value).strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as \"30s\", \"10m\" or \"72h\", got {value!r}")
    return total


def parse_rate(value: object) -> float:
    """``"20/s"``, ``"100/min"``, ``"10/h"`` → events per second."""
    match = _RATE.match(str(value)) if not isinstance(value, bool) else None
    if not match:
        raise ValueError(f"expected a rate such as \"20/s\" or \"10/h\", got {value!r}")
    number, unit = match.groups()
    return float(number) / _RATE_SECONDS[unit.lower()]
