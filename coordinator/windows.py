"""Plan `window`: when new nodes may start (days, startTime, endTime, timeZone). Pure, clock passed in.

Same semantics as kured's timewindow (which SUC reuses): the day of week and the time of day are taken
in `timeZone` (default UTC); an empty `days` list means every day; an end before the start wraps past
midnight (the window then belongs to the day it started on). Times are `HH:MM` or `HH:MM:SS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DAYS = {
    "sunday": 6,
    "sun": 6,
    "su": 6,
    "monday": 0,
    "mon": 0,
    "mo": 0,
    "tuesday": 1,
    "tue": 1,
    "tu": 1,
    "wednesday": 2,
    "wed": 2,
    "we": 2,
    "thursday": 3,
    "thu": 3,
    "th": 3,
    "friday": 4,
    "fri": 4,
    "fr": 4,
    "saturday": 5,
    "sat": 5,
    "sa": 5,
}


class WindowError(ValueError):
    """A window field that does not parse (the message names the field)."""


@dataclass(frozen=True)
class Window:
    days: frozenset[int]
    start: time
    end: time
    zone: ZoneInfo

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        t = local.time().replace(tzinfo=None)
        if self.start <= self.end:
            return self._day_ok(local.weekday()) and self.start <= t < self.end
        if t >= self.start:
            return self._day_ok(local.weekday())
        if t < self.end:
            return self._day_ok((local - timedelta(days=1)).weekday())
        return False

    def _day_ok(self, weekday: int) -> bool:
        return not self.days or weekday in self.days


def _parse_time(text: str, field: str) -> time:
    for fmt in ("%H:%M", "%H:%M:%S", "%I:%M%p", "%I:%M %p"):
        try:
            return datetime.strptime(text.strip(), fmt).time()
        except ValueError:
            continue
    raise WindowError(f"window.{field}: {text!r} is not a time of day (HH:MM)")


def parse_window(days: list[str] | None, start: str | None, end: str | None, tz: str | None) -> Window:
    parsed: set[int] = set()
    for i, d in enumerate(days or []):
        if d.strip().lower() not in _DAYS:
            raise WindowError(f"window.days[{i}]: {d!r} is not a day of the week")
        parsed.add(_DAYS[d.strip().lower()])
    try:
        zone = ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise WindowError(f"window.timeZone: unknown time zone {tz!r}") from exc
    return Window(
        days=frozenset(parsed),
        start=_parse_time(start or "00:00", "startTime"),
        end=_parse_time(end or "23:59:59", "endTime") if end else time(23, 59, 59, 999999),
        zone=zone,
    )
