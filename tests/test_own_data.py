"""Your own data downstream of the data layer: the head, the prediction columns and inference take the
data set's classes; --protocol kfold on any data set's folds; a fusion recipe needs salience."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile
from conftest import tiny

from core.data.metadata import load_source
from core.errors import UserError
from core.folds import fold_roles
from core.predictions import probability_columns
from core.train.options import TrainOptions
from core.train.solution import train_solution

RATE = 8000


def tone_clip(frequency: float, rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    """A tone at `frequency` (slightly detuned, random phase) in a little noise: an easy class."""
    t = np.arange(int(RATE * seconds)) / RATE
    detune = frequency * (1 + rng.uniform(-0.02, 0.02))
    signal = 0.3 * np.sin(2 * np.pi * detune * t + rng.uniform(0, 2 * np.pi)) + 0.02 * rng.standard_normal(len(t))
    return signal.astype(np.float32)


def write_csv_set(root, classes: dict[str, float], clips_per_fold: int, folds: int, test_clips: int = 0,
                  seed: int = 0):
    """A generic-CSV data set (metadata.csv: file,label,fold) of tones, one frequency per class."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    rows = []
    for fold in [*range(1, folds + 1), *(["test"] if test_clips else [])]:
        count = clips_per_fold if fold != "test" else test_clips
        for name, frequency in classes.items():
            for clip in range(count):
                file = f"audio/{name}-{fold}-{clip}.wav"
                soundfile.write(root / file, tone_clip(frequency, rng), RATE)
                rows.append({"file": file, "label": name, "fold": fold})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def small(name: str = "resnet34_pcen_sam_8fold"):
    """The tiny recipe (conftest) on 1 s clips: the code paths, not the model, are under test."""
    return tiny(name).derive(frontend=dict(clip_seconds=1.0), training=dict(batch_size=8))


def options(out, tmp_path, **extra) -> TrainOptions:
    return TrainOptions(**{"out": out, "submissions": tmp_path / "subs", "epochs": 1, "device": "cpu",
                           "precision": "fp32", "progress": False, **extra})


def test_three_classes_train_a_three_way_head_and_name_the_probability_columns(tmp_path, one_torch_thread):
    from core.infer.classify import classify_files, file_frame
    from core.infer.predictors import torch_predictor
    from core.model import checkpoint

    names = ("whistle", "hum", "beep")  # natural order of the labels: beep, hum, whistle
    data = write_csv_set(tmp_path / "data", dict(zip(names, (300.0, 900.0, 2000.0), strict=True)), clips_per_fold=2,
                         folds=3, test_clips=1)
    source = load_source(data)
    assert source.class_names == ("beep", "hum", "whistle")
    recipe = small()
    out = tmp_path / "solutions" / recipe.name
    summary = train_solution(recipe, source, options(out, tmp_path, folds=(1,)))

    saved = checkpoint.load(out / "best_model_fold1.pt")
    assert saved["model"]["classifier.weight"].shape[0] == 3
    assert tuple(saved["recipe"]["classes"]) == source.class_names
    columns = list(source.class_names)
    oof = pd.read_csv(out / "oof_fold1.csv")
    assert list(oof.columns) == ["slice_file_name", "fold", "classID", "TARGET", *columns] and len(oof) == 6
    np.testing.assert_allclose(oof[columns].sum(axis=1), 1.0, atol=1e-5)
    assert (oof["TARGET"] == oof[columns].to_numpy().argmax(axis=1)).all()
    test = pd.read_csv(out / "best_model_fold1.csv")
    assert list(test.columns) == ["ID", "TARGET", *columns] and len(test) == 3
    assert summary.test is not None  # the CSV's test rows are labelled: scored like the Kaggle layout's

    spec = torch_predictor([recipe.name], [1.0], "mean", tmp_path / "solutions", "cpu", "fp32")
    assert spec.class_names == source.class_names  # inference reads the classes from the checkpoints
    table = file_frame(classify_files([data / "audio" / "beep-test-0.wav"], spec))
    assert list(table.columns) == ["file", "duration_s", "TARGET", *columns]
    assert table["TARGET"].iloc[0] in columns


def test_a_fusion_solution_on_data_without_salience_is_refused_with_the_reason(tmp_path):
    data = write_csv_set(tmp_path / "data", {"a": 300.0, "b": 900.0}, clips_per_fold=1, folds=3)
    fusion = small("resnet34_pcen_salience_fusion_attention")
    with pytest.raises(UserError, match="no salience annotation") as refused:
        train_solution(fusion, load_source(data), options(tmp_path / "out", tmp_path, protocol="kfold"))
    message = str(refused.value)
    assert "resnet34_pcen_sam_8fold" in message and "resnet34_pcen_salience_fusion_attention" not in message.split(":")[-1]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # refused at the door


# ------------------------------------------------------------------------------------- --protocol kfold

@pytest.fixture(scope="module")
def esc50(tmp_path_factory):
    from core.demo.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("esc50") / "data"
    write_synthetic_dataset(root, seed=4, clips_per_class_fold=1, layout="esc50")
    return root


def test_kfold_roles_on_esc50_test_each_fold_once(esc50):
    source = load_source(esc50)
    assert source.folds == (1, 2, 3, 4, 5)
    tested = []
    for k in source.folds:
        roles = fold_roles("kfold", k, source.folds)
        assert roles.test == k and roles.validation == k % 5 + 1
        assert sorted([*roles.train, roles.validation, roles.test]) == [1, 2, 3, 4, 5]  # disjoint, all five
        tested.append(roles.test)
    assert sorted(tested) == [1, 2, 3, 4, 5]
    with pytest.raises(UserError, match="folds 1-5"):
        fold_roles("kfold", 6, source.folds)


def test_the_kaggle_protocol_is_refused_where_no_test_split_exists(esc50, tmp_path):
    with pytest.raises(UserError, match="defines none; use --protocol kfold"):
        train_solution(small(), load_source(esc50), options(tmp_path / "o", tmp_path))


def relabelled_copy(root, target, fold):
    """A copy of an ESC-50-layout set whose fold `fold` has every clip labelled as the next class."""
    shutil.copytree(root, target)
    csv = target / "meta" / "esc50.csv"
    table = pd.read_csv(csv)
    names = dict(zip(table["target"], table["category"], strict=False))
    rows = table["fold"] == fold
    table.loc[rows, "target"] = (table.loc[rows, "target"] + 1) % len(names)
    table.loc[rows, "category"] = table.loc[rows, "target"].map(names)
    table.to_csv(csv, index=False)
    return target


def test_kfold_the_test_fold_never_picks_the_epoch(esc50, tmp_path, one_torch_thread):
    recipe = small()
    runs = {}
    for name, data in (("clean", esc50), ("relabelled", relabelled_copy(esc50, tmp_path / "relabelled", fold=2))):
        out = tmp_path / name
        runs[name] = (out, train_solution(recipe, load_source(data), options(out, tmp_path, folds=(2,), epochs=2,
                                                                              protocol="kfold", max_clips_per_fold=5)))
    (clean_out, clean), (other_out, other) = runs["clean"], runs["relabelled"]
    assert clean.folds[2]["best_epoch"] == other.folds[2]["best_epoch"]
    columns = ["epoch", "train_loss", "val_loss", "val_accuracy", "best"]
    pd.testing.assert_frame_equal(pd.read_csv(clean_out / "history_fold2.csv")[columns],
                                  pd.read_csv(other_out / "history_fold2.csv")[columns])
    tests = [pd.read_csv(out / "test_fold2.csv") for out in (clean_out, other_out)]
    classes = probability_columns(load_source(esc50).class_names)  # synth's ESC-50 set has UrbanSound8K's classes
    np.testing.assert_allclose(tests[0][classes], tests[1][classes], atol=1e-6)  # same predictions, other labels
    assert (tests[0]["classID"] != tests[1]["classID"]).all() and (tests[0]["fold"] == 2).all()
    result = json.loads((clean_out / "result_fold2.json").read_text())
    assert (result["protocol"], result["validation_fold"], result["test_fold"]) == ("kfold", 3, 2)
    summary = json.loads((clean_out / "summary.json").read_text())
    assert (summary["protocol"], summary["folds_done"], summary["folds_total"]) == ("kfold", 1, 5)
    assert clean.folds_total == 5 and clean.cv_mean["accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert (clean_out / "test_confusion.png").is_file() and (clean_out / "curves_fold2.png").is_file()
