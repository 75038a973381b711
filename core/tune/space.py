"""The search space: the reference's 12 parameters (ranges, log scales, steps), or one read from a file.

A space file (`tune --space FILE`, .toml or .json) lists the parameters to search, in sampling
order; parameters it leaves out keep the solution's own values. Integer-valued names (n_mels,
batch_size, warmup_epochs, n_fft, hop_length, time_mask_param) become integer ranges.

    [n_mels]
    choices = [64, 80, 128]
    [lr]
    low = 1e-4
    high = 5e-3
    log = true
    [dropout_rate]
    low = 0.0
    high = 0.5
    step = 0.1
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError, format_problems
from core.params import INT_NAMES, PARAMETERS, SEARCHED_NAMES, SearchedParameter, value_problems


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values (optuna categorical)."""

    name: str
    choices: tuple[Any, ...]

    def suggest(self, trial) -> Any:
        """Draw this parameter for `trial` (an optuna.Trial)."""
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        """The choices, as shown to a person."""
        return "{" + ", ".join(map(str, self.choices)) + "}"


@dataclass(frozen=True)
class FloatRange:
    """A float in [low, high], linear or log scale, optionally on a grid of `step`."""

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial) -> float:
        """Draw this parameter for `trial` (an optuna.Trial)."""
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        """The range, scale and step, as shown to a person."""
        scale = "log" if self.log else "linear"
        grid = f", step {self.step:g}" if self.step is not None else ""
        return f"[{self.low:g}, {self.high:g}] {scale}{grid}"


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high], linear or log scale, on a grid of `step`."""

    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial) -> int:
        """Draw this parameter for `trial` (an optuna.Trial)."""
        return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        """The range, scale and step, as shown to a person."""
        scale = "log" if self.log else "linear"
        grid = f", step {self.step}" if self.step != 1 else ""
        return f"[{self.low}, {self.high}] int {scale}{grid}"


Dimension = Choice | FloatRange | IntRange

def reference_dimension(parameter: SearchedParameter) -> Dimension:
    """The search dimension of one row of core.params.PARAMETERS (its `space`)."""
    kind, *args = parameter.space
    if kind == "choice":
        return Choice(parameter.name, tuple(args[0]))
    if kind == "int":
        return IntRange(parameter.name, *args)
    low, high, *rest = args
    return FloatRange(parameter.name, low, high, log=rest[0] if rest else False, step=rest[1] if len(rest) > 1 else None)


# ResNet/optuna/optuna.py (../shared/spec/optuna.md section 7), in its sampling order.
REFERENCE_SPACE: tuple[Dimension, ...] = tuple(reference_dimension(parameter) for parameter in PARAMETERS)

# study.best_params of the reference search, hard-coded in resnet34_pcen_sam_8f_200e.py.
REFERENCE_BEST_PARAMS: dict[str, Any] = {
    "n_mels": 128,
    "freq_mask_ratio": 0.1454714917791759,
    "batch_size": 256,
    "dropout_rate": 0.0,
    "warmup_epochs": 2,
    "n_fft": 2048,
    "hop_length": 320,
    "lr": 0.0012817574949798138,
    "sam_rho": 0.0724398361671321,
    "mixup_alpha": 1.8855049141520537,
    "weight_decay": 0.00026743110625072756,
    "time_mask_param": 84,
}


def suggest_params(trial, space: tuple[Dimension, ...]) -> dict[str, Any]:
    """Draw every dimension of `space` for `trial`, in order (the order fixes the TPE draws)."""
    return {dimension.name: dimension.suggest(trial) for dimension in space}


def lowest_point(space: tuple[Dimension, ...]) -> dict[str, Any]:
    """One point of the space (first choices, lower bounds): to check a space fits a recipe before searching."""
    return {d.name: d.choices[0] if isinstance(d, Choice) else d.low for d in space}


def space_as_dict(space: tuple[Dimension, ...]) -> dict[str, dict[str, Any]]:
    """A plain mapping of the space (the space-file format), e.g. to record it in a study."""
    plain: dict[str, dict[str, Any]] = {}
    for dimension in space:
        if isinstance(dimension, Choice):
            plain[dimension.name] = {"choices": list(dimension.choices)}
        else:
            entry: dict[str, Any] = {"low": dimension.low, "high": dimension.high, "log": dimension.log}
            if dimension.step is not None and not (isinstance(dimension, IntRange) and dimension.step == 1):
                entry["step"] = dimension.step
            plain[dimension.name] = entry
    return plain


def space_from_dict(data: dict[str, Any], origin: str = "space") -> tuple[Dimension, ...]:
    """Build a space from its plain mapping; every problem is reported at once, naming `origin`."""
    problems: list[str] = []
    space: list[Dimension] = []
    for name, entry in data.items():
        if name not in SEARCHED_NAMES:
            problems.append(f"unknown parameter {name!r}; searchable: {', '.join(SEARCHED_NAMES)}")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{name}: expected a table with `choices` or `low`/`high`, got {entry!r}")
            continue
        dimension, entry_problems = _dimension(name, entry)
        problems += entry_problems
        if dimension is not None:
            space.append(dimension)
    if not data:
        problems.append("no parameters: list at least one to search")
    if problems:
        raise UserError(format_problems(f"{origin} is not a valid search space:", problems))
    return tuple(space)


def _dimension(name: str, entry: dict[str, Any]) -> tuple[Dimension | None, list[str]]:
    allowed = {"choices"} if "choices" in entry else {"low", "high", "log", "step"}
    problems = [f"{name}: unknown key {key!r} (allowed here: {', '.join(sorted(allowed))})"
                for key in entry if key not in allowed]
    if "choices" in entry:
        return _choice(name, entry["choices"], problems)
    missing = [key for key in ("low", "high") if key not in entry]
    if missing:
        return None, problems + [f"{name}: give `choices`, or both `low` and `high` (missing {', '.join(missing)})"]
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    problems += value_problems(name, low) + value_problems(name, high)
    if not isinstance(log, bool):
        problems.append(f"{name}: log must be true or false, got {log!r}")
    if problems:
        return None, problems
    if low > high:
        problems.append(f"{name}: low {low!r} is above high {high!r}")
    if log and low <= 0:
        problems.append(f"{name}: a log scale needs low > 0, got {low!r}")
    if step is not None:
        if log:
            problems.append(f"{name}: use either log or step, not both")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            problems.append(f"{name}: step must be a positive number, got {step!r}")
        elif name in INT_NAMES and not isinstance(step, int):
            problems.append(f"{name}: step must be an integer, got {step!r}")
    if problems:
        return None, problems
    if name in INT_NAMES:
        return IntRange(name, low, high, step=1 if step is None else step, log=log), []
    return FloatRange(name, float(low), float(high), log=log, step=None if step is None else float(step)), []


def _choice(name: str, choices: Any, problems: list[str]) -> tuple[Dimension | None, list[str]]:
    if not isinstance(choices, list) or not choices:
        return None, problems + [f"{name}: choices must be a non-empty list, got {choices!r}"]
    for value in choices:
        problems += value_problems(name, value)
    if len(set(choices)) != len(choices):
        problems.append(f"{name}: choices repeat a value: {choices!r}")
    if problems:
        return None, problems
    return Choice(name, tuple(choices)), []


def load_space(path: str | os.PathLike) -> tuple[Dimension, ...]:
    """Read a search-space file (.toml or .json, see the module docstring)."""
    import json
    import tomllib

    path = Path(path)
    if path.suffix.lower() not in (".toml", ".json"):
        raise UserError(f"search-space file {path}: use a .toml or .json file name")
    if not path.is_file():
        raise UserError(f"search-space file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except ValueError as error:
        raise UserError(f"search-space file {path} cannot be parsed: {error}") from error
    if not isinstance(data, dict):
        raise UserError(f"search-space file {path} must hold a mapping of parameter names to ranges")
    return space_from_dict(data, origin=f"search-space file {path}")

