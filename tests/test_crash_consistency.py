"""Crash consistency when a replayed epoch is NOT bit-identical (as on CUDA): the best checkpoint, its
epoch and scores agree with history_fold<k>.csv and result_fold<k>.json after a kill between any two writes.

The kill is an exception raised right after one of an epoch's writes; the replay is made to differ
on purpose by scripting the validation scores (the run killed in epoch 2 saw 0.8 there, its replay
sees 0.3).
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import tiny

from core.data.metadata import load_source
from core.metrics import Scores
from core.train import fold as fold_module
from core.train import trainer as trainer_module
from core.train.options import TrainOptions
from core.train.solution import train_solution

EPOCHS = 3


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even `except Exception` handlers)."""


def scripted_scores(values: list[float]):
    """A stand-in for core.metrics.score returning `values` one validation at a time."""
    remaining = list(values)

    def fake_score(truth, predicted) -> Scores:
        value = remaining.pop(0)
        return Scores(value, value, value)
    return fake_score


def kill_after(monkeypatch, target: str, epoch: int) -> None:
    """Raise Killed right after the write `target` of epoch `epoch` has finished."""
    calls = {"epoch": 0}

    def wrap(original):
        def killing(*args, **kwargs):
            result = original(*args, **kwargs)
            if calls["epoch"] == epoch:
                raise Killed(target)
            return result
        return killing

    original_score = trainer_module.score

    def counting_score(*args, **kwargs):  # validation is the first thing of an epoch's bookkeeping
        calls["epoch"] += 1
        return original_score(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "score", counting_score)
    if target == "staged best":
        monkeypatch.setattr(fold_module.checkpoint, "save_best", wrap(fold_module.checkpoint.save_best))
    elif target == "history":
        monkeypatch.setattr(trainer_module, "write_csv", wrap(trainer_module.write_csv))
    else:
        monkeypatch.setattr(fold_module.ResumeState, "save", wrap(fold_module.ResumeState.save))


@pytest.mark.parametrize("target, resumed_best_epoch", [("staged best", 1), ("history", 1), ("resume state", 2)])
def test_best_checkpoint_agrees_with_history_and_result_after_a_kill(tiny_data, tmp_path, monkeypatch,
                                                                     target, resumed_best_epoch):
    recipe = tiny("resnet34_pcen_sam_8fold").derive(training=dict(batch_size=8, select_metric="composite"))
    out = tmp_path / "out"
    options = TrainOptions(out=out, submissions=tmp_path / "subs", folds=(1,), epochs=EPOCHS, device="cpu",
                           precision="fp32", progress=False, max_clips_per_fold=1)
    source = load_source(tiny_data)

    with monkeypatch.context() as patched:
        patched.setattr(trainer_module, "score", scripted_scores([0.5, 0.8]))
        kill_after(patched, target, epoch=2)
        with pytest.raises(Killed):
            train_solution(recipe, source, options)
    assert not (out / "result_fold1.json").exists()

    with monkeypatch.context() as patched:  # the replay of epoch 2 (if any) scores lower than the killed one
        patched.setattr(trainer_module, "score", scripted_scores([0.3, 0.4]))
        train_solution(recipe, source, options)

    best = torch.load(out / "best_model_fold1.pt", weights_only=True)
    result = json.loads((out / "result_fold1.json").read_text())
    history = pd.read_csv(out / "history_fold1.csv")
    best_row = history.loc[history["val_composite"].idxmax()]
    assert best["epoch"] == result["best_epoch"] == int(best_row["epoch"]) == resumed_best_epoch
    assert history.loc[history["best"], "epoch"].max() == resumed_best_epoch
    assert best["scores"]["composite"] == result["composite"] == pytest.approx(best_row["val_composite"])
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    assert not (out / "best_model_fold1.staged.pt").exists() and not (out / "last_fold1.pt").exists()


def test_the_resume_state_holds_no_rng_state(tiny_data, tmp_path, monkeypatch):
    recipe = tiny("resnet34_pcen_sam_8fold").derive(training=dict(batch_size=8))
    options = TrainOptions(out=tmp_path / "out", submissions=tmp_path / "subs", folds=(1,), epochs=2, device="cpu",
                           precision="fp32", progress=False, max_clips_per_fold=1)
    kill_after(monkeypatch, "resume state", epoch=1)
    with pytest.raises(Killed):
        train_solution(recipe, load_source(tiny_data), options)
    state = torch.load(tmp_path / "out" / "last_fold1.pt", weights_only=True)
    assert "rng" not in state and state["identity"]["fold"] == 1 and state["epoch"] == 1
