"""Export a trained solution's fold models as one ONNX graph that runs without this repository.

Inputs:  waveforms float32 [batch, num_samples], mono at the model's sample rate (one clip each);
         salience int64 [batch] for the fusion solutions (1 foreground, 2 background).
Output:  probabilities float32 [batch, 10], the mean of the fold models' softmax.
The mel spectrogram and PCEN (its inference path: a matmul smoother and plain tensor ops) are in
the graph; the batch dimension is dynamic. Built with the maintained exporter (torch.onnx.export,
dynamo); input validation stays outside the graph (see core/infer/classify.py and
examples/onnx_classify.py). The model's metadata_props carry what a user needs to feed it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from core.atomic import TEMP_SUFFIX, atomic_open, fsync_dir
from core.errors import UserError
from core.folds import SALIENCE_NAMES
from core.model.ensemble import FoldEnsemble

SALIENCE_MEANING = "int64 [batch]: 1 = foreground, 2 = background (UrbanSound8K's salience annotation)"
PROTOBUF_LIMIT = 2 ** 31 - 2 ** 24  # a single ONNX file must stay under 2 GiB; larger graphs keep weights beside it


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    solution: str
    folds: tuple[int, ...]
    sample_rate: int
    num_samples: int
    uses_salience: bool
    class_names: tuple[str, ...] = ()


def load_ensemble(solution_dir: Path, solution: str, folds: tuple[int, ...] | None = None):
    """(FoldEnsemble on the CPU in eval mode, the fold models) of a trained solution."""
    from core.infer.fold_models import load_fold_models
    from core.runtime import Runtime

    runtime = Runtime(torch.device("cpu"), "fp32", channels_last=False)
    models = load_fold_models(solution_dir, solution, runtime, folds)
    ensemble = FoldEnsemble([m.model for m in models], [m.recipe.frontend for m in models]).eval()
    return ensemble, models


def export_onnx(solution_dir: Path, solution: str, out: Path, folds: tuple[int, ...] | None = None,
                opset: int | None = None, external_data_threshold: int = PROTOBUF_LIMIT) -> ExportedModel:
    """Write the fold ensemble of `solution` to `out` (atomically); return what was written.

    A graph of `external_data_threshold` bytes or more keeps its weights in `<out>.data` (see write_model).
    """
    ensemble, models = load_ensemble(solution_dir, solution, folds)
    ensemble.use_plain_ops()
    frontend, class_names = models[0].recipe.frontend, models[0].recipe.classes
    batch = torch.export.Dim("batch", min=1)
    example = torch.zeros(2, frontend.num_samples)
    args: tuple = (example,)
    names = ["waveforms"]
    shapes: dict = {"waveforms": {0: batch}}
    if ensemble.uses_salience:
        args += (torch.tensor([1, 2], dtype=torch.int64),)
        names.append("salience")
        shapes["salience"] = {0: batch}
    try:  # the exporter narrates its steps on stdout and warns about internals: keep the user's terminal clean
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(ensemble, args, dynamo=True, input_names=names,
                                        output_names=["probabilities"], dynamic_shapes=shapes,
                                        opset_version=opset, verbose=False)
    except Exception as error:  # the exporter's own message says which operator failed
        raise UserError(f"exporting {solution} to ONNX failed: {type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}") from error
    proto = program.model_proto
    fold_list = tuple(m.fold for m in models)
    metadata = {
        "solution": solution, "folds": ",".join(map(str, fold_list)), "class_names": json.dumps(list(class_names)),
        "sample_rate": str(frontend.sample_rate), "num_samples": str(frontend.num_samples),
        "clip_seconds": f"{frontend.clip_seconds:g}", "inputs": ",".join(names),
        "waveforms": "float32 [batch, num_samples]: mono clips at sample_rate, right zero-padded or centre-cropped "
                     "to num_samples",
        "probabilities": f"float32 [batch, {len(class_names)}]: mean of the fold models' softmax, columns in class_names order",
    }
    if ensemble.uses_salience:
        metadata["salience"] = SALIENCE_MEANING
        metadata["salience_names"] = json.dumps({str(k): v for k, v in SALIENCE_NAMES.items()})
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_model(proto, Path(out), external_data_threshold)
    return ExportedModel(Path(out), solution, fold_list, frontend.sample_rate, frontend.num_samples,
                         ensemble.uses_salience, tuple(class_names))


def external_data_path(out: Path) -> Path:
    """The file beside `out` that holds the weights of a graph too large for one protobuf."""
    return out.with_name(out.name + ".data")


def write_model(proto, out: Path, external_data_threshold: int = PROTOBUF_LIMIT) -> None:
    """Save atomically; a graph of `external_data_threshold` bytes or more keeps its weights in `<out>.data`.

    Either way a reader sees the complete new model or none: the pair is written into a temporary folder
    beside `out`, then the data file is renamed into place first and the .onnx (the commit point) last.
    An earlier pair at `out` is removed before the renames, so a failure leaves neither file, old or new.
    """
    data = external_data_path(out)
    if proto.ByteSize() < external_data_threshold:
        with atomic_open(out, "wb") as handle:
            handle.write(proto.SerializeToString())
        with contextlib.suppress(FileNotFoundError):
            data.unlink()  # weights of an earlier, larger export that nothing references now
        return
    _write_with_external_data(proto, out, data)


def _write_with_external_data(proto, out: Path, data: Path) -> None:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=TEMP_SUFFIX, dir=out.parent))
    renamed: list[Path] = []
    try:
        staged_model, staged_data = staging / out.name, staging / data.name
        # `location` is relative to the .onnx: the same name resolves in the staging folder and beside `out`.
        onnx.save_model(proto, str(staged_model), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        for staged in (staged_data, staged_model):
            _fsync_file(staged)
        for earlier in (out, data):  # an earlier pair goes first: its .onnx must never meet the new data
            with contextlib.suppress(FileNotFoundError):
                earlier.unlink()
        os.replace(staged_data, data)
        renamed.append(data)
        os.replace(staged_model, out)
        renamed.append(out)
        fsync_dir(out.parent)
    except BaseException:
        if data in renamed and out not in renamed:  # the .onnx never arrived: its data file must not stay
            with contextlib.suppress(FileNotFoundError):
                data.unlink()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata_props of an exported model."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}
