"""The monthly calendar as one value, `Month` (pure, no I/O).

Month 0 is as_of 2024-01-31; month N is the last day of the N-th month after it. Every layer
(ingest, features, training, scoring, the generator) asks a `Month`, so a month means the same
folder name and the same date everywhere. A month is parsed once where it comes in (a param, an
asset event, a CLI argument, a warehouse row) and passed down as the value; what leaves the
library (XCom, JSON, MLflow tags, SQL parameters, file names) is its `name`.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dt_time

FIRST_AS_OF = date(2024, 1, 31)


@dataclass(frozen=True, order=True)
class Month:
    """One month of the calendar: `Month(3)` is "month_003", as_of 2024-04-30."""

    number: int

    def __post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 0:
            raise ValueError(f"month must be an int >= 0, got {self.number!r}")

    @classmethod
    def parse(cls, value: str | int | Month) -> Month:
        """`3`, `"3"`, `"month_003"` (or a Month) -> Month(3); anything else raises ValueError."""
        if isinstance(value, Month):
            return value
        return cls(int(str(value).strip().removeprefix("month_")))

    @classmethod
    def of_as_of(cls, as_of: date) -> Month:
        """The month whose as_of is `as_of` (2024-02-29 -> Month(1)); any other date raises ValueError."""
        number = (as_of.year - FIRST_AS_OF.year) * 12 + as_of.month - FIRST_AS_OF.month
        if number < 0 or cls(number).as_of != as_of:
            raise ValueError(f"{as_of} is not a month's as_of (the last day of a month from {FIRST_AS_OF})")
        return cls(number)

    @property
    def name(self) -> str:
        """The drop folder's name, e.g. "month_003", and the month in params, tags, tables and files."""
        return f"month_{self.number:03d}"

    @property
    def as_of(self) -> date:
        """Last day of the month, `number` months after 2024-01-31."""
        y, m = divmod(FIRST_AS_OF.month - 1 + self.number, 12)
        year, mon = FIRST_AS_OF.year + y, m + 1
        return date(year, mon, calendar.monthrange(year, mon)[1])

    @property
    def as_of_ts(self) -> datetime:
        """The as_of as the snapshot tables and Feast store it: midnight UTC of the month's last day."""
        return datetime.combine(self.as_of, dt_time.min, tzinfo=UTC)

    def next(self) -> Month:
        return Month(self.number + 1)

    def previous(self) -> Month | None:
        """The month before, None before month 0."""
        return Month(self.number - 1) if self.number else None

    def __str__(self) -> str:
        return self.name
