"""`select`: Caruana ensemble selection on synthetic OOF predictions, the recipe it writes, refusals."""
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from core import NUM_CLASSES, PROB_COLUMNS
from core.errors import UserError
from core.select import greedy_selection, load_pool, select, selection_recipe

REPO = Path(__file__).resolve().parents[1]
FOLDS = (1, 2, 3, 4)
CLIPS_PER_FOLD = 100
TEST_ROWS = 60


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "400"})


def noisy_probs(labels: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Softmax of Gaussian logits with `strength` added to the true class (larger = more accurate)."""
    logits = rng.normal(size=(len(labels), NUM_CLASSES))
    logits[np.arange(len(labels)), labels] += strength
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def write_solution(root: Path, name: str, labels: np.ndarray, strength: float, seed: int,
                   folds=FOLDS, test_files: bool = True) -> None:
    """oof_fold<k>.csv for each fold (clip names shared across solutions) and best_model_fold<k>.csv."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    for fold in folds:
        rows = slice((fold - 1) * CLIPS_PER_FOLD, fold * CLIPS_PER_FOLD)
        fold_labels = labels[rows]
        probs = noisy_probs(fold_labels, strength, rng)
        frame = pd.DataFrame({"slice_file_name": [f"clip{i:04d}.wav" for i in range(rows.start, rows.stop)],
                              "fold": fold, "classID": fold_labels, "TARGET": probs.argmax(axis=1)})
        frame[PROB_COLUMNS] = probs
        frame.to_csv(folder / f"oof_fold{fold}.csv", index=False)
        if test_files:
            test = rng.dirichlet(np.ones(NUM_CLASSES), size=TEST_ROWS)
            test_frame = pd.DataFrame({"ID": np.arange(TEST_ROWS), "TARGET": test.argmax(axis=1)})
            test_frame[PROB_COLUMNS] = test
            test_frame.to_csv(folder / f"best_model_fold{fold}.csv", index=False)


@pytest.fixture
def pool_root(tmp_path):
    """strong (clearly best), medium, weak, and weak_copy (the same files as weak)."""
    labels = np.random.default_rng(0).integers(0, NUM_CLASSES, size=len(FOLDS) * CLIPS_PER_FOLD)
    root = tmp_path / "solutions"
    write_solution(root, "strong", labels, strength=4.0, seed=1)
    write_solution(root, "medium", labels, strength=2.5, seed=2)
    write_solution(root, "weak", labels, strength=2.0, seed=3)
    shutil.copytree(root / "weak", root / "weak_copy")
    (root / "notes").mkdir()  # a folder without OOF files is not a solution
    return root, labels


def oof_composite(root: Path, name: str) -> float:
    """Independent composite of one solution's OOF predictions (sklearn directly)."""
    frame = pd.concat([pd.read_csv(path) for path in sorted((root / name).glob("oof_fold*.csv"))])
    y_true, y_pred = frame["classID"], frame[PROB_COLUMNS].to_numpy().argmax(axis=1)
    return 0.8 * accuracy_score(y_true, y_pred) + 0.2 * f1_score(y_true, y_pred, average="macro")


def test_selection_starts_with_the_clearly_best_solution_and_ignores_the_copy(pool_root):
    root, _ = pool_root
    selection = select(root, max_steps=15)
    names = [solution.name for solution in selection.pool]
    assert names == ["medium", "strong", "weak", "weak_copy"]
    singles = {name: scores.composite for name, scores in zip(names, selection.single_scores, strict=True)}
    for name in names:
        assert singles[name] == pytest.approx(oof_composite(root, name))
    assert max(singles, key=singles.get) == "strong"
    assert selection.steps[0] == ("strong", pytest.approx(singles["strong"]))
    weights = dict(zip(names, selection.weights, strict=True))
    assert weights["strong"] == max(weights.values())
    assert weights["weak_copy"] == 0  # identical to weak, which comes first in name order
    assert selection.scores.composite >= singles["strong"]
    assert selection.scores.composite == pytest.approx(max(composite for _, composite in selection.steps))

    # The copy changes nothing: the same selection without it.
    shutil.rmtree(root / "weak_copy")
    without_copy = select(root, max_steps=15)
    assert dict(zip([s.name for s in without_copy.pool], without_copy.weights, strict=True)) == {
        name: weight for name, weight in weights.items() if name != "weak_copy"}


def test_greedy_keeps_the_shortest_best_prefix():
    labels = np.array([0, 1, 2, 0])
    perfect = np.eye(3)[labels] * 0.8 + 0.1
    wrong = np.eye(3)[(labels + 1) % 3] * 0.8 + 0.1
    weights, steps = greedy_selection([wrong, perfect], labels, max_steps=4)
    # By hand (true class 0.9 in perfect, true+1 class 0.9 in wrong; ties -> candidate order, then lowest class):
    # 1: perfect (1.0; wrong alone 0.0). 2: perfect + wrong ties every row's two classes and misses the
    #    label-2 row, so perfect again. 3: 2 perfect + wrong is still all correct, a tie with 3 perfect,
    #    so wrong (first candidate). 4: 2 + 2 ties again, so perfect. Best prefix: step 1 alone.
    assert [index for index, _ in steps] == [1, 1, 0, 1]
    assert [composite for _, composite in steps] == [1.0, 1.0, 1.0, 1.0]
    assert weights.tolist() == [0, 1]


def test_cli_writes_a_recipe_that_blend_uses(pool_root, tmp_path):
    root, _ = pool_root
    recipe_path = tmp_path / "picked.toml"
    done = run_cli("select", "--root", root, "--out", recipe_path, "--max", "10")
    assert done.returncode == 0, done.stderr
    for name in ("strong", "medium", "weak", "weak_copy"):
        line = next(line for line in done.stdout.splitlines() if f" {name} " in line)
        assert f"{oof_composite(root, name):.4f}" in line
    assert "blend OOF composite" in done.stdout

    recipe = tomllib.loads(recipe_path.read_text())
    assert recipe["name"] == "picked" and recipe["method"] == "mean"
    weights = recipe["solutions"]
    assert weights["strong"] == max(weights.values()) and "weak_copy" not in weights

    out = tmp_path / "picked.csv"
    done = run_cli("blend", "--recipe", recipe_path, "--root", root, "--out", out)
    assert done.returncode == 0, done.stderr
    total = sum(weight * np.mean([pd.read_csv(root / name / f"best_model_fold{fold}.csv")[PROB_COLUMNS].to_numpy()
                                  for fold in FOLDS], axis=0) for name, weight in weights.items())
    assert pd.read_csv(out)["TARGET"].tolist() == total.argmax(axis=1).tolist()


def test_solutions_on_different_clips_are_refused(pool_root):
    root, labels = pool_root
    write_solution(root, "partial", labels, strength=3.0, seed=9, folds=(1, 2))
    with pytest.raises(UserError) as caught:
        load_pool(root)
    message = str(caught.value)
    assert "partial (folds 1,2)" in message and "only in solution medium (folds 1,2,3,4)" in message
    assert [s.name for s in load_pool(root, ["strong", "weak"])] == ["strong", "weak"]  # --solution narrows


def test_disagreeing_labels_are_refused(pool_root):
    root, _ = pool_root
    path = root / "weak" / "oof_fold2.csv"
    frame = pd.read_csv(path)
    frame.loc[3, "classID"] = (frame.loc[3, "classID"] + 1) % NUM_CLASSES
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match="disagree on the true classID of 1 clip"):
        load_pool(root)


def test_fold_column_must_match_the_file_name(pool_root):
    root, _ = pool_root
    path = root / "medium" / "oof_fold3.csv"
    frame = pd.read_csv(path)
    frame.loc[0, "fold"] = 4
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match="oof_fold3.csv: fold column holds \\[3, 4\\], expected only 3"):
        load_pool(root)


def test_a_chosen_solution_without_test_predictions_is_refused(tmp_path):
    labels = np.random.default_rng(0).integers(0, NUM_CLASSES, size=len(FOLDS) * CLIPS_PER_FOLD)
    write_solution(tmp_path, "only_oof", labels, strength=4.0, seed=1, test_files=False)
    selection = select(tmp_path, max_steps=3)
    with pytest.raises(UserError, match="only_oof"):
        selection_recipe(selection, "x")


def test_unknown_solution_and_empty_root_are_refused(pool_root, tmp_path):
    root, _ = pool_root
    with pytest.raises(UserError, match="no OOF files for: nope"):
        load_pool(root, ["strong", "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no solution folder holds oof_fold"):
        load_pool(tmp_path / "empty")


def write_own_solution(root: Path, name: str, labels: np.ndarray, strength: float, seed: int,
                       classes: tuple[str, ...]) -> None:
    """oof_fold<k>.csv and best_model_fold<k>.csv as training writes them for a data set other than UrbanSound8K."""
    from core.train.solution import with_probabilities

    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    for fold in FOLDS:
        rows = slice((fold - 1) * CLIPS_PER_FOLD, fold * CLIPS_PER_FOLD)
        logits = rng.normal(size=(CLIPS_PER_FOLD, len(classes)))
        logits[np.arange(CLIPS_PER_FOLD), labels[rows]] += strength
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        clips = pd.DataFrame({"slice_file_name": [f"clip{i:04d}.wav" for i in range(rows.start, rows.stop)],
                              "fold": fold, "classID": labels[rows]})
        with_probabilities(clips, probs, classes).to_csv(folder / f"oof_fold{fold}.csv", index=False)
        test_ids = pd.DataFrame({"ID": np.arange(TEST_ROWS)})
        with_probabilities(test_ids, rng.dirichlet(np.ones(len(classes)), size=TEST_ROWS), classes).to_csv(
            folder / f"best_model_fold{fold}.csv", index=False)


def test_select_on_another_data_set_reads_its_class_named_columns(tmp_path):
    classes = ("beep", "hum", "whistle")
    labels = np.random.default_rng(0).integers(0, len(classes), size=len(FOLDS) * CLIPS_PER_FOLD)
    write_own_solution(tmp_path, "strong", labels, strength=4.0, seed=1, classes=classes)
    write_own_solution(tmp_path, "weak", labels, strength=1.0, seed=2, classes=classes)
    assert pd.read_csv(tmp_path / "strong/oof_fold1.csv").columns.tolist()[-3:] == list(classes)
    selection = select(tmp_path, max_steps=5)
    assert [solution.classes for solution in selection.pool] == [classes, classes]
    singles = dict(zip([solution.name for solution in selection.pool], selection.single_scores, strict=True))
    for name in ("strong", "weak"):
        frame = pd.concat([pd.read_csv(tmp_path / name / f"oof_fold{fold}.csv") for fold in FOLDS])
        y_pred = frame[list(classes)].to_numpy().argmax(axis=1)
        composite = 0.8 * accuracy_score(frame["classID"], y_pred) + 0.2 * f1_score(frame["classID"], y_pred,
                                                                                      average="macro")
        assert singles[name].composite == pytest.approx(composite)
    assert selection.steps[0][0] == "strong"

    recipe_path, out = tmp_path / "own.toml", tmp_path / "own.csv"
    assert run_cli("select", "--root", tmp_path, "--out", recipe_path, "--max", "5").returncode == 0
    done = run_cli("blend", "--recipe", recipe_path, "--root", tmp_path, "--out", out, "--probs")
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(out).columns.tolist() == ["ID", "TARGET", *classes]


def test_solutions_of_different_data_sets_are_refused_by_name(pool_root):
    root, _ = pool_root
    labels = np.random.default_rng(0).integers(0, 3, size=len(FOLDS) * CLIPS_PER_FOLD)
    write_own_solution(root, "own", labels, strength=4.0, seed=1, classes=("beep", "hum", "whistle"))
    with pytest.raises(UserError) as caught:
        load_pool(root)
    assert str(caught.value) == ("the solutions predict different classes:\n  - medium: 0..9\n"
                                 "  - own: beep, hum, whistle\n"
                                 "Select among solutions trained on the same data set (choose them with --solution).")
    assert [s.name for s in load_pool(root, ["own"])] == ["own"]


def test_folds_of_one_solution_with_different_class_columns_are_refused(tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, size=len(FOLDS) * CLIPS_PER_FOLD)
    write_own_solution(tmp_path, "own", labels, strength=4.0, seed=1, classes=("beep", "hum", "whistle"))
    path = tmp_path / "own" / "oof_fold2.csv"
    pd.read_csv(path).rename(columns={"whistle": "chirp"}).to_csv(path, index=False)
    with pytest.raises(UserError) as caught:
        load_pool(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'own'}: OOF files with different class columns:\n"
        "  - oof_fold1.csv: beep, hum, whistle\n  - oof_fold2.csv: beep, hum, chirp\n"
        "  - oof_fold3.csv: beep, hum, whistle\n  - oof_fold4.csv: beep, hum, whistle\n"
        "Every fold of a solution predicts the same classes; regenerate the odd ones.")
