"""Every solution trains one epoch on tiny synthetic data and writes the standard outputs (slow)."""
from __future__ import annotations

import pandas as pd
import pytest

from core import PROB_COLUMNS, registry
from core.data.metadata import load_source
from core.train.options import TrainOptions
from core.train.solution import train_solution


@pytest.mark.slow
@pytest.mark.parametrize("solution", registry.names())
def test_one_epoch_of_every_solution(solution, tiny_data, tmp_path):
    recipe = registry.get(solution).derive(training=dict(batch_size=4))
    out = tmp_path / solution
    options = TrainOptions(out=out, submissions=tmp_path / "submissions", folds=(1,), epochs=1, device="cpu",
                           precision="bf16", progress=False, max_clips_per_fold=1)
    summary = train_solution(recipe, load_source(tiny_data), options)
    assert set(summary.folds) == {1}
    test = pd.read_csv(out / "best_model_fold1.csv")
    assert list(test.columns) == ["ID", "TARGET", *PROB_COLUMNS] and test[PROB_COLUMNS].notna().all().all()
    for name in ("oof_fold1.csv", "history_fold1.csv", "summary.json", "oof_confusion.png", "best_model_fold1.pt"):
        assert (out / name).exists(), name
    assert (tmp_path / "submissions" / f"{solution}.csv").exists()
