"""Command-line interface: `python -m core <command>` (also `./run.sh <command>`).

Each command group lives in its own module under core/commands/ and adds itself to `app`;
heavy imports (torch) happen inside the commands, so `--help` stays fast.
"""
from __future__ import annotations

import importlib
import sys

import typer

from core.errors import UserError

app = typer.Typer(
    help="Urban sound classification (UrbanSound8K): train solutions, blend and score predictions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain text: a "[default: ...]" in it is shown, not eaten as markup
)

COMMAND_MODULES = (
    "core.commands.solutions",
    "core.commands.train",
    "core.commands.data",
    "core.commands.blend",
    "core.commands.predict",
    "core.commands.tune",
    "core.commands.report",
    "core.commands.classify",
    "core.commands.detect",
    "core.commands.monitor",
    "core.commands.sed",
    "core.commands.tune_detect",
)

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    """Run the CLI; a UserError becomes one red message and a non-zero exit, never a traceback."""
    try:
        app(standalone_mode=False)
    except UserError as error:
        _fail(str(error), error.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as error:  # usage errors (typer's own click): one line naming the option, exit 2
        if not hasattr(error, "format_message"):
            raise
        _fail(f"{error.format_message()} (see: {_command_path(error)} --help)", getattr(error, "exit_code", 2))


def _command_path(error: Exception) -> str:
    """'python -m core train' for an error raised while parsing `train`'s options."""
    context = getattr(error, "ctx", None)
    return context.command_path if context is not None else "python -m core"


def _fail(message: str, code: int) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    sys.exit(code)
