"""Inference: the test split through every fold checkpoint of a solution in one pass over the audio."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.atomic import write_csv
from core.data.metadata import DataSource
from core.folds import URBANSOUND8K_CLASSES
from core.infer.fold_models import FoldModel, load_fold_models  # noqa: F401  (moved: inference owns loading)
from core.progress import TrainProgress
from core.solution_folder import SolutionFolder
from core.train.data import WaveformDataset, make_loader, prepare_test, resolve_workers
from core.train.fold import Runtime
from core.train.options import TrainOptions
from core.train.precision import autocast, configure_backends
from core.train.solution import with_probabilities


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
                      submission: Path, skipped: dict[str, str] | None = None,
                      class_names: tuple[str, ...] = URBANSOUND8K_CLASSES) -> pd.DataFrame:
    """Per-fold probability CSVs in `out` (one column per class of the models, `class_names`), the
    fold-average submission (ID,TARGET) and, when clips were skipped, their list (path, reason) as
    out/skipped_audio.csv."""
    ids = test[["ID"]].reset_index(drop=True)
    if skipped:
        write_csv(pd.DataFrame(sorted(skipped.items()), columns=["path", "reason"]), SolutionFolder(out).skipped_audio)
    for fold, probs in fold_probs.items():
        write_csv(with_probabilities(ids, probs, class_names), SolutionFolder(out).best_predictions(fold))
    mean = np.mean(list(fold_probs.values()), axis=0)
    frame = pd.DataFrame({"ID": ids["ID"], "TARGET": mean.argmax(axis=1)})
    write_csv(frame, submission)
    return frame
