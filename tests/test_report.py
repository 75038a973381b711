"""report: lineage order, mean +- std of fold scores, gains over the parent, missing and partial results."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, subprocess_env

from core.plots import read_plot_data
from core.report import build_report, report_markdown

ROOT, CHILD, GRANDCHILD = "resnet34_pcen_sam_8fold", "resnet34_pcen_sam_8f_200e", "resnet34_attention"


def fake_results(folder, protocol: str, scores: dict[int, float], seconds: float = 60.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for fold, composite in scores.items():
        result = {"fold": fold, "protocol": protocol, "best_epoch": 3, "accuracy": composite, "macro_f1": composite,
                  "composite": composite, "epochs": 5}
        pd.DataFrame({"epoch": range(1, 6), "seconds": [seconds / 5] * 5}).to_csv(folder / f"history_fold{fold}.csv",
                                                                                 index=False)
        if protocol in ("us8k-10fold", "kfold"):
            result["test"] = {"accuracy": composite, "macro_f1": composite, "composite": composite}
            pd.DataFrame({"classID": [0, 1], "TARGET": [0, 0]}).to_csv(folder / f"test_fold{fold}.csv", index=False)
        (folder / f"result_fold{fold}.json").write_text(json.dumps(result))


@pytest.fixture
def solutions(tmp_path):
    fake_results(tmp_path / ROOT, "kaggle", {1: 0.80, 2: 0.90, 3: 0.85})
    fake_results(tmp_path / CHILD, "kaggle", {1: 0.84, 2: 0.92, 3: 0.89})
    fake_results(tmp_path / ROOT / "us8k-10fold", "us8k-10fold", {k: 0.70 + 0.01 * k for k in range(1, 11)})
    fake_results(tmp_path / GRANDCHILD / "us8k-10fold", "us8k-10fold", {1: 0.75, 2: 0.79})
    return tmp_path


def test_rows_numbers_and_gains_by_hand(solutions):
    rows = {(row.solution, row.protocol): row for row in build_report(solutions)}
    assert list(rows) == [(ROOT, "kaggle"), (ROOT, "us8k-10fold"), (CHILD, "kaggle"), (GRANDCHILD, "us8k-10fold")]
    root = rows[ROOT, "kaggle"]
    assert root.mean == pytest.approx(0.85)
    assert root.std == pytest.approx(np.sqrt(((0.05) ** 2 + 0.05 ** 2 + 0) / 2))  # sample std: 0.05
    assert root.std == pytest.approx(0.05) and root.status == "partial"
    assert root.folds_done == 3 and root.folds_total == 8 and root.train_seconds == 180 and root.epochs == 5
    child = rows[CHILD, "kaggle"]
    assert child.gain == pytest.approx(np.mean([0.84, 0.92, 0.89]) - 0.85)
    ten = rows[ROOT, "us8k-10fold"]
    assert ten.status == "complete" and ten.mean == pytest.approx(np.mean([0.70 + 0.01 * k for k in range(1, 11)]))
    assert ten.test_composite == pytest.approx(0.8 * 0.5 + 0.2 * (2 / 3) / 2)  # pooled: half right, one class F1
    grandchild = rows[GRANDCHILD, "us8k-10fold"]
    assert grandchild.gain is None and "has no us8k-10fold results" in grandchild.gain_note  # its parent (CHILD) has none
    markdown = report_markdown(list(rows.values()))
    assert "2 of 10 (partial)" in markdown and "0.8500 +- 0.0500" in markdown and "+0.0333" in markdown


def test_named_solutions_without_results_are_shown(solutions):
    rows = build_report(solutions, ["resnet34_pcen_salience_fusion_attention", ROOT])
    shown = [(row.solution, row.protocol, row.status) for row in rows]
    assert shown[0][0] == ROOT  # lineage order, whatever the order asked
    assert ("resnet34_pcen_salience_fusion_attention", "kaggle", "no results") in shown


def test_cli_writes_the_report_and_chart(solutions):
    done = subprocess.run([sys.executable, "-m", "core", "report", "--solutions", str(solutions)], capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (solutions / "report.md").read_text().startswith("# Results report")
    drawn = read_plot_data(solutions / "report.png")
    assert drawn["labels"][0] == f"{ROOT} [kaggle]" and drawn["means"][0] == pytest.approx(0.85)
    assert drawn["stds"][0] == pytest.approx(0.05)


def test_cli_without_results_says_so(tmp_path):
    done = subprocess.run([sys.executable, "-m", "core", "report", "--solutions", str(tmp_path)], capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert done.returncode == 2 and "no results under" in done.stderr


def test_a_kfold_row_counts_the_data_sets_folds_from_its_summary(tmp_path):
    """kfold's K is the data's (ESC-50: 5), read from summary.json: "3 of 5", not UrbanSound8K's 10."""
    folder = tmp_path / ROOT / "kfold"
    fake_results(folder, "kfold", {1: 0.5, 2: 0.6, 3: 0.7})
    (folder / "summary.json").write_text(json.dumps({"protocol": "kfold", "folds_done": 3, "folds_total": 5}))
    rows = {(row.solution, row.protocol): row for row in build_report(tmp_path)}
    row = rows[ROOT, "kfold"]
    assert (row.folds_done, row.folds_total, row.status) == (3, 5, "partial")
    assert row.mean == pytest.approx(0.6)  # the held-out test folds' composites
    assert row.test_composite == pytest.approx(0.8 * 0.5 + 0.2 * (2 / 3) / 2)  # pooled test_fold<k>.csv
    assert "3 of 5 (partial)" in report_markdown([row])
