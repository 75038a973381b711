"""`solutions`: list the registered solutions (the lineage) with their parameter counts."""
from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    app.command("solutions")(solutions)


def solutions(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of objects instead of a table."),
    names_only: bool = typer.Option(False, "--names", help="Print only the names, one per line."),
    tree: bool = typer.Option(False, "--tree", help="Show the lineage as a tree."),
) -> None:
    """List the registered solutions: name, parent, frontend, backbone, fusion, augmentation, parameters."""
    from core import registry

    names = registry.names()
    if names_only:
        typer.echo("\n".join(names))
        return
    rows = [describe(registry.get(name)) for name in names]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=240)  # piped into a file or a pager: don't squeeze the table to 80 columns
    console.print(lineage_tree(rows) if tree else lineage_table(rows))


def describe(recipe) -> dict:
    """One solution as a flat dict of what distinguishes it (used by the table and --json)."""
    from core.model.network import count_parameters

    fe, bb, head, fusion, aug = recipe.frontend, recipe.backbone, recipe.head, recipe.fusion, recipe.augment
    frontend = f"{'+'.join(map(str, fe.n_ffts))} FFT, {fe.n_mels} mel, PCEN"
    backbone = bb.arch + (", deep stem" if bb.stem == "deep" else "") + ("" if bb.maxpool else ", no maxpool")
    if bb.cbam != "none":
        backbone += f", CBAM({bb.cbam})"
    backbone += f", {head.pooling.upper()}" + (", BiGRU" if head.temporal == "bigru" else "")
    augmentation = f"mixup {aug.mixup_alpha:g}, SpecAug {aug.freq_mask}/{aug.time_mask}"
    if aug.wave_prob > 0:
        augmentation += ", noise+gain"
    return {
        "name": recipe.name,
        "parent": recipe.parent,
        "summary": recipe.summary,
        "frontend": frontend,
        "backbone": backbone,
        "fusion": "none" if not fusion.uses_salience else f"{fusion.kind} {fusion.dim}",
        "augmentation": augmentation,
        "epochs": recipe.training.epochs,
        "params": count_parameters(recipe),
    }


def lineage_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="Solutions (lineage order)")
    for column in ("name", "parent", "frontend", "backbone", "fusion", "augmentation", "params"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in rows:
        table.add_row(*(f"{row[c]:,}" if c == "params" else str(row[c] or "-") for c in
                        ("name", "parent", "frontend", "backbone", "fusion", "augmentation", "params")))
    return table


def lineage_tree(rows: list[dict]):
    from rich.tree import Tree

    root = Tree("lineage")
    nodes = {}
    for row in rows:
        label = f"[bold]{row['name']}[/] ({row['params']:,} params) {row['summary']}"
        nodes[row["name"]] = (nodes[row["parent"]] if row["parent"] else root).add(label)
    return root
