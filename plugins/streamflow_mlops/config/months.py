"""The monthly calendar: month numbers, folder names and as_of dates (pure, no I/O).

Month 0 is as_of 2024-01-31; month N is the last day of the N-th month after it. Every layer
(ingest, features, training, the generator) asks this module, so a month means the same date
everywhere.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime
from datetime import time as dt_time

FIRST_AS_OF = date(2024, 1, 31)


def month_name(month: int) -> str:
    """3 -> "month_003" (the drop folder's name)."""
    return f"month_{month:03d}"


def month_as_of(month: int) -> date:
    """Last day of the month, `month` months after 2024-01-31."""
    y, m = divmod(FIRST_AS_OF.month - 1 + month, 12)
    year, mon = FIRST_AS_OF.year + y, m + 1
    return date(year, mon, calendar.monthrange(year, mon)[1])


def parse_month(value: str | int) -> int:
    """`3`, `"3"`, `"month_003"` -> 3; anything else raises ValueError."""
    text = str(value).strip()
    number = int(text.removeprefix("month_"))
    if number < 0:
        raise ValueError(f"month must be >= 0, got {value!r}")
    return number


def month_as_of_ts(month: str | int) -> datetime:
    """A month's as_of as the snapshot tables store it: midnight UTC of the month's last day."""
    return datetime.combine(month_as_of(parse_month(month)), dt_time.min, tzinfo=UTC)


def month_of_as_of(as_of: date) -> int:
    """The month number whose as_of is `as_of` (2024-02-29 -> 1); any other date raises ValueError."""
    month = (as_of.year - FIRST_AS_OF.year) * 12 + as_of.month - FIRST_AS_OF.month
    if month < 0 or month_as_of(month) != as_of:
        raise ValueError(f"{as_of} is not a month's as_of (the last day of a month from {FIRST_AS_OF})")
    return month
