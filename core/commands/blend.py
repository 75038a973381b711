"""`blend`, `score`, `select`: combine probability CSVs, score a submission, choose blend weights on OOF."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from core.blend import BlendResult


def register(app: typer.Typer) -> None:
    app.command("blend")(blend_command)
    app.command("score")(score_command)
    app.command("select")(select_command)


def blend_command(
    members: list[str] | None = typer.Argument(
        None, help="Member CSVs relative to --root, e.g. wideresnet/best_model_fold5.csv (or use --recipe)."),
    recipe: Path | None = typer.Option(None, "--recipe", help="Blend recipe TOML, e.g. submissions/top12.toml."),
    root: Path = typer.Option(..., "--root", help="Folder the member paths are relative to (e.g. solutions)."),
    out: Path = typer.Option(..., "--out", help="Submission CSV to write (ID,TARGET)."),
    allow_missing: bool = typer.Option(False, "--allow-missing",
                                       help="Blend the members that exist and list the missing ones (default: refuse)."),
    ids: Path | None = typer.Option(None, "--ids", help="CSV with an ID column (e.g. kaggle_test.csv): output row order."),
    method: str | None = typer.Option(None, "--method", help="mean | geomean | rank (default: the recipe's method, else mean)."),
    probs: bool = typer.Option(False, "--probs", help="Also write the blended scores as columns 0..9 (another data set's: its class names)."),
) -> None:
    """Soft-vote probability CSVs (aligned by ID) into a submission; never substitutes a missing member."""
    from dataclasses import replace

    import numpy as np
    from rich.console import Console
    from rich.markup import escape

    from core.atomic import write_csv
    from core.blend import blend, check_method, load_blend_recipe, parse_blend_recipe, submission_frame
    from core.errors import UserError
    from core.predictions import describe_classes, read_ids

    if bool(members) == (recipe is not None):
        raise UserError("give member CSVs or --recipe FILE (exactly one of the two).")
    plan = load_blend_recipe(recipe) if recipe is not None else parse_blend_recipe({"members": members}, "command line", "blend")
    if method is not None and method != plan.method:
        plan = replace(plan, method=check_method(method))
    order = read_ids(ids) if ids is not None else None
    result = blend(plan, root, allow_missing=allow_missing)
    frame = submission_frame(result, order, f"--ids {ids}", with_scores=probs)
    write_csv(frame, out)

    console = Console()
    console.print(member_table(result))
    if result.missing:
        console.print(f"[bold yellow]missing, not blended ({len(result.missing)} of "
                      f"{len(result.missing) + len(result.reports)} members):[/] {escape(', '.join(result.missing))}",
                      soft_wrap=True, highlight=False)
    class_counts = np.bincount(result.predictions, minlength=result.scores.shape[1])
    counts = ", ".join(f"{name}: {count}" for name, count in zip(result.classes, class_counts, strict=True))
    console.print(f"predicted class counts: {counts}", soft_wrap=True, highlight=False, markup=False)
    columns = describe_classes(result.classes)
    note = f" + blended ranks (not probabilities) as {columns}" if probs and plan.method == "rank" else (
        f" + blended probabilities {columns}" if probs else "")
    console.print(f"wrote {out} ({len(frame)} rows, ID,TARGET{note})", soft_wrap=True, highlight=False, markup=False)


def member_table(result: BlendResult) -> Table:
    """Rich table: each member's weight, files, agreement with the blend and rows it changes."""
    from rich.table import Table

    table = Table(title=f"Blend {result.recipe.name!r}: {result.recipe.method} of {len(result.reports)} members, "
                        f"{len(result.ids)} rows")
    table.add_column("member", overflow="fold")  # full paths: a truncated name could hide which fold it is
    for column in ("weight", "files", "agrees with blend", "rows changed"):
        table.add_column(column, justify="right")
    for report in result.reports:
        table.add_row(report.member.expected,
                      f"{report.member.weight:g}", str(len(report.files)), f"{report.agreement:.2%}",
                      "-" if report.rows_changed is None else str(report.rows_changed))
    table.caption = "rows changed = blend predictions that differ when this member is left out"
    return table


def score_command(
    submission: Path = typer.Argument(..., help="Submission CSV (ID,TARGET), or a blend's --probs file (ID,TARGET "
                                      "and one column per class)."),
    labels: Path = typer.Option(..., "--labels", help="True labels CSV: ID,TARGET or ID,classID (same IDs)."),
    data: Path | None = typer.Option(None, help="The data set the submission predicts (any layout train takes): its "
                                     "classes name the rows [default: the classes the submission's columns name, "
                                     "else UrbanSound8K's]."),
    as_json: bool = typer.Option(False, "--json", help="Print only {accuracy, macro_f1, composite} as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Write the confusion matrix PNG here."),
) -> None:
    """Score a submission: accuracy, macro-F1, composite (0.8/0.2), per-class table, confusion matrix."""
    from core.metrics import confusion, per_class_table, score
    from core.predictions import matched_labels, read_labels, read_submission

    data_classes = None
    if data is not None:
        from core.data.metadata import load_source

        data_classes = load_source(data).class_names
    predicted = read_submission(submission, None if data_classes is None else len(data_classes))
    class_names = scored_classes(predicted.classes, data_classes, submission, data)
    y_true, y_pred = matched_labels(predicted, read_labels(labels, len(class_names)))
    scores = score(y_true, y_pred)
    if plot is not None:
        from core.plots import plot_confusion

        plot_confusion(confusion(y_true, y_pred, len(class_names)), class_names,
                       f"{submission.name}: accuracy {scores.accuracy:.4f}, macro-F1 {scores.macro_f1:.4f}, "
                       f"composite {scores.composite:.4f}", plot)
    if as_json:
        typer.echo(json.dumps(scores.as_dict()))
        return
    from rich.console import Console

    console = Console()
    console.print(per_class_rich_table(per_class_table(y_true, y_pred, len(class_names)), class_names))
    console.print(f"{submission} ({len(y_true)} rows): accuracy {scores.accuracy:.4f}, "
                  f"macro-F1 {scores.macro_f1:.4f}, composite {scores.composite:.4f} (0.8 x accuracy + 0.2 x macro-F1)",
                  soft_wrap=True, highlight=False, markup=False)
    if plot is not None:
        console.print(f"wrote {plot}", highlight=False, markup=False)


def scored_classes(columns: tuple[str, ...] | None, data_classes: tuple[str, ...] | None, submission: Path,
                   data: Path | None) -> tuple[str, ...]:
    """The class names a submission is scored with: the data set's (--data), which the submission's class
    columns must then match, else those columns (0..9 are UrbanSound8K's), else UrbanSound8K's."""
    from core import PROB_COLUMNS
    from core.errors import UserError
    from core.folds import URBANSOUND8K_CLASSES
    from core.predictions import describe_classes, probability_columns

    if data_classes is not None:
        if columns is not None and list(columns) != probability_columns(data_classes):
            raise UserError(f"{submission}: its class columns ({describe_classes(columns)}) are not the classes of "
                            f"--data {data} ({', '.join(data_classes)}); score it against the data set it predicts")
        return data_classes
    if columns is None or list(columns) == PROB_COLUMNS:
        return URBANSOUND8K_CLASSES
    return columns


def per_class_rich_table(per_class: dict, class_names: tuple[str, ...]) -> Table:
    """Rich table of per-class precision, recall, F1 and support."""
    from rich.table import Table

    table = Table(title="Per class")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for index, name in enumerate(class_names):
        table.add_row(f"{index} {name}", f"{per_class['precision'][index]:.4f}", f"{per_class['recall'][index]:.4f}",
                      f"{per_class['f1'][index]:.4f}", str(int(per_class["support"][index])))
    return table


def select_command(
    root: Path = typer.Option(..., "--root", help="Solutions folder: <solution>/oof_fold<k>.csv (+ best_model_fold<k>.csv)."),
    out: Path = typer.Option(..., "--out", help="Blend recipe TOML to write (solution weights)."),
    max_steps: int = typer.Option(20, "--max", min=1, help="Greedy selection steps; the chosen weights sum to at most this."),
    solutions: list[str] | None = typer.Option(None, "--solution", help="Select only among these solutions (repeatable; default: every folder with OOF files)."),
) -> None:
    """Choose solution weights by greedy forward selection with replacement on OOF predictions (Caruana 2004)."""
    from rich.console import Console
    from rich.table import Table

    from core.atomic import write_text
    from core.blend import blend_recipe_toml
    from core.select import select, selection_recipe

    selection = select(root, max_steps, solutions)
    name = out.stem
    recipe = selection_recipe(selection, name)
    best_single = max(range(len(selection.pool)), key=lambda index: selection.single_scores[index].composite)
    only = "".join(f" --solution {solution}" for solution in solutions or ())
    comment = (f"Written by `python -m core select --root {root} --max {max_steps}{only}`: greedy forward selection with\n"
               f"replacement on OOF predictions (Caruana et al. 2004). Blend OOF composite "
               f"{selection.scores.composite:.4f};\nbest single solution {selection.pool[best_single].name} "
               f"{selection.single_scores[best_single].composite:.4f}.\n"
               f"Use: python -m core blend --recipe {out} --root {root} --out submissions/{name}.csv")
    write_text(blend_recipe_toml(recipe, comment), out)

    table = Table(title=f"Ensemble selection on OOF predictions ({len(selection.pool[0].clips)} clips)")
    for column in ("solution", "folds", "accuracy", "macro-F1", "composite", "weight"):
        table.add_column(column, justify="left" if column in ("solution", "folds") else "right")
    for solution, scores, weight in zip(selection.pool, selection.single_scores, selection.weights, strict=True):
        table.add_row(solution.name, ",".join(map(str, solution.folds)), f"{scores.accuracy:.4f}",
                      f"{scores.macro_f1:.4f}", f"{scores.composite:.4f}", str(weight) if weight else "-")
    console = Console()
    console.print(table)
    console.print("steps: " + " -> ".join(f"{added} ({composite:.4f})" for added, composite in selection.steps),
                  soft_wrap=True, highlight=False, markup=False)
    chosen = ", ".join(f"{solution} x{weight}" for solution, weight in selection.chosen())
    console.print(f"[bold]blend OOF composite {selection.scores.composite:.4f}[/] (accuracy "
                  f"{selection.scores.accuracy:.4f}, macro-F1 {selection.scores.macro_f1:.4f}) with {chosen}",
                  soft_wrap=True, highlight=False)
    console.print(f"wrote {out}", highlight=False, markup=False)
