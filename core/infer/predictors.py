"""What runs the windows: every fold model of one or more solutions (PyTorch, blended), or an ONNX export."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.folds import URBANSOUND8K_CLASSES

Predictor = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]  # (windows [B, L], salience values) -> [B, classes]
# (strip [(count - 1) * hop + L], count, hop, salience values, backbone_once) -> [count, classes]
StripPredictor = Callable[[np.ndarray, int, int, tuple[int, ...], bool], np.ndarray]


@dataclass
class ModelSpec:
    """What a predictor needs as input, and how to call it."""

    sample_rate: int
    num_samples: int
    predict: Predictor
    uses_salience: bool
    description: str
    fold_keys: tuple[int, ...] = ()             # the fold models' keys (k of best_model_fold<k>), every solution
    class_names: tuple[str, ...] = URBANSOUND8K_CLASSES  # the predictions' columns, in order (from the models)
    predict_strip: StripPredictor | None = None  # overlapping windows of one strip, sharing work (PyTorch only)


def torch_predictor(solution_names: Sequence[str], weights: Sequence[float], method: str, solutions: Path,
                    device: str = "auto", precision: str = "auto", folds: tuple[int, ...] | None = None,
                    protocol: str = "kaggle", optimise: bool = True) -> ModelSpec:
    """Every fold model (or those of `folds`) of each solution in its `protocol` folder under `solutions`
    (core/solution_folder.py), blended with `method` and `weights`; `optimise`: each model in its inference
    form (core/model/inference_form.py: the same function to float rounding, faster), else as trained."""
    import torch

    from core.blend import combine
    from core.infer.fold_models import load_fold_models
    from core.model.ensemble import FoldEnsemble
    from core.model.inference_form import inference_form
    from core.runtime import Runtime, autocast, configure_backends
    from core.solution_folder import SolutionFolder

    runtime = Runtime.resolve(device, precision)
    configure_backends(runtime.device)
    ensembles, rates, lengths, keys, classes = [], {}, {}, set(), {}
    for name in solution_names:
        models = load_fold_models(SolutionFolder.of(solutions, name, protocol).root, name, runtime, folds)
        if optimise:
            for fold_model in models:
                fold_model.model = inference_form(fold_model.model)
        frontend = models[0].recipe.frontend
        keys.update(m.fold for m in models)
        rates[name], lengths[name] = frontend.sample_rate, frontend.num_samples
        classes.update({(name, m.fold): m.recipe.classes for m in models})
        ensembles.append(FoldEnsemble([m.model for m in models], [m.recipe.frontend for m in models]).eval())
    check_same_input(rates, lengths)
    check_same_classes(classes)

    def run(salience_values: tuple[int, ...], batch: int, probabilities) -> np.ndarray:
        """Each solution's probabilities (`probabilities(ensemble, saliences)`), blended."""
        per_solution = []
        with torch.inference_mode(), autocast(runtime.device, runtime.precision):
            for ensemble in ensembles:
                values = salience_values if ensemble.uses_salience else (None,)
                saliences = [None if v is None else torch.full((batch,), v, dtype=torch.int64,
                                                                device=runtime.device) for v in values]
                runs = probabilities(ensemble, saliences)
                per_solution.append(torch.stack(runs).mean(dim=0).float().cpu().numpy())
        return per_solution[0] if len(per_solution) == 1 else combine(per_solution, weights, method)

    def predict(windows: np.ndarray, salience_values: tuple[int, ...]) -> np.ndarray:
        waveforms = torch.from_numpy(windows).to(runtime.device, non_blocking=True)
        return run(salience_values, len(windows), lambda ensemble, saliences: ensemble.probabilities(waveforms,
                                                                                                      saliences))

    def predict_strip(strip: np.ndarray, count: int, hop: int, salience_values: tuple[int, ...],
                      backbone_once: bool) -> np.ndarray:
        waveform = torch.from_numpy(np.ascontiguousarray(strip)).to(runtime.device, non_blocking=True)
        return run(salience_values, count, lambda ensemble, saliences: ensemble.window_probabilities(
            waveform, count, hop, saliences, backbone_once))

    name = next(iter(rates))
    return ModelSpec(rates[name], lengths[name], predict, any(e.uses_salience for e in ensembles),
                     " + ".join(f"{n} ({w:g})" if len(solution_names) > 1 else n
                                for n, w in zip(solution_names, weights, strict=True)),
                     tuple(sorted(keys)), next(iter(classes.values())), predict_strip)


def check_same_classes(classes: dict[tuple[str, int], tuple[str, ...]]) -> None:
    """Fold models averaged together must predict the same classes in the same order."""
    if len(set(classes.values())) > 1:
        shown = "; ".join(f"{name} fold {fold}: {len(names)} classes ({', '.join(names[:3])}, ...)"
                          for (name, fold), names in classes.items())
        raise UserError(f"the models predict different classes ({shown}); classify with models of one data set")


def check_same_input(rates: dict[str, int], lengths: dict[str, int]) -> None:
    """Solutions blended together must take the same sample rate and clip length."""
    if len(set(rates.values())) > 1 or len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {rates[name]} Hz x {lengths[name]} samples" for name in rates)
        raise UserError(f"the solutions disagree on sample rate or clip length ({shown}); classify them separately")


def onnx_predictor(path: Path, threads: int = 0) -> ModelSpec:
    """An exported model (core/export.py) run by onnxruntime on the CPU (`threads` > 0: that many intra-op
    threads; 0: onnxruntime's default, one per physical core)."""
    import onnxruntime

    from core.export import read_metadata

    if not Path(path).is_file():
        raise UserError(f"--onnx {path}: no such file; write one with `python -m core export SOLUTION --out FILE`")
    try:
        metadata = read_metadata(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise UserError(f"--onnx {path}: not a model onnxruntime can load ({type(error).__name__})") from error
    if "sample_rate" not in metadata or "num_samples" not in metadata or "class_names" not in metadata:
        raise UserError(f"--onnx {path}: no sample_rate/num_samples/class_names metadata; export it with "
                        "`python -m core export`")
    import json

    class_names = tuple(json.loads(metadata["class_names"]))  # every export writes them: never a guess
    inputs = [item.name for item in session.get_inputs()]
    uses_salience = "salience" in inputs

    def predict(windows: np.ndarray, salience_values: tuple[int, ...]) -> np.ndarray:
        runs = []
        for value in (salience_values if uses_salience else (None,)):
            feeds = {"waveforms": windows}
            if value is not None:
                feeds["salience"] = np.full(len(windows), value, dtype=np.int64)
            runs.append(session.run(None, feeds)[0])
        return np.mean(runs, axis=0)

    return ModelSpec(int(metadata["sample_rate"]), int(metadata["num_samples"]), predict, uses_salience,
                     f"{path} ({metadata.get('solution', '?')}, folds {metadata.get('folds', '?')})",
                     tuple(int(k) for k in str(metadata.get("folds", "")).split(",") if k.strip().isdigit()),
                     class_names)
