"""evaluate-sed: sed_eval figures on a hand-made pair, checked against a hand computation; PSDS; reference layouts."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, subprocess_env

from core import CLASS_NAMES
from core.errors import UserError
from core.sed.evaluate import event_metrics, psds_metrics
from core.sed.formats import read_reference, write_event_list, write_score_table

REFERENCE = pd.DataFrame({"filename": ["a.wav", "a.wav"], "onset": [0.0, 3.0], "offset": [2.0, 5.0],
                          "event_label": ["dog_bark", "siren"]})
PREDICTED = pd.DataFrame({"filename": ["a.wav", "a.wav"], "onset": [0.1, 6.0], "offset": [2.0, 7.0],
                          "event_label": ["dog_bark", "siren"]})


def test_figures_match_a_hand_computation():
    figures = event_metrics(PREDICTED, REFERENCE, ["a.wav"])
    # Event-based: dog_bark matches (onset 0.1 s off, within the 200 ms collar); the predicted siren [6, 7] matches
    # nothing: TP 1, FP 1, FN 1 -> P = R = F = 1/2; ER = (S 0 + D 1 + I 1) / N 2 = 1.
    event = figures["event_based"]["overall"]
    assert (event["precision"], event["recall"], event["f1"], event["error_rate"]) == pytest.approx((0.5, 0.5, 0.5, 1.0))
    # Segment-based, 1 s segments 0..6: reference dog_bark in 0,1, siren in 3,4; predicted dog_bark 0,1, siren 6.
    # TP 2, FP 1, FN 2 -> P 2/3, R 1/2, F 4/7; ER = (D 2 (segments 3, 4) + I 1 (segment 6)) / N 4 = 3/4.
    segment = figures["segment_based"]["overall"]
    assert (segment["precision"], segment["recall"], segment["f1"], segment["error_rate"]) == pytest.approx(
        (2 / 3, 0.5, 4 / 7, 0.75))
    assert figures["segment_based"]["per_class"]["dog_bark"]["f1"] == pytest.approx(1.0)
    assert figures["segment_based"]["per_class"]["siren"]["f1"] == pytest.approx(0.0)


def test_offset_collar_is_20_percent_of_the_reference_length():
    # A 4 s reference event: the offset collar is max(0.2, 0.8) = 0.8 s; 0.7 s late matches, 0.9 s late does not.
    reference = pd.DataFrame({"filename": ["a.wav"], "onset": [1.0], "offset": [5.0], "event_label": ["siren"]})
    for late, matched in ((0.7, 1.0), (0.9, 0.0)):
        predicted = reference.assign(offset=5.0 + late)
        assert event_metrics(predicted, reference, ["a.wav"])["event_based"]["overall"]["f1"] == pytest.approx(matched)


def test_predictions_for_files_outside_the_reference_are_refused():
    with pytest.raises(UserError, match="does not cover"):
        event_metrics(PREDICTED.assign(filename="b.wav"), REFERENCE, ["a.wav"])


def test_psds_is_1_for_scores_that_are_the_reference_and_lower_for_wrong_ones(tmp_path):
    hop, frames = 0.5, 80  # 40 s: a whole-file detection is not a PSDS2 true positive (2 s of 40 < DTC 0.1)
    starts = np.arange(frames) * hop
    right = pd.DataFrame({"onset": starts, "offset": starts + hop})
    for name in CLASS_NAMES:
        right[name] = 0.0
    right.loc[(starts >= 0) & (starts < 2), "dog_bark"] = 1.0
    right.loc[(starts >= 3) & (starts < 5), "siren"] = 1.0
    write_score_table(right, tmp_path / "right", "a.wav")
    wrong = right.copy()
    wrong["siren"], wrong["dog_bark"] = right["dog_bark"], right["siren"]
    write_score_table(wrong, tmp_path / "wrong", "a.wav")
    perfect = psds_metrics(tmp_path / "right", REFERENCE, ["a.wav"])
    swapped = psds_metrics(tmp_path / "wrong", REFERENCE, ["a.wav"])
    assert perfect["psds1"] == pytest.approx(1.0) and perfect["psds2"] == pytest.approx(1.0)
    assert swapped["psds1"] == pytest.approx(0.0) and swapped["psds2"] < 1.0


def test_urban_sed_layout_is_read_as_it_is(tmp_path):
    folder = tmp_path / "URBAN-SED" / "annotations" / "test"
    folder.mkdir(parents=True)
    (folder / "soundscape_test_bimodal0.txt").write_text("0.0\t2.0\tdog_bark\n3.0\t5.0\tsiren\n")
    (folder / "soundscape_test_bimodal1.txt").write_text("")  # a soundscape without events still counts
    table, files = read_reference(tmp_path / "URBAN-SED")
    assert files == ["soundscape_test_bimodal0.wav", "soundscape_test_bimodal1.wav"]
    assert table.to_dict("records") == [
        {"filename": "soundscape_test_bimodal0.wav", "onset": 0.0, "offset": 2.0, "event_label": "dog_bark"},
        {"filename": "soundscape_test_bimodal0.wav", "onset": 3.0, "offset": 5.0, "event_label": "siren"}]


def test_the_command_prints_every_figure_as_json(tmp_path):
    write_event_list(PREDICTED, tmp_path / "pred.tsv")
    write_event_list(REFERENCE, tmp_path / "ref.tsv")
    result = subprocess.run([sys.executable, "-m", "core", "evaluate-sed", "--events", tmp_path / "pred.tsv",
                             "--reference", tmp_path / "ref.tsv", "--json"], capture_output=True, text=True,
                            cwd=tmp_path, env=subprocess_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["event_based"]["overall"]["f1"] == pytest.approx(0.5)
    assert figures["segment_based"]["overall"]["error_rate"] == pytest.approx(0.75)
    assert REPO.exists()


def test_the_classes_scored_come_from_the_event_lists_and_the_score_tables(tmp_path):
    """Another data set's labels are scored alone; a score table adds the model's classes without events."""
    own_reference = REFERENCE.assign(event_label=["beep", "hum"])
    own_predicted = PREDICTED.assign(event_label=["beep", "hum"])
    figures = event_metrics(own_predicted, own_reference, ["a.wav"])
    assert set(figures["segment_based"]["per_class"]) == set(figures["event_based"]["per_class"]) == {"beep", "hum"}
    assert figures["event_based"]["overall"]["f1"] == pytest.approx(0.5)  # the hand computation above, renamed

    starts = np.arange(20) * 0.5
    table = pd.DataFrame({"onset": starts, "offset": starts + 0.5, "beep": 0.0, "hum": 0.0, "whistle": 0.0})
    table.loc[starts < 2, "beep"] = 1.0
    table.loc[(starts >= 3) & (starts < 5), "hum"] = 1.0
    write_score_table(table, tmp_path / "scores", "a.wav")
    write_event_list(own_predicted, tmp_path / "pred.tsv")
    write_event_list(own_reference, tmp_path / "ref.tsv")
    result = subprocess.run([sys.executable, "-m", "core", "evaluate-sed", "--events", tmp_path / "pred.tsv",
                             "--reference", tmp_path / "ref.tsv", "--scores", tmp_path / "scores", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    assert list(scored["segment_based"]["per_class"]) == ["beep", "hum", "whistle"]
    assert scored["psds"]["classes"] == ["beep", "hum"]  # PSDS: the classes with reference events
    assert scored["event_based"]["overall"] == figures["event_based"]["overall"]  # whistle has no event: no change


def test_urbansound8k_figures_are_unchanged_and_its_score_tables_bring_its_ten_classes(tmp_path):
    from core.sed.formats import score_table_classes

    before = event_metrics(PREDICTED, REFERENCE, ["a.wav"], CLASS_NAMES)  # what every run scored until now
    now = event_metrics(PREDICTED, REFERENCE, ["a.wav"])
    assert sorted(before["segment_based"]["per_class"]) == sorted(CLASS_NAMES)
    for kind in ("segment_based", "event_based"):
        assert now[kind]["overall"] == before[kind]["overall"]
        assert now[kind]["per_class"] == {label: before[kind]["per_class"][label] for label in ("dog_bark", "siren")}
    starts = np.arange(4) * 0.5
    write_score_table(pd.DataFrame({"onset": starts, "offset": starts + 0.5, **dict.fromkeys(CLASS_NAMES, 0.1)}),
                      tmp_path, "a.wav")
    assert score_table_classes(tmp_path, ["a.wav"]) == list(CLASS_NAMES)
    with_tables = event_metrics(PREDICTED, REFERENCE, ["a.wav"], score_table_classes(tmp_path, ["a.wav"]))
    assert json.dumps(with_tables, sort_keys=True) == json.dumps(before, sort_keys=True)  # NaN (no event) compares
