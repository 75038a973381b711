"""End to end: the fold loop on tiny synthetic data writes every output with the right columns."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from core import PROB_COLUMNS, registry
from core.data.metadata import load_source
from core.train.options import TrainOptions
from core.train.solution import train_solution

# fp32 throughout: on CPUs without AVX-512 BF16 (this CI's AMD EPYC) bf16 autocast is emulated and ~5x
# slower; bf16 itself is covered by tests/test_models.py and, on a GPU, tests/test_cuda.py.

def test_two_folds_one_epoch_write_every_output(tiny_data, tmp_path):
    recipe = registry.get("resnet34_pcen_sam_8fold").derive(training=dict(batch_size=8))
    out = tmp_path / "solutions" / recipe.name
    options = TrainOptions(out=out, submissions=tmp_path / "submissions", folds=(1, 2), epochs=1,
                           device="cpu", precision="fp32", progress=False, max_clips_per_fold=3)
    source = load_source(tiny_data)
    summary = train_solution(recipe, source, options)

    for fold in (1, 2):
        test = pd.read_csv(out / f"best_model_fold{fold}.csv")
        assert list(test.columns) == ["ID", "TARGET", *PROB_COLUMNS]
        assert list(test["ID"]) == list(source.test["ID"])
        probs = test[PROB_COLUMNS].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert (test["TARGET"] == probs.argmax(axis=1)).all()

        oof = pd.read_csv(out / f"oof_fold{fold}.csv")
        assert list(oof.columns) == ["slice_file_name", "fold", "classID", "TARGET", *PROB_COLUMNS]
        held_out = source.train[source.train["fold"] == fold].head(3)
        assert sorted(oof["slice_file_name"]) == sorted(held_out["slice_file_name"])
        assert (oof["fold"] == fold).all()

        history = pd.read_csv(out / f"history_fold{fold}.csv")
        assert len(history) == 1 and {"val_accuracy", "val_macro_f1", "val_composite", "lr"} <= set(history.columns)
        checkpoint = torch.load(out / f"best_model_fold{fold}.pt", weights_only=True)
        assert checkpoint["solution"] == recipe.name and checkpoint["fold"] == fold
        assert not (out / f"last_fold{fold}.pt").exists()

    stored = json.loads((out / "summary.json").read_text())
    assert set(stored["folds"]) == {"1", "2"}
    mean = np.mean([stored["folds"][k]["composite"] for k in ("1", "2")])
    assert stored["cv_mean"]["composite"] == mean
    assert (out / "oof_confusion.png").stat().st_size > 1000
    submission = pd.read_csv(tmp_path / "submissions" / f"{recipe.name}.csv")
    assert list(submission.columns) == ["ID", "TARGET"]
    fold_mean = np.mean([pd.read_csv(out / f"best_model_fold{k}.csv")[PROB_COLUMNS].to_numpy() for k in (1, 2)], axis=0)
    assert (submission["TARGET"].to_numpy() == fold_mean.argmax(axis=1)).all()
    assert summary.test is not None  # the synthetic test split has labels


def test_finished_folds_are_skipped(tiny_data, tmp_path):
    recipe = registry.get("resnet34_pcen_sam_8fold").derive(training=dict(batch_size=8))
    out = tmp_path / "out"
    options = TrainOptions(out=out, submissions=tmp_path / "subs", folds=(3,), epochs=1, device="cpu",
                           precision="fp32", progress=False, max_clips_per_fold=1)
    source = load_source(tiny_data)
    train_solution(recipe, source, options)
    written = (out / "best_model_fold3.pt").stat().st_mtime_ns
    train_solution(recipe, source, options)
    assert (out / "best_model_fold3.pt").stat().st_mtime_ns == written


def test_a_finished_fold_from_other_settings_is_refused(tiny_data, tmp_path):
    import dataclasses

    import pytest

    from core.errors import UserError

    recipe = registry.get("resnet34_pcen_sam_8fold").derive(training=dict(batch_size=8))
    options = TrainOptions(out=tmp_path / "out", submissions=tmp_path / "subs", folds=(2,), epochs=1, device="cpu",
                           precision="fp32", progress=False, max_clips_per_fold=1)
    source = load_source(tiny_data)
    train_solution(recipe, source, options)
    with pytest.raises(UserError, match="other settings"):
        train_solution(recipe, source, dataclasses.replace(options, epochs=2))
