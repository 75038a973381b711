"""`synth`: write a synthetic dataset of urban sounds in any layout (the demo set, or a full-size mirror)."""
from __future__ import annotations

from pathlib import Path

import typer

from core.commands.options import SEED_MAX


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)


def synth(
    out: Path = typer.Option(..., help="Folder to create (must not exist or be empty)."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Random seed; the same seed writes the same bytes."),
    like: Path | None = typer.Option(None, help="An UrbanSound8K.csv to mirror row for row "
                                                   "(names, folds, durations, salience, classes)."),
    clips_per_class_fold: int = typer.Option(5, min=1, help="Train clips per class and fold (ignored with --like)."),
    test_clips_per_class: int = typer.Option(20, min=1, help="Test clips per class (ignored with --like)."),
    workers: int | None = typer.Option(None, min=1, help="Rendering processes [default: the number of "
                                                            "cores for 256+ clips]."),
    layout: str = typer.Option("kaggle", help="kaggle: folds 1-8 + a labelled test split | official: "
                                              "UrbanSound8K's own layout, folds 1-10 (for --protocol us8k-10fold) | "
                                              "esc50: ESC-50's layout, 5 folds | csv: metadata.csv (file,label,"
                                              "salience,group) | folders: one folder per class. The last three "
                                              "hold the same clips: --clips-per-class-fold x 5 per class."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Write a synthetic UrbanSound8K-like dataset (any layout --data reads, all labelled) to OUT."""
    import pandas as pd
    from rich.console import Console

    from core.demo.synth import write_synthetic_dataset

    root = write_synthetic_dataset(out, seed=seed, like=like, clips_per_class_fold=clips_per_class_fold,
                                   test_clips_per_class=test_clips_per_class, workers=workers, progress=progress,
                                   layout=layout)
    if layout in ("esc50", "csv", "folders"):
        from core.data.metadata import load_source

        source = load_source(root)
        Console(stderr=True).print(f"wrote {len(source.train)} labelled clips of {source.num_classes} classes "
                                   f"({layout} layout; folds {', '.join(map(str, source.folds))}"
                                   f"{', assigned when read' if source.folds_assigned else ''}) to {root}", markup=False)
        return
    if layout == "official":
        table = pd.read_csv(root / "metadata" / "UrbanSound8K.csv")
        Console(stderr=True).print(f"wrote {len(table)} labelled clips in folds 1-10 (official layout) to {root}", markup=False)
        return
    train = pd.read_csv(root / "metadata" / "kaggle_train.csv")
    test = pd.read_csv(root / "metadata" / "kaggle_test.csv")
    Console(stderr=True).print(f"wrote {len(train)} train clips (folds {train['fold'].min()}-{train['fold'].max()}) "
                               f"and {len(test)} labelled test clips to {root}", markup=False)
