"""Inference: the test split through every fold checkpoint of a solution in one pass over the audio."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.atomic import write_csv
from core.data.metadata import DataSource
from core.errors import UserError
from core.progress import TrainProgress
from core.recipe import Recipe
from core.solution_folder import SolutionFolder
from core.train import checkpoint
from core.train.data import WaveformDataset, make_loader, prepare_test, resolve_workers
from core.train.fold import Runtime, build_on_device
from core.train.options import TrainOptions
from core.train.precision import autocast, configure_backends
from core.train.solution import with_probabilities


@dataclass
class FoldModel:
    fold: int
    recipe: Recipe
    model: torch.nn.Module


def load_fold_models(solution_dir: Path, solution: str, runtime: Runtime,
                     folds: tuple[int, ...] | None = None) -> list[FoldModel]:
    """Every best_model_fold<k>.pt of a solution (or those of `folds`), each rebuilt from its own recipe."""
    folder = SolutionFolder(solution_dir)
    found = {fold: folder.best_model(fold) for fold in folder.folds_with("best_model")}
    if not found:
        raise UserError(f"no checkpoints best_model_fold<k>.pt in {solution_dir}; train {solution} first "
                        f"(./run.sh {solution} --data DIR), or pass --solutions the folder that holds {solution}/")
    if folds is not None:
        absent = [fold for fold in folds if fold not in found]
        if absent:
            raise UserError(f"{solution_dir} has no checkpoint for fold(s) {', '.join(map(str, absent))}; "
                            f"folds present: {', '.join(map(str, sorted(found)))}")
    models = []
    for fold in folds if folds is not None else sorted(found):
        path = found[fold]
        recipe = checkpoint.recipe_of(path)
        model = build_on_device(recipe, runtime, 0, fold)
        checkpoint.load_best_into(path, model, solution)
        models.append(FoldModel(fold, recipe, model.eval()))
    frontends = {m.recipe.frontend.sample_rate for m in models}, {m.recipe.frontend.num_samples for m in models}
    if any(len(values) > 1 for values in frontends):
        raise UserError(f"the checkpoints in {solution_dir} disagree on sample rate or clip length; retrain them alike")
    return models


@torch.no_grad()
def predict_folds(models: list[FoldModel], source: DataSource, options: TrainOptions, batch_size: int,
                  progress: TrainProgress) -> tuple[dict[int, np.ndarray], pd.DataFrame, dict[str, str]]:
    """Softmax probabilities of every fold model, the test table and the clips --skip-bad-audio dropped
    (path -> reason); each audio batch is read once for all models."""
    runtime = Runtime.from_options(options)
    configure_backends(runtime.device)
    recipe = models[0].recipe
    test, skipped = prepare_test(recipe, source, options)
    dataset = WaveformDataset(test, np.arange(len(test.table)))
    loader = make_loader(dataset, batch_size, shuffle=False, drop_last=False, workers=resolve_workers(options.workers, runtime.device),
                         seed=0, pin_memory=runtime.device.type == "cuda")
    chunks: dict[int, list[np.ndarray]] = {m.fold: [] for m in models}
    progress.start("batches", len(loader), "predict")
    for waveforms, _, salience in loader:
        waveforms = waveforms.to(runtime.device, non_blocking=True)
        salience = salience.to(runtime.device, non_blocking=True)
        for fold_model in models:
            with autocast(runtime.device, runtime.precision):
                logits = fold_model.model(waveforms, salience).float()
            chunks[fold_model.fold].append(torch.softmax(logits, dim=1).cpu().numpy())
        progress.advance("batches")
    return {fold: np.concatenate(parts) for fold, parts in chunks.items()}, test.table, skipped


def write_predictions(fold_probs: dict[int, np.ndarray], test: pd.DataFrame, out: Path,
                      submission: Path, skipped: dict[str, str] | None = None) -> pd.DataFrame:
    """Per-fold probability CSVs in `out`, the fold-average submission (ID,TARGET) and, when clips were
    skipped, their list (path, reason) as out/skipped_audio.csv."""
    ids = test[["ID"]].reset_index(drop=True)
    if skipped:
        write_csv(pd.DataFrame(sorted(skipped.items()), columns=["path", "reason"]), SolutionFolder(out).skipped_audio)
    for fold, probs in fold_probs.items():
        write_csv(with_probabilities(ids, probs), SolutionFolder(out).best_predictions(fold))
    mean = np.mean(list(fold_probs.values()), axis=0)
    frame = pd.DataFrame({"ID": ids["ID"], "TARGET": mean.argmax(axis=1)})
    write_csv(frame, submission)
    return frame
