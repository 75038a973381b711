"""Blend speed: the 12-member top12 blend of 1653 rows (read, validate, align, combine, write).

    .venv/bin/python benchmarks/blend.py [--repeats 15]

Members: the 11 published CSVs of ../shared/data/public_predictions (linked into a temporary root)
plus a synthetic res2net50/best_model_fold7.csv with shuffled row order (so ID alignment does real
work); 12 synthetic members when ../shared is absent. Times `core.blend.blend` + writing the
submission (the work of `python -m core blend`, without the console table), median of repeated
runs after warm-up; also prints the CLI's end-to-end time (Python start-up included) for context.
Last line: `RESULT {...}` (value = median seconds; target 1.0).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import NUM_CLASSES, PROB_COLUMNS  # noqa: E402
from core.atomic import write_csv  # noqa: E402
from core.blend import BlendRecipe, blend, load_blend_recipe, submission_frame  # noqa: E402

TARGET_SECONDS = 1.0
ROWS = 1653
PUBLIC = REPO.parent / "shared" / "data" / "public_predictions"
RECIPE = REPO / "submissions" / "top12.toml"


def synthetic_member(path: Path, seed: int) -> None:
    """A valid probability CSV with IDs 0..ROWS-1 in shuffled order."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(NUM_CLASSES, 0.3), size=ROWS)
    ids = rng.permutation(ROWS)
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "TARGET", probs.argmax(axis=1))
    frame.insert(0, "ID", ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def build_root(root: Path, recipe: BlendRecipe) -> str:
    """Fill `root` with the recipe's 12 members; returns a description of where they came from."""
    published = 0
    for seed, member in enumerate(recipe.members):
        target = root / member.name
        source = PUBLIC / member.name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
            published += 1
        else:
            synthetic_member(target, seed)
    return f"{published} published + {len(recipe.members) - published} synthetic members"


def median_seconds(step, repeats: int, warmup: int = 3) -> float:
    """Median wall time of `step` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cli-repeats", type=int, default=3, help="end-to-end CLI runs (0: skip)")
    args = parser.parse_args()

    recipe = load_blend_recipe(RECIPE)
    with tempfile.TemporaryDirectory(prefix="blend-bench-") as scratch:
        root, out = Path(scratch) / "root", Path(scratch) / "out.csv"
        source = build_root(root, recipe)

        def run_blend() -> None:
            result = blend(recipe, root)
            write_csv(submission_frame(result), out)

        seconds = median_seconds(run_blend, args.repeats)
        rows = len(pd.read_csv(out))
        print(f"members: {source}; {rows} rows; method {recipe.method}")
        print(f"blend (read + validate + align + combine + leave-one-out + write): median {seconds * 1000:.1f} ms "
              f"over {args.repeats} runs after warm-up")
        if args.cli_repeats > 0:
            command = [sys.executable, "-m", "core", "blend", "--recipe", str(RECIPE), "--root", str(root),
                       "--out", str(out)]
            env = {**os.environ, "PYTHONPATH": str(REPO)}

            def run_cli() -> None:
                subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)

            cli_seconds = median_seconds(run_cli, args.cli_repeats, warmup=1)
            print(f"python -m core blend end to end (incl. interpreter start-up and imports): "
                  f"median {cli_seconds:.2f} s over {args.cli_repeats} runs")
    print("RESULT " + json.dumps({"name": "blend", "value": round(seconds, 4), "target": TARGET_SECONDS,
                                  "pass": seconds < TARGET_SECONDS}))


if __name__ == "__main__":
    main()
