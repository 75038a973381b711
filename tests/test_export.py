"""export: one ONNX graph per solution (mel + PCEN inside) whose onnxruntime output equals PyTorch's."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from conftest import REPO, demo_clip, save_fold_checkpoints

from core import CLASS_NAMES, registry
from core.export import export_onnx, load_ensemble, read_metadata
from core.infer.classify import SaliencePolicy, classify_files, onnx_predictor, torch_predictor

PARITY_ATOL = 1e-4  # max abs difference of probabilities, onnxruntime vs PyTorch eval mode


def onnx_probabilities(path, waveforms: np.ndarray, salience: np.ndarray | None) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"waveforms": waveforms}
    if salience is not None:
        feeds["salience"] = salience
    return session.run(None, feeds)[0]


def check_parity(root, name: str, folds: tuple[int, ...], out) -> np.ndarray:
    """Export `name`, run three real-looking clips (a batch size the export never saw) through both."""
    exported = export_onnx(root / name, name, out)
    ensemble, _ = load_ensemble(root / name, name)
    frontend = registry.get(name).frontend
    waveforms = np.stack([demo_clip(index, frontend.sample_rate, frontend.num_samples) for index in (2, 5, 8)])
    salience = np.array([1, 2, 1], dtype=np.int64) if exported.uses_salience else None
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(waveforms), None if salience is None else torch.from_numpy(salience))
    got = onnx_probabilities(out, waveforms, salience)
    assert got.shape == (3, 10)
    difference = float(np.abs(got - expected.numpy()).max())
    assert difference < PARITY_ATOL, f"{name}: max abs difference {difference:.2e}"
    assert exported.folds == folds
    return got


@pytest.fixture(scope="module")
def baseline_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("solutions")
    save_fold_checkpoints(root, "resnet34_pcen_sam_8fold", folds=(1, 2))
    out = root / "baseline.onnx"
    check_parity(root, "resnet34_pcen_sam_8fold", (1, 2), out)
    return root, out


def test_baseline_parity_and_metadata(baseline_export):
    root, out = baseline_export
    metadata = read_metadata(out)
    assert metadata["solution"] == "resnet34_pcen_sam_8fold" and metadata["folds"] == "1,2"
    assert json.loads(metadata["class_names"]) == list(CLASS_NAMES)
    assert (int(metadata["sample_rate"]), int(metadata["num_samples"])) == (32000, 128000)
    assert metadata["inputs"] == "waveforms" and "salience" not in metadata


def test_bigru_fusion_model_parity(tmp_path):
    name = "resnet34_mr_salience_fusion_film_attention"
    save_fold_checkpoints(tmp_path, name, folds=(4,))
    check_parity(tmp_path, name, (4,), tmp_path / "mr.onnx")
    metadata = read_metadata(tmp_path / "mr.onnx")
    assert metadata["inputs"] == "waveforms,salience" and "1 = foreground" in metadata["salience"]


def test_classify_through_onnx_equals_pytorch(baseline_export, tmp_path):
    root, out = baseline_export
    path = tmp_path / "long.wav"
    soundfile.write(path, np.concatenate([demo_clip(i) for i in range(2)])[: 7 * 32000], 32000)
    policy = SaliencePolicy("marginal")
    ours = classify_files([path], torch_predictor(["resnet34_pcen_sam_8fold"], [1.0], "mean", root, device="cpu"),
                          salience=policy).files[0]
    exported = classify_files([path], onnx_predictor(out), salience=policy).files[0]
    assert len(ours.starts_s) == len(exported.starts_s) == 4
    np.testing.assert_allclose(exported.window_probs, ours.window_probs, atol=PARITY_ATOL)


def test_the_example_runs_without_torch_or_this_repo(baseline_export, tmp_path):
    _, out = baseline_export
    path = tmp_path / "clip.wav"
    soundfile.write(path, demo_clip(6, 22050, 3 * 22050), 22050)
    example = (REPO / "examples" / "onnx_classify.py").read_text()
    assert "import torch" not in example and "from core" not in example and "import core" not in example
    script = tmp_path / "onnx_classify.py"
    script.write_text(example)
    done = subprocess.run([sys.executable, "-I", str(script), str(out), str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["windows"] == 1 and result["target"] in CLASS_NAMES
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", registry.names())
def test_every_solution_exports_with_parity(name, tmp_path):
    save_fold_checkpoints(tmp_path, name, folds=(1,))
    check_parity(tmp_path, name, (1,), tmp_path / f"{name}.onnx")




def test_graph_over_the_threshold_keeps_its_weights_beside_it_with_parity(baseline_export, tmp_path):
    import onnx

    from core.export import external_data_path, write_model

    root, single_file = baseline_export
    out = tmp_path / "large.onnx"
    write_model(onnx.load(str(single_file)), out, external_data_threshold=1)  # every graph counts as "large"
    data = external_data_path(out)
    assert out.is_file() and data.is_file() and data.stat().st_size > out.stat().st_size
    locations = {entry.value for tensor in onnx.load(str(out), load_external_data=False).graph.initializer
                 for entry in tensor.external_data if entry.key == "location"}
    assert locations == {data.name}  # the final name, not a temporary one
    assert sorted(path.name for path in tmp_path.iterdir()) == ["large.onnx", "large.onnx.data"]
    ensemble, _ = load_ensemble(root / "resnet34_pcen_sam_8fold", "resnet34_pcen_sam_8fold")
    waveforms = np.stack([demo_clip(index, 32000, 128000) for index in (1, 4, 7)])
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(waveforms), None).numpy()
    assert float(np.abs(onnx_probabilities(out, waveforms, None) - expected).max()) < PARITY_ATOL
    write_model(onnx.load(str(single_file)), out)  # smaller again: the stale data file goes
    assert sorted(path.name for path in tmp_path.iterdir()) == ["large.onnx"]


@pytest.mark.parametrize("earlier_export", [False, True])
@pytest.mark.parametrize("failing_rename", [1, 2])
def test_interrupted_large_export_leaves_neither_file(baseline_export, tmp_path, monkeypatch, failing_rename,
                                                      earlier_export):
    import onnx

    import core.export as export_module

    proto = onnx.load(str(baseline_export[1]))
    if earlier_export:  # a complete earlier large export at the same path: neither of its files may stay alone
        export_module.write_model(onnx.load(str(baseline_export[1])), tmp_path / "large.onnx",
                                  external_data_threshold=1)
        assert sorted(path.name for path in tmp_path.iterdir()) == ["large.onnx", "large.onnx.data"]
    real_replace, calls = export_module.os.replace, []

    def interrupted_replace(source, target):
        calls.append(target)
        if len(calls) == failing_rename:  # 1: the data file's rename, 2: the .onnx's
            raise KeyboardInterrupt
        return real_replace(source, target)

    monkeypatch.setattr(export_module.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        export_module.write_model(proto, tmp_path / "large.onnx", external_data_threshold=1)
    assert list(tmp_path.iterdir()) == []  # no .onnx, no data file, no staging folder


def test_a_model_of_another_data_sets_classes_exports_and_classifies_with_them(tmp_path):
    """A 3-class model: the graph's output has 3 columns, class_names holds its names, and classify
    through the ONNX file names its columns with them (read from the metadata, never UrbanSound8K's)."""
    import onnx
    from conftest import tiny

    name, names = "resnet34_pcen_sam_8fold", ("beep", "hum", "whistle")
    recipe = tiny(name).derive(classes=names)
    save_fold_checkpoints(tmp_path, name, folds=(1,), recipe=recipe)
    out = tmp_path / "three.onnx"
    export_onnx(tmp_path / name, name, out)
    metadata = read_metadata(out)
    assert json.loads(metadata["class_names"]) == list(names) and "[batch, 3]" in metadata["probabilities"]
    waveforms = np.stack([demo_clip(index, recipe.frontend.sample_rate, recipe.frontend.num_samples)
                          for index in range(2)])
    assert onnx_probabilities(out, waveforms, None).shape == (2, 3)
    assert onnx_predictor(out).class_names == names

    unnamed = onnx.load(str(out))  # a graph without our class_names: refused, not read as UrbanSound8K's ten
    kept = [entry for entry in unnamed.metadata_props if entry.key != "class_names"]
    del unnamed.metadata_props[:]
    unnamed.metadata_props.extend(kept)
    onnx.save(unnamed, str(tmp_path / "unnamed.onnx"))
    from core.errors import UserError

    with pytest.raises(UserError, match="no sample_rate/num_samples/class_names metadata"):
        onnx_predictor(tmp_path / "unnamed.onnx")


def test_export_cli_writes_a_fold_beyond_urbansound8ks_ten(tmp_path, capsys):
    """A 12-fold data set's fold 12 exports like any other (the checkpoints decide which folds exist)."""
    from conftest import tiny
    from test_options import run_main

    save_fold_checkpoints(tmp_path, "resnet34_pcen_sam_8fold", folds=(1, 12), recipe=tiny("resnet34_pcen_sam_8fold"))
    out = tmp_path / "fold12.onnx"
    code, _, err = run_main(["export", "resnet34_pcen_sam_8fold", "--out", str(out), "--folds", "12",
                             "--solutions", str(tmp_path)], capsys)
    assert code in (0, None), err
    said = " ".join(err.split())
    assert read_metadata(out)["folds"] == "12" and "probabilities [batch, 10]" in said
    assert "waveforms [batch, 32000] float32 at 8000 Hz" in said  # shapes printed, not eaten as markup
