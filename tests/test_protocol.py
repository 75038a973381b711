"""The us8k-10fold protocol: fold roles, the best epoch chosen on the validation fold only, outputs,
curves and TensorBoard scalars; the fold-leakage guard on both layouts."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, tiny

from core import PROB_COLUMNS, registry
from core.data.metadata import FoldLeakageError, fold_leakage, load_source
from core.errors import UserError
from core.folds import ALL_FOLDS, TRAIN_FOLDS, fold_roles
from core.train.options import TrainOptions
from core.train.solution import train_solution


def test_fold_roles_of_the_10_fold_protocol():
    tested = []
    for k in ALL_FOLDS:
        roles = fold_roles("us8k-10fold", k)
        assert roles.test == k and roles.validation == (1 if k == 10 else k + 1)
        parts = [set(roles.train), {roles.validation}, {roles.test}]
        assert set().union(*parts) == set(ALL_FOLDS) and sum(map(len, parts)) == 10  # disjoint, all ten
        assert len(roles.train) == 8
        tested.append(roles.test)
    assert sorted(tested) == list(ALL_FOLDS)  # each fold tested exactly once


def test_fold_roles_of_the_kaggle_protocol():
    for k in TRAIN_FOLDS:
        roles = fold_roles("kaggle", k)
        assert roles.validation == k and roles.test is None and set(roles.train) == set(TRAIN_FOLDS) - {k}
    with pytest.raises(UserError, match="folds 1-8"):
        fold_roles("kaggle", 9)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    from core.demo.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("official") / "data"
    write_synthetic_dataset(root, seed=3, clips_per_class_fold=1, test_clips_per_class=2, layout="official")
    return root


def corrupted_copy(root, target, fold):
    """A copy of an official-layout set whose fold `fold` has every label shifted to another class."""
    shutil.copytree(root, target)
    csv = target / "metadata" / "UrbanSound8K.csv"
    table = pd.read_csv(csv)
    rows = table["fold"] == fold
    table.loc[rows, "classID"] = (table.loc[rows, "classID"] + 1) % 10
    table.to_csv(csv, index=False)
    return target


def ten_fold_options(out, tmp_path, **extra):
    return TrainOptions(out=out, submissions=tmp_path / "subs", folds=(3,), epochs=3, device="cpu", precision="fp32",
                        progress=False, max_clips_per_fold=4, protocol="us8k-10fold", **extra)


# slow: trains every fold of the ten-fold protocol twice; .ci/run runs it
@pytest.mark.slow
def test_the_test_fold_never_chooses_the_epoch(official, tmp_path):
    from core.plots import read_plot_data

    recipe = tiny("resnet34_pcen_sam_8fold").derive(training=dict(batch_size=8))  # the protocol, not the model
    clean_out, corrupt_out = tmp_path / "clean", tmp_path / "corrupt"
    clean = train_solution(recipe, load_source(official), ten_fold_options(clean_out, tmp_path,
                                                                           tensorboard=tmp_path / "tb"))
    corrupt_data = corrupted_copy(official, tmp_path / "corrupt_data", fold=3)
    corrupt = train_solution(recipe, load_source(corrupt_data), ten_fold_options(corrupt_out, tmp_path))

    # Fold 3's labels changed: the training and the choice (validation fold 4) did not.
    history = [pd.read_csv(out / "history_fold3.csv") for out in (clean_out, corrupt_out)]
    columns = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_composite", "best"]
    pd.testing.assert_frame_equal(history[0][columns], history[1][columns])
    assert clean.folds[3]["best_epoch"] == corrupt.folds[3]["best_epoch"]
    tests = [pd.read_csv(out / "test_fold3.csv") for out in (clean_out, corrupt_out)]
    np.testing.assert_allclose(tests[0][PROB_COLUMNS], tests[1][PROB_COLUMNS], atol=1e-6)  # same predictions ...
    assert (tests[0]["classID"] != tests[1]["classID"]).all()                              # ... other labels
    for run, table in zip((clean, corrupt), tests, strict=True):  # each scored against its own labels
        assert run.folds[3]["test"]["accuracy"] == pytest.approx(np.mean(table["classID"] == table["TARGET"]))

    result = json.loads((clean_out / "result_fold3.json").read_text())
    assert (result["protocol"], result["validation_fold"], result["test_fold"]) == ("us8k-10fold", 4, 3)
    assert list(tests[0].columns) == ["slice_file_name", "fold", "classID", "TARGET", *PROB_COLUMNS]
    assert (tests[0]["fold"] == 3).all() and len(tests[0]) == 4
    summary = json.loads((clean_out / "summary.json").read_text())
    assert summary["folds_done"] == 1 and summary["folds_total"] == 10 and summary["fold_leakage"] is None
    assert summary["mean"]["composite"] == pytest.approx(result["test"]["composite"]) and summary["std"]["composite"] == 0
    assert (clean_out / "test_confusion.png").stat().st_size > 1000
    assert not (clean_out / "oof_fold3.csv").exists() and not list(clean_out.glob("best_model_fold*.csv"))

    drawn = read_plot_data(clean_out / "curves_fold3.png")["folds"]["3"]
    assert drawn["epoch"] == [1, 2, 3] and len(drawn["val_composite"]) == 3 and len(drawn["lr"]) == 3
    assert drawn["chosen_epoch"] == result["best_epoch"]
    assert read_plot_data(clean_out / "curves.png")["folds"].keys() == {"3"}
    from PIL import Image

    with Image.open(clean_out / "curves_fold3.png") as image:
        assert image.size[0] > 500 and image.size[1] > 200

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / recipe.name / "us8k-10fold" / "fold3"))
    events.Reload()
    assert [event.step for event in events.Scalars("val_composite")] == [1, 2, 3]
    assert [event.value for event in events.Scalars("val_accuracy")] == pytest.approx(history[0]["val_accuracy"])


def test_ten_fold_summary_mean_and_std_by_hand(tmp_path):
    from core.train.solution import mean_std

    mean, std = mean_std([0.8, 0.9, 0.7])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)  # sample std: sqrt((0.01 + 0.01) / 2)
    assert mean_std([0.5]) == (0.5, 0.0)


def test_kaggle_layout_refuses_the_10_fold_protocol(tiny_data, tmp_path):
    recipe = registry.get("resnet34_pcen_sam_8fold")
    with pytest.raises(UserError, match="official UrbanSound8K layout"):
        train_solution(recipe, load_source(tiny_data), ten_fold_options(tmp_path / "o", tmp_path))


def test_the_real_metadata_passes_the_leakage_guard():
    csv = SHARED / "data" / "UrbanSound8K.csv"
    if not csv.exists():
        pytest.skip("../shared/data/UrbanSound8K.csv is not beside this checkout")
    table = pd.read_csv(csv).rename(columns={"fsID": "recording"})
    assert fold_leakage(table, None) is None
    assert fold_leakage(table[table["fold"] <= 8], table[table["fold"] >= 9]) is None
    spread = table.copy()  # one recording's clips of one class split over two folds
    recording = spread.groupby("recording").size().idxmax()
    first = spread.index[spread["recording"] == recording][0]
    spread.loc[first, "fold"] = spread.loc[first, "fold"] % 10 + 1
    assert fold_leakage(spread, None).startswith("1 recording(s) appear in more than one fold")


def test_leakage_guard_official_layout(official, tmp_path):
    root = tmp_path / "leaky"
    shutil.copytree(official, root)
    csv = root / "metadata" / "UrbanSound8K.csv"
    table = pd.read_csv(csv)
    one, two = table.index[table["fold"] == 1][0], table.index[table["fold"] == 6][0]
    table.loc[two, ["fsID", "classID"]] = table.loc[one, ["fsID", "classID"]].to_numpy()
    table.to_csv(csv, index=False)
    with pytest.raises(FoldLeakageError) as refused:
        load_source(root)
    message = str(refused.value)
    assert f"1 recording(s) appear in more than one fold (first: fsID {table.loc[one, 'fsID']}" in message
    assert "folds 1,6" in message and "--allow-fold-leakage" in message
    allowed = load_source(root, allow_fold_leakage=True)
    assert allowed.fold_leakage.startswith("1 recording(s)")


def test_leakage_guard_kaggle_test_names(tiny_data, tmp_path):
    root = tmp_path / "leaky"
    shutil.copytree(tiny_data, root)
    train = pd.read_csv(root / "metadata" / "kaggle_train.csv")
    test_csv = root / "metadata" / "kaggle_test.csv"
    test = pd.read_csv(test_csv)
    source = train.iloc[0]
    renamed = f"{source['fsID']}-{source['classID']}-9-9.wav"
    (root / "audio" / "test" / test.loc[0, "slice_file_name"]).rename(root / "audio" / "test" / renamed)
    test.loc[0, "slice_file_name"] = renamed
    test.to_csv(test_csv, index=False)
    with pytest.raises(FoldLeakageError, match=r"1 test recording\(s\) also appear in the training folds"):
        load_source(root)
    assert load_source(tiny_data).fold_leakage is None
