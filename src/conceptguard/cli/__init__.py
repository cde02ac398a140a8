"""The `conceptguard` command line. Every error a user can cause is one line on stderr and exit 2.

One module per command group; `common.py` holds what they share. Importing this package
registers every command on `app`.
"""

from __future__ import annotations

import logging
import sys
import warnings

import click
import typer

from conceptguard.cli import allbutone, attack, audit, bench, espresso, generate, text, train, world  # noqa: F401
from conceptguard.cli.common import app
from conceptguard.errors import ConceptGuardError


def _quiet_libraries() -> None:
    """The ML libraries log optional-extra notices; a CLI user only needs our messages."""
    for name in ("transformers", "diffusers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing is reported when a command needs it
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main() -> None:
    _quiet_libraries()
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns the code
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except ConceptGuardError as exc:
        message = " ".join(str(exc).split())
        print(f"conceptguard: error: {message}", file=sys.stderr)
        sys.exit(2)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        print("conceptguard: aborted", file=sys.stderr)
        sys.exit(130)
    except (click.ClickException, typer.exceptions.TyperException) as exc:  # typer >= 0.2x raises its own click's
        if type(exc).__name__ == "NoArgsIsHelpError" and hasattr(exc, "show"):  # a bare group: its help is the answer
            exc.show()
            sys.exit(2)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"conceptguard: error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        print("conceptguard: aborted (a bench or training run resumes where it stopped)", file=sys.stderr)
        sys.exit(130)


__all__ = ["app", "main"]
