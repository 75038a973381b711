"""Fine-tuning: start a fold's model from a trained one (`train --init-from`), optionally head first.

`--init-from` takes a solution name (its lowest fold's best checkpoint under --solutions) or a .pt
file: one of our checkpoints, or a plain state dict of the same timm backbone (e.g. ImageNet weights
the user has on disk; its keys are the timm model's, `conv1.weight`, `layer1.0.bn1.weight`, ...).
Every tensor whose name and shape match is loaded; the classifier is left at its fresh
initialisation when the classes differ (its rows would mean other classes), the frontend's fixed
buffers when the frontend settings differ. A checkpoint of another backbone architecture is refused.
What was loaded, skipped and left new is printed, abbreviated by module.

`--freeze-backbone-epochs N` trains only the parts after the backbone (pooling, head) for the first
N epochs: the frontend and backbone get no gradient and run in eval mode (their BatchNorm statistics
stay those of the start model). Both options are part of the run identity.
"""
from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import UserError
from core.model.checkpoint import load as load_checkpoint
from core.recipe import Recipe, recipe_from_dict
from core.solution_folder import SolutionFolder

FROZEN_PREFIXES = ("audio_input.", "backbone.")  # what --freeze-backbone-epochs keeps still
FRONTEND_PREFIX = "audio_input.frontend."        # mel filterbank, window, PCEN: made from the frontend settings
CLASSIFIER_PREFIX = "classifier."
BACKBONE_BODY = "backbone.body."                 # where a timm model's own keys live in ours
SHOWN_NAMES = 3                                  # names shown per group in the report


def resolve(value: str, solutions: Path, protocols: tuple[str, ...]) -> Path:
    """The checkpoint file `--init-from value` names: a .pt path, or a solution's lowest fold's best model."""
    path = Path(value)
    if path.suffix == ".pt" or path.is_file():
        if not path.is_file():
            raise UserError(f"--init-from {value}: no such file; pass one of our best_model_fold<k>.pt, a state dict "
                            "of the same timm backbone, or a trained solution's name")
        return path
    for protocol in protocols:
        folder = SolutionFolder.of(solutions, value, protocol)
        folds = folder.folds_with("best_model") if folder.root.is_dir() else []
        if folds:
            return folder.best_model(folds[0])
    raise UserError(f"--init-from {value}: neither a .pt file nor a solution with checkpoints under {solutions} "
                    f"(looked in {', '.join(str(SolutionFolder.of(solutions, value, p).root) for p in protocols)}); "
                    "train it first or pass --solutions the folder that holds it")


@dataclass
class InitReport:
    """Which of the model's tensors came from the file (`loaded`), which of the file's were not used
    (`skipped`: name -> reason) and which kept their fresh initialisation (`new`)."""

    source: Path
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """'--init-from X: loaded 229 tensors (audio_input 11, backbone 216), skipped 2 (...), new 2 (...)'."""
        reasons = Counter(self.skipped.values())
        skipped = "; ".join(f"{count} {reason}" for reason, count in reasons.items())
        return (f"--init-from {self.source}: loaded {len(self.loaded)} tensors ({_grouped(self.loaded)}); "
                f"skipped {len(self.skipped)}" + (f" ({skipped}: {_grouped(list(self.skipped))})" if skipped else "")
                + f"; new {len(self.new)}" + (f" ({_grouped(self.new)})" if self.new else ""))


def _grouped(names: list[str]) -> str:
    """Names abbreviated: the count per top-level module, with the first few names of small groups."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split(".")[0], []).append(name)
    return ", ".join(f"{group} {len(members)}" + (f" {{{', '.join(members)}}}" if len(members) <= SHOWN_NAMES else "")
                     for group, members in groups.items())


def initialise(model: torch.nn.Module, recipe: Recipe, path: Path) -> InitReport:
    """Load the tensors of `path` that fit `model` (built from `recipe`); refuse another architecture."""
    state = _read(path)
    ours = model.state_dict()
    report = InitReport(Path(path))
    if isinstance(state.get("model"), dict) and "recipe" in state:
        candidates, excluded = _from_our_checkpoint(state, recipe, path)
    else:
        candidates, excluded = _from_timm_state(state, recipe, ours, path)
    chosen = {}
    for name, tensor in candidates.items():
        if name in excluded:
            report.skipped[name] = excluded[name]
        elif name not in ours:
            report.skipped[name] = "not in this model"
        elif not isinstance(tensor, torch.Tensor) or tensor.shape != ours[name].shape:
            report.skipped[name] = "of another shape"
        else:
            chosen[name] = tensor
    model.load_state_dict(chosen, strict=False)
    report.loaded = [name for name in ours if name in chosen]
    report.new = [name for name in ours if name not in chosen]
    return report


def _read(path: Path) -> dict:
    """The file's dict of tensors (our checkpoint, or a plain state dict), read safely."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # our loader words every failure (foreign objects, truncation)
        return load_checkpoint(path)
    if not isinstance(state, dict) or not state:
        raise UserError(f"--init-from {path}: holds a {type(state).__name__}, not a checkpoint or a state dict")
    return state


def _from_our_checkpoint(state: dict, recipe: Recipe, path: Path) -> tuple[dict, dict[str, str]]:
    """Our checkpoint's tensors, and those not to load with the reason; another backbone is refused."""
    try:
        saved = recipe_from_dict(state["recipe"])
    except (TypeError, ValueError, AttributeError) as error:
        raise UserError(f"--init-from {path}: its recipe cannot be read ({error}); it was not written by `train` "
                        "of this version") from error
    if saved.backbone.arch != recipe.backbone.arch:
        raise UserError(f"--init-from {path}: a {saved.backbone.arch} model (solution {state.get('solution')!r}), "
                        f"but {recipe.name} builds a {recipe.backbone.arch}; fine-tuning needs the same architecture "
                        "(train a solution with that backbone, or start from a checkpoint of this one)")
    excluded = {}
    tensors = state["model"]
    if saved.classes != recipe.classes:
        excluded.update({name: "classifier of other classes" for name in tensors if name.startswith(CLASSIFIER_PREFIX)})
    if _frontend_settings(saved) != _frontend_settings(recipe):
        excluded.update({name: "frontend of other settings" for name in tensors if name.startswith(FRONTEND_PREFIX)
                         and not _is_trained(name)})
    return tensors, excluded


def _frontend_settings(recipe: Recipe) -> dict:
    """The frontend fields its fixed buffers are made from (the clip length changes none)."""
    settings = recipe.to_dict()["frontend"]
    settings.pop("clip_seconds")
    return settings


def _is_trained(name: str) -> bool:
    """PCEN's trainable scalars carry over between frontends; the filterbank, window and smoother do not."""
    return name.rsplit(".", 1)[-1] in ("alpha", "delta", "r")


def _from_timm_state(state: dict, recipe: Recipe, ours: dict, path: Path) -> tuple[dict, dict[str, str]]:
    """A plain timm state dict mapped onto our backbone's body; refused when it does not look like that model."""
    if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise UserError(f"--init-from {path}: neither one of our checkpoints nor a plain state dict (name -> tensor)")
    mapped = {BACKBONE_BODY + key: value for key, value in state.items()}
    body = [name for name in ours if name.startswith(BACKBONE_BODY)]
    fitting = [name for name in body if name in mapped and mapped[name].shape == ours[name].shape]
    if len(fitting) < len(body) // 2:
        raise UserError(f"--init-from {path}: only {len(fitting)} of the {len(body)} tensors of a {recipe.backbone.arch} "
                        f"backbone are in it with their shapes; it is a state dict of another architecture (fine-tuning "
                        "needs the same one)")
    return mapped, {}


@functools.cache
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def identity_value(path: Path | None) -> str | None:
    """How --init-from enters the run identity: the file's name and content hash (not where it is mounted)."""
    if path is None:
        return None
    stat = Path(path).stat()
    return f"{Path(path).name} sha256 {_digest(Path(path).resolve(), stat.st_size, stat.st_mtime_ns)}"


def set_backbone_trainable(model: torch.nn.Module, epoch: int, freeze_epochs: int) -> None:
    """Epochs 1..freeze_epochs train only what follows the backbone; later epochs train everything.

    While frozen, the frontend and backbone also run in eval mode (BatchNorm normalises with the
    statistics they were trained with), so the head learns on the very features it sees at validation.
    """
    if not freeze_epochs:
        return
    trainable = epoch > freeze_epochs
    for name, parameter in model.named_parameters():
        if name.startswith(FROZEN_PREFIXES):
            parameter.requires_grad_(trainable)
    hooks = model.__dict__.setdefault("_frozen_eval_hooks", [])
    if not trainable and not hooks:
        hooks.extend(getattr(model, prefix.rstrip(".")).register_forward_pre_hook(_run_in_eval_mode)
                     for prefix in FROZEN_PREFIXES)
    elif trainable:
        while hooks:
            hooks.pop().remove()


def _run_in_eval_mode(module: torch.nn.Module, inputs: tuple) -> None:
    module.eval()  # the loop's model.train() set it back to training mode: frozen parts stay as trained
