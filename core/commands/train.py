"""`train`: train one solution over its folds (the demo profile when no --data is given)."""
from __future__ import annotations

from pathlib import Path

import typer

from core.commands.options import (
    SEED_MAX,
    CacheDir,
    Device,
    MaxClipsPerFold,
    Precision,
    Progress,
    SkipBadAudio,
    TestSalience,
    Workers,
    check_train_folds,
    positive,
    train_data,
    train_fold_list,
    train_protocol,
    workers_count,
)


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def parse_folds(text: str | None) -> tuple[int, ...] | None:
    """'1,3' -> (1, 3) for a --folds value its option's callback has already checked (options.py)."""
    if text is None:
        return None
    return tuple(int(part) for part in text.split(",") if part.strip())


def train(
    solution: str = typer.Argument(..., help="Solution name (see `solutions`)."),
    data: Path | None = typer.Option(None, callback=train_data, help="Data folder: UrbanSound8K (official or Kaggle layout), ESC-50, "
                                                "metadata.csv or one folder per class; none: the synthetic demo set."),
    out: Path | None = typer.Option(None, help="Output folder [default: solutions/<solution>, or "
                                               "solutions/demo/<solution> without --data]."),
    submissions: Path | None = typer.Option(None, help="Folder for the fold-average submission <solution>.csv "
                                                       "[default: submissions, or submissions/demo without --data]."),
    folds: str | None = typer.Option(None, callback=train_fold_list, help="Validation folds to train, e.g. 1,3, "
                                     "within the folds the protocol trains on the data [default: the recipe's]."),
    epochs: int | None = typer.Option(None, min=1, help="Epochs per fold [default: the recipe's]."),
    batch_size: int | None = typer.Option(None, min=1, help="Batch size [default: the recipe's]."),
    accumulate: int = typer.Option(1, min=1, help="Split each SAM pass into K forward/backward calls of batch/K clips "
                                   "whose gradients add up: the recipe's effective batch in 1/K of the activation "
                                   "memory. BatchNorm then normalises over batch/K clips and mixup pairs clips "
                                   "within each part, so K is part of the run's identity."),
    lr: float | None = typer.Option(None, callback=positive, help="Peak learning rate, > 0 [default: the recipe's]."),
    params: Path | None = typer.Option(None, help="Hyper-parameters file from `tune --export`."),
    device: Device = "auto",
    precision: Precision = "auto",
    workers: Workers = "auto",
    seed: int | None = typer.Option(None, min=0, max=SEED_MAX, help="Random seed [default: the recipe's]."),
    skip_bad_audio: SkipBadAudio = False,
    test_salience: TestSalience = None,
    max_clips_per_fold: MaxClipsPerFold = None,
    compile: bool = typer.Option(False, "--compile", help="torch.compile the backbone (worth it on GPU; minutes of compilation first)."),
    device_cache: bool = typer.Option(False, "--device-cache/--no-device-cache", help="Keep the training waveforms on the device as one tensor (GPU; refused if they do not fit)."),
    channels_last: bool | None = typer.Option(None, "--channels-last/--no-channels-last", help="Memory format of the CNN (default: channels_last on CUDA only)."),
    protocol: str = typer.Option("kaggle", callback=train_protocol, help="kaggle: folds 1-8 train, 9-10 test (the competition) | us8k-10fold: "
                                              "test every fold k, validate on k+1 (the literature's protocol) | kfold: "
                                              "the same on any data set's folds (ESC-50: 5)."),
    n_folds: int | None = typer.Option(None, min=2, max=100, help="Folds to assign to data that gives none (class "
                                       "folders, a CSV without a fold column) [default: 5]; stored in folds.csv of "
                                       "the output folder."),
    group_pattern: str | None = typer.Option(None, help="Regex whose first group (or match) in a file name names its "
                                             "recording, so that fold assignment keeps a recording's clips together."),
    init_from: str | None = typer.Option(None, help="Fine-tune: start from SOLUTION (its lowest fold's best "
                                         "checkpoint under solutions/) or PATH.pt (one of our checkpoints of the same "
                                         "backbone, or a plain state dict of that timm model); a head for other "
                                         "classes starts fresh."),
    freeze_backbone_epochs: int = typer.Option(0, min=0, help="Train only what follows the backbone (pooling, head) "
                                               "for the first N epochs."),
    clip_seconds: float | None = typer.Option(None, min=0.5, max=60.0, help="Clip length the model takes, in "
                                              "seconds [default: the recipe's]; clips are padded or centre-cropped "
                                              "to it."),
    allow_fold_leakage: bool = typer.Option(False, "--allow-fold-leakage", help="Proceed although one recording "
                                            "(fsID) spans folds; the summary records it."),
    tensorboard: Path | None = typer.Option(None, help="Also write per-epoch scalars and hparams for TensorBoard "
                                                          "under DIR/<solution>/<protocol>/fold<k>."),
    cache_dir: CacheDir = None,
    progress: Progress = True,
) -> None:
    """Train SOLUTION over its folds; rerun the same command to resume.

    Under torchrun (`torchrun --nproc_per_node=N -m core train SOLUTION ...`) the N processes train each
    fold together with DistributedDataParallel; see docs/gpu.md.
    """
    from rich.console import Console

    from core import registry
    from core.data.metadata import load_source
    from core.demo.profile import apply_demo_profile, ensure_demo_data
    from core.folds import PROTOCOLS
    from core.train import distributed
    from core.train.init_from import resolve
    from core.train.options import TrainOptions
    from core.train.report import print_summary

    with distributed.process_group(device):
        console = Console(stderr=True, quiet=not distributed.current().is_main)  # under torchrun: rank 0 speaks
        recipe = registry.get(solution)
        recipe_changes: list[str] = []
        if params is not None:
            from core.params import apply_params, context_changes, load_params

            searched = apply_params(recipe, load_params(params), origin=f"params file {params}")
            recipe_changes = context_changes(recipe, searched)  # the search context, beyond the searched values
            recipe = searched
        changes = {key: value for key, value in (("batch_size", batch_size), ("lr", lr)) if value is not None}
        if changes:
            recipe = recipe.derive(training=changes)
        if clip_seconds is not None and clip_seconds != recipe.frontend.clip_seconds:
            console.print(f"--clip-seconds {clip_seconds:g}: the model takes {clip_seconds:g} s clips instead of the "
                          f"recipe's {recipe.frontend.clip_seconds:g} s (part of the run identity)")
            recipe = recipe.derive(frontend=dict(clip_seconds=clip_seconds))
        if protocol not in PROTOCOLS:
            from core.errors import UserError

            raise UserError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
        from core.solution_folder import SolutionFolder, solutions_root

        demo = data is None  # the demo's results live apart from real ones (solutions/demo, submissions/demo)
        default_out = SolutionFolder.of(solutions_root(Path("solutions"), demo), solution, protocol).root
        options = TrainOptions(
            out=out or default_out, protocol=protocol, tensorboard=tensorboard,
            submissions=submissions or solutions_root(Path("submissions"), demo), recipe_changes=tuple(recipe_changes),
            folds=parse_folds(folds), epochs=epochs, device=device,
            precision=precision, workers=workers_count(workers), seed=seed, skip_bad_audio=skip_bad_audio, progress=progress,
            max_clips_per_fold=max_clips_per_fold, compile=compile, test_salience=test_salience,
            device_cache=device_cache, channels_last=channels_last, cache_dir=cache_dir, accumulate=accumulate,
            init_from=None if init_from is None else resolve(init_from, solutions_root(Path("solutions"), demo), PROTOCOLS),
            freeze_backbone_epochs=freeze_backbone_epochs,
        )
        if freeze_backbone_epochs and distributed.current().enabled:
            from core.errors import UserError

            raise UserError("--freeze-backbone-epochs is not supported under torchrun (DistributedDataParallel "
                            "needs every parameter's gradient); fine-tune on one process")
        if data is None:
            explicit = {name for name, value in (("folds", folds), ("epochs", epochs), ("batch_size", batch_size),
                                                 ("max_clips_per_fold", max_clips_per_fold)) if value is not None}
            if precision != "auto":
                explicit.add("precision")
            recipe, options, demo_changes = apply_demo_profile(recipe, options, explicit)
            console.print("[bold]No --data given: training on the synthetic demo set[/] (data/demo). "
                          "Demo profile, changed from the recipe:\n  " + "\n  ".join(demo_changes or ["nothing"]))
            data = ensure_demo_data()
        source = load_source(data, allow_fold_leakage=allow_fold_leakage, n_folds=n_folds,
                             group_pattern=group_pattern, folds_file=SolutionFolder(options.out).assigned_folds,
                             store_folds=False)  # stored by train_solution once every check passed
        from core.folds import protocol_folds
        from core.train.data import protocol_data_folds

        check_train_folds(parse_folds(folds), protocol, protocol_folds(protocol, protocol_data_folds(source, protocol)),
                          source.root)
        if source.layout not in ("kaggle", "official"):  # UrbanSound8K's own layouts: as before
            from core.train.own_data import describe_data

            console.print(describe_data(source, recipe), highlight=False, markup=False, soft_wrap=True)
        from core.train.solution import train_solution

        summary = train_solution(recipe, source, options)
        print_summary(summary, console)
        if params is not None:  # after the run, so that a refusal stays one line
            console.print(f"--params {params} also changed the recipe (the conditions its values were searched "
                          "under; recorded in summary.json):\n  " + "\n  ".join(recipe_changes or ["nothing else"]))
        if demo:
            console.print(f"Demo results are kept apart from real runs: {options.out} and {options.submissions}/. "
                          "report/select/blend/classify/export find them with --solutions (or --root) "
                          f"{solutions_root(Path('solutions'), True)}.")
