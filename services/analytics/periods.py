"""The dashboard's date range in the caller's time zone: which local days, and the UTC instants
each one starts and ends at (what the 15-minute rollup buckets are summed over).

Every UTC offset in use is a multiple of 15 minutes, so a local day is a whole number of
15-minute UTC buckets and its sums are exact; DST days are 23 or 25 hours long and summed as
such. Python's time zone database (zoneinfo) is the one source of local time: Postgres only
sees UTC instants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from shared.errors import ValidationFailed

MAX_DAYS = 366
DEFAULT_DAYS = 30
# Dates outside these years are refused: nobody has data there, and the arithmetic stays safe.
MIN_YEAR, MAX_YEAR = 1970, 9000


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. Europe/Paris), or a 422 naming the parameter."""
    if name not in _zone_names():
        raise _invalid("tz", f"unknown time zone {name[:64]!r}; use an IANA name like Europe/Paris")
    return ZoneInfo(name)


def _invalid(param: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"{param}: {message}",
        details=[{"loc": ["query", param], "msg": message, "type": "value_error"}],
    )


@dataclass(frozen=True)
class Day:
    day: date
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive


@dataclass(frozen=True)
class Period:
    first: date
    last: date
    days: tuple[Day, ...]

    @property
    def start(self) -> datetime:
        return self.days[0].start

    @property
    def end(self) -> datetime:
        return self.days[-1].end


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant `day` starts at in `tz` (a midnight skipped by DST: the first instant
    after the gap)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def period(first: date, last: date, tz: ZoneInfo) -> Period:
    count = (last - first).days + 1
    starts = [local_midnight(first + timedelta(days=i), tz) for i in range(count + 1)]
    return Period(
        first,
        last,
        tuple(Day(first + timedelta(days=i), starts[i], starts[i + 1]) for i in range(count)),
    )


def select(
    *, tz: ZoneInfo, first: date | None, last: date | None, days: int | None, today: date | None
) -> tuple[Period, Period]:
    """The selected period and the one of the same length just before it.

    `last` defaults to today (in `tz`); `first` to `days` [30] days back from `last`; giving
    both `first` and `days` is ambiguous (422)."""
    if first is not None and days is not None:
        raise _invalid("days", "give either `from` or `days`, not both")
    if days is not None and not 1 <= days <= MAX_DAYS:
        raise _invalid("days", f"between 1 and {MAX_DAYS}")
    for name, value in (("from", first), ("to", last)):
        if value is not None and not MIN_YEAR <= value.year <= MAX_YEAR:
            raise _invalid(name, f"a date between {MIN_YEAR} and {MAX_YEAR}")
    end = last or today or datetime.now(tz).date()
    start = first or end - timedelta(days=(days or DEFAULT_DAYS) - 1)
    if start > end:
        raise _invalid("from", "must not be after `to`")
    length = (end - start).days + 1
    if length > MAX_DAYS:
        raise _invalid("from", f"the range is at most {MAX_DAYS} days")
    previous_end = start - timedelta(days=1)
    previous_start = previous_end - timedelta(days=length - 1)
    return period(start, end, tz), period(previous_start, previous_end, tz)
