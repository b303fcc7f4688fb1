"""``manage.py prune_tasks [--older-than-days N] [--dry-run] [--max-seconds S]``: task retention by hand
(jobs/retention.py), the same deletion beat runs hourly, until nothing is left unless ``--max-seconds``."""
from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs import retention


class Command(BaseCommand):
    help = ("Delete final tasks finished more than TASK_RETENTION_DAYS (or --older-than-days) ago, with their "
            "events, results and artifacts.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than-days", type=float, metavar="N",
                            help="instead of TASK_RETENTION_DAYS; at least the longest statistics window "
                                 "(31) and RESULT_TTL_DAYS")
        parser.add_argument("--dry-run", action="store_true", help="only count the tasks that would go")
        parser.add_argument("--max-seconds", type=float, metavar="S",
                            help="start no batch after this long (default: go on until none is left)")

    def handle(self, *args: Any, older_than_days: float | None, dry_run: bool, max_seconds: float | None,
               **options: Any) -> None:
        days = older_than_days
        if days is not None and not math.isfinite(days):
            raise CommandError(f"--older-than-days must be a finite number of days, not {days}")
        if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds >= 0):
            raise CommandError(f"--max-seconds must be a finite number of seconds, not {max_seconds}")
        if days is None and settings.CONVEYOR["TASK_RETENTION_DAYS"] <= 0:
            self.stdout.write("TASK_RETENTION_DAYS is 0: tasks are kept for ever; nothing to do "
                              "(--older-than-days N prunes anyway)")
            return
        if days is not None and days < (floor := retention.floor_days()):
            raise CommandError(f"--older-than-days {days:g} is shorter than {floor:g} days (the longest "
                               "statistics window, 31, and RESULT_TTL_DAYS)")
        try:
            counts = retention.prune(days=days, dry_run=dry_run, seconds=max_seconds)
        except OverflowError:  # a cutoff before year 1
            raise CommandError(f"--older-than-days {days:g} reaches before the calendar's start") from None
        before = counts["cutoff"].isoformat()
        if dry_run:
            self.stdout.write(f"{counts['tasks']} tasks finished before {before} would be deleted (dry run)")
            return
        self.stdout.write(f"deleted {counts['tasks']} tasks finished before {before} ({counts['events']} events, "
                          f"{counts['artifacts']} artifacts, {counts['files']} files) in {counts['batches']} batches"
                          + (f"; {counts['kept']} kept: deleting them failed (see the log)" if counts["kept"] else ""))
