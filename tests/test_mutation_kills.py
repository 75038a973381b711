"""The core rules that mutation testing found under-tested (RELIABILITY.md "Mutation testing"):
the competition metric, the fold protocols, the best-epoch rule and the leakage guard, against hand values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from core import NUM_CLASSES
from core.data.metadata import fold_leakage
from core.errors import UserError
from core.folds import ALL_FOLDS, TEST_FOLDS, TRAIN_FOLDS, FoldRoles, fold_roles, fold_span, protocol_folds
from core.metrics import ACCURACY_WEIGHT, F1_WEIGHT, confusion, per_class_table, score
from core.train.fold import ResumeState

# ----------------------------------------------------------------------------------------- metrics
# Labels 0..4 occur; per-class F1 by hand: 0 -> 1/2, 1 -> 4/5, 2 -> 2/3, 3 -> 0, 4 -> 0 (predicted only).
TRUE = np.array([0, 0, 1, 1, 2, 2, 3])
PREDICTED = np.array([0, 1, 1, 1, 2, 0, 4])


def test_score_is_accuracy_macro_f1_and_their_0_8_0_2_blend_by_hand():
    scores = score(TRUE, PREDICTED)
    macro_f1 = (1 / 2 + 4 / 5 + 2 / 3 + 0 + 0) / 5
    assert scores.accuracy == pytest.approx(4 / 7, rel=1e-12)
    assert scores.macro_f1 == pytest.approx(macro_f1, rel=1e-12)
    assert scores.composite == pytest.approx(0.8 * 4 / 7 + 0.2 * macro_f1, rel=1e-12)
    assert (ACCURACY_WEIGHT, F1_WEIGHT) == (0.8, 0.2)
    assert scores.as_dict() == {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1,
                                "composite": scores.composite}
    assert score([3, 3], [3, 3]).as_dict() == {"accuracy": 1.0, "macro_f1": 1.0, "composite": 1.0}


@pytest.mark.parametrize("y_true, y_pred", [([1, 2], [1]), ([], []), ([[1, 2]], [[1, 2]])])
def test_score_refuses_vectors_of_different_shape_or_empty(y_true, y_pred):
    with pytest.raises(ValueError, match="equal-length non-empty"):
        score(np.array(y_true), np.array(y_pred))


def test_per_class_table_and_confusion_cover_all_ten_classes():
    table = per_class_table(TRUE, PREDICTED)
    np.testing.assert_allclose(table["precision"][:5], [1 / 2, 2 / 3, 1, 0, 0])
    np.testing.assert_allclose(table["recall"][:5], [1 / 2, 1, 1 / 2, 0, 0])
    np.testing.assert_allclose(table["f1"][:5], [1 / 2, 4 / 5, 2 / 3, 0, 0])
    np.testing.assert_array_equal(table["support"], [2, 2, 2, 1] + [0] * 6)
    assert all(len(column) == NUM_CLASSES for column in table.values())
    counts = confusion(TRUE, PREDICTED)
    assert counts.shape == (NUM_CLASSES, NUM_CLASSES) and counts.sum() == len(TRUE)
    assert counts[0, 0] == 1 and counts[0, 1] == 1 and counts[2, 0] == 1 and counts[3, 4] == 1 and counts[1, 1] == 2



def test_per_class_table_and_confusion_of_another_data_sets_class_count():
    table = per_class_table(TRUE, PREDICTED, num_classes=6)
    assert all(len(column) == 6 for column in table.values())
    np.testing.assert_array_equal(table["support"], [2, 2, 2, 1, 0, 0])
    np.testing.assert_allclose(table["f1"], [1 / 2, 4 / 5, 2 / 3, 0, 0, 0])
    counts = confusion(TRUE, PREDICTED, num_classes=12)
    assert counts.shape == (12, 12) and counts.sum() == len(TRUE) and counts[3, 4] == 1

# ------------------------------------------------------------------------------------------- folds

def test_fold_constants_and_protocol_fold_lists():
    assert TRAIN_FOLDS == (1, 2, 3, 4, 5, 6, 7, 8) and TEST_FOLDS == (9, 10) and ALL_FOLDS == tuple(range(1, 11))
    assert protocol_folds("kaggle") == TRAIN_FOLDS
    assert protocol_folds("us8k-10fold") == ALL_FOLDS


@pytest.mark.parametrize("key", ALL_FOLDS)
def test_every_10_fold_role_by_hand(key):
    validation = 1 if key == 10 else key + 1
    assert fold_roles("us8k-10fold", key) == FoldRoles(
        key, tuple(f for f in range(1, 11) if f not in (key, validation)), validation, key)


@pytest.mark.parametrize("key", TRAIN_FOLDS)
def test_every_kaggle_role_by_hand(key):
    assert fold_roles("kaggle", key) == FoldRoles(key, tuple(f for f in range(1, 9) if f != key), key, None)


@pytest.mark.parametrize("protocol, key, fragment", [
    ("kaggle", 9, "kaggle protocol trains folds 1-8"), ("kaggle", 0, "got fold 0"),
    ("us8k-10fold", 11, "us8k-10fold protocol tests folds 1-10; got fold 11"), ("us8k-10fold", 0, "got fold 0"),
    ("leave-one-out", 1, "unknown protocol 'leave-one-out'; choose one of kaggle, us8k-10fold"),
])
def test_fold_outside_the_protocol_is_a_user_error(protocol, key, fragment):
    with pytest.raises(UserError, match=fragment):
        fold_roles(protocol, key)



@pytest.mark.parametrize("key, validation", [(2, 3), (3, 5), (5, 9), (9, 2)])
def test_every_kfold_role_by_hand_on_unordered_non_contiguous_folds(key, validation):
    """kfold on the data's folds (given unordered): test k, validate on the next fold in order, the first after the last."""
    folds = (5, 9, 2, 3)
    assert fold_roles("kfold", key, folds) == FoldRoles(
        key, tuple(f for f in (2, 3, 5, 9) if f not in (key, validation)), validation, key)


def test_kaggle_on_a_data_sets_own_folds_by_hand():
    assert fold_roles("kaggle", 2, (1, 2, 3)) == FoldRoles(2, (1, 3), 2, None)
    assert fold_roles("kaggle", 8, TRAIN_FOLDS) == fold_roles("kaggle", 8)


@pytest.mark.parametrize("protocol, key, folds, message", [
    ("kaggle", 4, (1, 2, 3), "the kaggle protocol trains the data's folds 1-3 (fold model k validates on fold k); got fold 4"),
    ("kaggle", 9, TRAIN_FOLDS, "the kaggle protocol trains folds 1-8 (fold model k validates on fold k; 9-10 are the "
                               "test split); got fold 9. Use --protocol us8k-10fold to test on every fold"),
    ("kfold", 1, None, "--protocol kfold needs at least 3 folds (test, validation, train); the data has 0"),
    ("kfold", 1, (1, 2), "--protocol kfold needs at least 3 folds (test, validation, train); the data has 2"),
    ("kfold", 4, (1, 2, 3), "the kfold protocol tests the data's folds 1-3; got fold 4"),
    ("kfold", 2, (5, 1, 3), "the kfold protocol tests the data's folds 1,3,5; got fold 2"),
])
def test_a_fold_outside_the_datas_folds_is_named_word_for_word(protocol, key, folds, message):
    with pytest.raises(UserError) as error:
        fold_roles(protocol, key, folds)
    assert str(error.value) == message


def test_kfold_runs_on_exactly_three_folds():
    assert fold_roles("kfold", 3, (1, 2, 3)) == FoldRoles(3, (2,), 1, 3)


def test_protocol_fold_lists_of_a_data_sets_own_folds():
    assert protocol_folds("kfold", (3, 1, 2)) == (1, 2, 3)
    assert protocol_folds("kfold") == () and protocol_folds("kfold", None) == ()
    assert protocol_folds("kaggle", (2, 1)) == (2, 1)
    assert protocol_folds("us8k-10fold", (1, 2, 3)) == ALL_FOLDS


@pytest.mark.parametrize("folds, span", [((1, 2, 3, 4, 5), "1-5"), ((3, 1, 2), "1-3"), ((2, 3), "2-3"),
                                         ((1, 3, 4), "1,3,4"), ((4, 1, 2), "1,2,4")])
def test_fold_span(folds, span):
    assert fold_span(folds) == span


# ------------------------------------------------------------------------------- the best-epoch rule

def test_best_epoch_rule_is_strictly_better_and_ties_keep_the_earlier_epoch():
    state = ResumeState()
    assert (state.epoch, state.best_epoch, state.best_value) == (0, 0, -math.inf)
    outcomes = [state.record(epoch, value) for epoch, value in enumerate([0.5, 0.7, 0.7, 0.6, 0.71], start=1)]
    assert outcomes == [True, True, False, False, True]
    assert (state.epoch, state.best_epoch, state.best_value) == (5, 5, 0.71)
    assert not state.record(6, 0.2) and (state.epoch, state.best_epoch, state.best_value) == (6, 5, 0.71)
    assert ResumeState().record(1, -1e300)  # any finite first value is a best


# ------------------------------------------------------------------------------------ leakage guard

def labelled(rows: list[tuple[object, int, int]]) -> pd.DataFrame:
    """(recording, classID, fold) rows."""
    return pd.DataFrame(rows, columns=["recording", "classID", "fold"])


def test_a_recording_split_over_folds_is_named_with_its_folds():
    table = labelled([(100, 3, 1), (100, 3, 4), (100, 3, 4), (200, 1, 2), (200, 1, 2)])
    assert fold_leakage(table, None) == "1 recording(s) appear in more than one fold (first: fsID 100 (class 3) in folds 1,4)"


def test_one_recording_with_two_classes_in_two_folds_is_not_leakage_and_unknown_recordings_are_skipped():
    table = labelled([(100, 3, 1), (100, 5, 4), (pd.NA, 2, 1), (pd.NA, 2, 5)])
    assert fold_leakage(table, None) is None
    assert fold_leakage(table, pd.DataFrame({"slice_file_name": []})) is None


def test_only_the_first_five_spread_recordings_are_shown_but_all_are_counted():
    table = labelled([(recording, 0, fold) for recording in range(10, 17) for fold in (1, 2)])
    message = fold_leakage(table, None)
    assert message.startswith("7 recording(s) appear in more than one fold (first: fsID 10 (class 0) in folds 1,2; ")
    assert message.count("fsID") == 5 and "fsID 14 (class 0)" in message and "fsID 15" not in message


def test_test_clips_from_a_training_recording_are_named_with_their_train_folds():
    table = labelled([(100, 3, 1), (100, 3, 1), (200, 1, 2)])
    test = pd.DataFrame({"slice_file_name": ["100-3-0-5.wav", "100-4-0-1.wav", "300-3-0-1.wav", "custom.wav"]})
    assert fold_leakage(table, test) == ("1 test recording(s) also appear in the training folds "
                                         "(first: fsID 100 (class 3) (train folds 1))")
    both = labelled([(100, 3, 1), (100, 3, 2)])
    assert fold_leakage(both, test) == ("1 recording(s) appear in more than one fold (first: fsID 100 (class 3) in "
                                        "folds 1,2); 1 test recording(s) also appear in the training folds (first: "
                                        "fsID 100 (class 3) (train folds 1,2))")


def test_missing_cells_outside_the_recording_column_do_not_hide_leakage():
    table = labelled([(100, 3, 1), (100, 3, 4)]).assign(salience=[pd.NA, 1])
    assert fold_leakage(table, None).startswith("1 recording(s) appear in more than one fold")


def test_several_leaking_test_recordings_are_listed_with_a_semicolon():
    table = labelled([(100, 3, 1), (200, 1, 2)])
    test = pd.DataFrame({"slice_file_name": ["100-3-0-5.wav", "200-1-0-1.wav"]})
    assert fold_leakage(table, test) == ("2 test recording(s) also appear in the training folds (first: fsID 100 "
                                         "(class 3) (train folds 1); fsID 200 (class 1) (train folds 2))")


# ------------------------------------------------------------------------------- PCEN's constraints

def test_pcen_parameters_are_constrained_to_their_ranges():
    from core.model.pcen import DELTA_FLOOR, constrained


    def exact(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    alpha, delta, r = constrained(exact([-1.0, 0.5, 2.0]), exact([-3.0, 0.0, 2.0]), exact([-1.0, 0.5, 2.0]))
    torch.testing.assert_close(alpha, exact([0.01, 0.5, 0.99]), rtol=0, atol=1e-15)
    torch.testing.assert_close(delta, exact([3.0, 0.0, 2.0]) + 1e-6, rtol=0, atol=1e-15)  # |delta| + 1e-6
    torch.testing.assert_close(r, exact([0.01, 0.5, 1.0]), rtol=0, atol=1e-15)
    assert DELTA_FLOOR > 0


# -------------------------------------------------------------------------------------- blend maths

def test_geomean_rank_and_leave_one_out_against_numpy_by_hand():
    from core.blend import LOG_EPS, combine, member_space, rows_changed, weighted_mean

    rng = np.random.default_rng(0)
    members = [rng.random((5, 10)) * scale for scale in (1.0, 3.0, 0.5)]  # rows not normalised, unequal maxima
    members[0][0] = 1e-3
    members[0][0, 4] = 50.0
    weights = [0.5, 1.0, 2.0]
    logs = [np.log(m / m.sum(axis=1, keepdims=True) + LOG_EPS) for m in members]
    mean_log = sum(w * x for w, x in zip(weights, logs, strict=True)) / sum(weights)
    expected = np.exp(mean_log) / np.exp(mean_log).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(combine(members, weights, "geomean"), expected, rtol=1e-12)

    tied = np.array([[0.2, 0.8], [0.2, 0.8], [0.6, 0.4]])  # average ranks of ties: (1.5, 1.5, 3) in column 0
    np.testing.assert_allclose(member_space(tied, "rank"), [[0.25, 0.75], [0.25, 0.75], [1.0, 0.0]])
    np.testing.assert_array_equal(member_space(tied[:1], "rank"), [[0.0, 0.0]])

    spaces = [member_space(m, "geomean") for m in members[:2]]
    blended = combine(members[:2], weights[:2], "geomean").argmax(axis=1)
    alone = [m.argmax(axis=1) for m in members[:2]]
    assert rows_changed(spaces, weights[:2], "geomean", blended) == [int((alone[1] != blended).sum()),
                                                                     int((alone[0] != blended).sum())]
    with pytest.raises(ValueError, match="one weight per member"):
        weighted_mean(spaces, [1.0])


# ----------------------------------------------- the leakage guard for groups (per_class=False: ESC-50's src_file)

def test_per_recording_groups_leak_across_classes_and_into_the_test_split():
    table = labelled([(100, 3, 1), (100, 5, 4), (200, 1, 2), (200, 1, 2), (pd.NA, 2, 1), (pd.NA, 2, 3)])
    assert fold_leakage(table, None, per_class=False) == ("1 recording(s) appear in more than one fold (first: "
                                                          "recording '100' in folds 1,4)")
    assert fold_leakage(table, None) is None  # per class, 100's two classes each stay in their fold
    test = pd.DataFrame({"recording": pd.array([200, 300, pd.NA, 100], dtype="Int64")})
    assert fold_leakage(table.iloc[2:], test, per_class=False) == (
        "1 test recording(s) also appear in the training folds (first: recording '200')")
    assert fold_leakage(labelled([(100, 3, 1), (200, 1, 2)]), test, per_class=False) == (
        "2 test recording(s) also appear in the training folds (first: recording '100'; recording '200')")
    assert fold_leakage(labelled([(400, 3, 1)]), test, per_class=False) is None
