"""Checkpoints: best weights per fold and the per-epoch resume state, loaded with weights_only=True."""
from __future__ import annotations

from pathlib import Path

import torch

from core.atomic import save_torch
from core.model.checkpoint import load, load_best_into, recipe_of  # noqa: F401  (moved: inference reads checkpoints too)
from core.recipe import Recipe


def save_best(path: Path, recipe: Recipe, fold: int, epoch: int, scores: dict, model: torch.nn.Module) -> None:
    save_torch({"solution": recipe.name, "recipe": recipe.to_dict(), "fold": fold, "epoch": epoch,
                "scores": scores, "model": model.state_dict()}, path)


def save_torch_state(path: Path, state: dict) -> None:
    """Write the per-epoch resume state atomically."""
    save_torch(state, path)
