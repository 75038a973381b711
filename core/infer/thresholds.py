"""Per-class detection thresholds chosen out of fold: each fold model scores soundscapes of its own validation fold.

Fold model k validates on one fold (core/folds.py: kaggle, fold k; us8k-10fold, fold k % 10 + 1) and never
trained on it. Soundscapes are made from that fold's clips only (core/data/soundscapes.py, which records the
folds it used); before a model scores them, the recorded folds are checked against the folds the model trained
on (never any overlap). The frame scores of every fold model on its own soundscapes are pooled, and per class
a small grid of hysteresis pairs (on, off) is tried with the other post-processing rules fixed (median,
minimum length, merge gap: detect's values), keeping the pair with the highest event-based F1 of that class
(sed_eval, detect's collars: core/sed/evaluate.py).

Event-based rather than segment-based F1: the thresholds decide where an event starts and ends and whether it
breaks into pieces; the event-based F1 scores exactly that (onset and offset collars; a fragment is a false
positive), while the 1 s segment-based F1 barely sees fragmentation or onset shifts. The post-processing treats
classes independently (core/infer/events.py), so one evaluation per grid pair gives every class's F1 under that
pair, and the best pair of each class is the best per-class choice. Ties (a class no pair detects, say) go to
the pair nearest the hand-set defaults.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.errors import UserError
from core.infer.detect import Detection, detect_files, events_frame
from core.infer.events import PostProcessing
from core.infer.predictors import ModelSpec
from core.infer.salience import SaliencePolicy

HAND_SET = (0.5, 0.3)                                       # detect's defaults without a tuned file (on, off)
GRID_ON = tuple(round(0.1 * step, 1) for step in range(1, 10))
GRID_OFF_BELOW = (0.0, 0.1, 0.2, 0.3)                       # off = on - this (hysteresis widths), off >= 0.05


def grid_pairs() -> list[tuple[float, float]]:
    """The (on, off) pairs tried for every class, 0 < off <= on < 1."""
    return [(on, round(on - below, 1)) for on in GRID_ON for below in GRID_OFF_BELOW if on - below >= 0.05]


@dataclass
class FoldRun:
    """One fold model's out-of-fold detection."""

    fold: int                           # the fold model's key (k of best_model_fold<k>)
    trained_on: tuple[int, ...]
    validation: int
    soundscape_folds: tuple[int, ...]   # as recorded in soundscapes.json of the soundscapes it scored
    soundscapes: Path
    detection: Detection


@dataclass
class Tuned:
    rules: PostProcessing               # the chosen per-class thresholds and the fixed time rules
    event_f1: dict[str, float]          # per class, at its chosen pair (pooled over the fold models)
    runs: list[FoldRun]


def score_out_of_fold(folds: Sequence[int], protocol: str, spec_for: Callable[[int], ModelSpec],
                      soundscapes_for: Callable[[int], Path], rules: PostProcessing, hop: float,
                      salience: SaliencePolicy = SaliencePolicy("marginal"),
                      on_fold: Callable[[int], None] | None = None) -> list[FoldRun]:
    """Each fold model (`spec_for(k)`) scores the soundscapes of its validation fold (`soundscapes_for(v)`)."""
    from core.data.soundscapes import soundscape_folds
    from core.folds import fold_roles
    from core.sed.formats import read_reference

    runs = []
    for key in folds:
        roles = fold_roles(protocol, key)
        folder = soundscapes_for(roles.validation)
        recorded = soundscape_folds(folder)
        if recorded is None:
            raise UserError(f"{folder}: no soundscapes.json; make them with `python -m core soundscapes`")
        leaked = sorted(set(recorded) & set(roles.train))
        if leaked:  # the point of tuning out of fold: never on clips the model learnt from
            raise UserError(f"{folder} is made from fold(s) {', '.join(map(str, leaked))}, which fold model {key} "
                            "trained on; thresholds must be tuned on its validation fold only")
        _, files = read_reference(folder)
        audio = [folder / "audio" / name for name in files]
        detection = detect_files(audio, spec_for(key), rules, hop_seconds=hop, salience=salience)
        if detection.bad:
            path, reason = next(iter(detection.bad.items()))
            raise UserError(f"could not read soundscape {path}: {reason}")
        runs.append(FoldRun(key, roles.train, roles.validation, tuple(recorded), folder, detection))
        if on_fold:
            on_fold(1)
    return runs


def choose_thresholds(runs: Sequence[FoldRun], rules: PostProcessing) -> Tuned:
    """Per class, the grid pair with the best pooled event-based F1 (module docstring)."""
    from core.infer.detect import FileDetection
    from core.infer.events import scores_to_events
    from core.sed.evaluate import event_metrics
    from core.sed.formats import read_reference

    references, names = [], []
    for run in runs:
        table, files = read_reference(run.soundscapes)
        references.append(table)
        names.extend(files)
    if len(set(names)) != len(names):
        raise UserError("the soundscapes of different folds share file names; make them with distinct prefixes")
    reference = pd.concat(references, ignore_index=True)
    files = [f for run in runs for f in run.detection.files]
    best: dict[str, tuple[float, float, float]] = {}  # class -> (f1, on, off)
    for on, off in grid_pairs():
        trial = PostProcessing.uniform(on, off, rules.median_frames, rules.min_length, rules.min_gap, rules.classes)
        detected = Detection([FileDetection(f.path, f.duration_s, f.hop_s, f.frame_scores,
                                            scores_to_events(f.frame_scores, f.hop_s, f.duration_s, trial))
                              for f in files], {})
        per_class = event_metrics(events_frame(detected), reference, names)["event_based"]["per_class"]
        for label in rules.classes:
            f1 = _finite(per_class.get(label, {}).get("f1"))
            current = best.get(label)
            if current is None or (f1, -_distance(on, off)) > (current[0], -_distance(current[1], current[2])):
                best[label] = (f1, on, off)
    classes = rules.classes
    tuned = PostProcessing(tuple(best[n][1] for n in classes), tuple(best[n][2] for n in classes),
                           rules.median_frames, rules.min_length, rules.min_gap, classes)
    return Tuned(tuned, {label: best[label][0] for label in classes}, list(runs))


def _finite(value) -> float:
    """sed_eval's F1 is NaN for a class with neither reference nor detected events: count it as 0."""
    return float(value) if value is not None and value == value else 0.0


def _distance(on: float, off: float) -> float:
    return abs(on - HAND_SET[0]) + abs(off - HAND_SET[1])
