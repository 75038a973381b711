"""A params file: the 12 hyper-parameters of the Optuna search, read, written and applied to a Recipe.

The file is flat JSON or TOML (chosen by suffix) holding some or all of `SEARCHED_NAMES`, plus the
derived `freq_mask_param` for readability:

    n_mels = 128
    freq_mask_ratio = 0.1454714917791759
    ...
    freq_mask_param = 18   # derived: int(n_mels * freq_mask_ratio); must agree if present

`tune --export FILE` writes one; `train --params FILE` applies it with
`apply_params(recipe, load_params(path))`.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import write_text
from core.errors import UserError, format_problems
from core.recipe import Recipe

# The conditions every trial of the reference search trained under; params found there only mean
# the same thing under them (warmup_epochs needs the warm-up schedule), so they travel together.
SEARCH_CONTEXT: dict[str, dict[str, Any]] = {
    "training": {"schedule": "warmup_cosine", "label_smoothing": 0.1, "select_metric": "composite"},
}

_SUFFIXES = (".json", ".toml")


def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


def _fraction(value: float) -> bool:
    return 0 <= value <= 1


def _dropout(value: float) -> bool:
    return 0 <= value < 1


@dataclass(frozen=True)
class SearchedParameter:
    """One hyper-parameter of the reference search: its type, its rule, its range and its recipe field.

    space: ("choice", values) | ("float", low, high[, log[, step]]) | ("int", low, high): the
    reference's range (ResNet/optuna/optuna.py, ../shared/spec/optuna.md section 7).
    field: (recipe section, field) that the value sets, converted by `to_recipe`; None for
    freq_mask_ratio, which sets augment.freq_mask = int(n_mels * ratio).
    """

    name: str
    integer: bool
    rule: Callable[[float], bool]
    meaning: str
    space: tuple
    field: tuple[str, str] | None
    to_recipe: Callable[[Any], Any] = int


def _one_fft(value: int) -> tuple[int, ...]:
    return (value,)


# The one table: params parsing, validation, application and the search space all read it. In the
# order the reference search samples them (the order matters for reproducing TPE draws).
PARAMETERS: tuple[SearchedParameter, ...] = (
    SearchedParameter("n_mels", True, _positive, "> 0", ("choice", (64, 80, 128)), ("frontend", "n_mels")),
    SearchedParameter("freq_mask_ratio", False, _fraction, "in [0, 1]", ("float", 0.10, 0.35), None, float),
    SearchedParameter("batch_size", True, _positive, "> 0", ("choice", (64, 128, 256)), ("training", "batch_size")),
    SearchedParameter("dropout_rate", False, _dropout, "in [0, 1)", ("float", 0.0, 0.5, False, 0.1),
                      ("head", "dropout"), float),
    SearchedParameter("warmup_epochs", True, _non_negative, ">= 0", ("int", 0, 5), ("training", "warmup_epochs")),
    SearchedParameter("n_fft", True, _positive, "> 0", ("choice", (1024, 2048)), ("frontend", "n_ffts"), _one_fft),
    SearchedParameter("hop_length", True, _positive, "> 0", ("choice", (320, 512, 640)), ("frontend", "hop_length")),
    SearchedParameter("lr", False, _positive, "> 0", ("float", 1e-4, 5e-3, True), ("training", "lr"), float),
    SearchedParameter("sam_rho", False, _non_negative, ">= 0", ("float", 0.02, 0.10), ("training", "rho"), float),
    SearchedParameter("mixup_alpha", False, _non_negative, ">= 0", ("float", 0.5, 2.0), ("augment", "mixup_alpha"),
                      float),
    SearchedParameter("weight_decay", False, _non_negative, ">= 0", ("float", 1e-4, 1e-1, True),
                      ("training", "weight_decay"), float),
    SearchedParameter("time_mask_param", True, _non_negative, ">= 0", ("int", 30, 90), ("augment", "time_mask")),
)
BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}
SEARCHED_NAMES = tuple(BY_NAME)
INT_NAMES = frozenset(parameter.name for parameter in PARAMETERS if parameter.integer)
DERIVED_NAMES = ("freq_mask_param",)


def freq_mask_width(n_mels: int, freq_mask_ratio: float) -> int:
    """SpecAugment frequency-mask width of the reference: int(n_mels * freq_mask_ratio)."""
    return int(n_mels * freq_mask_ratio)


def value_problems(name: str, value: Any) -> list[str]:
    """Why `value` is not acceptable for searched parameter `name` (empty list if it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [f"{name}: expected a number, got {value!r}"]
    if name in INT_NAMES and not isinstance(value, int):
        return [f"{name}: expected an integer, got {value!r}"]
    if isinstance(value, int) and not -2 ** 63 <= value < 2 ** 63:  # JSON/TOML ints are unbounded; torch's are not
        return [f"{name}: {value} does not fit a 64-bit integer"]
    if not math.isfinite(value):
        return [f"{name}: expected a finite number, got {value!r}"]
    parameter = BY_NAME[name]
    if not parameter.rule(value):
        return [f"{name}: must be {parameter.meaning}, got {value!r}"]
    return []


def params_problems(params: dict[str, Any]) -> list[str]:
    """Every problem of a params mapping: unknown keys, bad values, an inconsistent derived value."""
    known = set(SEARCHED_NAMES) | set(DERIVED_NAMES)
    problems = [f"unknown key {key!r}; known keys: {', '.join(SEARCHED_NAMES + DERIVED_NAMES)}"
                for key in params if key not in known]
    for name in SEARCHED_NAMES:
        if name in params:
            problems += value_problems(name, params[name])
    if "freq_mask_param" in params and not problems:
        problems += _derived_problems(params)
    return problems


def _derived_problems(params: dict[str, Any]) -> list[str]:
    stated = params["freq_mask_param"]
    if "n_mels" not in params or "freq_mask_ratio" not in params:
        return ["freq_mask_param: is derived from n_mels and freq_mask_ratio; give both, or drop it"]
    expected = freq_mask_width(params["n_mels"], params["freq_mask_ratio"])
    if stated != expected:
        return [f"freq_mask_param: {stated!r} disagrees with int(n_mels * freq_mask_ratio) = {expected}; "
                "it is only informative, so change freq_mask_ratio instead (or drop freq_mask_param)"]
    return []


def with_derived(params: dict[str, Any]) -> dict[str, Any]:
    """The searched values in reference order, followed by the derived values they imply."""
    ordered = {name: params[name] for name in SEARCHED_NAMES if name in params}
    if "n_mels" in ordered and "freq_mask_ratio" in ordered:
        ordered["freq_mask_param"] = freq_mask_width(ordered["n_mels"], ordered["freq_mask_ratio"])
    return ordered


def apply_params(recipe: Recipe, params: dict[str, Any], *, origin: str = "params") -> Recipe:
    """`recipe` with the searched values of `params` and the search context applied.

    Names absent from `params` keep the recipe's value; freq_mask_ratio uses the recipe's n_mels
    when n_mels is absent. The search context (warm-up cosine schedule, label smoothing 0.1, best
    epoch by composite score) is always applied: the values were found under it. `origin` names
    the source (a file) in error messages.
    """
    problems = params_problems(params)
    if "n_fft" in params and recipe.frontend.channels > 1:
        problems.append(f"n_fft: {recipe.name or 'the recipe'} uses several FFT sizes {recipe.frontend.n_ffts} "
                        "(one input channel each); one n_fft would change the network, so leave n_fft out")
    if problems:
        raise UserError(format_problems(f"{origin} cannot be applied to {recipe.name or 'the recipe'}:", problems))
    sections: dict[str, dict[str, Any]] = {"frontend": {}, "augment": {}, "training": dict(SEARCH_CONTEXT["training"]),
                                           "head": {}}
    for parameter in PARAMETERS:
        if parameter.name in params and parameter.field is not None:
            section, field_name = parameter.field
            sections[section][field_name] = parameter.to_recipe(params[parameter.name])
    if "freq_mask_ratio" in params:
        n_mels = params.get("n_mels", recipe.frontend.n_mels)
        sections["augment"]["freq_mask"] = freq_mask_width(n_mels, params["freq_mask_ratio"])
    applied = recipe.derive(**sections)
    problems = spectrogram_problems(applied)
    if problems:
        raise UserError(format_problems(f"{origin} cannot be applied to {recipe.name or 'the recipe'}:", problems))
    return applied


def context_changes(recipe: Recipe, applied: Recipe) -> list[str]:
    """The search-context fields `apply_params` changed in `recipe` ('training.schedule: cosine -> warmup_cosine').

    These are changes beyond the searched parameters: `train --params` prints them and the solution
    summary records them.
    """
    changes = []
    for section, values in SEARCH_CONTEXT.items():
        for name in values:
            before, after = getattr(getattr(recipe, section), name), getattr(getattr(applied, section), name)
            if before != after:
                changes.append(f"{section}.{name}: {before} -> {after}")
    return changes


def spectrogram_problems(recipe: Recipe) -> list[str]:
    """Frontend sizes this recipe's clips cannot take (found now, not as a crash hours into training)."""
    frontend = recipe.frontend
    samples = frontend.num_samples
    problems = []
    for n_fft in frontend.n_ffts:
        if n_fft > samples:
            problems.append(f"n_fft: {n_fft} is longer than a clip ({samples} samples)")
        elif frontend.n_mels > n_fft // 2 + 1:
            problems.append(f"n_mels: {frontend.n_mels} mel bands exceed the {n_fft // 2 + 1} frequency bins of "
                            f"n_fft {n_fft} (bands would be empty)")
    if frontend.hop_length > samples:
        problems.append(f"hop_length: {frontend.hop_length} is longer than a clip ({samples} samples)")
    return problems


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a params file (.json or .toml); the derived values are checked, then dropped."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise UserError(f"params file {path} does not exist; write one with `tune SOLUTION --export {path}`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"params file {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                        "save it as UTF-8") from error
    try:
        data = _parse(text, path.suffix.lower())
    except ValueError as error:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise UserError(f"params file {path} is not valid {path.suffix[1:].upper()}: {error}") from error
    if not isinstance(data, dict):
        raise UserError(f"params file {path} must hold a mapping of parameter names to values, "
                        f"got {type(data).__name__}")
    if not data:  # an empty export would still switch the schedule to the search context: say so instead
        raise UserError(f"params file {path} holds no parameters; give some of {', '.join(SEARCHED_NAMES)} "
                        "(e.g. from `tune SOLUTION --export FILE`)")
    problems = params_problems(data)
    if problems:
        raise UserError(format_problems(f"params file {path} has problems:", problems))
    return {name: data[name] for name in SEARCHED_NAMES if name in data}


def save_params(params: dict[str, Any], path: str | os.PathLike, *, comment: str = "") -> Path:
    """Write `params` (searched values plus derived ones) atomically as JSON or TOML, by suffix.

    `comment` (e.g. the study and trial the values come from) becomes `#` lines at the top of a
    TOML file; JSON has no comments, so it is not written there.
    """
    path = Path(path)
    _check_suffix(path)
    problems = params_problems(params)
    if problems:
        raise UserError(format_problems(f"cannot write params file {path}:", problems))
    ordered = with_derived(params)
    if path.suffix.lower() == ".json":
        return write_text(json.dumps(ordered, indent=2) + "\n", path)
    import tomli_w

    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return write_text(header + tomli_w.dumps(ordered), path)


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in _SUFFIXES:
        raise UserError(f"params file {path}: use a .json or .toml file name (got {path.suffix or 'no suffix'!r})")


def _parse(text: str, suffix: str) -> Any:
    if suffix == ".json":
        return json.loads(text)
    import tomllib

    return tomllib.loads(text)
