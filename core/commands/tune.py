"""`tune`: hyper-parameter search with Optuna; many workers can share one study; report and export."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from core.commands.options import (
    SEED_MAX,
    CacheDir,
    Device,
    MaxClipsPerFold,
    Precision,
    SkipBadAudio,
    Workers,
    positive,
    tune_data,
    tune_fold_list,
    workers_count,
)

SEARCH_EPOCHS = 80  # epochs per fold in every trial of the reference search

HELP = """Search SOLUTION's hyper-parameters with Optuna (the reference space of 12 parameters,
seeded multivariate TPE, median pruning after fold 2). A trial's value is the mean over folds of
the best validation composite. Start the same command on more machines or terminals with the same
--storage and --study to add workers; Ctrl-C ends the running trial (marked failed) and rerunning
continues the study. --report prints the best and top trials and importances and writes plots;
--export FILE writes the best parameters for `train --params FILE`. Browse a study in a web page
with optuna-dashboard (pip install optuna-dashboard; optuna-dashboard STORAGE_URL)."""


def register(app: typer.Typer) -> None:
    """Add the `tune` command to the CLI."""
    app.command("tune", help=HELP, short_help="Search SOLUTION's hyper-parameters with Optuna; "
                                               "any number of workers share one study.")(tune)


def tune(
    solution: str = typer.Argument(..., help="Solution whose recipe the trials start from (see `solutions`)."),
    trials: int | None = typer.Option(None, min=1, help="Stop once the study has this many trials (complete, pruned or running; all workers together)."),
    timeout: float | None = typer.Option(None, callback=positive, help="Stop this worker after this many seconds (checked between trials)."),
    storage: str | None = typer.Option(None, help="Optuna storage URL shared by all workers, e.g. sqlite:///path/optuna.db or postgresql://user:password@host:5432/db (default: sqlite under --out)."),
    study: str | None = typer.Option(None, help="Study name (default: the solution name)."),
    epochs: int = typer.Option(SEARCH_EPOCHS, min=1, help="Epochs per fold in every trial."),
    folds: str | None = typer.Option(None, callback=tune_fold_list, help="Validation folds of every trial, e.g. "
                                     "1,2, within the data's folds beside its test split (UrbanSound8K: 1-8) "
                                     "(default: the recipe's that the data has)."),
    data: Path | None = typer.Option(None, callback=tune_data, help="Data folder (any layout train takes); none: "
                                     "the synthetic demo set."),
    n_folds: int | None = typer.Option(None, min=2, max=100, help="Folds to assign to data that gives none, as "
                                       "for train (the same files, groups and count give train's folds) "
                                       "[default: 5]."),
    group_pattern: str | None = typer.Option(None, help="Regex naming each file's recording, as for train, so "
                                             "that the assigned folds keep a recording's clips together."),
    space: Path | None = typer.Option(None, help="Search-space file (.toml/.json) (default: the reference space)."),
    out: Path | None = typer.Option(None, help="Solution folder for the default storage and the report's plots (default: solutions/<solution>)."),
    seed: int = typer.Option(42, min=0, max=SEED_MAX, help="Sampler seed (trial n draws from seed + n)."),
    device: Device = "auto",
    precision: Precision = "auto",
    workers: Workers = "auto",
    max_clips_per_fold: MaxClipsPerFold = None,
    skip_bad_audio: SkipBadAudio = False,
    cache_dir: CacheDir = None,
    report: bool = typer.Option(False, "--report", help="Print the study's best trial, top trials and importances; write plots. No search."),
    top: int = typer.Option(10, min=1, help="How many top trials --report lists."),
    export: Path | None = typer.Option(None, help="Write the best parameters to this .toml/.json file (for `train --params`). No search."),
) -> None:
    """Search, or (with --report / --export) read a study; the full help is HELP."""
    from rich.console import Console

    from core import registry
    from core.errors import UserError
    from core.solution_folder import SolutionFolder, solutions_root
    from core.tune.study import default_storage_url

    recipe = registry.get(solution)  # an unknown name is a UserError listing the known ones
    demo_search = data is None and not (report or export is not None)  # a search on the demo set stays apart
    solution_dir = out or SolutionFolder.of(solutions_root(Path("solutions"), demo_search), solution).root
    storage_url = storage or default_storage_url(solution_dir)
    study_name = study or solution
    if report or export is not None:
        _report_and_export(storage_url, study_name, solution_dir, report, top, export)
        return
    if trials is None and timeout is None:
        raise UserError("give --trials N and/or --timeout SECONDS to bound the search "
                        "(Ctrl-C also stops it cleanly; rerunning continues the study)")
    request = SearchRequest(storage_url, study_name, trials, timeout, epochs, folds, data, space, solution_dir,
                            seed, device, precision, workers_count(workers), max_clips_per_fold, skip_bad_audio, cache_dir,
                            n_folds, group_pattern)
    _search(recipe, request, Console(stderr=True))


@dataclass(frozen=True)
class SearchRequest:
    """The command-line options of a search run."""

    storage_url: str
    study_name: str
    trials: int | None
    timeout: float | None
    epochs: int
    folds: str | None
    data: Path | None
    space: Path | None
    solution_dir: Path
    seed: int
    device: str
    precision: str
    workers: int | None  # None: auto
    max_clips_per_fold: int | None
    skip_bad_audio: bool
    cache_dir: Path | None = None
    n_folds: int | None = None        # fold assignment of data without folds (as train's)
    group_pattern: str | None = None


def _report_and_export(storage_url: str, study_name: str, solution_dir: Path, report: bool, top: int,
                       export: Path | None) -> None:
    from rich.console import Console

    from core.params import save_params
    from core.tune.report import export_params, print_report, write_plots
    from core.tune.study import load_existing_study

    console = Console()
    study = load_existing_study(storage_url, study_name)
    if report:
        print_report(study, console, top=top)
        written = write_plots(study, solution_dir / f"tune_{study_name}")
        console.print("Plots: " + (", ".join(str(path) for path in written) or "none until a trial completes"))
    if export is not None:
        params, comment = export_params(study)
        save_params(params, export, comment=comment)
        console.print(f"Best parameters written to {export}; apply them with "
                      f"`train SOLUTION --params {export}`")


def _search(recipe, request: SearchRequest, console) -> None:
    import optuna

    from core.commands.train import parse_folds
    from core.tune.live import TrialBoard
    from core.tune.objective import SearchPlan, check_plan, make_objective, trainer_fold_runner
    from core.tune.search import Budget, counted_trials
    from core.tune.space import REFERENCE_SPACE, load_space, space_as_dict
    from core.tune.study import open_study, shown_url

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the live view replaces optuna's log lines
    space = load_space(request.space) if request.space is not None else REFERENCE_SPACE
    source = _source(recipe, request, console)
    folds = _trial_folds(recipe, parse_folds(request.folds), source)
    plan = SearchPlan(recipe, space, tuple(folds), request.epochs)
    check_plan(plan)
    settings = {"solution": recipe.name, "epochs": request.epochs, "folds": list(folds),
                "space": space_as_dict(space), "max_clips_per_fold": request.max_clips_per_fold,
                "objective": "mean over folds of the best validation composite (fraction)"}
    study = open_study(request.storage_url, request.study_name, settings, seed=request.seed)
    if request.trials is not None and counted_trials(study) >= request.trials:
        console.print(f"Study {request.study_name!r} already has {counted_trials(study)} trials (target "
                      f"{request.trials}); nothing to run. Raise --trials to continue, or see --report.")
        return
    prepared, options = _prepare(recipe, request, folds, source)
    header = (f"Study {request.study_name} ({shown_url(request.storage_url)}): {recipe.name}, "
              f"folds {','.join(map(str, folds))}, {request.epochs} epochs per fold")
    console.print("Search space: " + "; ".join(f"{d.name} {d.describe()}" for d in space), highlight=False)
    board = TrialBoard(study, console, len(folds), header)
    objective = make_objective(plan, trainer_fold_runner(prepared, options), on_fold=board.fold_done)
    ran = _run_interruptibly(study, objective, Budget(request.trials, request.timeout), board)
    where = f" --out {request.solution_dir}" if request.data is None else ""  # demo studies live apart
    console.print(f"This worker ran {ran} trials. See the results with --report{where}, "
                  f"export the best with --export FILE{where}.")


def _source(recipe, request: SearchRequest, console):
    """The data to search on (the demo set without --data); a fusion solution on data without salience is
    refused here, before any caching."""
    from core.data.metadata import load_source
    from core.demo.profile import ensure_demo_data
    from core.train.own_data import recipe_for_data

    data = request.data
    if data is None:
        console.print("[bold]No --data given: searching on the synthetic demo set[/] (data/demo); "
                      "pass --data for a meaningful search.")
        data = ensure_demo_data()
    source = load_source(data, n_folds=request.n_folds, group_pattern=request.group_pattern)
    recipe_for_data(recipe, source)
    return source


def _trial_folds(recipe, asked: tuple[int, ...] | None, source) -> tuple[int, ...]:
    """The folds every trial validates on: `asked` (checked against the data's folds beside its test split, as
    train --protocol kaggle does), else the recipe's that the data has."""
    from core.commands.options import check_train_folds
    from core.errors import UserError
    from core.folds import fold_span, protocol_folds
    from core.train.data import protocol_data_folds

    available = protocol_folds("kaggle", protocol_data_folds(source, "kaggle"))
    if asked is not None:
        check_train_folds(asked, "kaggle", available, source.root, trains="tune validates")
        return asked
    folds = tuple(fold for fold in recipe.training.folds if fold in available)
    if not folds:
        raise UserError(f"none of {recipe.name}'s folds {fold_span(recipe.training.folds)} is among the folds of "
                        f"{source.root} ({fold_span(available) if available else 'none'}); pass --folds")
    return folds


def _prepare(recipe, request: SearchRequest, folds: tuple[int, ...], source):
    """Cache the training audio once for every trial of this worker; no test audio, no output files."""
    from core.train.data import prepare_data
    from core.train.options import TrainOptions

    options = TrainOptions(out=request.solution_dir, folds=tuple(folds), device=request.device,
                           precision=request.precision, workers=request.workers,
                           skip_bad_audio=request.skip_bad_audio, progress=False, write_outputs=False,
                           max_clips_per_fold=request.max_clips_per_fold, max_test_clips=0,
                           cache_dir=request.cache_dir)
    return prepare_data(recipe, source, options), options


def _run_interruptibly(study, objective, budget, board) -> int:
    """Run the search under the live view; Ctrl-C becomes one clear message (exit 130)."""
    import torch

    from core.errors import UserError
    from core.tune.search import run_search

    try:
        with board.showing():
            # Out-of-memory fails only its trial (a large batch, say); other errors stop the worker.
            return run_search(study, objective, budget, callbacks=[board.trial_done],
                              catch=(torch.OutOfMemoryError,))
    except KeyboardInterrupt:
        error = UserError("interrupted: the running trial was marked failed. Rerun the same command to "
                          "continue the study.")
        error.exit_code = 130
        raise error from None
