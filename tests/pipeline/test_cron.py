"""The cron parser: fields, lists, ranges, steps, the day-of-month / day-of-week rule, and next fire times."""

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.cron import CronError, next_fire_time, parse_cron


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def test_fields_expand_to_their_values():
    schedule = parse_cron("*/15 9-17/4 1,15 * 1-5")
    assert schedule.minutes == {0, 15, 30, 45}
    assert schedule.hours == {9, 13, 17}
    assert schedule.days == {1, 15}
    assert schedule.months == set(range(1, 13))
    assert schedule.weekdays == {1, 2, 3, 4, 5}


def test_sunday_is_0_and_7_and_a_start_with_a_step_runs_to_the_end():
    assert parse_cron("0 0 * * 7").weekdays == {0}
    assert parse_cron("0 0 * * 0,6").weekdays == {0, 6}
    assert parse_cron("5/20 * * * *").minutes == {5, 25, 45}


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", utc(2026, 11, 25, 3, 0, 30), utc(2026, 11, 25, 3, 1)),  # strictly after, whole minutes
        ("0 * * * *", utc(2026, 11, 25, 3, 0), utc(2026, 11, 25, 4, 0)),
        ("30 2 * * *", utc(2026, 11, 25, 3, 0), utc(2026, 11, 26, 2, 30)),
        ("*/15 * * * *", utc(2026, 11, 25, 3, 7), utc(2026, 11, 25, 3, 15)),
        ("0 0 1 * *", utc(2026, 12, 15), utc(2027, 1, 1)),  # over the year end
        ("0 12 * * 1", utc(2026, 11, 25), utc(2026, 11, 30, 12, 0)),  # 2026-11-25 is a Wednesday
        ("0 0 29 2 *", utc(2026, 3, 1), utc(2028, 2, 29)),  # the next leap day
        # Both day fields restricted: either matches (the 13th, or any Friday).
        ("0 0 13 * 5", utc(2026, 11, 25), utc(2026, 11, 27)),
        ("0 0 13 * 5", utc(2026, 11, 28), utc(2026, 12, 4)),
    ],
)
def test_next_fire_time(expression, after, expected):
    assert next_fire_time(expression, after) == expected


def test_naive_times_are_utc_and_other_zones_are_converted():
    assert next_fire_time("0 * * * *", datetime(2026, 1, 1, 5, 10)) == utc(2026, 1, 1, 6, 0)
    cet = timezone(timedelta(hours=1))
    assert next_fire_time("0 * * * *", datetime(2026, 1, 1, 5, 10, tzinfo=cet)) == utc(2026, 1, 1, 5, 0)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "has 4 field"),
        ("60 * * * *", "minute field '60'"),
        ("* 5-2 * * *", "hour field '5-2'"),
        ("*/0 * * * *", "step below 1"),
        ("* * 0 * *", "day-of-month field '0'"),
        ("* * * jan *", "month field 'jan'"),
        ("* * * * 8", "day-of-week field '8'"),
    ],
)
def test_bad_expressions_name_the_field(expression, message):
    with pytest.raises(CronError, match=message):
        parse_cron(expression)


def test_an_expression_that_never_fires_is_an_error():
    with pytest.raises(CronError, match="never fires"):
        next_fire_time("0 0 31 2 *", utc(2026, 1, 1))
