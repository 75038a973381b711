"""Run identity and merges: what a finished fold must share with a run to be reused or merged, by content.

Folds are trained in-process on the tiny synthetic set with a small model (conftest.tiny), one
epoch and one clip per fold: the same fold loop, a fraction of the CPU time.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny

from core.data.metadata import load_source
from core.errors import UserError
from core.solution_folder import SolutionFolder
from core.train.data import prepare_data
from core.train.fold import fold_identity
from core.train.options import TrainOptions
from core.train.run_identity import RunIdentity, check_identity
from core.train.solution import train_solution

SOLUTION = "resnet34_pcen_sam_8fold"


def recipe():
    return tiny(SOLUTION).derive(training=dict(batch_size=8))


def options_for(out: Path, folds: tuple[int, ...], **changes) -> TrainOptions:
    base = TrainOptions(out=out, submissions=out.parent / "subs", folds=folds, epochs=1, device="cpu",
                        precision="fp32", progress=False, max_clips_per_fold=1)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def two_paths(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny data set mounted at two paths (two machines' views of the same data)."""
    root = tmp_path_factory.mktemp("mounts")
    return shutil.copytree(tiny_data, root / "a" / "data"), shutil.copytree(tiny_data, root / "b" / "elsewhere")


@pytest.fixture(scope="module")
def merged(two_paths, tmp_path_factory) -> Path:
    """One output folder: fold 1 trained from the first path, fold 2 from the second."""
    out = tmp_path_factory.mktemp("merged") / "out"
    for fold, data in zip((1, 2), two_paths, strict=True):
        train_solution(recipe(), load_source(data), options_for(out, (fold,)))
    return out


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return shutil.copytree(folder, tmp_path / "out")


def test_folds_trained_from_two_data_paths_merge_into_one_summary(merged):
    summary = json.loads((merged / "summary.json").read_text())
    assert set(summary["folds"]) == {"1", "2"}
    identities = [summary["folds"][k]["identity"] for k in ("1", "2")]
    assert {**identities[0], "fold": 0} == {**identities[1], "fold": 0}
    assert "/a/data" not in json.dumps(identities) and "elsewhere" not in json.dumps(identities)


def test_identity_is_the_same_from_two_folders_and_two_data_paths(two_paths, tmp_path):
    identities = []
    for index, data in enumerate(two_paths):
        options = options_for(tmp_path / f"out{index}", (3,))
        prepared = prepare_data(recipe(), load_source(data), options)
        identities.append(fold_identity(recipe(), prepared, 3, options))
    assert identities[0] == identities[1]
    assert identities[0].fields["precision"] == "fp32" and identities[0].fields["fold"] == 3
    assert "summary" not in json.dumps(sorted(identities[0].fields))


def test_identity_changes_with_the_rows_used(tiny_data, tmp_path):
    one, two = (prepare_data(recipe(), load_source(tiny_data), options_for(tmp_path, (1,), max_clips_per_fold=n))
                for n in (1, 2))
    first = fold_identity(recipe(), one, 1, options_for(tmp_path, (1,)))
    second = fold_identity(recipe(), two, 1, options_for(tmp_path, (1,)))
    assert [name for name, _, _ in first.differences(second.fields)] == ["data"]


def test_a_docstring_or_lineage_edit_keeps_a_finished_fold(merged, two_paths, tmp_path):
    out = copy_of(merged, tmp_path)
    written = (out / "best_model_fold1.pt").stat().st_mtime_ns
    edited = recipe().derive(summary="a reworded docstring", parent="another_parent", demo=dict(epochs=3))
    train_solution(edited, load_source(two_paths[0]), options_for(out, (1,)))
    assert (out / "best_model_fold1.pt").stat().st_mtime_ns == written


def test_an_lr_change_refuses_a_finished_fold_naming_lr_with_both_values(merged, two_paths, tmp_path):
    out = copy_of(merged, tmp_path)
    changed = recipe().derive(training=dict(lr=2e-3))
    with pytest.raises(UserError) as refused:
        train_solution(changed, load_source(two_paths[0]), options_for(out, (1,)))
    message = str(refused.value)
    assert "training.lr: 0.002 here, 0.001 in result_fold1.json (pass --lr 0.001)" in message
    assert "fold 1" in message and len(message.splitlines()) == 1


def test_every_differing_field_is_named(merged, two_paths, tmp_path):
    out = copy_of(merged, tmp_path)
    with pytest.raises(UserError) as refused:
        train_solution(recipe().derive(training=dict(lr=2e-3)), load_source(two_paths[0]),
                       options_for(out, (1,), seed=7))
    assert "training.lr: 0.002 here" in str(refused.value) and "seed: 7 here, 42 in" in str(refused.value)


def test_a_result_file_without_identity_is_refused_clearly(merged, two_paths, tmp_path):
    out = copy_of(merged, tmp_path)
    result = json.loads((out / "result_fold1.json").read_text())
    del result["identity"]
    (out / "result_fold1.json").write_text(json.dumps(result))
    with pytest.raises(UserError, match="has no run identity"):
        train_solution(recipe(), load_source(two_paths[0]), options_for(out, (1,)))


def test_shuffled_test_rows_give_the_identical_submission(merged, two_paths, tmp_path):
    out = copy_of(merged, tmp_path)
    options = options_for(out, (2,))
    train_solution(recipe(), load_source(two_paths[1]), options)
    before = (options.submissions / f"{recipe().name}.csv").read_text()
    path = SolutionFolder(out).best_predictions(2)
    shuffled = pd.read_csv(path).sample(frac=1.0, random_state=3)
    assert list(shuffled["ID"]) != sorted(shuffled["ID"])
    shuffled.to_csv(path, index=False)
    train_solution(recipe(), load_source(two_paths[1]), options)
    assert (options.submissions / f"{recipe().name}.csv").read_text() == before


def test_a_fold_missing_one_id_is_refused_by_name(merged, two_paths, tmp_path):
    out = copy_of(merged, tmp_path)
    path = SolutionFolder(out).best_predictions(1)
    frame = pd.read_csv(path)
    dropped = frame["ID"].iloc[4]
    frame.drop(index=4).to_csv(path, index=False)
    with pytest.raises(UserError) as refused:  # fold 1 was not trained by this run: checked all the same
        train_solution(recipe(), load_source(two_paths[1]), options_for(out, (2,)))
    message = str(refused.value)
    assert message.startswith("fold 1: ") and f"1 missing ID(s) ({dropped})" in message


def test_a_precision_mismatch_says_which_precision_to_pin():
    here = RunIdentity({"fold": 3, "precision": "bf16", "seed": 42})
    with pytest.raises(UserError) as refused:
        check_identity(here, {"fold": 3, "precision": "fp16", "seed": 42}, "/shared/out/last_fold3.pt", 3,
                       "delete /shared/out/last_fold3.pt to train fold 3 again")
    message = str(refused.value)
    assert "precision: bf16 here, fp16 in last_fold3.pt (pass --precision fp16)" in message
    assert "seed" not in message and message.endswith("train fold 3 again.")


def test_ten_fold_test_rows_are_aligned_on_slice_file_name_and_odd_clips_are_named(tmp_path):
    import numpy as np

    from core import CLASS_NAMES, PROB_COLUMNS
    from core.train.solution import aligned_probabilities

    folder = SolutionFolder(tmp_path)
    names = pd.Series(["7061-6-0-0.wav", "100-3-0-5.wav", "24-1-0-2.wav"])
    probs = np.eye(10)[[4, 0, 9]]
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "slice_file_name", names)
    frame.iloc[[2, 0, 1]].to_csv(folder.test(4), index=False)  # another row order
    np.testing.assert_array_equal(aligned_probabilities(folder, folder.test(4), 4, "slice_file_name", names, CLASS_NAMES), probs)
    odd = pd.concat([frame.iloc[[0, 0]], frame.iloc[[1]].assign(slice_file_name="1-1-0-0.wav")])
    odd.to_csv(folder.test(4), index=False)
    with pytest.raises(UserError) as refused:
        aligned_probabilities(folder, folder.test(4), 4, "slice_file_name", names, CLASS_NAMES)
    assert str(refused.value) == (
        f"fold 4: {folder.test(4)} does not hold this run's test clips: 2 missing slice_file_name(s) (100-3-0-5.wav, "
        "24-1-0-2.wav); 1 extra slice_file_name(s) (1-1-0-0.wav); 1 repeated slice_file_name(s) (7061-6-0-0.wav). "
        "It was made with other test settings (--max-test-clips, --skip-bad-audio, data); delete "
        f"{folder.result(4)} to train fold 4 again.")


def test_fields_added_later_read_as_their_defaults_in_older_identities():
    """An identity stored before `accumulate` and `training.trainer` existed had K = 1 and the SAM trainer."""
    here = RunIdentity({"fold": 3, "seed": 42, "accumulate": 1, "training.trainer": "sam"})
    check_identity(here, {"fold": 3, "seed": 42}, "last_fold3.pt", 3, "delete last_fold3.pt")  # accepted
    accumulating = RunIdentity({**here.fields, "accumulate": 2})
    with pytest.raises(UserError, match=r"accumulate: 2 here, 1 in last_fold3.pt \(pass --accumulate 1\)"):
        check_identity(accumulating, {"fold": 3, "seed": 42}, "last_fold3.pt", 3, "delete last_fold3.pt")
    focal = RunIdentity({**here.fields, "training.trainer": "focal"})
    with pytest.raises(UserError, match="training.trainer: focal here, sam in last_fold3.pt"):
        check_identity(focal, {"fold": 3, "seed": 42}, "last_fold3.pt", 3, "delete last_fold3.pt")


def test_an_identity_written_before_the_own_data_fields_reads_their_defaults(merged, two_paths, tmp_path):
    """classes, init_from and freeze_backbone_epochs came later: a fold written without them was an
    UrbanSound8K run from scratch, and keeps merging; a run that differs from those defaults is refused."""
    out = copy_of(merged, tmp_path)
    written = (out / "best_model_fold1.pt").stat().st_mtime_ns
    result = json.loads((out / "result_fold1.json").read_text())
    own_data_fields = ("classes", "init_from", "freeze_backbone_epochs")
    assert {name: result["identity"][name] for name in own_data_fields} == {
        "classes": ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling",
                    "gun_shot", "jackhammer", "siren", "street_music"], "init_from": None, "freeze_backbone_epochs": 0}
    for name in own_data_fields:
        del result["identity"][name]
    (out / "result_fold1.json").write_text(json.dumps(result))

    summary = train_solution(recipe(), load_source(two_paths[0]), options_for(out, (1,)))
    assert (out / "best_model_fold1.pt").stat().st_mtime_ns == written  # reused, not retrained
    assert set(summary.folds) == {1, 2}  # merged with fold 2

    with pytest.raises(UserError) as refused:
        train_solution(recipe(), load_source(two_paths[0]), options_for(out, (1,), freeze_backbone_epochs=1))
    assert "freeze_backbone_epochs: 1 here, 0 in result_fold1.json (pass --freeze-backbone-epochs 0)" in str(
        refused.value)
    here = RunIdentity({"fold": 1, "classes": ["a", "b"], "init_from": None})
    with pytest.raises(UserError) as refused:
        check_identity(here, {"fold": 1}, "/out/result_fold1.json", 1, "delete it")
    message = str(refused.value)
    assert "classes: ['a', 'b'] here, ['air_conditioner'," in message and "init_from" not in message
    check_identity(RunIdentity({"fold": 1, "init_from": None}), {"fold": 1}, "/out/result_fold1.json", 1, "delete it")
