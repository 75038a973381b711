"""The GPU race and check, run on a CPU with tiny settings: both arms train, the RESULT line is complete."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env


def result_line(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


# slow: both arms of the race on CPU (~30 s idle, minutes on a loaded 2-core machine); .ci/run runs it
@pytest.mark.slow
def test_epoch_race_quick_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/epoch.py", "--quick", "--device", "cpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env=subprocess_env(US8K_CACHE_DIR=str(tmp_path)))
    assert done.returncode == 0, done.stderr[-3000:]
    result = result_line(done.stdout)
    assert result["name"] == "epoch" and result["solution"] == "resnet34_pcen_sam_8fold" and result["quick"]
    assert set(result["clips_per_s"]) == {"ours", "reference"}
    assert all(value > 0 for value in result["clips_per_s"].values())
    assert result["ratio"] == pytest.approx(result["clips_per_s"]["ours"] / result["clips_per_s"]["reference"], rel=0.02)
    # projected hours of the full recipe: 8 folds x 100 epochs x 6194 clips at our rate
    assert result["projected_hours"] == pytest.approx(8 * 100 * 6194 / result["clips_per_s"]["ours"] / 3600, rel=0.02)
    assert "reference" in done.stdout and "full recipe" in done.stdout
    # the data-wait share of every arm and of our DataLoader path with --workers 0 (= auto on CPU)
    assert result["auto_workers"] == 0 and set(result["data_wait"]) == {"ours", "reference", "workers 0"}
    assert all(0 <= share < 1 for share in result["data_wait"].values())
    assert "workers 0 = auto" in done.stdout


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    log = tmp_path / "gpu_check.log"
    env = subprocess_env(GPU_CHECK_QUICK="1", US8K_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PYTHON", None)  # the script finds the repo's .venv by itself, as for a new user
    if not (REPO / ".venv" / "bin" / "python").exists():  # a suite run from another environment names its Python
        env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(log)], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env=env)
    assert done.returncode == 0, done.stdout[-4000:]
    text = log.read_text()
    # six stages, each announced and closed (pytest's own "=== short test summary" lines are not stages)
    assert len(re.findall(r"^=== .* \(limit \d+s\): ", text, re.M)) == 6
    assert len(re.findall(r"^=== .*: exit 0 after \d+s$", text, re.M)) == 6 and "0 failed stage(s)" in text
    assert text.count("RESULT ") == 3
    assert os.path.getsize(log) > 0
