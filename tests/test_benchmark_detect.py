"""benchmarks/detect.py runs end to end on a small setting and reports every path it promises (slow: it builds
ResNet-34 stand-in checkpoints and exports one to ONNX)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_detect_benchmark_reports_every_path_and_its_ratios():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "detect.py"), "--seconds", "4", "--folds", "2",
                          "--threads", "1", "--repeats", "1", "--warmup", "0"],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    paths = ["detect", "trained", "naive", "once", "monitor_live", "monitor_pipe"]
    for path in paths:
        assert result[f"{path}_1fold_t1"] > 0
    assert result["gflop_per_window"] > 1 and result["ceiling_1fold_t1"] > 0 and result["sgemm_gflops_t1"] > 0
    for path in ["detect", "trained", "naive", "once"]:
        assert result[f"{path}_2fold_t1"] > 0
    assert result["onnxruntime_1fold_t1"] > 0
    for folds in (1, 2):  # the real-time factor at sgemm speed: 2 windows per audio second at hop 0.5 s
        expected = result["sgemm_gflops_t1"] / (result["gflop_per_window"] * folds * 2)
        assert result[f"ceiling_{folds}fold_t1"] == pytest.approx(expected, rel=0.01)
    for other in ["naive", "trained", "once"]:
        expected = result["detect_1fold_t1"] / result[f"{other}_1fold_t1"]
        assert result[f"ratio_1fold_t1_vs_{other}"] == pytest.approx(expected, abs=0.01)
