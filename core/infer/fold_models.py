"""A trained solution's fold models, loaded for inference from its best-model checkpoints."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import UserError
from core.model import checkpoint
from core.model.network import build_model
from core.recipe import Recipe
from core.runtime import Runtime
from core.solution_folder import SolutionFolder


@dataclass
class FoldModel:
    fold: int
    recipe: Recipe
    model: torch.nn.Module


def build_for_inference(recipe: Recipe, runtime: Runtime) -> torch.nn.Module:
    """The recipe's model on the runtime's device and memory format (its weights come from a checkpoint)."""
    model = build_model(recipe).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_fold_models(solution_dir: Path, solution: str, runtime: Runtime,
                     folds: tuple[int, ...] | None = None) -> list[FoldModel]:
    """Every best_model_fold<k>.pt of a solution (or those of `folds`), each rebuilt from its own recipe."""
    folder = SolutionFolder(solution_dir)
    found = {fold: folder.best_model(fold) for fold in folder.folds_with("best_model")}
    if not found:  # trained only under a held-out protocol (kfold: the own-data protocol): its folder's models
        solution_dir = _held_out_folder(Path(solution_dir)) or solution_dir
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
        model = build_for_inference(recipe, runtime)
        checkpoint.load_best_into(path, model, solution)
        models.append(FoldModel(fold, recipe, model.eval()))
    frontends = {m.recipe.frontend.sample_rate for m in models}, {m.recipe.frontend.num_samples for m in models}
    if any(len(values) > 1 for values in frontends):
        raise UserError(f"the checkpoints in {solution_dir} disagree on sample rate or clip length; retrain them alike")
    if len({m.recipe.classes for m in models}) > 1:
        raise UserError(f"the checkpoints in {solution_dir} predict different classes (trained on other data sets); "
                        "retrain them on one data set")
    return models


def _held_out_folder(solution_dir: Path) -> Path | None:
    """The one held-out protocol folder (us8k-10fold, kfold) of `solution_dir` with checkpoints; several are
    refused (which one is meant is the user's choice), none gives None."""
    from core.folds import HELD_OUT_PROTOCOLS

    folders = [SolutionFolder.of(solution_dir.parent, solution_dir.name, protocol).root
               for protocol in HELD_OUT_PROTOCOLS]
    trained = [path for path in folders if path.is_dir() and SolutionFolder(path).folds_with("best_model")]
    if len(trained) > 1:
        raise UserError(f"no checkpoints in {solution_dir} itself, and fold models under several protocols: "
                        f"{', '.join(map(str, trained))}; pass --solutions a folder holding the one you mean "
                        f"(e.g. a copy or link of it named {solution_dir.name}/)")
    return trained[0] if trained else None
