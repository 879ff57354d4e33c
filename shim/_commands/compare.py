"""``coupon-shim compare``: both routes per stock, classified, with a verdict (see
:mod:`shim._compare`, which holds the command's code)."""

from __future__ import annotations

from shim._commands import Command
from shim._compare import cli as compare

COMMAND = Command(
    name="compare",
    help="run both routes per stock, classify each, and give a readiness verdict",
    description=compare.DESCRIPTION,
    epilog=compare.EPILOG,
    add_arguments=compare.add_arguments,
    run=compare.command,
)
