"""Checkpoints: best weights per fold and the per-epoch resume state, loaded with weights_only=True."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import save_torch
from core.model.checkpoint import load, load_best_into, recipe_of  # noqa: F401  (moved: inference reads checkpoints too)
from core.recipe import Recipe


def fingerprint(recipe: Recipe, **settings: Any) -> str:
    """A short hash of everything that must match for a resume to continue the same run."""
    payload = json.dumps({"recipe": recipe.to_dict(), **settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def save_best(path: Path, recipe: Recipe, fold: int, epoch: int, scores: dict, model: torch.nn.Module) -> None:
    save_torch({"solution": recipe.name, "recipe": recipe.to_dict(), "fold": fold, "epoch": epoch,
                "scores": scores, "model": model.state_dict()}, path)


def save_torch_state(path: Path, state: dict) -> None:
    """Write the per-epoch resume state atomically."""
    save_torch(state, path)


def rng_state() -> dict:
    """Global RNG states as tensors/plain values (loadable with weights_only=True)."""
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_gauss, np_cached],
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, gauss, cached))
    internal, version, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
