"""Ensemble selection on out-of-fold predictions (Caruana et al. 2004), at solution level.

A solution's OOF predictions (`oof_fold<k>.csv`, one per held-out fold) together cover every train
clip, so solutions, not single fold models, are the comparable units. Greedy forward selection
with replacement: starting from an empty ensemble, each step adds the solution (possibly one
already chosen) whose addition gives the highest OOF composite of the mean blend; after
`max_steps` steps the prefix with the best composite is kept (the shortest on ties). A solution's
weight is the number of times it was chosen. Candidates are tried in name order and only a
strictly better score replaces the current best, so of two identical solutions only the first in
name order is ever chosen (a duplicate does not split or inflate the weight). The solutions must
predict the same classes (the OOF files' class columns: 0..9, or another data set's class names).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.blend import BlendRecipe, Member, member_files
from core.errors import UserError, format_problems
from core.metrics import Scores, score
from core.predictions import OofTable, align_positions, describe_classes, read_oof, row_normalise
from core.solution_folder import SolutionFolder


@dataclass(frozen=True)
class SolutionOof:
    """A solution's concatenated OOF predictions, sorted by clip name."""

    name: str
    folds: tuple[int, ...]
    clips: np.ndarray
    labels: np.ndarray
    probs: np.ndarray     # row-normalised
    test_files: int       # best_model_fold*.csv files beside the OOF files (what `blend` will average)
    classes: tuple[str, ...]  # the OOF files' probability columns (0..9, or the class names)


@dataclass(frozen=True)
class Selection:
    """The result of ensemble selection over a pool of solutions."""

    pool: tuple[SolutionOof, ...]
    single_scores: tuple[Scores, ...]   # each solution alone, in pool order
    weights: tuple[int, ...]            # times chosen, in pool order (0: not in the blend)
    steps: tuple[tuple[str, float], ...]  # (solution added, blend composite after the step), every step run
    scores: Scores                      # the chosen blend's OOF scores

    def chosen(self) -> list[tuple[str, int]]:
        """(solution, weight) of the solutions in the blend, in pool order."""
        return [(solution.name, weight) for solution, weight in zip(self.pool, self.weights, strict=True) if weight > 0]


def find_solutions(root: str | os.PathLike) -> list[str]:
    """Names of the folders under `root` that hold oof_fold*.csv files, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--root {root}: folder not found. Point it at the solutions folder.")
    return sorted(folder.name for folder in root.iterdir() if folder.is_dir() and SolutionFolder(folder).folds_with("oof"))


def load_solution_oof(root: str | os.PathLike, name: str) -> SolutionOof:
    """Read and check every oof_fold<k>.csv of solution `name` (the fold column must be k)."""
    folder = Path(root) / name
    files = {fold: SolutionFolder(folder).oof(fold) for fold in SolutionFolder(folder).folds_with("oof")}
    if not files:
        raise UserError(f"{folder}: no oof_fold<k>.csv files. Train the solution or leave it out.")
    tables = [read_oof(files[fold]) for fold in sorted(files)]
    problems = [f"{table.path}: fold column holds {sorted(set(table.folds.tolist()))}, expected only {fold}"
                for fold, table in zip(sorted(files), tables, strict=True) if (table.folds != fold).any()]
    if problems:
        raise UserError(format_problems(f"{folder}: OOF files disagree with their names:", problems)
                        + "\nEach oof_fold<k>.csv must hold the clips of held-out fold k; regenerate them.")
    class_lists = {table.classes for table in tables}
    if len(class_lists) > 1:
        raise UserError(format_problems(f"{folder}: OOF files with different class columns:",
                                        [f"{table.path.name}: {describe_classes(table.classes)}" for table in tables])
                        + "\nEvery fold of a solution predicts the same classes; regenerate the odd ones.")
    clips = np.concatenate([table.clips for table in tables])
    _refuse_repeated_clips(clips, tables, folder)
    order = np.argsort(clips, kind="stable")
    probs = row_normalise(np.concatenate([table.probs for table in tables]))
    labels = np.concatenate([table.labels for table in tables])
    test_files = len(member_files(Member(name, solution=True), Path(root)))
    return SolutionOof(name, tuple(sorted(files)), clips[order], labels[order], probs[order], test_files,
                       tables[0].classes)


def load_pool(root: str | os.PathLike, names: Sequence[str] | None = None) -> tuple[SolutionOof, ...]:
    """The solutions to select from (all with OOF files, or `names`), on one common, labelled clip set."""
    found = find_solutions(root)
    unknown = sorted(set(names or ()) - set(found))
    if unknown:
        raise UserError(f"no OOF files for: {', '.join(unknown)} under {root}; "
                        f"solutions with OOF files: {', '.join(found) or 'none'}.")
    chosen = sorted(set(names)) if names else found
    if not chosen:
        raise UserError(f"{root}: no solution folder holds oof_fold*.csv files. Train solutions first.")
    pool = tuple(load_solution_oof(root, name) for name in chosen)
    reference = pool[0]
    mixed = [solution for solution in pool if solution.classes != reference.classes]
    if mixed:
        raise UserError(format_problems("the solutions predict different classes:", [
            f"{solution.name}: {describe_classes(solution.classes)}" for solution in (reference, *mixed)])
            + "\nSelect among solutions trained on the same data set (choose them with --solution).")
    for solution in pool[1:]:
        positions = align_positions(reference.clips, solution.clips, f"solution {solution.name} (folds "
                                    f"{_folds(solution)})", f"solution {reference.name} (folds {_folds(reference)})",
                                    "Solutions are compared on the same clips: finish the missing folds, or choose "
                                    "solutions with --solution.", key_name="clip")
        disagree = np.flatnonzero(solution.labels[positions] != reference.labels)
        if len(disagree):
            shown = ", ".join(str(clip) for clip in reference.clips[disagree[:5]])
            raise UserError(f"solutions {reference.name} and {solution.name} disagree on the true classID of "
                            f"{len(disagree)} clip(s), first: {shown}. Their OOF files come from different "
                            "metadata; regenerate one of them.")
    return pool


def greedy_selection(member_probs: Sequence[np.ndarray], labels: np.ndarray,
                     max_steps: int) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """Caruana forward selection with replacement on the mean blend.

    Returns (weights = times chosen in the best prefix, [(member added, composite after) per step]).
    """
    if max_steps < 1 or not member_probs:
        raise ValueError("need at least one step and one member")
    total = np.zeros_like(member_probs[0])
    counts = np.zeros(len(member_probs), dtype=np.int64)
    steps, prefix_counts = [], []
    for _ in range(max_steps):
        best_index, best_composite = 0, -np.inf
        for index, probs in enumerate(member_probs):
            composite = score(labels, (total + probs).argmax(axis=1)).composite  # argmax(sum) = argmax(mean)
            if composite > best_composite:
                best_index, best_composite = index, composite
        total += member_probs[best_index]
        counts[best_index] += 1
        steps.append((best_index, best_composite))
        prefix_counts.append(counts.copy())
    best_step = int(np.argmax([composite for _, composite in steps]))  # first maximum: the shortest prefix
    return prefix_counts[best_step], steps


def select(root: str | os.PathLike, max_steps: int, names: Sequence[str] | None = None) -> Selection:
    """Load the pool under `root`, score each solution alone, and run the greedy selection."""
    if max_steps < 1:
        raise UserError(f"--max must be at least 1, got {max_steps}.")
    pool = load_pool(root, names)
    labels = pool[0].labels
    single_scores = tuple(score(labels, solution.probs.argmax(axis=1)) for solution in pool)
    weights, steps = greedy_selection([solution.probs for solution in pool], labels, max_steps)
    blended = sum(weight * solution.probs for weight, solution in zip(weights, pool, strict=True) if weight > 0)
    return Selection(pool, single_scores, tuple(int(weight) for weight in weights),
                     tuple((pool[index].name, composite) for index, composite in steps),
                     score(labels, blended.argmax(axis=1)))


def selection_recipe(selection: Selection, name: str) -> BlendRecipe:
    """A solution-level mean blend with the selected weights; refused if a chosen solution has no test files."""
    untestable = [solution.name for solution, weight in zip(selection.pool, selection.weights, strict=True)
                  if weight > 0 and solution.test_files == 0]
    if untestable:
        raise UserError(f"chosen solution(s) without best_model_fold*.csv test predictions: {', '.join(untestable)}; "
                        "`blend` could not use the recipe. Produce their test predictions, or leave them out "
                        "with --solution.")
    return BlendRecipe(name, "mean", tuple(Member(solution, float(weight), solution=True)
                                           for solution, weight in selection.chosen()))


def _refuse_repeated_clips(clips: np.ndarray, tables: list[OofTable], folder: Path) -> None:
    unique, counts = np.unique(clips, return_counts=True)
    repeated = unique[counts > 1]
    if len(repeated):
        holders = {clip: [table.path.name for table in tables if clip in set(table.clips)] for clip in repeated[:5]}
        shown = "; ".join(f"{clip} in {', '.join(files)}" for clip, files in holders.items())
        raise UserError(f"{folder}: {len(repeated)} clip(s) appear in more than one OOF file, first: {shown}. "
                        "Each clip is out-of-fold exactly once; regenerate the OOF files.")


def _folds(solution: SolutionOof) -> str:
    return ",".join(map(str, solution.folds))
