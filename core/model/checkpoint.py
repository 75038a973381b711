"""Reading a best-model checkpoint written by `train`: safely (tensors and plain containers only), with
clear errors for a foreign, truncated or mismatched file. Training writes them (core/train/checkpoint.py);
training and inference both read them here.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from core.errors import UserError
from core.recipe import Recipe, recipe_from_dict


def load(path: Path) -> dict:
    """Load a checkpoint safely (tensors and plain containers only); a clear error if unreadable or foreign."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused a Python object: never retry it unsafely
        raise UserError(f"refusing checkpoint {path}: it holds Python objects other than tensors and plain "
                        f"containers ({_blocked_object(error)}), so `train` did not write it or it was altered. "
                        "Nothing in it was executed; use a checkpoint written by `train`.") from error
    except Exception as error:  # a truncated or foreign file: say which and what to do
        raise UserError(f"cannot read checkpoint {path}: {_first_line(error)}. "
                        "Delete it to start that fold again.") from error
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path} is not a checkpoint written by `train` (it holds a {type(state).__name__} "
                        "without a 'model' state dict). Delete it to start that fold again.")
    return state


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _blocked_object(error: Exception) -> str:
    """What a weights_only refusal blocked ("global posix.system"), without torch's advice to allow it."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"global {found.group(1)}" if found else _first_line(error)


def load_best_into(path: Path, model: torch.nn.Module, solution: str) -> dict:
    """Load best weights into `model`, refusing a checkpoint of another solution or architecture."""
    checkpoint = load(path)
    if checkpoint.get("solution") != solution:
        raise UserError(f"{path} belongs to solution {checkpoint.get('solution')!r}, not {solution!r}; "
                        f"use the checkpoints of {solution!r} (or predict with solution "
                        f"{checkpoint.get('solution')!r}).")
    mismatch = _state_mismatch(checkpoint["model"], model.state_dict())
    if mismatch:
        recipe = checkpoint.get("recipe")
        backbone = recipe.get("backbone") if isinstance(recipe, dict) else None
        saved = backbone.get("arch", "unknown") if isinstance(backbone, dict) else "unknown"
        raise UserError(f"{path} (solution {checkpoint.get('solution')!r}, backbone {saved}) does not fit the "
                        f"architecture {solution!r} builds now: {mismatch}. It was trained with another recipe; "
                        "retrain that fold.")
    model.load_state_dict(checkpoint["model"])
    return checkpoint


def _state_mismatch(saved: dict, expected: dict) -> str:
    """'' when `saved` has exactly the keys and shapes of `expected`, else a one-line summary."""
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    reshaped = [key for key in expected if key in saved and _shape(saved[key]) != _shape(expected[key])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape (first: {key} {_shape(saved[key])} in the "
                        f"checkpoint, {_shape(expected[key])} in the model)")
    return "; ".join(problems)


def _shape(value: object) -> list[int] | str:
    return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def recipe_of(path: Path) -> Recipe:
    """The recipe a best-model checkpoint was trained with."""
    state = load(path)
    try:
        return recipe_from_dict(state["recipe"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{path} holds no usable recipe ({type(error).__name__}: {_first_line(error)}); "
                        "it was not written by `train` of this version. Retrain that fold.") from error
