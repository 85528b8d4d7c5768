"""The calendar value: one parse, one name, one as_of, and the order months come in."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from streamflow_mlops.config.months import Month


def test_a_month_parses_from_its_name_its_number_or_itself():
    assert Month.parse("month_003") == Month.parse(" 3 ") == Month.parse(3) == Month(3)
    month = Month(3)
    assert Month.parse(month) is month


@pytest.mark.parametrize("bad", ["month_-1", "-1", "march", "", "month_", 2.5])
def test_anything_else_is_not_a_month(bad):
    with pytest.raises(ValueError):
        Month.parse(bad)


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3"])
def test_a_month_number_is_a_non_negative_int(bad):
    with pytest.raises(ValueError):
        Month(bad)


def test_name_as_of_and_timestamp_say_the_same_month():
    month = Month(1)
    assert (month.name, str(month), f"{month}") == ("month_001", "month_001", "month_001")
    assert month.as_of == date(2024, 2, 29)
    assert month.as_of_ts == datetime(2024, 2, 29, tzinfo=UTC)
    assert Month.of_as_of(date(2024, 2, 29)) == month


def test_months_are_ordered_by_number_and_step_one_at_a_time():
    assert Month(2) < Month(10) and max(Month(2), Month(10), Month(9)) == Month(10)
    assert Month(2).next() == Month(3) and Month(3).previous() == Month(2)
    assert Month(0).previous() is None
    assert len({Month(4), Month.parse("month_004")}) == 1
