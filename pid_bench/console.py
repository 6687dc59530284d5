"""What every command shares: the exit codes (`ExitCode`, listed in each --help by `exits`),
the error console, and turning bad input or a refused write into one actionable line."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from pid_bench.store import StorageError

err = Console(stderr=True, soft_wrap=True)


class ExitCode(IntEnum):
    """Exit codes of every command, defined once; each command's --help lists its own."""

    OK = 0
    FAILED = 1  # a row failed, a regression, a check that did not pass
    BAD_INPUT = 2  # refused before anything ran or was written
    CHECKSUM = 65  # sysexits.h EX_DATAERR: a download did not match its published checksum
    UNREACHABLE = 69  # EX_UNAVAILABLE: the Hub (HF_ENDPOINT) or a URL could not be reached
    GATED = 77  # EX_NOPERM: a gated or private repository refused this account
    STORAGE = 74  # sysexits.h EX_IOERR: the run directory's storage refused a write
    SIGINT = 130  # 128 + the signal's number, as shells report a signalled process
    SIGTERM = 143


F = TypeVar("F", bound=Callable)


def exits(meanings: dict[ExitCode, str]) -> Callable[[F], F]:
    """Append 'Exit code: 0 ...; 2 ...' to a command's docstring (its --help)."""

    def add(command: F) -> F:
        codes = "; ".join(f"{int(code)} {text}" for code, text in meanings.items())
        command.__doc__ = f"{inspect.cleandoc(command.__doc__ or '')}\n\nExit code: {codes}."
        return command

    return add


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """StorageWarnings (a part set aside, a disk that may fill) as `warning:` lines on stderr."""
    from pid_bench.store import StorageWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", StorageWarning)
        others = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], *where, **more) -> None:
            if not issubclass(category, StorageWarning):
                return others(message, category, *where, **more)
            err.print(f"[yellow]warning:[/yellow] {escape(str(message))}")

        warnings.showwarning = show
        yield


def storage_exit(exc: StorageError, safe: str, again: str) -> typer.Exit:
    """Print a refused write as one error line: what could not be written, what is safe, the
    fix and the command to rerun; the exit to raise."""
    err.print(f"[red]error:[/red] {escape(f'{exc.what()}. {safe}; {exc.fix} and rerun `{again}`')}")
    return typer.Exit(ExitCode.STORAGE)


def load_suite_or_exit(path: Path):
    from pid_bench.suite import SuiteError, load_suite

    try:
        return load_suite(path)
    except (SuiteError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
