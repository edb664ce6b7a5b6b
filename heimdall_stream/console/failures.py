"""How a failed command ends: one ``error: ...`` line saying what to set, and an exit code.

Every ``HeimdallError`` escaping a command goes through ``HeimdallGroup``; ``EXIT_CODES`` maps
its class to the code (documented in ``heimdall-stream --help`` and the README), ``HINTS`` adds
what the operator can do about it when the message alone does not say so.
"""

from __future__ import annotations

import logging

import click

from heimdall_stream.console.settings_doc import SettingsCommand
from heimdall_stream.errors import (
    ConfigurationError,
    ControlMessageError,
    FatalKafkaError,
    HeimdallError,
    ModelContractError,
    ModelLoadError,
    ModelNotFoundError,
    RegistryUnavailableError,
)

log = logging.getLogger("heimdall_stream")

# The exit code of each error class; the first class the error is an instance of wins, so a
# subclass listed before its base gets its own code.
EXIT_CODES: tuple[tuple[type[HeimdallError], int], ...] = (
    (FatalKafkaError, 3),
    (ConfigurationError, 2),
    (ModelLoadError, 2),
    (ModelContractError, 2),
    (ControlMessageError, 2),
    (HeimdallError, 4),
)

# What to do about an error, appended to its message; the first matching class wins.
HINTS: tuple[tuple[type[HeimdallError], str], ...] = (
    (
        ModelNotFoundError,
        "register the reference models with `heimdall-stream train-reference`, or set "
        "HEIMDALL_MODEL__URI to a model the registry has",
    ),
    (
        RegistryUnavailableError,
        "set HEIMDALL_MLFLOW__TRACKING_URI to a reachable MLflow server (or start it)",
    ),
)


def exit_code(error: HeimdallError) -> int:
    """The exit code a command ends with when ``error`` escapes it."""
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with spaces)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or repr(error)


def describe(error: BaseException) -> str:
    """The error on one line, followed by what to do about it when there is a hint for it."""
    hint = next((text for cls, text in HINTS if isinstance(error, cls)), None)
    message = one_line(error)
    return f"{message}; {hint}" if hint else message


class HeimdallGroup(click.Group):
    """A command group that turns every ``HeimdallError`` into one stderr line and an exit code.

    Expected failures (bad settings, unreachable or refusing services, a model that does not
    exist or fit, a fenced producer) are the operator's to fix, so they get a sentence saying
    what to set, not a traceback; the traceback is still logged at DEBUG.  Any other exception
    is a bug and keeps click's default (traceback, exit 1).  Its commands are
    ``SettingsCommand``s, so ``main.command(reads=(...))`` lists the settings a command reads.
    """

    command_class = SettingsCommand

    def invoke(self, ctx: click.Context) -> object:
        """Run the subcommand; map a ``HeimdallError`` it raises to its exit code."""
        try:
            return super().invoke(ctx)
        except HeimdallError as exc:
            log.debug("command failed", exc_info=True)
            click.echo(f"error: {describe(exc)}", err=True)
            ctx.exit(exit_code(exc))
