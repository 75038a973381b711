"""Safe loading: checkpoints are read with weights_only=True (a pickled payload is refused, never run);
a checkpoint of another solution, of another architecture, truncated or foreign gives one clear
error naming both sides, through the library and through `predict` / `train`."""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
from test_bad_input import assert_refused, isolated_run, run_cli

from core import registry
from core.errors import UserError
from core.train import checkpoint

REPO = Path(__file__).resolve().parents[1]
SOLUTION = "resnet34_pcen_sam_8fold"
OTHER = "wideresnet"


def leave_marker(path: str) -> None:
    """The payload's visible effect."""
    Path(path).touch()


class TouchOnUnpickle:
    """A pickle payload with a visible effect: unpickling it calls leave_marker (arbitrary code would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return leave_marker, (str(self.marker),)


@pytest.fixture(scope="module")
def recipe():
    """The solution's registered recipe."""
    return registry.get(SOLUTION)


@pytest.fixture(scope="module")
def model(recipe):
    """A freshly initialised model of that recipe."""
    from core.model.network import build_model

    torch.manual_seed(0)
    return build_model(recipe)


@pytest.fixture(scope="module")
def best_checkpoint(tmp_path_factory, recipe, model) -> Path:
    """A genuine best-model checkpoint of SOLUTION, as `train` writes it."""
    path = tmp_path_factory.mktemp("ckpt") / "best_model_fold1.pt"
    checkpoint.save_best(path, recipe, 1, 3, {"accuracy": 0.5}, model)
    return path


def solution_folder(root: Path, solution: str, checkpoint_file: Path) -> Path:
    """solutions/<solution>/best_model_fold1.pt holding `checkpoint_file` (a link: nothing is copied)."""
    folder = root / "solutions" / solution
    folder.mkdir(parents=True)
    (folder / "best_model_fold1.pt").symlink_to(checkpoint_file)
    return root / "solutions"


def predict(root: Path, solution: str, solutions: Path, tiny_data: Path):
    """`predict` from `root`; predicting itself must not start."""
    with isolated_run(root, stage="core.train.predict.predict_folds"):  # loading must fail before predicting
        return run_cli("predict", solution, "--data", tiny_data, "--solutions", solutions, "--out", root / "out",
                       "--submission", root / "submission.csv", "--device", "cpu", "--no-progress")


def test_every_torch_load_in_core_uses_weights_only_true():
    calls = []
    for path in sorted((REPO / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                calls.append((path.name, node.lineno, {kw.arg: kw.value for kw in node.keywords}))
    assert calls, "no torch.load found: the check would pass vacuously"
    for name, line, keywords in calls:
        flag = keywords.get("weights_only")
        assert isinstance(flag, ast.Constant) and flag.value is True, f"{name}:{line} torch.load without weights_only=True"


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(TouchOnUnpickle(tmp_path / "control")))
    assert (tmp_path / "control").exists(), "the payload has an effect when unpickled unsafely"

    path = tmp_path / "best_model_fold1.pt"
    torch.save({"solution": SOLUTION, "model": {}, "extra": TouchOnUnpickle(marker)}, path)
    with pytest.raises(UserError) as caught:
        checkpoint.load(path)
    message = str(caught.value)
    assert str(path) in message and "refusing checkpoint" in message and "Nothing in it was executed" in message
    assert "global test_safe_loading.leave_marker" in message  # names what was blocked
    assert "weights_only` set to `False`" not in message  # never advise the unsafe retry
    assert not marker.exists()


def test_predict_refuses_a_pickled_payload_without_running_it(tmp_path, tiny_data):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"solution": SOLUTION, "recipe": {}, "model": {}, "extra": TouchOnUnpickle(marker)}, evil)
    result = predict(tmp_path, SOLUTION, solution_folder(tmp_path, SOLUTION, evil), tiny_data)
    assert_refused(result, "best_model_fold1.pt", outputs=(tmp_path / "submission.csv",))
    assert "refusing checkpoint" in result.stderr
    assert not marker.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_a_checkpoint_of_another_solution_names_both(best_checkpoint, model):
    with pytest.raises(UserError) as caught:
        checkpoint.load_best_into(best_checkpoint, model, OTHER)
    message = str(caught.value)
    assert str(best_checkpoint) in message and repr(SOLUTION) in message and repr(OTHER) in message


def test_predict_with_a_checkpoint_copied_from_another_solution_names_both(tmp_path, tiny_data, best_checkpoint):
    result = predict(tmp_path, OTHER, solution_folder(tmp_path, OTHER, best_checkpoint), tiny_data)
    assert_refused(result, "best_model_fold1.pt", outputs=(tmp_path / "submission.csv",))
    assert f"belongs to solution '{SOLUTION}', not '{OTHER}'" in result.stderr


def test_a_checkpoint_of_another_architecture_names_both(best_checkpoint, recipe):
    from core.model.network import build_model

    smaller = build_model(recipe.derive(backbone=dict(arch="resnet18")))  # same solution name, changed recipe
    before = {name: tensor.clone() for name, tensor in smaller.state_dict().items()}
    with pytest.raises(UserError) as caught:
        checkpoint.load_best_into(best_checkpoint, smaller, SOLUTION)
    message = str(caught.value)
    assert str(best_checkpoint) in message and "backbone resnet34" in message and repr(SOLUTION) in message
    assert "unexpected (first: backbone.body.layer1.2." in message  # resnet34 has 3 blocks in layer1, resnet18 2
    assert len(message.splitlines()) == 1
    for name, tensor in smaller.state_dict().items():  # nothing was half-loaded
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("damage, fragment", [
    (lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]), "cannot read checkpoint"),
    (lambda path: path.write_bytes(b""), "cannot read checkpoint"),
    (lambda path: torch.save(torch.zeros(3), path), "is not a checkpoint written by `train`"),
    (lambda path: torch.save({"conv.weight": torch.zeros(3)}, path), "is not a checkpoint written by `train`"),
])
def test_truncated_or_foreign_files_give_one_clear_line(tmp_path, best_checkpoint, damage, fragment):
    path = tmp_path / "best_model_fold1.pt"
    path.write_bytes(best_checkpoint.read_bytes())
    damage(path)
    with pytest.raises(UserError) as caught:
        checkpoint.load(path)
    assert str(path) in str(caught.value) and fragment in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_predict_refuses_a_checkpoint_without_a_recipe(tmp_path, tiny_data, model):
    plain = tmp_path / "plain.pt"
    torch.save({"solution": SOLUTION, "model": model.state_dict()}, plain)  # no recipe: not from `train`
    result = predict(tmp_path, SOLUTION, solution_folder(tmp_path, SOLUTION, plain), tiny_data)
    assert_refused(result, "best_model_fold1.pt", outputs=(tmp_path / "submission.csv",))
    assert "holds no usable recipe" in result.stderr


def test_resuming_from_another_runs_state_is_refused(tmp_path, tiny_data, model):
    out = tmp_path / "out"
    out.mkdir()
    foreign = {"solution": OTHER, "fingerprint": "0123456789abcdef", "epoch": 1, "model": model.state_dict()}
    torch.save(foreign, out / "last_fold1.pt")
    with isolated_run(tmp_path, stage="core.train.trainer.FoldTrainer.train_epoch"):  # the state is checked before any step
        result = run_cli("train", SOLUTION, "--data", tiny_data, "--out", out, "--folds", "1", "--epochs", "1",
                         "--max-clips-per-fold", "1", "--device", "cpu", "--precision", "fp32", "--no-progress")
    assert_refused(result, "last_fold1.pt")
    assert "has no run identity" in result.stderr  # an older version's state: refused, not guessed at
    assert torch.load(out / "last_fold1.pt", weights_only=True)["fingerprint"] == foreign["fingerprint"]
