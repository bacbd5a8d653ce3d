"""Cron expressions: the 5-field standard form, read by APScheduler (foundation: settings
validates them, the scheduler runs them)."""

from __future__ import annotations

from typing import Any

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_trigger(expression: str) -> Any:
    """A 5-field cron expression with standard weekday numbers (0 and 7 are Sunday) as an
    APScheduler trigger in UTC. APScheduler 3 numbers weekdays from Monday, so numbers in
    the weekday field are turned into names first ("1-5" -> "mon-fri")."""
    import re

    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) == 5:
        fields[4] = re.sub(r"(?<![/\d])[0-7](?!\d)", lambda m: DAY_NAMES[int(m.group())], fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone="UTC")
