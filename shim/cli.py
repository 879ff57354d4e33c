"""The ``coupon-shim`` command: the parser, the global options, exit codes and error lines.

Each subcommand lives in its own module under :mod:`shim._commands` and defines a
:class:`~shim._commands.Command` named ``COMMAND``; adding one is a module plus one line in
:data:`COMMANDS`. The global options (:func:`add_global_options`) are added to every
subcommand's parser too, so ``coupon-shim --quiet query …`` and ``coupon-shim query … --quiet``
mean the same.

The CLI, unlike the library, configures structlog (JSON or console, always with the secret
redactor) and sends events to stderr so that stdout carries only answers. Errors are one line
on stderr (``coupon-shim: ConfigError: shim.toml: merchants."M".v2_key: …``), never a
traceback, and the exit code says what kind of failure it was (:class:`~shim._commands.ExitCode`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from shim import __version__
from shim._commands import Command, CommandError, ExitCode
from shim._errors import ConfigError, InputError, ShimError
from shim._extras import MissingExtraError

__all__ = ["COMMANDS", "add_global_options", "build_parser", "load_commands", "main"]

#: The subcommand modules, in ``coupon-shim --help`` order. Each defines ``COMMAND``.
COMMANDS: tuple[str, ...] = (
    "shim._commands.demo",
    "shim._commands.query",
    "shim._commands.compare",
    "shim._commands.report",
    "shim._commands.check",
    "shim._commands.sandbox",
    "shim._commands.serve",
    "shim._commands.migration_doc",
)

_EPILOG = """\
global options (--log-format, --quiet, --verbose, --traceback) go before or after the command.

exit codes:
  0   ok
  1   findings: the command ran and found what it was asked to flag (e.g. --check)
  2   usage: a bad option or argument, or the command needs an extra that is not installed
  3   config: a config, mapping or state file is missing or wrong (the message names file and key)
  4   unavailable: WeChat Pay or the emulator gave no usable answer, or the port is in use
  70  internal error (a bug: --traceback shows it)
  130 interrupted (Ctrl+C)
  141 stdout closed early (piped into head)
"""


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add the options every command accepts.

    Args:
        parser: the parser to add them to.
        top: True for the main parser (which holds the defaults); False for a subcommand's,
            whose options default to "not given" so they never undo one given before the
            subcommand.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    g = parser.add_argument_group("global options (before or after the command)")
    g.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=default("console"),
        help="how events are written to stderr (default: console)",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="only warnings and errors on stderr (no per-call events)",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="debug events too; the demo adds each answer and its events",
    )
    g.add_argument(
        "--traceback",
        action="store_true",
        default=default(False),
        help="on an unexpected error, show the Python traceback (for bug reports)",
    )
    g.add_argument(
        "--version",
        action="version",
        version=f"coupon-shim {__version__}",
        help="print the version and exit",
    )


def load_commands() -> list[Command]:
    """The registered commands, imported from :data:`COMMANDS`."""
    commands: list[Command] = []
    for module_name in COMMANDS:
        command = importlib.import_module(module_name).COMMAND
        if not isinstance(command, Command):  # pragma: no cover - a registration bug
            raise TypeError(f"{module_name}.COMMAND is not a shim._commands.Command")
        commands.append(command)
    return commands


def build_parser() -> argparse.ArgumentParser:
    """The full ``coupon-shim`` parser (every registered command)."""
    p = argparse.ArgumentParser(
        prog="coupon-shim",
        description="Keep WeChat Pay v2 query_coupon_stock callers working while moving to v3.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for command in load_commands():
        s = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(s)
        add_global_options(s, top=False)
        s.set_defaults(_command=command)
    return p


_parser = build_parser  # older name, kept for callers of the private helper


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(message: str, code: ExitCode) -> int:
    print(_one_line(message), file=sys.stderr)
    return int(code)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Python warnings (e.g. a literal secret in the config) as one line, without source."""
    print(_one_line(f"coupon-shim: warning: {category.__name__}: {message}"), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coupon-shim`` console script.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code (:class:`~shim._commands.ExitCode`).
    """
    from shim._events import configure_cli_logging
    from shim._redaction import redact_text

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("--quiet and --verbose cannot be used together")
    level = 30 if args.quiet else 10 if args.verbose else 20
    configure_cli_logging(args.log_format, level=level)
    command: Command = args._command
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(command.run(args))
    except CommandError as exc:
        return _fail(f"coupon-shim {command.name}: {exc}", exc.exit_code)
    except MissingExtraError as exc:
        return _fail(f"coupon-shim {command.name}: {exc}", ExitCode.USAGE)
    except ConfigError as exc:
        return _fail(f"coupon-shim: ConfigError: {exc}", ExitCode.CONFIG)
    except InputError as exc:
        return _fail(f"coupon-shim: InputError: {exc}", ExitCode.USAGE)
    except ShimError as exc:
        return _fail(f"coupon-shim: {type(exc).__name__}: {exc}", ExitCode.UNAVAILABLE)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python's exit-time flush quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return int(ExitCode.PIPE_CLOSED)
    except Exception as exc:
        if args.traceback:
            raise
        return _fail(
            f"coupon-shim: internal error: {type(exc).__name__}: {redact_text(str(exc))} "
            "(a bug in coupon-shim; run again with --traceback and report it)",
            ExitCode.INTERNAL,
        )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
