"""The drop's manifest is checked against its folder and the calendar, never simply believed."""

import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.data.ingest import manifest_problem


def test_a_manifest_agreeing_with_folder_and_calendar_passes():
    assert manifest_problem({"month": "month_005", "as_of": "2024-06-30"}, Month(5)) is None


@pytest.mark.parametrize(
    ("manifest", "named"),
    [
        ({"month": "month_005", "as_of": "2024-01-31"}, "but month_005 is as_of 2024-06-30"),
        ({"as_of": "2024-06-30"}, "has no month"),
        ({"month": "month_000", "as_of": "2024-01-31"}, "is for month_000, not month_005"),
        ({"month": "month_005"}, "no valid as_of"),
        ({"month": "month_005", "as_of": "June"}, "no valid as_of"),
        (["month_005"], "must be a JSON object"),
    ],
)
def test_a_manifest_disagreeing_with_its_folder_is_refused_with_the_reason(manifest, named):
    assert named in manifest_problem(manifest, Month(5))
