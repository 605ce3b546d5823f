"""Cron expressions (minute hour day-of-month month day-of-week, or a nickname such as @daily) and their next
fire time, in UTC, through the croniter library.

croniter accepts what users write in crontabs: names (`MON-FRI`, `JAN`), lists, ranges, steps and the
nicknames (@hourly, @daily, @weekly, @monthly, @yearly). As in Vixie cron, when both day fields are
restricted a day matches if either one does; day-of-week 0 and 7 are Sunday.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from croniter import CroniterBadDateError, CroniterError, croniter

FIELD_NAMES = "minute hour day-of-month month day-of-week"
NUMERIC_RANGE = re.compile(r"(\d+)-(\d+)")


class CronError(ValueError):
    """An expression that cron would not accept; the message starts with `schedule:`."""


def parse_cron(expression: str) -> str:
    """The expression, checked; errors say what cron expects. Returned unchanged for `next_fire_time`."""
    text = str(expression).strip()
    parts = text.split()
    # croniter also takes 6- and 7-field forms (seconds, years); a crontab line has 5, and a scheduler that
    # fired every second by mistake would be worse than a refusal.
    if not text.startswith("@") and len(parts) != 5:
        raise CronError(
            f"schedule: {expression!r} has {len(parts)} field(s); cron needs 5: {FIELD_NAMES} "
            "(e.g. '0 2 * * *' = every day at 02:00 UTC) or a nickname such as @daily"
        )
    for low, high in NUMERIC_RANGE.findall(text):
        # croniter reads `5-2` as wrapping around; Vixie cron refuses it, and it is more often a typo.
        if int(low) > int(high):
            raise CronError(f"schedule: {expression!r}: the range {low}-{high} runs backwards")
    try:
        croniter.expand(text)
    except (CroniterError, ValueError) as error:
        raise CronError(f"schedule: {expression!r} is not a cron expression ({error})") from None
    return text


def next_fire_time(expression: str, after: datetime) -> datetime:
    """The first minute strictly after `after` that the expression matches (UTC; naive times are taken as UTC)."""
    text = parse_cron(expression)
    if after.tzinfo is None:
        after = after.replace(tzinfo=timezone.utc)
    try:
        return croniter(text, after.astimezone(timezone.utc)).get_next(datetime)
    except CroniterBadDateError:
        raise CronError(f"schedule: {expression!r} never fires (e.g. a day that no month has)") from None
