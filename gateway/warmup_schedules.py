"""Warm-up schedules: day of warm-up → daily cap and optional hourly cap, per egress IP.

Two schedules ship (ses-semantics.md §9):

* ``tencent-standard`` — Tencent Cloud SES "Standard Warm-up Plan" (current version, §9.1):
  500 mails on day 1 up to 1,000,000 on day 20; daily caps only. The default.
* ``manual`` — Tencent's conservative manual guidance for one new IP with hourly pacing
  (§9.2): 1,000/day at 200/h on day 1 up to 25,000/day at 5,000/h on day 30. Where the
  guidance gives a range over several days (e.g. days 6–10: 6,000–8,000 at 500–1,000/h) the
  caps climb linearly across those days, so the last day of a range reaches its top.

After its last day an IP is warm: no cap. Operators define their own schedules in
``[plugins.warmup.schedules.NAME]`` with ``daily = [...]`` (day 1 first) and optionally
``hourly = [...]`` of the same length.
"""
from __future__ import annotations

from dataclasses import dataclass

# §9.1, left column: the current Tencent standard plan (= the reputation ladder).
TENCENT_STANDARD_DAILY: tuple[int, ...] = (
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000, 60_000, 80_000, 100_000,
    150_000, 200_000, 300_000, 400_000, 500_000, 600_000, 700_000, 800_000, 900_000, 1_000_000,
)


def _ramp(first_day: int, last_day: int, low: int, high: int) -> list[int]:
    """Linear climb from ``low`` on ``first_day`` to ``high`` on ``last_day`` (whole mails)."""
    span = last_day - first_day
    return [round(low + (high - low) * i / span) for i in range(span + 1)]


def _manual() -> tuple[tuple[int, ...], tuple[int, ...]]:
    # §9.2: (first day, last day, daily low, daily high, hourly low, hourly high).
    ranges = ((6, 10, 6_000, 8_000, 500, 1_000), (11, 15, 8_000, 10_000, 800, 2_000),
              (16, 20, 10_000, 15_000, 1_000, 3_000), (21, 30, 15_000, 25_000, 3_000, 5_000))
    daily = [1_000, 1_500, 2_000, 3_000, 4_500]
    hourly = [200, 200, 400, 400, 500]
    for first, last, d_low, d_high, h_low, h_high in ranges:
        daily += _ramp(first, last, d_low, d_high)
        hourly += _ramp(first, last, h_low, h_high)
    return tuple(daily), tuple(hourly)


MANUAL_DAILY, MANUAL_HOURLY = _manual()
DEFAULT_SCHEDULE = "tencent-standard"


@dataclass(frozen=True)
class Schedule:
    name: str
    daily: tuple[int, ...]
    hourly: tuple[int, ...] | None = None

    @property
    def days(self) -> int:
        return len(self.daily)

    def daily_cap(self, day: int) -> int | None:
        """The day's cap (``day`` 1 = the start date); ``None`` once warm-up is over."""
        if day < 1:
            return 0
        return self.daily[day - 1] if day <= len(self.daily) else None

    def hourly_cap(self, day: int) -> int | None:
        if self.hourly is None or day < 1 or day > len(self.hourly):
            return None if day >= 1 else 0
        return self.hourly[day - 1]


BUILTIN_SCHEDULES: dict[str, Schedule] = {
    "tencent-standard": Schedule("tencent-standard", TENCENT_STANDARD_DAILY),
    "manual": Schedule("manual", MANUAL_DAILY, MANUAL_HOURLY),
}


def parse_schedule(name: str, table: object) -> Schedule | str:
    """A ``[plugins.warmup.schedules.NAME]`` table → :class:`Schedule`, or an error text."""
    if not isinstance(table, dict):
        return "must be a table with daily = [...] and optionally hourly = [...]"
    unknown = set(table) - {"daily", "hourly"}
    if unknown:
        return f"{sorted(unknown)[0]}: unknown key"
    daily = table.get("daily")
    if not _positive_ints(daily) or not daily:
        return "daily: must be a non-empty array of positive integers (day 1 first)"
    hourly = table.get("hourly")
    if hourly is not None:
        if not _positive_ints(hourly) or len(hourly) != len(daily):
            return "hourly: must be an array of positive integers as long as daily"
    return Schedule(name, tuple(daily), tuple(hourly) if hourly is not None else None)


def _positive_ints(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
