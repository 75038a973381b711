"""`tune-detect`: per-class detection thresholds chosen out of fold, written into the solution's folder."""
from __future__ import annotations

from pathlib import Path

import typer

from core.commands.detect import Hop, Median, MinGap, MinLength
from core.commands.options import Device, Precision


def register(app: typer.Typer) -> None:
    app.command("tune-detect", short_help="Per-class detection thresholds chosen out of fold (each fold model on "
                                          "soundscapes of its validation fold).")(tune_detect)


def tune_detect(
    solution: str = typer.Option(..., "--solution", help="The trained solution whose thresholds to tune."),
    data: Path = typer.Option(..., help="UrbanSound8K (or the demo set) in the official layout: the soundscapes "
                                        "are made from its clips of each fold model's validation fold."),
    n: int = typer.Option(200, "--n", min=1, help="Soundscapes per fold model (10 s each, URBAN-SED settings)."),
    protocol: str = typer.Option("kaggle", help="The protocol the solution was trained with: kaggle (fold model k "
                                                "validates on fold k) | us8k-10fold (on fold k % 10 + 1)."),
    solutions: Path = typer.Option(Path("solutions"), help="Folder holding the solution folders."),
    hop: Hop = 0.5,
    median: Median = 1.5,
    min_length: MinLength = 0.5,
    min_gap: MinGap = 0.5,
    seed: int = typer.Option(0, min=0, max=2**31 - 1, help="Seed of the soundscapes."),
    augment: bool = typer.Option(True, help="Pitch shift and time stretch the soundscapes' events (URBAN-SED)."),
    keep: Path | None = typer.Option(None, help="Keep the soundscapes in this new folder (one subfolder per "
                                                "validation fold); default: a temporary folder, removed."),
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Choose per-class hysteresis thresholds (on, off) without the test soundscapes, and write them as the solution's detect_thresholds.csv (event_label,on,off), which detect and monitor then use by default.

    Each fold model scores --n soundscapes made from the clips of its own validation fold only (kaggle: fold k for fold model k; the folds recorded with the soundscapes are checked against the folds the model trained on). On the pooled out-of-fold scores, each class gets the pair from a grid (on 0.1..0.9, off = on minus 0..0.3) with the best event-based F1 (sed_eval; 200 ms onset collar), the time rules fixed at --median/--min-length/--min-gap. Event-based, because the thresholds set where events start and end and whether they break up, which the segment-based F1 hardly sees.
    """
    import tempfile

    from rich.console import Console
    from rich.table import Table

    from core.atomic import check_writable
    from core.commands.detect import post_processing
    from core.data.soundscapes import SoundscapeSettings, write_soundscapes
    from core.errors import UserError
    from core.folds import PROTOCOLS, URBANSOUND8K_CLASSES
    from core.infer.events import write_thresholds
    from core.infer.predictors import torch_predictor
    from core.infer.thresholds import choose_thresholds, score_out_of_fold
    from core.progress import progress_bar
    from core.solution_folder import SolutionFolder

    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    folder = SolutionFolder.of(solutions, solution, protocol)
    folds = folder.folds_with("best_model")
    if not folds:
        raise UserError(f"no checkpoints best_model_fold<k>.pt in {folder.root}; train {solution} first, or pass "
                        f"--solutions/--protocol to point at its folder")
    check_writable(folder.root)
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise UserError(f"--keep {keep} exists and is not an empty folder; choose a new folder")
    # Soundscapes are made of UrbanSound8K clips (core/data/soundscapes.py), so their classes are its ten.
    base, _ = post_processing(hop, None, None, median, min_length, min_gap, None, URBANSOUND8K_CLASSES)
    console = Console(stderr=True)
    settings = SoundscapeSettings(augment=augment)
    with tempfile.TemporaryDirectory(prefix="tune-detect-") as scratch:
        root = Path(keep) if keep is not None else Path(scratch)

        def soundscapes_for(fold: int) -> Path:
            out = root / f"fold{fold}"
            if not (out / "soundscapes.json").is_file():  # made once per validation fold
                write_soundscapes(data, (fold,), out, n, seed, settings, name_prefix=f"fold{fold}")
            return out

        def spec_for(key: int):
            return torch_predictor([solution], [1.0], "mean", solutions, device, precision, folds=(key,),
                                   protocol=protocol)

        with progress_bar(len(folds), "tune-detect (fold models)", console=console) as advance:
            runs = score_out_of_fold(folds, protocol, spec_for, soundscapes_for, base, hop, on_fold=advance)
        tuned = choose_thresholds(runs, base)
    path = write_thresholds(tuned.rules, folder.detect_thresholds)
    table = Table(title=f"{solution}: thresholds chosen out of fold (event-based F1 on {n} soundscapes per fold "
                        "model)")
    for column in ("class", "on", "off", "event F1"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for index, label in enumerate(tuned.event_f1):
        table.add_row(label, f"{tuned.rules.on[index]:g}", f"{tuned.rules.off[index]:g}",
                      f"{tuned.event_f1[label]:.3f}")
    Console().print(table)
    for run in runs:
        console.print(f"fold model {run.fold} (trained on folds {','.join(map(str, run.trained_on))}): "
                      f"{len(run.detection.files)} soundscapes of fold {run.validation}", highlight=False)
    console.print(f"wrote {path}; detect and monitor use it by default for --solution {solution}"
                  + ("" if protocol == "kaggle" else " (of this protocol's folder: pass --thresholds)"),
                  highlight=False)
