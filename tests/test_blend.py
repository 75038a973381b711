"""`blend`: the top12 reproduction on the public predictions, refusals, malformed inputs, methods by hand."""
import csv
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import NUM_CLASSES, PROB_COLUMNS
from core.blend import (
    BlendRecipe,
    Member,
    blend,
    blend_recipe_toml,
    combine,
    finish,
    load_blend_recipe,
    member_space,
    parse_blend_recipe,
    submission_frame,
)
from core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PUBLIC = REPO.parent / "shared" / "data" / "public_predictions"
TOP12 = REPO / "submissions" / "top12.toml"

# ../shared/spec/ensemble.md 1.1 (CHOSEN_MODELS) with the folder names of public_predictions/README.md.
DOCUMENTED_TOP12 = [
    "resnet34_mr_salience_fusion_film_attention/best_model_fold1.csv",
    "resnet34_attention/best_model_fold2.csv",
    "resnet34_mr_salience_fusion_film_attention/best_model_fold4.csv",
    "wideresnet/best_model_fold5.csv",
    "res2net50/best_model_fold7.csv",
    "resnet34_attention/best_model_fold8.csv",
    "resnet34_pcen_sam_8fold/best_model_fold1.csv",
    "resnet34_pcen_sam_8fold/best_model_fold6.csv",
    "resnet34_salience_fusion_film_attention/best_model_fold1.csv",
    "resnet34_pcen_sam_8f_200e/best_model_fold2.csv",
    "resnet34_pcen_salience_fusion_attention_e128/best_model_fold2.csv",
    "resnet34_pcen_sam_8f_200e/best_model_fold7.csv",
]
# ../shared/spec/ensemble.md 1.5: class counts of the 11-member blend.
DOCUMENTED_COUNTS = [179, 63, 216, 210, 167, 175, 64, 207, 147, 225]

needs_public = pytest.mark.skipif(not PUBLIC.is_dir(), reason="../shared/data/public_predictions is absent")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # A wide console keeps rich from breaking long paths across lines in the captured output.
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "400"})


def write_probs(path: Path, probs, ids=None) -> Path:
    """A member file `ID,TARGET,0..9` (rows as given; IDs 0..n-1 unless given)."""
    probs = np.asarray(probs, dtype=float)
    ids = np.arange(len(probs)) if ids is None else np.asarray(ids)
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "TARGET", probs.argmax(axis=1))
    frame.insert(0, "ID", ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def random_probs(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(NUM_CLASSES, 0.5), size=rows)


def files_recipe(*names: str, method: str = "mean") -> BlendRecipe:
    return parse_blend_recipe({"members": list(names), "method": method}, "test")


# --- the 91.3 submission on the public predictions ---------------------------------------------------

def test_top12_recipe_lists_the_documented_members_in_order():
    recipe = load_blend_recipe(TOP12)
    assert (recipe.name, recipe.method) == ("top12", "mean")
    assert [member.name for member in recipe.members] == DOCUMENTED_TOP12
    assert all(member.weight == 1.0 and not member.solution for member in recipe.members)


@needs_public
def test_top12_blend_equals_an_independent_soft_vote(tmp_path):
    out = tmp_path / "top12.csv"
    done = run_cli("blend", "--recipe", TOP12, "--root", PUBLIC, "--out", out, "--allow-missing")
    assert done.returncode == 0, done.stderr
    assert "res2net50/best_model_fold7.csv" in done.stdout and "missing" in done.stdout

    # Independent soft vote: csv module + numpy, rows looked up by ID.
    total = np.zeros((1653, NUM_CLASSES))
    for member in DOCUMENTED_TOP12:
        if member.startswith("res2net50/"):
            continue
        with open(PUBLIC / member, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            probs = np.array([float(row[str(k)]) for k in range(NUM_CLASSES)])
            total[int(row["ID"])] += probs / probs.sum()
    expected = total.argmax(axis=1)

    with open(out, newline="") as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["ID", "TARGET"]
    assert [int(row[0]) for row in written[1:]] == list(range(1653))
    predicted = np.array([int(row[1]) for row in written[1:]])
    np.testing.assert_array_equal(predicted, expected)
    assert np.bincount(predicted, minlength=NUM_CLASSES).tolist() == DOCUMENTED_COUNTS


@needs_public
def test_top12_without_allow_missing_is_refused_and_writes_nothing(tmp_path):
    out = tmp_path / "top12.csv"
    done = run_cli("blend", "--recipe", TOP12, "--root", PUBLIC, "--out", out)
    assert done.returncode == 2
    assert "res2net50/best_model_fold7.csv" in done.stderr and "--allow-missing" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


# --- refusals ----------------------------------------------------------------------------------------

def test_every_missing_member_is_listed_and_nothing_is_written(tmp_path):
    write_probs(tmp_path / "a/best_model_fold1.csv", random_probs(5, 0))
    out = tmp_path / "out.csv"
    done = run_cli("blend", "a/best_model_fold1.csv", "b/best_model_fold2.csv", "c/best_model_fold3.csv",
                   "--root", tmp_path, "--out", out)
    assert done.returncode == 2
    assert "b/best_model_fold2.csv" in done.stderr and "c/best_model_fold3.csv" in done.stderr
    assert "2 of 3" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_allow_missing_never_substitutes_a_file_with_the_same_name(tmp_path):
    # The reference script silently took another folder's best_model_fold7.csv; we must not.
    a = random_probs(40, 1)
    write_probs(tmp_path / "a/best_model_fold1.csv", a)
    write_probs(tmp_path / "other/best_model_fold7.csv", random_probs(40, 2))
    result = blend(files_recipe("a/best_model_fold1.csv", "missing/best_model_fold7.csv"), tmp_path,
                   allow_missing=True)
    assert result.missing == ("missing/best_model_fold7.csv",)
    assert [report.files for report in result.reports] == [(tmp_path / "a/best_model_fold1.csv",)]
    np.testing.assert_array_equal(result.predictions, a.argmax(axis=1))


def test_allow_missing_with_no_member_left_is_an_error(tmp_path):
    with pytest.raises(UserError, match="missing"):
        blend(files_recipe("x/best_model_fold1.csv"), tmp_path, allow_missing=True)


# --- malformed inputs --------------------------------------------------------------------------------

def good_and_bad(tmp_path: Path, bad_frame: pd.DataFrame) -> BlendRecipe:
    write_probs(tmp_path / "good/best_model_fold1.csv", random_probs(len(bad_frame), 3))
    (tmp_path / "bad").mkdir()
    bad_frame.to_csv(tmp_path / "bad/best_model_fold1.csv", index=False)
    return files_recipe("good/best_model_fold1.csv", "bad/best_model_fold1.csv")


def probs_frame(rows: int = 6, seed: int = 4) -> pd.DataFrame:
    probs = random_probs(rows, seed)
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "TARGET", probs.argmax(axis=1))
    frame.insert(0, "ID", np.arange(rows))
    return frame


def expect_error(tmp_path: Path, frame: pd.DataFrame, *fragments: str) -> str:
    recipe = good_and_bad(tmp_path, frame)
    with pytest.raises(UserError) as caught:
        blend(recipe, tmp_path)
    message = str(caught.value)
    assert "bad/best_model_fold1.csv" in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_different_id_sets_are_refused_with_the_first_odd_ids(tmp_path):
    frame = probs_frame()
    frame.loc[4, "ID"] = 100
    expect_error(tmp_path, frame, "different ID sets",
                 f"only in {tmp_path / 'good/best_model_fold1.csv'}, first: 4",
                 f"only in {tmp_path / 'bad/best_model_fold1.csv'}, first: 100")


def test_duplicate_ids_are_refused_with_their_lines(tmp_path):
    frame = probs_frame()
    frame.loc[3, "ID"] = 1
    expect_error(tmp_path, frame, "duplicate ID", "line 3", "line 5")


def test_missing_class_column_is_refused(tmp_path):
    expect_error(tmp_path, probs_frame().drop(columns=["9"]), "missing column(s): 9")


def test_extra_class_column_is_refused(tmp_path):
    frame = probs_frame()
    frame["10"] = 0.0
    expect_error(tmp_path, frame, "unexpected class column(s) 10")


def test_nan_values_are_refused_with_line_and_id(tmp_path):
    frame = probs_frame()
    frame.loc[2, "5"] = np.nan
    expect_error(tmp_path, frame, "NaN", "line 4 (ID 2)", "5=")


def test_non_numeric_values_are_refused(tmp_path):
    frame = probs_frame().astype({"3": object})
    frame.loc[0, "3"] = "abc"
    expect_error(tmp_path, frame, "non-numeric", "line 2 (ID 0)", "'abc'")


def test_negative_values_are_refused(tmp_path):
    frame = probs_frame()
    frame.loc[5, "0"] = -0.25
    expect_error(tmp_path, frame, "negative values in 1 row(s)", "line 7 (ID 5)", "-0.25")


def test_all_zero_rows_are_refused(tmp_path):
    frame = probs_frame()
    frame.loc[1, PROB_COLUMNS] = 0.0
    frame.loc[3, PROB_COLUMNS] = 0.0
    expect_error(tmp_path, frame, "all-zero rows in 2 row(s)", "line 3 (ID 1)", "line 5 (ID 3)")


def test_non_integer_ids_are_refused(tmp_path):
    frame = probs_frame().astype({"ID": object})
    frame.loc[2, "ID"] = "x7"
    expect_error(tmp_path, frame, "column ID must be an integer", "line 4", "'x7'")


def test_problems_of_several_files_are_reported_together(tmp_path):
    write_probs(tmp_path / "a/best_model_fold1.csv", random_probs(4, 0))
    for name in ("b", "c"):
        frame = probs_frame(4)
        frame.loc[0, "2"] = -1.0
        (tmp_path / name).mkdir()
        frame.to_csv(tmp_path / name / "best_model_fold1.csv", index=False)
    with pytest.raises(UserError, match="2 of the blend's input files are invalid") as caught:
        blend(files_recipe("a/best_model_fold1.csv", "b/best_model_fold1.csv", "c/best_model_fold1.csv"), tmp_path)
    assert "b/best_model_fold1.csv" in str(caught.value) and "c/best_model_fold1.csv" in str(caught.value)


def test_malformed_member_fails_the_cli_with_exit_2_and_no_output(tmp_path):
    write_probs(tmp_path / "a/best_model_fold1.csv", random_probs(5, 0))
    frame = probs_frame(5)
    frame.loc[1, "7"] = np.nan
    (tmp_path / "b").mkdir()
    frame.to_csv(tmp_path / "b/best_model_fold1.csv", index=False)
    out = tmp_path / "out.csv"
    done = run_cli("blend", "a/best_model_fold1.csv", "b/best_model_fold1.csv", "--root", tmp_path, "--out", out)
    assert done.returncode == 2
    assert "b/best_model_fold1.csv" in done.stderr and "ID 1" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


# --- alignment and output ----------------------------------------------------------------------------

def test_members_are_aligned_by_id_not_by_row(tmp_path):
    a, b = random_probs(30, 5), random_probs(30, 6)
    shuffle = np.random.default_rng(7).permutation(30)
    write_probs(tmp_path / "a/best_model_fold1.csv", a)
    write_probs(tmp_path / "b/best_model_fold1.csv", b[shuffle], ids=shuffle)
    result = blend(files_recipe("a/best_model_fold1.csv", "b/best_model_fold1.csv"), tmp_path)
    np.testing.assert_array_equal(result.ids, np.arange(30))
    np.testing.assert_allclose(result.scores, (a + b) / 2)


def test_rows_are_normalised_before_averaging(tmp_path):
    # Raw sums vote class 1 ([0.42, 0.61]); normalised rows vote class 0 ([0.533, 0.467]).
    a = np.zeros((1, NUM_CLASSES))
    a[0, :2] = [0.02, 0.01]
    b = np.zeros((1, NUM_CLASSES))
    b[0, :2] = [0.4, 0.6]
    write_probs(tmp_path / "a/best_model_fold1.csv", a)
    write_probs(tmp_path / "b/best_model_fold1.csv", b)
    result = blend(files_recipe("a/best_model_fold1.csv", "b/best_model_fold1.csv"), tmp_path)
    assert result.predictions.tolist() == [0]
    np.testing.assert_allclose(result.scores[0, :2], [(2 / 3 + 0.4) / 2, (1 / 3 + 0.6) / 2])


def test_ids_option_orders_rows_and_probs_adds_scores(tmp_path):
    a = random_probs(8, 8)
    write_probs(tmp_path / "a/best_model_fold1.csv", a)
    order = [5, 0, 7, 1, 6, 2, 4, 3]
    pd.DataFrame({"ID": order, "slice_file_name": [f"{i}.wav" for i in order]}).to_csv(tmp_path / "ids.csv",
                                                                                         index=False)
    out = tmp_path / "out.csv"
    done = run_cli("blend", "a/best_model_fold1.csv", "--root", tmp_path, "--out", out,
                   "--ids", tmp_path / "ids.csv", "--probs")
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(out)
    assert written["ID"].tolist() == order
    assert written["TARGET"].tolist() == a[order].argmax(axis=1).tolist()
    np.testing.assert_allclose(written[PROB_COLUMNS].to_numpy(), a[order] / a[order].sum(axis=1, keepdims=True))


def test_ids_option_with_a_different_id_set_is_refused(tmp_path):
    write_probs(tmp_path / "a/best_model_fold1.csv", random_probs(4, 0))
    result = blend(files_recipe("a/best_model_fold1.csv"), tmp_path)
    with pytest.raises(UserError, match="only in kaggle_test.csv"):
        submission_frame(result, np.array([0, 1, 2, 9]), "kaggle_test.csv")


def test_rows_changed_counts_leave_one_out_differences(tmp_path):
    members = [f"m{k}/best_model_fold1.csv" for k in range(3)]
    for k, member in enumerate(members):
        write_probs(tmp_path / member, random_probs(200, 10 + k))
    full = blend(files_recipe(*members), tmp_path)
    for k, report in enumerate(full.reports):
        without = blend(files_recipe(*(m for j, m in enumerate(members) if j != k)), tmp_path)
        assert report.rows_changed == int(np.sum(without.predictions != full.predictions))
        own = pd.read_csv(tmp_path / members[k])[PROB_COLUMNS].to_numpy().argmax(axis=1)
        assert report.agreement == pytest.approx(np.mean(own == full.predictions))


# --- recipes -----------------------------------------------------------------------------------------

def test_solution_level_recipe_weights_the_mean_of_each_solutions_folds(tmp_path):
    a1, a2, b1 = random_probs(50, 20), random_probs(50, 21), random_probs(50, 22)
    write_probs(tmp_path / "sol_a/best_model_fold1.csv", a1)
    write_probs(tmp_path / "sol_a/best_model_fold2.csv", a2)
    write_probs(tmp_path / "sol_b/best_model_fold3.csv", b1)
    (tmp_path / "sol_a/oof_fold1.csv").write_text("not a member\n")  # only best_model_fold*.csv count
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text('name = "pair"\nmethod = "mean"\n[solutions]\nsol_a = 2.0\nsol_b = 1\n')
    result = blend(load_blend_recipe(recipe_path), tmp_path)
    expected = (2 * (a1 + a2) / 2 + b1) / 3
    np.testing.assert_allclose(result.scores, expected)
    assert [len(report.files) for report in result.reports] == [2, 1]


def test_member_tables_carry_weights_and_the_toml_round_trips(tmp_path):
    recipe = parse_blend_recipe({"name": "w", "members": ["a/x.csv", {"path": "b/y.csv", "weight": 2.5}]}, "test")
    assert [(m.name, m.weight) for m in recipe.members] == [("a/x.csv", 1.0), ("b/y.csv", 2.5)]
    assert parse_blend_recipe(tomllib.loads(blend_recipe_toml(recipe, "comment")), "again") == recipe
    solutions = BlendRecipe("s", "rank", (Member("a", 3.0, True), Member("b", 1.0, True)))
    assert parse_blend_recipe(tomllib.loads(blend_recipe_toml(solutions)), "again") == solutions


@pytest.mark.parametrize("data, fragment", [
    ({"members": ["a.csv"], "method": "median"}, "method = 'median'"),
    ({"members": ["a.csv"], "solutions": {"s": 1}}, "exactly one of"),
    ({"method": "mean"}, "exactly one of"),
    ({"members": ["a.csv", "a.csv"]}, "listed more than once: a.csv"),
    ({"members": [{"path": "a.csv", "weight": -1}]}, "weight -1 must be a positive number"),
    ({"solutions": {"s": "heavy"}}, "weight 'heavy'"),
    ({"members": ["a.csv"], "weights": [1]}, "unknown key 'weights'"),
    ({"members": []}, "non-empty list"),
])
def test_invalid_recipes_are_refused(data, fragment):
    with pytest.raises(UserError) as caught:
        parse_blend_recipe(data, "bad.toml")
    assert "bad.toml" in str(caught.value) and fragment in str(caught.value)


# --- methods on hand examples ------------------------------------------------------------------------

def test_mean_ties_go_to_the_lowest_class():
    scores = combine([np.array([[0.2, 0.4, 0.4]]), np.array([[0.6, 0.2, 0.2]])], [1, 1], "mean")
    np.testing.assert_allclose(scores, [[0.4, 0.3, 0.3]])
    tie = combine([np.array([[0.1, 0.45, 0.45]])], [1], "mean")
    assert tie.argmax(axis=1).tolist() == [1]


def test_geomean_is_the_renormalised_geometric_mean():
    a = np.array([[0.9, 0.1, 0.0]])
    b = np.array([[0.0, 0.5, 0.5]])
    # mean votes class 0 (0.45, 0.30, 0.25); the geometric mean is tiny wherever a member says ~0.
    assert combine([a, b], [1, 1], "mean").argmax() == 0
    scores = combine([a, b], [1, 1], "geomean")
    geometric = np.sqrt((a + 1e-12) * (b + 1e-12))
    np.testing.assert_allclose(scores, geometric / geometric.sum(), rtol=1e-9)
    assert scores.argmax() == 1
    weighted = combine([a, b], [3, 1], "geomean")
    geometric = ((a + 1e-12) ** 3 * (b + 1e-12)) ** 0.25
    np.testing.assert_allclose(weighted, geometric / geometric.sum(), rtol=1e-9)


def test_rank_averages_scaled_average_ranks():
    a = np.array([[0.9, 0.1], [0.5, 0.5], [0.5, 0.5], [0.1, 0.9]])
    b = np.array([[0.2, 0.8], [0.7, 0.3], [0.6, 0.4], [0.4, 0.6]])
    # By hand: a's column 0 ranks 4, 2.5, 2.5, 1 -> (r - 1) / 3 = 1, .5, .5, 0; column 1 the reverse.
    # b's column 0 ranks 1, 4, 3, 2 -> 0, 1, 2/3, 1/3; column 1 ranks 4, 1, 2, 3 -> 1, 0, 1/3, 2/3.
    ranks_a = np.array([[1, 0], [0.5, 0.5], [0.5, 0.5], [0, 1]])
    ranks_b = np.array([[0, 1], [1, 0], [2 / 3, 1 / 3], [1 / 3, 2 / 3]])
    np.testing.assert_allclose(combine([a, b], [1, 3], "rank"), (ranks_a + 3 * ranks_b) / 4)
    assert combine([a, b], [1, 3], "rank").argmax(axis=1).tolist() == [1, 0, 0, 1]
    # Equal weights: row 0 is a tie (0.5, 0.5) -> class 0.
    assert combine([a, b], [1, 1], "rank").argmax(axis=1).tolist() == [0, 0, 0, 1]


def test_method_option_switches_the_cli_blend(tmp_path):
    a = np.zeros((2, NUM_CLASSES))
    a[:, 0], a[:, 1] = 0.9, 0.1
    b = np.zeros((2, NUM_CLASSES))
    b[:, 1], b[:, 2] = 0.5, 0.5
    a[:, 2:] += 1e-9  # keep rows valid; classes near zero dominate the geometric mean
    b[:, 3:] += 1e-9
    write_probs(tmp_path / "a/best_model_fold1.csv", a)
    write_probs(tmp_path / "b/best_model_fold1.csv", b)
    targets = {}
    for method in ("mean", "geomean"):
        out = tmp_path / f"{method}.csv"
        done = run_cli("blend", "a/best_model_fold1.csv", "b/best_model_fold1.csv", "--root", tmp_path,
                       "--out", out, "--method", method)
        assert done.returncode == 0, done.stderr
        targets[method] = pd.read_csv(out)["TARGET"].tolist()
    assert targets == {"mean": [0, 0], "geomean": [1, 1]}
    done = run_cli("blend", "a/best_model_fold1.csv", "--root", tmp_path, "--out", tmp_path / "x.csv",
                   "--method", "median")
    assert done.returncode == 2 and "mean, geomean, rank" in done.stderr


# --- every rule and message in process (found by mutation testing, RELIABILITY.md 5) ----------------------

def test_recipe_problems_are_all_listed_word_for_word():
    members = [5, "a.csv", {"path": "b.csv", "colour": 1}, {"path": "a.csv", "weight": 0},
               {"path": "c.csv", "weight": 1e7}, "c.csv"]
    with pytest.raises(UserError) as caught:
        parse_blend_recipe({"members": members, "method": "median", "extra": 1, "other": 2}, "r.toml")
    assert str(caught.value) == "\n".join([
        "r.toml: invalid blend recipe:",
        "  - unknown key 'extra' (allowed: name, description, method, members, solutions)",
        "  - unknown key 'other' (allowed: name, description, method, members, solutions)",
        "  - method = 'median'; choose one of: mean, geomean, rank",
        "  - members entry 1: 5 is neither a path nor {path = ..., weight = ...}",
        "  - members entry 3: {'path': 'b.csv', 'colour': 1} is neither a path nor {path = ..., weight = ...}",
        "  - members entry 4 (a.csv): weight 0 must be a positive number",
        "  - members entry 5 (c.csv): weight 10000000.0 must be between 1e-06 and 1e+06 (weights are relative: "
        "use numbers like 1, 2, 3)",
        "  - listed more than once: a.csv, c.csv (give one entry a weight instead)",
    ])


@pytest.mark.parametrize("data, problem", [
    ({"members": ["a.csv"], "solutions": {"s": 1}},
     "give exactly one of `members = [...]` (CSV files) or a `[solutions]` table (weights)"),
    ({"members": []}, "`members` must be a non-empty list of CSV paths (or {path = ..., weight = ...} tables)"),
    ({"members": "a.csv"}, "`members` must be a non-empty list of CSV paths (or {path = ..., weight = ...} tables)"),
    ({"solutions": {}}, "`[solutions]` must be a non-empty table of solution = weight"),
    ({"solutions": "sol_a"}, "`[solutions]` must be a non-empty table of solution = weight"),
    ({"solutions": {"s": True}}, "solution s: weight True must be a positive number"),
    ({"solutions": {"s": 2e6}}, "solution s: weight 2000000.0 must be between 1e-06 and 1e+06 (weights are "
                                "relative: use numbers like 1, 2, 3)"),
])
def test_each_recipe_problem_has_its_own_line(data, problem):
    with pytest.raises(UserError) as caught:
        parse_blend_recipe(data, "r.toml")
    assert str(caught.value) == f"r.toml: invalid blend recipe:\n  - {problem}"


def test_weights_at_the_ends_of_their_range_are_accepted_and_the_name_defaults():
    recipe = parse_blend_recipe({"members": [{"path": "a.csv", "weight": 1e-6}, {"path": "b.csv", "weight": 1e6}]},
                                "r.toml")
    assert [member.weight for member in recipe.members] == [1e-6, 1e6]
    assert recipe.name == "blend" and recipe.method == "mean"
    assert parse_blend_recipe({"name": "mine", "members": ["a.csv"]}, "r.toml").name == "mine"


def test_recipe_files_name_themselves_in_their_errors(tmp_path):
    missing = tmp_path / "absent.toml"
    with pytest.raises(UserError) as caught:
        load_blend_recipe(missing)
    assert str(caught.value) == f"{missing}: recipe file not found. Check the --recipe path."
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(UserError) as caught:
        load_blend_recipe(broken)
    assert str(caught.value).startswith(f"{broken}: not valid TOML (") and str(caught.value).endswith(
        "). Fix the syntax.")
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('method = "mean"\n')
    with pytest.raises(UserError) as caught:
        load_blend_recipe(invalid)
    assert str(caught.value).startswith(f"{invalid}: invalid blend recipe:\n  - give exactly one of")
    unnamed = tmp_path / "my_blend.toml"
    unnamed.write_text('members = ["a.csv"]\n')
    assert load_blend_recipe(unnamed).name == "my_blend"


def test_recipe_toml_text_word_for_word():
    plain = BlendRecipe("w", "mean", (Member("a/x.csv"), Member("b/y.csv")))
    assert blend_recipe_toml(plain) == 'name = "w"\nmethod = "mean"\nmembers = [\n    "a/x.csv",\n    "b/y.csv",\n]\n'
    doubled = BlendRecipe("w", "geomean", (Member("a/x.csv", 2.0), Member("b/y.csv", 2.0)))  # equal, but not 1
    assert blend_recipe_toml(doubled, "two\nlines") == (
        '# two\n# lines\nname = "w"\nmethod = "geomean"\nmembers = [\n    { path = "a/x.csv", weight = 2 },\n'
        '    { path = "b/y.csv", weight = 2 },\n]\n')
    solutions = BlendRecipe("s", "rank", (Member("a", 3.0, True), Member("b", 0.5, True)))
    assert blend_recipe_toml(solutions) == 'name = "s"\nmethod = "rank"\n\n[solutions]\na = 3\nb = 0.5\n'
    with pytest.raises(ValueError, match="^a recipe mixes solutions and single files; TOML recipes hold one kind$"):
        blend_recipe_toml(BlendRecipe("m", "mean", (Member("a", 1.0, True), Member("b.csv"))))


def test_blend_refusals_word_for_word(tmp_path):
    write_probs(tmp_path / "a/best_model_fold1.csv", random_probs(4, 0))
    recipe = files_recipe("a/best_model_fold1.csv", "b/best_model_fold2.csv")
    with pytest.raises(UserError) as caught:
        blend(recipe, tmp_path)  # allow_missing is off unless asked for
    assert str(caught.value) == (
        f"1 of 2 blend members are missing under {tmp_path}:\n  - b/best_model_fold2.csv\nCheck --root and the "
        "member names, or pass --allow-missing to blend the members that exist (the result then differs from "
        "the full blend).")
    with pytest.raises(UserError) as caught:
        blend(files_recipe("x/best_model_fold1.csv"), tmp_path, allow_missing=True)
    assert str(caught.value) == (f"1 of 1 blend members are missing under {tmp_path}:\n  - x/best_model_fold1.csv\n"
                                 "No member exists; check --root.")
    with pytest.raises(UserError) as caught:
        blend(recipe, tmp_path / "nowhere")
    assert str(caught.value) == (f"--root {tmp_path / 'nowhere'}: folder not found. Point it at the folder "
                                 "holding the members.")
    with pytest.raises(UserError) as caught:
        blend(BlendRecipe("x", "median", recipe.members), tmp_path)
    assert str(caught.value) == "unknown blend method 'median'; choose one of: mean, geomean, rank."


def test_allow_missing_reports_the_members_actually_blended(tmp_path):
    probs = random_probs(6, 1)
    write_probs(tmp_path / "a/best_model_fold1.csv", probs)
    recipe = parse_blend_recipe({"members": ["a/best_model_fold1.csv", {"path": "b/best_model_fold2.csv",
                                                                      "weight": 2}], "name": "pair"}, "r.toml")
    result = blend(recipe, tmp_path, allow_missing=True)
    assert result.recipe == BlendRecipe("pair", "mean", (Member("a/best_model_fold1.csv"),))
    assert result.missing == ("b/best_model_fold2.csv",)
    assert [(report.member, report.agreement, report.rows_changed) for report in result.reports] == [
        (Member("a/best_model_fold1.csv"), 1.0, None)]


def test_blend_geomean_scores_are_probabilities(tmp_path):
    members = [random_probs(12, seed) for seed in (2, 3)]
    for k, probs in enumerate(members):
        write_probs(tmp_path / f"m{k}/best_model_fold1.csv", probs)
    result = blend(files_recipe("m0/best_model_fold1.csv", "m1/best_model_fold1.csv", method="geomean"), tmp_path)
    np.testing.assert_allclose(result.scores, combine(members, [1, 1], "geomean"), rtol=1e-12)
    np.testing.assert_allclose(result.scores.sum(axis=1), 1.0, rtol=1e-12)


def test_member_file_problems_word_for_word(tmp_path):
    write_probs(tmp_path / "a/best_model_fold1.csv", random_probs(3, 0))
    write_probs(tmp_path / "b/best_model_fold1.csv", random_probs(3, 1), ids=[0, 1, 7])
    with pytest.raises(UserError) as caught:
        blend(files_recipe("a/best_model_fold1.csv", "b/best_model_fold1.csv"), tmp_path)
    assert str(caught.value).endswith("\nEvery member must hold exactly the same IDs; regenerate or replace this file.")
    for name in ("c", "d"):
        frame = probs_frame(3)
        frame.loc[0, "2"] = -1.0
        (tmp_path / name).mkdir()
        frame.to_csv(tmp_path / name / "best_model_fold1.csv", index=False)
    alone = {}
    for name in ("c", "d"):  # a sole invalid file: its own error, nothing else
        with pytest.raises(UserError) as caught:
            blend(files_recipe(f"{name}/best_model_fold1.csv"), tmp_path)
        alone[name] = str(caught.value)
        assert f"{name}/best_model_fold1.csv" in alone[name] and "input files are invalid" not in alone[name]
    with pytest.raises(UserError) as caught:
        blend(files_recipe("c/best_model_fold1.csv", "d/best_model_fold1.csv"), tmp_path)
    assert str(caught.value) == f"2 of the blend's input files are invalid:\n\n{alone['c']}\n\n{alone['d']}"


def test_submission_frame_in_id_order_in_a_given_order_and_with_scores(tmp_path):
    probs = random_probs(4, 5)
    write_probs(tmp_path / "a/best_model_fold1.csv", probs[[2, 0, 3, 1]], ids=[2, 0, 3, 1])
    result = blend(files_recipe("a/best_model_fold1.csv"), tmp_path)
    frame = submission_frame(result)
    assert list(frame.columns) == ["ID", "TARGET"]
    assert frame["ID"].tolist() == [0, 1, 2, 3] and frame["TARGET"].tolist() == probs.argmax(axis=1).tolist()
    order = np.array([3, 1, 0, 2])
    scored = submission_frame(result, order, with_scores=True)
    assert list(scored.columns) == ["ID", "TARGET", *PROB_COLUMNS]
    assert scored["ID"].tolist() == order.tolist()
    np.testing.assert_allclose(scored[PROB_COLUMNS].to_numpy(), probs[order] / probs[order].sum(axis=1, keepdims=True),
                               rtol=1e-12)
    with pytest.raises(UserError) as caught:
        submission_frame(result, np.array([0, 1, 2, 9]))
    assert str(caught.value) == ("the blended members (4 rows) and --ids (4 rows) hold different ID sets:\n"
                                 "  - 1 ID(s) only in --ids, first: 9\n  - 1 ID(s) only in the blended members, first: 3"
                                 "\n--ids must list exactly the IDs of the members.")


def test_member_spaces_keep_float64_and_their_shape():
    two_rows = np.array([[0.3, 0.7], [0.6, 0.4]])
    np.testing.assert_array_equal(member_space(two_rows, "rank"), [[0.0, 1.0], [1.0, 0.0]])
    one_row = member_space(two_rows[:1], "rank")
    assert one_row.shape == (1, 2) and not one_row.any()
    single = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], dtype=np.float32)
    mean = combine([single], [1], "mean")
    assert mean.dtype == np.float64
    np.testing.assert_array_equal(mean, single.astype(np.float64) / single.astype(np.float64).sum(axis=1,
                                                                                                   keepdims=True))


def test_finish_is_a_row_wise_softmax_that_never_overflows():
    averaged = np.array([[0.0, -1000.0], [-1000.0, -1001.0], [800.0, 799.0]])
    second = np.exp(-1.0) / (1 + np.exp(-1.0))
    np.testing.assert_allclose(finish(averaged, "geomean"), [[1.0, 0.0], [1 - second, second], [1 - second, second]],
                               rtol=1e-12, atol=1e-300)
    assert finish(averaged, "mean") is averaged and finish(averaged, "rank") is averaged


# --- another data set's solutions: class-named columns ------------------------------------------------

OWN_CLASSES = ("beep", "hum", "whistle")


def write_own_solution(folder: Path, folds_probs: dict[int, np.ndarray], classes=OWN_CLASSES) -> None:
    """best_model_fold<k>.csv as training writes them for a data set other than UrbanSound8K."""
    from core.train.solution import with_probabilities

    folder.mkdir(parents=True, exist_ok=True)
    for fold, probs in folds_probs.items():
        ids = pd.DataFrame({"ID": np.arange(len(probs))})
        with_probabilities(ids, probs, classes).to_csv(folder / f"best_model_fold{fold}.csv", index=False)


def test_blend_reads_and_writes_the_class_named_columns_of_another_data_set(tmp_path):
    rng = np.random.default_rng(7)
    a1, a2, b1 = (rng.dirichlet(np.ones(3), size=20) for _ in range(3))
    write_own_solution(tmp_path / "a", {1: a1, 2: a2})
    write_own_solution(tmp_path / "b", {1: b1})
    assert pd.read_csv(tmp_path / "a/best_model_fold1.csv").columns.tolist() == ["ID", "TARGET", *OWN_CLASSES]
    recipe = tmp_path / "own.toml"
    recipe.write_text('method = "mean"\n[solutions]\na = 1\nb = 3\n')
    out = tmp_path / "own.csv"
    done = run_cli("blend", "--recipe", recipe, "--root", tmp_path, "--out", out, "--probs")
    assert done.returncode == 0, done.stderr
    expected = (1 * (a1 + a2) / 2 + 3 * b1) / 4  # the Dirichlet rows already sum to 1
    written = pd.read_csv(out)
    assert written.columns.tolist() == ["ID", "TARGET", *OWN_CLASSES]
    np.testing.assert_allclose(written[list(OWN_CLASSES)].to_numpy(), expected, rtol=1e-9)
    assert written["TARGET"].tolist() == expected.argmax(axis=1).tolist()
    counts = np.bincount(expected.argmax(axis=1), minlength=3)
    assert (f"predicted class counts: beep: {counts[0]}, hum: {counts[1]}, whistle: {counts[2]}") in done.stdout
    assert "ID,TARGET + blended probabilities beep, hum, whistle" in done.stdout


def test_members_with_different_class_lists_are_refused_by_name(tmp_path):
    rng = np.random.default_rng(8)
    write_own_solution(tmp_path / "a", {1: rng.dirichlet(np.ones(3), size=5)})
    write_own_solution(tmp_path / "other", {1: rng.dirichlet(np.ones(2), size=5)}, classes=("cat", "dog"))
    write_probs(tmp_path / "us8k/best_model_fold1.csv", random_probs(5, 9))
    with pytest.raises(UserError) as caught:
        blend(parse_blend_recipe({"solutions": {"a": 1, "other": 1, "us8k": 1}}, "test"), tmp_path)
    assert str(caught.value) == (
        "the blend's members predict 3 different class lists:\n"
        f"  - classes beep, hum, whistle in {tmp_path / 'a/best_model_fold1.csv'}\n"
        f"  - classes cat, dog in {tmp_path / 'other/best_model_fold1.csv'}\n"
        f"  - classes 0..9 in {tmp_path / 'us8k/best_model_fold1.csv'}\n"
        "Blend only solutions trained on the same data set (the same classes, in the same order).")
    # The same classes in another order are other columns: refused too, never silently re-indexed.
    write_own_solution(tmp_path / "b", {1: rng.dirichlet(np.ones(3), size=5)}, classes=("hum", "beep", "whistle"))
    with pytest.raises(UserError, match="2 different class lists"):
        blend(parse_blend_recipe({"solutions": {"a": 1, "b": 1}}, "test"), tmp_path)


def test_a_class_list_held_by_many_files_names_its_first_three(tmp_path):
    rng = np.random.default_rng(9)
    write_own_solution(tmp_path / "a", {fold: rng.dirichlet(np.ones(3), size=5) for fold in (1, 2, 3, 4)})
    for fold in (1, 2, 3):
        write_probs(tmp_path / f"us8k/best_model_fold{fold}.csv", random_probs(5, fold))
    with pytest.raises(UserError) as caught:
        blend(parse_blend_recipe({"solutions": {"a": 1, "us8k": 1}}, "test"), tmp_path)
    a_files = ", ".join(str(tmp_path / f"a/best_model_fold{fold}.csv") for fold in (1, 2, 3))
    us8k_files = ", ".join(str(tmp_path / f"us8k/best_model_fold{fold}.csv") for fold in (1, 2, 3))
    assert str(caught.value) == (
        "the blend's members predict 2 different class lists:\n"
        f"  - classes beep, hum, whistle in {a_files}, ...\n"
        f"  - classes 0..9 in {us8k_files}\n"
        "Blend only solutions trained on the same data set (the same classes, in the same order).")

def test_a_class_named_file_with_a_bad_value_names_its_class_column(tmp_path):
    write_own_solution(tmp_path / "a", {1: np.full((3, 3), 1 / 3)})
    path = tmp_path / "a/best_model_fold1.csv"
    frame = pd.read_csv(path)
    frame.loc[1, "hum"] = -0.5
    frame.to_csv(path, index=False)
    with pytest.raises(UserError) as caught:
        blend(files_recipe("a/best_model_fold1.csv"), tmp_path)
    assert str(caught.value).startswith(f"{path}: invalid probabilities in columns beep, hum, whistle:\n"
                                        "  - negative values in 1 row(s), first: line 3 (ID 1): hum=-0.5")
    pd.DataFrame({"ID": [0, 1], "TARGET": [0, 0]}).to_csv(path, index=False)  # no class column at all
    with pytest.raises(UserError, match="no class columns: expected 0..9 \\(UrbanSound8K\\) or one column per class"):
        blend(files_recipe("a/best_model_fold1.csv"), tmp_path)
