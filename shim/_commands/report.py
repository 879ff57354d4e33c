"""``coupon-shim report``: an offline HTML readiness report and a terminal summary (see
:mod:`shim._report`, which holds the command's code)."""

from __future__ import annotations

from shim._commands import Command
from shim._report import cli as report

COMMAND = Command(
    name="report",
    help="an offline HTML readiness report (charts, verdict) from events and compare runs",
    description=report.DESCRIPTION,
    epilog=report.EPILOG,
    add_arguments=report.add_arguments,
    run=report.command,
)
