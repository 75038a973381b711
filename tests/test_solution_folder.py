"""One owner of the solution folder: names round-trip, listing ignores look-alikes, and no other module
builds or parses those names."""
from __future__ import annotations

import re

from conftest import REPO

from core.solution_folder import SolutionFolder, fold_file_name, fold_of

# Code that builds or parses a fold file name: an f-string/format "<kind>_fold{", a glob on one, or a
# removeprefix/regex taking the fold number out of one (messages naming "best_model_fold<k>.pt" are fine).
BUILDS_OR_PARSES = re.compile(r"_fold\{|glob\([^)]*_fold|removeprefix\([^)]*_fold|_fold\(\\d")


def test_every_kind_round_trips_and_look_alikes_are_not_listed(tmp_path):
    folder = SolutionFolder(tmp_path)
    for name in ("best_model_fold3.pt", "best_model_fold3.staged.pt", "best_model_fold12.csv", "oof_fold3.csv",
                 ".best_model_fold4.pt.x1.tmp", "best_model_fold.pt", "result_fold7.json", "last_fold7.pt"):
        (tmp_path / name).write_text("")
    assert folder.folds_with("best_model") == [3]
    assert folder.folds_with("staged_best") == [3]
    assert folder.folds_with("best_predictions") == [12]
    assert folder.finished_folds() == [7] and folder.folds_with("resume") == [7]
    assert fold_of("oof", fold_file_name("oof", 5)) == 5 and fold_of("oof", "oof_fold5.csv.bak") is None
    assert SolutionFolder.of(tmp_path, "x", "us8k-10fold").result(2) == tmp_path / "x" / "us8k-10fold" / "result_fold2.json"


def test_no_other_module_builds_or_parses_solution_folder_names():
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for path in sorted((REPO / "core").rglob("*.py")) if path.name != "solution_folder.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if BUILDS_OR_PARSES.search(line)]
    assert offenders == []


def test_a_result_file_that_is_not_a_json_object_is_a_user_error_naming_it(tmp_path):
    import pytest

    from core.errors import UserError

    folder = SolutionFolder(tmp_path)
    for text, problem in (("{\"fold\": 3,", "not valid JSON (Expecting"), ("[3]", "not a JSON object")):
        folder.result(3).write_text(text)
        with pytest.raises(UserError) as refused:
            folder.read_result(3)
        message = str(refused.value)
        assert message.startswith(f"{folder.result(3)}: {problem}") and len(message.splitlines()) == 1
        assert message.endswith("Restore it, or delete it to train fold 3 again.")
    folder.result(3).write_text('{"fold": 3}')
    assert folder.read_results() == {3: {"fold": 3}}
