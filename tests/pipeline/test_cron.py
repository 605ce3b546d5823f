"""Cron schedules: fields, lists, ranges, steps, names, nicknames, the day-of-month / day-of-week rule, and
next fire times (UTC)."""

from datetime import datetime, timedelta, timezone

import pytest

from llava_batch.cli.cron import CronError, next_fire_time, parse_cron


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def test_lists_ranges_and_steps_fire_at_their_values():
    # The former parser's expansion of "*/15 9-17/4 1,15 * 1-5", checked as fire times.
    times, moment = [], utc(2026, 12, 1)  # a Tuesday, the 1st
    for _ in range(13):
        moment = next_fire_time("*/15 9-17/4 1,15 * 1-5", moment)
        times.append(moment)
    assert {t.minute for t in times} == {0, 15, 30, 45}
    assert {t.hour for t in times} == {9, 13, 17}
    assert times[-1] == utc(2026, 12, 2, 9, 0)  # the 2nd is a Wednesday: either day field matches


def test_sunday_is_0_and_7_and_a_start_with_a_step_runs_to_the_end():
    assert next_fire_time("0 0 * * 7", utc(2026, 11, 25)) == utc(2026, 11, 29)  # a Sunday
    assert next_fire_time("0 0 * * 0", utc(2026, 11, 25)) == utc(2026, 11, 29)
    assert next_fire_time("0 0 * * 0,6", utc(2026, 11, 25)) == utc(2026, 11, 28)
    assert next_fire_time("5/20 * * * *", utc(2026, 11, 25, 3, 30)) == utc(2026, 11, 25, 3, 45)
    assert next_fire_time("5/20 * * * *", utc(2026, 11, 25, 3, 45)) == utc(2026, 11, 25, 4, 5)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # What users write in crontabs: names and nicknames (issue 12).
        ("0 2 * * MON-FRI", utc(2026, 11, 27, 3, 0), utc(2026, 11, 30, 2, 0)),  # Friday 03:00 -> Monday
        ("0 0 1 JAN *", utc(2026, 11, 25), utc(2027, 1, 1)),
        ("@daily", utc(2026, 11, 25, 3, 0), utc(2026, 11, 26)),
        ("@hourly", utc(2026, 11, 25, 3, 0), utc(2026, 11, 25, 4, 0)),
        ("@weekly", utc(2026, 11, 25), utc(2026, 11, 29)),  # Sunday midnight
    ],
)
def test_names_and_nicknames_are_accepted(expression, after, expected):
    assert parse_cron(expression)
    assert next_fire_time(expression, after) == expected


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
        ("0 * * * * *", "has 6 field"),  # croniter's seconds column: not a crontab line
        ("60 * * * *", "out of range"),
        ("* 5-2 * * *", "range 5-2 runs backwards"),
        ("*/0 * * * *", "step '0'"),
        ("* * 0 * *", "out of range"),
        ("* * * * 8", "out of range"),
        ("@reboot", "not a cron expression"),
        ("0 2 * * MON-FRY", "not a cron expression"),
    ],
)
def test_bad_expressions_are_refused_naming_schedule(expression, message):
    with pytest.raises(CronError, match=message) as error:
        parse_cron(expression)
    assert str(error.value).startswith(f"schedule: {expression!r}")


def test_an_expression_that_never_fires_is_an_error():
    with pytest.raises(CronError, match="never fires"):
        next_fire_time("0 0 31 2 *", utc(2026, 1, 1))
