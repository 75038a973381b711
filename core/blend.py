"""Blend probability CSVs into one submission: recipes, member files, the three soft-vote methods.

A member is one probability CSV (`<solution>/best_model_fold<k>.csv`, relative to the root) or a
whole solution, which contributes the mean of its row-normalised `best_model_fold*.csv` files.
Members are aligned by ID value and combined with the recipe's weights (equal by default). Their
probability columns are UrbanSound8K's 0..9 or, for another data set, its class names
(core/predictions.py); every member must hold the same classes in the same order.

- mean:    weighted arithmetic mean of row-normalised probabilities (the 91.3 submission's soft vote).
- geomean: weighted mean of log(p + 1e-12) of row-normalised probabilities, then softmax
           (a renormalised weighted geometric mean).
- rank:    for each member and class column, the average ranks of the rows scaled to [0, 1]
           ((rank - 1) / (rows - 1)); weighted mean of those ranks. Scores are ranks, not probabilities.

The prediction is the argmax of the blended scores; ties go to the lowest class index (numpy).
A missing member is an error unless explicitly allowed, and is never replaced by another file.
"""
from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError, format_problems
from core.predictions import ProbabilityTable, align_positions, describe_classes, read_probabilities, row_normalise
from core.solution_folder import SolutionFolder, fold_file_name

METHODS = ("mean", "geomean", "rank")
LOG_EPS = 1e-12
RECIPE_KEYS = ("name", "description", "method", "members", "solutions")
# Weights are relative; outside this range a weighted sum can overflow or underflow and silently
# turn every blended row into zeros (all predictions class 0).
WEIGHT_RANGE = (1e-6, 1e6)


@dataclass(frozen=True)
class Member:
    """One blend input: a CSV path relative to the root, or (solution=True) a solution folder name."""

    name: str
    weight: float = 1.0
    solution: bool = False

    @property
    def expected(self) -> str:
        """What must exist under the root for this member, as shown to the user."""
        return f"{self.name}/{fold_file_name('best_predictions', '*')}" if self.solution else self.name


@dataclass(frozen=True)
class BlendRecipe:
    """A named blend: method and weighted members."""

    name: str
    method: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class MemberReport:
    """How one member relates to the blend it is part of."""

    member: Member
    files: tuple[Path, ...]
    agreement: float          # fraction of rows where the member's own argmax equals the blend's
    rows_changed: int | None  # rows whose blend prediction differs without this member (None: sole member)


@dataclass(frozen=True)
class BlendResult:
    """The blended scores in ascending ID order, with per-member reports and the members left out."""

    recipe: BlendRecipe       # the members actually blended
    ids: np.ndarray
    scores: np.ndarray        # (rows, classes): probabilities for mean/geomean, ranks in [0, 1] for rank
    predictions: np.ndarray
    reports: tuple[MemberReport, ...]
    missing: tuple[str, ...]
    classes: tuple[str, ...]  # the members' probability columns (0..9, or the data set's class names)


# --- recipes -------------------------------------------------------------------------------------

def check_method(method: str) -> str:
    """Return `method` if it is a known blend method, else raise a UserError listing them."""
    if method not in METHODS:
        raise UserError(f"unknown blend method {method!r}; choose one of: {', '.join(METHODS)}.")
    return method


def load_blend_recipe(path: str | os.PathLike) -> BlendRecipe:
    """Read a blend recipe TOML (`name`, `method`, `members` list or `[solutions]` weights)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found. Check the --recipe path.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid TOML ({error}). Fix the syntax.") from None
    return parse_blend_recipe(data, str(path), default_name=path.stem)


def parse_blend_recipe(data: dict[str, Any], source: str, default_name: str = "blend") -> BlendRecipe:
    """Validate a recipe mapping; one UserError lists every problem, naming `source`."""
    problems = [f"unknown key {key!r} (allowed: {', '.join(RECIPE_KEYS)})" for key in data if key not in RECIPE_KEYS]
    method = data.get("method", "mean")
    if method not in METHODS:
        problems.append(f"method = {method!r}; choose one of: {', '.join(METHODS)}")
    has_members, has_solutions = "members" in data, "solutions" in data
    members: list[Member] = []
    if has_members == has_solutions:
        problems.append("give exactly one of `members = [...]` (CSV files) or a `[solutions]` table (weights)")
    elif has_members:
        members = _parse_member_list(data["members"], problems)
    else:
        members = _parse_solution_table(data["solutions"], problems)
    names = [member.name for member in members]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(f"listed more than once: {', '.join(repeated)} (give one entry a weight instead)")
    if problems:
        raise UserError(format_problems(f"{source}: invalid blend recipe:", problems))
    return BlendRecipe(str(data.get("name", default_name)), method, tuple(members))


def blend_recipe_toml(recipe: BlendRecipe, comment: str = "") -> str:
    """The recipe as TOML text (`[solutions]` weights, or a `members` list), with a leading # comment."""
    import tomli_w

    data: dict[str, Any] = {"name": recipe.name, "method": recipe.method}
    if recipe.members and all(member.solution for member in recipe.members):
        data["solutions"] = {member.name: _plain_number(member.weight) for member in recipe.members}
    elif not any(member.solution for member in recipe.members):
        equal = all(member.weight == 1.0 for member in recipe.members)
        data["members"] = [member.name if equal else {"path": member.name, "weight": _plain_number(member.weight)}
                           for member in recipe.members]
    else:
        raise ValueError("a recipe mixes solutions and single files; TOML recipes hold one kind")
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return header + tomli_w.dumps(data)


def _parse_member_list(entries: Any, problems: list[str]) -> list[Member]:
    if not isinstance(entries, list) or not entries:
        problems.append("`members` must be a non-empty list of CSV paths (or {path = ..., weight = ...} tables)")
        return []
    members = []
    for position, entry in enumerate(entries, start=1):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or set(entry) - {"path", "weight"}:
            problems.append(f"members entry {position}: {entry!r} is neither a path nor {{path = ..., weight = ...}}")
            continue
        weight = _weight(entry.get("weight", 1.0), f"members entry {position} ({entry['path']})", problems)
        members.append(Member(entry["path"], weight))
    return members


def _parse_solution_table(table: Any, problems: list[str]) -> list[Member]:
    if not isinstance(table, dict) or not table:
        problems.append("`[solutions]` must be a non-empty table of solution = weight")
        return []
    return [Member(name, _weight(weight, f"solution {name}", problems), solution=True) for name, weight in table.items()]


def _weight(value: Any, where: str, problems: list[str]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        problems.append(f"{where}: weight {value!r} must be a positive number")
        return 1.0
    if not WEIGHT_RANGE[0] <= value <= WEIGHT_RANGE[1]:
        problems.append(f"{where}: weight {value!r} must be between {WEIGHT_RANGE[0]:g} and {WEIGHT_RANGE[1]:g} "
                        "(weights are relative: use numbers like 1, 2, 3)")
        return 1.0
    return float(value)


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


# --- members -------------------------------------------------------------------------------------

def member_files(member: Member, root: Path) -> tuple[Path, ...]:
    """The CSV files of `member` under `root` (folds in ascending order); empty when it is missing."""
    if not member.solution:
        path = root / member.name
        return (path,) if path.is_file() else ()
    folder = SolutionFolder(root / member.name)
    return tuple(folder.best_predictions(fold) for fold in folder.folds_with("best_predictions"))


def blend(recipe: BlendRecipe, root: str | os.PathLike, allow_missing: bool = False) -> BlendResult:
    """Read, validate, align and combine the recipe's members under `root`; nothing is written.

    Missing members are an error listing all of them, unless `allow_missing` (then they are left out
    and listed in `missing`; at least one member must remain).
    """
    root = Path(root)
    check_method(recipe.method)
    if not root.is_dir():
        raise UserError(f"--root {root}: folder not found. Point it at the folder holding the members.")
    files = {member: member_files(member, root) for member in recipe.members}
    missing = tuple(member.expected for member in recipe.members if not files[member])
    present = [member for member in recipe.members if files[member]]
    if missing and (not allow_missing or not present):
        advice = ("Check --root and the member names, or pass --allow-missing to blend the members that exist "
                  "(the result then differs from the full blend)." if present else "No member exists; check --root.")
        raise UserError(format_problems(f"{len(missing)} of {len(recipe.members)} blend members are missing under "
                                        f"{root}:", list(missing)) + "\n" + advice)
    ids, member_probs, classes = load_members([files[member] for member in present])
    weights = [member.weight for member in present]
    spaces = [member_space(probs, recipe.method) for probs in member_probs]
    scores = finish(weighted_mean(spaces, weights), recipe.method)
    predictions = scores.argmax(axis=1)
    changed = rows_changed(spaces, weights, recipe.method, predictions)
    reports = tuple(MemberReport(member, files[member], float(np.mean(probs.argmax(axis=1) == predictions)), count)
                    for member, probs, count in zip(present, member_probs, changed, strict=True))
    return BlendResult(replace(recipe, members=tuple(present)), ids, scores, predictions, reports, missing, classes)


def load_members(member_file_groups: Sequence[Sequence[Path]]) -> tuple[np.ndarray, list[np.ndarray], tuple[str, ...]]:
    """(ascending IDs, one row-normalised probability matrix per member, the class columns) aligned by ID.

    A member with several files (a solution) is the mean of its row-normalised files. Every file is
    validated; one UserError lists the problems of all bad files, and files with different class
    columns (models of different data sets) are refused, each class list named with its files.
    """
    tables, problems = {}, []
    for path in dict.fromkeys(path for group in member_file_groups for path in group):
        try:
            tables[path] = read_probabilities(path)
        except UserError as error:
            problems.append(str(error))
    reference = next(iter(tables.values()), None)
    if reference is not None:
        ids = np.sort(reference.ids)
        positions = {}
        for path, table in tables.items():
            try:
                positions[path] = align_positions(ids, table.ids, str(path), str(reference.path),
                                                  "Every member must hold exactly the same IDs; regenerate or "
                                                  "replace this file.")
            except UserError as error:
                problems.append(str(error))
    mixed = different_classes(tables)
    if mixed:
        problems.append(mixed)
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        raise UserError(f"{len(problems)} of the blend's input files are invalid:\n\n" + "\n\n".join(problems))
    normalised = {path: row_normalise(table.probs[positions[path]]) for path, table in tables.items()}
    member_probs = [normalised[group[0]] if len(group) == 1 else np.mean([normalised[path] for path in group], axis=0)
                    for group in member_file_groups]
    return ids, member_probs, reference.classes


def different_classes(tables: dict[Path, ProbabilityTable]) -> str | None:
    """A message naming each class list and its files when the tables' class columns differ, else None."""
    holders: dict[tuple[str, ...], list[str]] = {}
    for path, table in tables.items():
        holders.setdefault(table.classes, []).append(str(path))
    if len(holders) < 2:
        return None
    lists = [f"classes {describe_classes(classes)} in {', '.join(paths[:3])}" + (", ..." if len(paths) > 3 else "")
             for classes, paths in holders.items()]
    return format_problems(f"the blend's members predict {len(holders)} different class lists:", lists) + (
        "\nBlend only solutions trained on the same data set (the same classes, in the same order).")


# --- combining -----------------------------------------------------------------------------------

def combine(member_probs: Sequence[np.ndarray], weights: Sequence[float], method: str) -> np.ndarray:
    """Blend equally-shaped (rows, classes) probability matrices with `method` (see the module docstring)."""
    check_method(method)
    spaces = [member_space(probs, method) for probs in member_probs]
    return finish(weighted_mean(spaces, weights), method)


def member_space(probs: np.ndarray, method: str) -> np.ndarray:
    """What `method` averages for one member: normalised probabilities, their logs, or scaled ranks."""
    normalised = row_normalise(np.asarray(probs, dtype=np.float64))
    if method == "mean":
        return normalised
    if method == "geomean":
        return np.log(normalised + LOG_EPS)
    from scipy.stats import rankdata

    rows = len(normalised)
    ranks = rankdata(normalised, method="average", axis=0)
    return (ranks - 1.0) / (rows - 1) if rows > 1 else np.zeros_like(ranks)


def weighted_mean(spaces: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum(w_i * x_i) / sum(w_i), accumulated in member order."""
    if len(spaces) != len(weights) or not spaces:
        raise ValueError(f"need one weight per member and at least one member, got {len(spaces)} and {len(weights)}")
    total = np.zeros_like(spaces[0])
    for space, weight in zip(spaces, weights, strict=True):
        total += weight * space
    return total / float(sum(weights))


def finish(averaged: np.ndarray, method: str) -> np.ndarray:
    """Blended scores from the averaged member spaces (geomean: softmax back to probabilities)."""
    if method != "geomean":
        return averaged
    exponent = np.exp(averaged - averaged.max(axis=1, keepdims=True))
    return exponent / exponent.sum(axis=1, keepdims=True)


def rows_changed(spaces: Sequence[np.ndarray], weights: Sequence[float], method: str,
                 predictions: np.ndarray) -> list[int | None]:
    """For each member (given as its `member_space`), how many of the blend's `predictions` change
    when that member is left out; None for a sole member."""
    if len(spaces) < 2:
        return [None] * len(spaces)
    changed = []
    for left_out in range(len(spaces)):
        others = [index for index in range(len(spaces)) if index != left_out]
        without = finish(weighted_mean([spaces[i] for i in others], [weights[i] for i in others]), method)
        changed.append(int(np.count_nonzero(without.argmax(axis=1) != predictions)))
    return changed


# --- output --------------------------------------------------------------------------------------

def submission_frame(result: BlendResult, order: np.ndarray | None = None, order_source: str = "--ids",
                     with_scores: bool = False) -> pd.DataFrame:
    """`ID,TARGET` in ascending ID order or in `order` (which must hold exactly the blended IDs);
    `with_scores` adds the blended scores as the members' class columns (0..9, or the class names)."""
    positions = np.arange(len(result.ids))
    if order is not None:
        positions = align_positions(order, result.ids, "the blended members", order_source,
                                    f"{order_source} must list exactly the IDs of the members.")
    frame = pd.DataFrame({"ID": result.ids[positions], "TARGET": result.predictions[positions]})
    if with_scores:
        frame = pd.concat([frame, pd.DataFrame(result.scores[positions], columns=list(result.classes))], axis=1)
    return frame
