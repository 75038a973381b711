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
from core.solution_folder import SolutionFolder
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


# ------------------------------------------------------------------------------------- fine-tuning

TONES_A = {"low": 250.0, "mid": 700.0, "high": 1800.0, "top": 3000.0}  # the first set: four tones
TONES_B = {"x": 400.0, "y": 1100.0, "z": 2400.0}                      # a related set: three other tones


def learnable(name: str = "resnet34_pcen_sam_8fold"):
    """small() that learns the tone sets in a few epochs (no mixup, a higher peak learning rate)."""
    return small(name).derive(augment=dict(mixup_alpha=0.0), training=dict(lr=3e-3, schedule="cosine", seed=0))


def saved_model(path, recipe, seed: int = 0):
    """A freshly initialised model of `recipe` saved as one of our checkpoints (weights, recipe, solution)."""
    import torch

    from core.model.network import build_model
    from core.train import checkpoint

    torch.manual_seed(seed)
    model = build_model(recipe)
    checkpoint.save_best(path, recipe, 1, 1, {}, model)
    return model


def test_init_from_loads_frontend_and_backbone_and_refuses_another_architecture(tmp_path):
    import timm
    import torch

    from core.model.network import build_model
    from core.train.init_from import initialise

    four = learnable().derive(classes=tuple(TONES_A))
    source = saved_model(tmp_path / "four.pt", four)
    three = four.derive(classes=("x", "y", "z"))
    torch.manual_seed(1)
    model = build_model(three)
    report = initialise(model, three, tmp_path / "four.pt")
    assert report.new == ["classifier.weight", "classifier.bias"]
    assert report.skipped == {"classifier.weight": "classifier of other classes",
                              "classifier.bias": "classifier of other classes"}
    assert len(report.loaded) == len(model.state_dict()) - 2
    for name in report.loaded:
        assert torch.equal(model.state_dict()[name], source.state_dict()[name]), name
    assert "loaded" in report.describe() and "classifier of other classes" in report.describe()

    same = build_model(four)  # the same classes: the classifier is loaded too
    assert initialise(same, four, tmp_path / "four.pt").new == []
    renamed = four.derive(classes=("a", "b", "c", "d"))  # as many classes, other ones: its rows would mean others
    torch.manual_seed(2)
    fresh_head = build_model(renamed)
    initial = fresh_head.classifier.weight.detach().clone()
    assert initialise(fresh_head, renamed, tmp_path / "four.pt").new == ["classifier.weight", "classifier.bias"]
    assert torch.equal(fresh_head.classifier.weight, initial)

    wide = four.derive(backbone=dict(arch="resnet18"))
    saved_model(tmp_path / "resnet18.pt", wide)
    with pytest.raises(UserError, match="a resnet18 model .* builds a test_resnet; fine-tuning needs the same"):
        initialise(build_model(three), three, tmp_path / "resnet18.pt")

    timm_body = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=0, global_pool="")
    torch.save(timm_body.state_dict(), tmp_path / "timm.pt")  # a plain state dict of the same timm model
    fresh = build_model(three)
    report = initialise(fresh, three, tmp_path / "timm.pt")
    body = [name for name in fresh.state_dict() if name.startswith("backbone.body.")]
    assert set(report.loaded) == set(body)
    assert torch.equal(fresh.state_dict()[body[0]], timm_body.state_dict()[body[0].removeprefix("backbone.body.")])
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match="another architecture"):
        initialise(build_model(three), three, tmp_path / "other.pt")


def test_freeze_backbone_epochs_trains_only_the_head(tmp_path, one_torch_thread, capsys):
    import torch

    from core.model import checkpoint

    recipe = learnable()
    data = write_csv_set(tmp_path / "b", TONES_B, clips_per_fold=2, folds=3, test_clips=1)
    start = saved_model(tmp_path / "start.pt", recipe.derive(classes=tuple(TONES_A)))
    out = tmp_path / "tuned"
    train_solution(recipe, load_source(data), options(out, tmp_path, folds=(1,), init_from=tmp_path / "start.pt",
                                                      freeze_backbone_epochs=1))
    printed = " ".join(capsys.readouterr().err.split())  # the fold log says what was loaded, skipped and new
    assert f"fold 1: --init-from {tmp_path / 'start.pt'}: loaded " in printed
    assert "skipped 2 (2 classifier of other classes: classifier 2 {classifier.weight, classifier.bias}); new 2" in printed
    trained = checkpoint.load(out / "best_model_fold1.pt")
    identity = json.loads((out / "result_fold1.json").read_text())["identity"]
    assert identity["freeze_backbone_epochs"] == 1 and identity["init_from"].startswith("start.pt sha256 ")
    frozen = [name for name in start.state_dict() if name.startswith(("audio_input.", "backbone."))]
    for name in frozen:  # no step reached the frontend or backbone, nor did BatchNorm statistics move
        assert torch.equal(trained["model"][name], start.state_dict()[name]), name
    assert any(name.endswith("running_mean") for name in frozen)
    assert trained["model"]["classifier.weight"].shape == (3, start.classifier.in_features)


@pytest.mark.slow  # ~24 s on this 2-core CPU: a pre-training of 5 epochs, then two one-epoch runs
def test_fine_tuning_beats_training_from_scratch_after_one_epoch(tmp_path, one_torch_thread):
    """One epoch on set B from a model trained on set A beats one epoch from scratch (measured over seeds
    0-2 before relying on it: validation accuracy 0.78/0.67/0.83 against 0.33, the chance level, each time;
    test accuracy 0.92/0.67/0.75 against 0.33; first-epoch validation loss 0.63/0.73/0.51 against 1.16/1.18/1.82)."""
    recipe = learnable()
    first = write_csv_set(tmp_path / "a", TONES_A, clips_per_fold=6, folds=4, seed=10)
    second = write_csv_set(tmp_path / "b", TONES_B, clips_per_fold=6, folds=3, test_clips=4, seed=20)
    train_solution(recipe, load_source(first), options(tmp_path / "pre", tmp_path, folds=(1,), epochs=5,
                                                       protocol="kfold"))
    scratch = train_solution(recipe, load_source(second), options(tmp_path / "scratch", tmp_path, folds=(1,)))
    tuned = train_solution(recipe, load_source(second), options(tmp_path / "tuned", tmp_path, folds=(1,),
                                                                init_from=tmp_path / "pre" / "best_model_fold1.pt"))
    assert tuned.folds[1]["accuracy"] >= scratch.folds[1]["accuracy"] + 0.25
    assert tuned.test["accuracy"] > scratch.test["accuracy"]
    losses = [pd.read_csv(out / "history_fold1.csv")["val_loss"].iloc[0] for out in (tmp_path / "scratch",
                                                                                     tmp_path / "tuned")]
    assert losses[1] < losses[0]


def test_clip_seconds_is_part_of_the_run_identity(tmp_path, one_torch_thread):
    data = write_csv_set(tmp_path / "data", {"a": 300.0, "b": 900.0}, clips_per_fold=2, folds=3)
    out = tmp_path / "out"
    one_second = small()
    train_solution(one_second, load_source(data), options(out, tmp_path, folds=(1,), protocol="kfold"))
    identity = json.loads((out / "result_fold1.json").read_text())["identity"]
    assert identity["frontend.clip_seconds"] == 1.0 and identity["classes"] == ["a", "b"]
    longer = one_second.derive(frontend=dict(clip_seconds=1.5))  # what train --clip-seconds 1.5 derives
    with pytest.raises(UserError, match=r"frontend.clip_seconds: 1.5 here, 1.0 in result_fold1.json \(pass "
                                        r"--clip-seconds 1.0\)"):
        train_solution(longer, load_source(data), options(out, tmp_path, folds=(1,), protocol="kfold"))


def folder_set(root):
    """Class folders of tones, two clips per recording (file names <recording>-<clip>.wav)."""
    rng = np.random.default_rng(0)
    for name, frequency in (("hum", 300.0), ("whistle", 2000.0)):
        (root / name).mkdir(parents=True)
        for clip in range(12):
            soundfile.write(root / name / f"{100 + clip // 2 + (50 if name == 'hum' else 0)}-{clip % 2}.wav",
                            tone_clip(frequency, rng), RATE)
    return root


def run_train_cli(argv: list[str]) -> int:
    """`python -m core train ...` in this process (so that monkeypatches reach it); the exit code."""
    return run_cli_main(["train", *argv])


def run_cli_main(argv: list[str]) -> int:
    """`python -m core ...` in this process; the exit code."""
    import sys

    from core.cli import main

    old_argv, sys.argv = sys.argv, ["python -m core", *argv]
    try:
        main()
    except SystemExit as exited:
        return exited.code
    finally:
        sys.argv = old_argv
    return 0


def test_train_passes_n_folds_and_group_pattern_to_the_fold_assignment(tmp_path, monkeypatch, capsys):
    """Through the command line: the data reaches train_solution with --n-folds folds and the pattern's groups,
    assigned but not yet written (train_solution stores them once its own checks pass)."""
    import core.train.solution

    data, out, seen = folder_set(tmp_path / "folders"), tmp_path / "out", []

    def record(recipe, source, options):
        seen.append(source)
        raise UserError("stop here")
    monkeypatch.setattr(core.train.solution, "train_solution", record)
    assert run_train_cli(["resnet34_pcen_sam_8fold", "--data", str(data), "--out", str(out), "--protocol", "kfold",
                          "--n-folds", "3", "--group-pattern", r"^(\d+)-", "--no-progress"]) != 0
    folds = seen[0].unstored_folds
    assert sorted(folds["fold"].unique()) == [1, 2, 3]
    assert (folds["group"] == folds["file"].str.extract(r"/(\d+)-", expand=False)).all()  # the pattern's groups
    assert folds.groupby("group")["fold"].nunique().max() == 1                             # none split
    assert not (out / "folds.csv").exists()
    assert ("class-folder data: 2 classes, folds 1-3 (assigned), no salience; native rates 8000 Hz: 24 clips -> "
            "the recipe's 32000 Hz, 4 s clips") in capsys.readouterr().err  # what the data is, from the data


@pytest.mark.parametrize("argv, refusal", [
    (["resnet34_pcen_salience_fusion_attention", "--protocol", "kfold"], "no salience annotation"),
    (["resnet34_pcen_sam_8fold", "--protocol", "kfold", "--folds", "7"], "--folds 7: fold(s) 7 outside"),
    (["resnet34_pcen_sam_8fold", "--protocol", "kaggle"], "defines none; use --protocol kfold"),
])
def test_a_refused_train_on_data_without_folds_writes_nothing(tmp_path, capsys, argv, refusal):
    """A usage error writes nothing: not folds.csv, not even the output folder (folds 1-5 assigned, none stored)."""
    data, out = folder_set(tmp_path / "folders"), tmp_path / "out"
    subs = tmp_path / "subs"
    assert run_train_cli([*argv, "--data", str(data), "--out", str(out), "--submissions", str(subs),
                          "--no-progress"]) == 2
    assert refusal in capsys.readouterr().err
    assert not out.exists() and not subs.exists()


def test_train_stores_the_folds_it_assigned_and_a_later_run_reads_them_back(tmp_path, one_torch_thread):
    data, out = folder_set(tmp_path / "folders"), tmp_path / "out"
    folds_file = SolutionFolder(out).assigned_folds
    source = load_source(data, n_folds=3, group_pattern=r"^(\d+)-", folds_file=folds_file, store_folds=False)
    assert not folds_file.exists()
    train_solution(small(), source, options(out, tmp_path, folds=(1,), protocol="kfold"))
    stored = pd.read_csv(folds_file, dtype={"group": str})
    pd.testing.assert_frame_equal(stored, source.unstored_folds.reset_index(drop=True), check_dtype=False)
    again = load_source(data, group_pattern=r"^(\d+)-", folds_file=folds_file, store_folds=False)
    assert again.unstored_folds is None  # read back, not assigned afresh
    assert again.train["fold"].tolist() == source.train["fold"].tolist()
    other = load_source(data, n_folds=4, group_pattern=r"^(\d+)-", store_folds=False)  # another assignment
    with pytest.raises(UserError, match="holds other folds than this run's assignment"):
        train_solution(small(), other, options(out, tmp_path, folds=(1,), protocol="kfold"))


def test_predict_on_data_of_other_classes_writes_the_models_columns_and_does_not_score(tmp_path, capsys):
    """The data's labels index its classes, the predictions the models': predict says so instead of a number."""
    from conftest import save_fold_checkpoints

    name = "resnet34_pcen_sam_8fold"
    save_fold_checkpoints(tmp_path / "solutions", name, recipe=small(name))  # UrbanSound8K's ten classes
    data = write_csv_set(tmp_path / "data", {"beep": 300.0, "hum": 900.0, "whistle": 2000.0}, clips_per_fold=1,
                         folds=2, test_clips=1)
    out, submission = tmp_path / "pred", tmp_path / "sub.csv"
    code = run_cli_main(["predict", name, "--data", str(data), "--solutions", str(tmp_path / "solutions"),
                         "--out", str(out), "--submission", str(submission), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "not scored: the data's classes (beep, hum, whistle) are not the models' (air_conditioner" in err
    assert "test accuracy" not in err
    assert list(pd.read_csv(out / "best_model_fold1.csv").columns) == ["ID", "TARGET", *[str(k) for k in range(10)]]


def test_inference_finds_a_solution_trained_only_under_kfold(tmp_path):
    """ESC-50 or class folders train under --protocol kfold (solutions/<name>/kfold/): classify, export and
    predict find those fold models; the kaggle folder's come first, and two held-out folders are refused."""
    from conftest import save_fold_checkpoints

    from core.infer.predictors import torch_predictor

    name, names = "resnet34_pcen_sam_8fold", ("beep", "hum", "whistle")
    solutions = tmp_path / "solutions"
    save_fold_checkpoints(solutions / name, "kfold", folds=(1, 2), recipe=small(name).derive(classes=names))
    spec = torch_predictor([name], [1.0], "mean", solutions, "cpu", "fp32")
    assert spec.class_names == names and spec.fold_keys == (1, 2)
    save_fold_checkpoints(solutions / name, "us8k-10fold", folds=(3,), recipe=small(name))
    with pytest.raises(UserError, match="fold models under several protocols"):
        torch_predictor([name], [1.0], "mean", solutions, "cpu", "fp32")
    save_fold_checkpoints(solutions, name, folds=(4,), recipe=small(name))  # the kaggle folder: as before
    spec = torch_predictor([name], [1.0], "mean", solutions, "cpu", "fp32")
    assert spec.fold_keys == (4,) and spec.class_names[0] == "air_conditioner"
