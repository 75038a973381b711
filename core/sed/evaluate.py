"""Scores of an event list against a reference, computed by the field's libraries.

- sed_eval (Mesaros et al. 2016): segment-based F1 and error rate on 1 s segments; event-based F1 and error
  rate with a 200 ms onset collar and an offset collar of max(200 ms, 20 % of the reference event's length)
  (DCASE's event-based settings); overall (micro) and per class.
- sed_scores_eval (Ebbers et al. 2022): PSDS1 and PSDS2 with the DCASE task 4 settings (PSDS1: DTC = GTC = 0.7,
  no cross-trigger, alpha_st = 1; PSDS2: DTC = GTC = 0.1, CTTC = 0.3, alpha_ct = 0.5, alpha_st = 1; both
  up to 100 false positives per hour) from the score tables of `detect --scores`.
Files of the reference without a predicted event count as files with no detections. The classes scored are
those the event lists name and, with score tables, the model's (their columns). PSDS is computed over the
classes that have reference events (sed_scores_eval refuses a class without any); the figures list them.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from core.errors import UserError
from core.sed.formats import audio_id

SEGMENT_SECONDS = 1.0
T_COLLAR = 0.2
OFFSET_LENGTH_SHARE = 0.2
PSDS_SETTINGS = {
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0, "alpha_st": 1.0,
              "max_efpr": 100.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5, "alpha_st": 1.0,
              "max_efpr": 100.0},
}


def _containers(table: pd.DataFrame, name: str):
    with warnings.catch_warnings():  # dcase_util imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import dcase_util

    rows = table[table["filename"].map(audio_id) == name]
    return dcase_util.containers.MetaDataContainer(
        [{"filename": name, "onset": float(o), "offset": float(f), "event_label": str(label)}
         for o, f, label in zip(rows["onset"], rows["offset"], rows["event_label"], strict=True)])


def _figures(metric) -> dict:
    overall = metric.results_overall_metrics()
    per_class = metric.results_class_wise_metrics()

    def pick(block: dict) -> dict:
        return {"f1": block["f_measure"]["f_measure"], "precision": block["f_measure"]["precision"],
                "recall": block["f_measure"]["recall"], "error_rate": block["error_rate"]["error_rate"],
                **({"substitution_rate": block["error_rate"]["substitution_rate"]}
                   if "substitution_rate" in block["error_rate"] else {}),
                "deletion_rate": block["error_rate"]["deletion_rate"],
                "insertion_rate": block["error_rate"]["insertion_rate"]}

    return {"overall": pick(overall), "per_class": {label: pick(per_class[label]) for label in per_class}}


def event_metrics(predicted: pd.DataFrame, reference: pd.DataFrame, files: list[str],
                  classes: Sequence[str] = ()) -> dict:
    """Segment- and event-based figures (module docstring) over `files` (event-list file names), per class
    for the classes the two lists name and `classes` (the model's, from its score tables)."""
    with warnings.catch_warnings():  # sed_eval imports dcase_util, which imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import sed_eval

    labels = sorted(set(classes) | set(reference["event_label"]) | set(predicted["event_label"]))
    segment = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=labels, time_resolution=SEGMENT_SECONDS)
    event = sed_eval.sound_event.EventBasedMetrics(event_label_list=labels, t_collar=T_COLLAR,
                                                   percentage_of_length=OFFSET_LENGTH_SHARE)
    ids = sorted({audio_id(name) for name in files})
    unknown = sorted(set(predicted["filename"].map(audio_id)) - set(ids))
    if unknown:
        raise UserError(f"the predictions name {len(unknown)} file(s) the reference does not cover (first: "
                        f"{unknown[0]}); pass the reference of those files")
    for name in ids:
        truth, guess = _containers(reference, name), _containers(predicted, name)
        segment.evaluate(reference_event_list=truth, estimated_event_list=guess)
        event.evaluate(reference_event_list=truth, estimated_event_list=guess)
    return {"files": len(ids), "segment_based": _figures(segment), "event_based": _figures(event)}


def psds_metrics(scores: Path, reference: pd.DataFrame, files: list[str]) -> dict:
    """PSDS1 and PSDS2 (module docstring) from a folder of score tables, one per reference file."""
    from sed_scores_eval import intersection_based, io

    ids = sorted({audio_id(name) for name in files})
    missing = [name for name in ids if not (Path(scores) / f"{name}.tsv").is_file()]
    if missing:
        raise UserError(f"--scores {scores}: no score table for {len(missing)} reference file(s) (first: "
                        f"{missing[0]}.tsv); run detect --scores on the same audio")
    tables = {name: io.read_sed_scores(Path(scores) / f"{name}.tsv") for name in ids}
    truth = {name: [] for name in ids}
    for filename, onset, offset, label in zip(reference["filename"], reference["onset"], reference["offset"],
                                              reference["event_label"], strict=True):
        truth[audio_id(filename)].append((float(onset), float(offset), str(label)))
    durations = {name: float(table["offset"].max()) for name, table in tables.items()}
    # sed_scores_eval needs reference events for every class it scores: classes without any are left out (said).
    classes = [column for column in next(iter(tables.values())).columns if column not in ("onset", "offset")]
    present = [name for name in classes if (reference["event_label"] == name).any()]  # the model's, from its tables
    if not present:
        raise UserError("PSDS needs reference events; the reference has none")
    tables = {name: table[["onset", "offset", *present]] for name, table in tables.items()}
    figures: dict = {"classes": present}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, settings in PSDS_SETTINGS.items():
            value, *_ = intersection_based.psds(scores=tables, ground_truth=truth, audio_durations=durations,
                                                  **settings)
            figures[key] = float(value)
    return figures
