"""Five-field cron expressions (minute hour day-of-month month day-of-week) and their next fire time.

Supports `*`, numbers, lists (`1,15`), ranges (`1-5`) and steps (`*/15`, `0-30/10`); times are UTC. As in
Vixie cron, when both day fields are restricted a day matches if either one does; day-of-week 0 and 7 are Sunday.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

# (name, lowest, highest) of each field, in order.
FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)


class CronError(ValueError):
    """An expression that cron would not accept; the message names the field."""


@dataclass(frozen=True)
class CronSchedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def day_matches(self, moment: datetime) -> bool:
        in_days = moment.day in self.days
        in_weekdays = (moment.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays


def parse_cron(expression: str) -> CronSchedule:
    parts = str(expression).split()
    if len(parts) != 5:
        raise CronError(
            f"schedule: {expression!r} has {len(parts)} field(s); cron needs 5: "
            "minute hour day-of-month month day-of-week (e.g. '0 2 * * *' = every day at 02:00 UTC)"
        )
    values = [_parse_field(part, *spec) for part, spec in zip(parts, FIELDS)]
    weekdays = frozenset(day % 7 for day in values[4])
    return CronSchedule(
        *(frozenset(value) for value in values[:4]),
        weekdays,
        days_restricted=parts[2] != "*",
        weekdays_restricted=parts[4] != "*",
    )


def _parse_field(text: str, name: str, low: int, high: int) -> set[int]:
    found: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                start, end = low, high
            elif "-" in span:
                start, end = (int(bound) for bound in span.split("-", 1))
            else:
                start = int(span)
                # `5/10` means from 5 to the end in steps of 10, as in Vixie cron.
                end = high if step_text else start
        except ValueError:
            raise CronError(
                f"schedule: {name} field {text!r}: {item!r} is not a number, range or step"
            ) from None
        if step < 1 or not low <= start <= end <= high:
            raise CronError(
                f"schedule: {name} field {text!r}: {item!r} is outside {low}-{high} (or a range backwards, "
                "or a step below 1)"
            )
        found.update(range(start, end + 1, step))
    return found


# The longest gap between fire times cron can express is a Feb 29 in a leap year on a given weekday: 28 years.
SEARCH_YEARS = 29


def next_fire_time(expression: str | CronSchedule, after: datetime) -> datetime:
    """The first minute strictly after `after` that the expression matches (UTC; naive times are taken as UTC)."""
    schedule = expression if isinstance(expression, CronSchedule) else parse_cron(expression)
    if after.tzinfo is None:
        after = after.replace(tzinfo=timezone.utc)
    moment = after.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = moment.replace(year=moment.year + SEARCH_YEARS, day=1)
    # Skip whole months, days and hours that cannot match; at most a few thousand steps.
    while moment < limit:
        if moment.month not in schedule.months:
            year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
            moment = moment.replace(year=year, month=month, day=1, hour=0, minute=0)
        elif not schedule.day_matches(moment):
            moment = (moment + timedelta(days=1)).replace(hour=0, minute=0)
        elif moment.hour not in schedule.hours:
            moment = (moment + timedelta(hours=1)).replace(minute=0)
        elif moment.minute not in schedule.minutes:
            moment += timedelta(minutes=1)
        else:
            return moment
    raise CronError(f"schedule: {expression!r} never fires (e.g. a day that no month has)")
