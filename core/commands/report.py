"""`report`: the results of every trained solution in lineage order, with gains over the lineage parent."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("report", short_help="Results of the trained solutions in lineage order, with each one's gain "
                                     "over its parent; writes report.md and report.png.")(report)


def report(
    solution: list[str] | None = typer.Argument(None, help="Solutions to report [default: every solution with "
                                                              "results under --solutions]."),
    solutions: Path = typer.Option(Path("solutions"), help="Folder holding the solution folders."),
) -> None:
    """Table of solutions in lineage order: protocol, folds done, mean +- std of the fold composites, OOF and test composite, gain over the lineage parent on the same protocol, parameters, epochs, training time. Writes SOLUTIONS/report.md and SOLUTIONS/report.png (bars with +- std)."""
    from rich.console import Console
    from rich.table import Table

    from core.atomic import check_writable
    from core.errors import UserError
    from core.report import COLUMNS, build_report, table_cells, write_report

    rows = build_report(solutions, list(solution) if solution else None)
    if not rows:
        raise UserError(f"no results under {solutions}: train a solution first (./run.sh <solution>), or pass "
                        "--solutions the folder that holds them")
    check_writable(solutions)
    table = Table(title="Results in lineage order (composite = 0.8 acc + 0.2 macro-F1)")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("solution", "protocol", "gain vs parent") else "right")
    for row in rows:
        table.add_row(*table_cells(row))
    console = Console()
    if not console.is_terminal:
        console = Console(width=240)
    console.print(table)
    markdown, chart = write_report(rows, solutions)
    console.print(f"wrote {markdown} and {chart}")
