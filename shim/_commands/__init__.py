"""The ``coupon-shim`` subcommands, one module each.

A subcommand module defines one :class:`Command` named ``COMMAND`` and is listed in
:data:`shim.cli.COMMANDS`; the CLI builds its parser, adds the global options to it (so they
work before or after the subcommand), runs it and turns its errors into one line and an exit
code (:class:`ExitCode`). A command returns an exit code; it raises :class:`CommandError` (or a
:class:`~shim._errors.ShimError`) for anything the user must fix, never prints a traceback.

Every option needs a ``help`` text (``tests/test_cli_conventions.py`` checks each one).
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command", "CommandError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """The exit codes every ``coupon-shim`` command uses (documented in the README)."""

    #: the command did what it was asked.
    OK = 0
    #: the command ran and found what it was asked to flag (e.g. ``--check`` found a drift).
    FINDINGS = 1
    #: a bad option or argument (argparse errors, invalid caller input).
    USAGE = 2
    #: a config, mapping or state file is missing or wrong.
    CONFIG = 3
    #: WeChat Pay (or the emulator) gave no usable answer, or the machine refused (port in use).
    UNAVAILABLE = 4
    #: a bug in coupon-shim (an unexpected exception); ``--traceback`` shows it.
    INTERNAL = 70
    #: stopped with Ctrl+C.
    INTERRUPTED = 130
    #: stdout was closed before the command finished writing (piped into ``head``).
    PIPE_CLOSED = 141


class CommandError(Exception):
    """A failure the user can fix, shown as one line: ``coupon-shim <command>: <message>``.

    Attributes:
        exit_code: the code the process exits with (default: usage error).
    """

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        name: what the user types (``coupon-shim NAME``).
        help: one line for ``coupon-shim --help``.
        add_arguments: adds the command's own options to its parser (each with ``help=``).
        run: runs the command with the parsed arguments; returns an :class:`ExitCode`.
        description: the longer text of ``coupon-shim NAME --help`` (default: ``help``).
        epilog: text after the options in ``coupon-shim NAME --help`` (examples).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None
