"""classify: windows of any-length files, the salience policy, blending solutions, bad input, outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile
from conftest import REPO, demo_clip, save_fold_checkpoints, subprocess_env, tiny

from core import CLASS_NAMES
from core.blend import combine
from core.errors import UserError
from core.infer.classify import (
    SaliencePolicy,
    classify_files,
    cut_window,
    find_audio,
    torch_predictor,
    window_frame,
    window_starts,
)

RATE, CLIP = 32000, 128000
BASELINE, FUSION = "resnet34_pcen_sam_8fold", "resnet34_pcen_salience_fusion_attention"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two folds of the baseline and one of a concat-fusion model, as `train` would leave them (small
    frontends and backbones: classification does not depend on the model's size; tests/test_export.py
    runs the real architectures)."""
    root = tmp_path_factory.mktemp("solutions")
    save_fold_checkpoints(root, BASELINE, folds=(1, 2), recipe=tiny(BASELINE))
    save_fold_checkpoints(root, FUSION, folds=(3,), recipe=tiny(FUSION))
    return root


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """A 10.5 s recording at 44.1 kHz (stereo), a 2 s one at 32 kHz, and a corrupt file, in one folder."""
    folder = tmp_path_factory.mktemp("recordings")
    long_signal = np.concatenate([demo_clip(index, 44100, 44100 * 4) for index in range(3)])[: int(10.5 * 44100)]
    soundfile.write(folder / "street.wav", np.stack([long_signal, 0.5 * long_signal], axis=1), 44100)
    soundfile.write(folder / "short.flac", demo_clip(3, RATE, 2 * RATE), RATE)
    (folder / "notes.txt").write_text("not audio")
    return folder


def test_windows_of_a_10_5_s_file_at_hop_1_s():
    starts = window_starts(int(10.5 * RATE), CLIP, RATE)
    assert [start / RATE for start in starts] == [0, 1, 2, 3, 4, 5, 6, 6.5]  # the last one ends at the end
    assert starts[-1] + CLIP == int(10.5 * RATE)


def test_a_2_s_file_is_one_window_padded_as_in_training():
    from core.data.audio import fit_length

    signal = np.random.default_rng(0).standard_normal(2 * RATE).astype(np.float32)
    assert window_starts(len(signal), CLIP, RATE) == [0]
    window = cut_window(signal, 0, CLIP)
    np.testing.assert_array_equal(window, fit_length(signal, CLIP))
    assert window.shape == (CLIP,) and not window[2 * RATE:].any()


def test_folders_are_searched_recursively_for_audio_only(recordings, tmp_path):
    files = find_audio([recordings])
    assert [path.name for path in files] == ["short.flac", "street.wav"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(UserError, match="holds no audio"):
        find_audio([tmp_path / "empty"])


def test_files_are_decoded_and_windowed_in_shared_batches(trained, recordings):
    spec = torch_predictor([BASELINE], [1.0], "mean", trained, device="cpu")
    calls = []
    predict = spec.predict
    spec.predict = lambda windows, values: calls.append(len(windows)) or predict(windows, values)
    result = classify_files(find_audio([recordings]), spec, batch_size=4)
    by_name = {f.path.name: f for f in result.files}
    assert len(by_name["street.wav"].starts_s) == 8 and len(by_name["short.flac"].starts_s) == 1
    assert calls == [4, 4, 1]  # 9 windows of two files in batches of 4: files share batches
    assert by_name["street.wav"].duration_s == pytest.approx(10.5)
    np.testing.assert_allclose(by_name["street.wav"].probs, by_name["street.wav"].window_probs.mean(axis=0))
    mx = classify_files([recordings / "street.wav"], spec, aggregate="max").files[0]
    np.testing.assert_allclose(mx.probs, mx.window_probs.max(axis=0))
    windows = window_frame(result)
    assert list(windows.columns) == ["file", "start_s", "end_s", "TARGET", *CLASS_NAMES]
    street = windows[windows["file"].str.endswith("street.wav")]
    assert list(street["start_s"]) == [0, 1, 2, 3, 4, 5, 6, 6.5] and street["end_s"].iloc[-1] == pytest.approx(10.5)


def test_marginal_salience_is_the_mean_of_the_two_fixed_runs(trained, recordings):
    spec = torch_predictor([FUSION], [1.0], "mean", trained, device="cpu")
    files = [recordings / "street.wav"]
    runs = {kind: classify_files(files, spec, salience=policy).files[0].window_probs
            for kind, policy in (("marginal", SaliencePolicy("marginal")), ("1", SaliencePolicy("fixed", 1)),
                                 ("2", SaliencePolicy("fixed", 2)))}
    assert not np.allclose(runs["1"], runs["2"])  # the salience reaches the model
    np.testing.assert_allclose(runs["marginal"], (runs["1"] + runs["2"]) / 2, atol=1e-6)


def test_a_blend_of_two_solutions_follows_blends_rule(trained, recordings, tmp_path):
    files = [recordings / "short.flac"]
    single = {name: classify_files(files, torch_predictor([name], [1.0], "mean", trained, device="cpu"),
                                   salience=SaliencePolicy("fixed", 1)).files[0].probs
              for name in (BASELINE, FUSION)}
    for method in ("mean", "geomean"):
        spec = torch_predictor([BASELINE, FUSION], [1.0, 3.0], method, trained, device="cpu")
        blended = classify_files(files, spec, salience=SaliencePolicy("fixed", 1)).files[0].probs
        expected = combine([single[BASELINE][None], single[FUSION][None]], [1.0, 3.0], method)[0]
        np.testing.assert_allclose(blended, expected, atol=1e-6)


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(COLUMNS="200"), cwd=cwd, timeout=600)


def test_cli_a_corrupt_file_gets_no_row_and_exit_2(trained, recordings, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("street.wav", "short.flac"):
        (folder / name).write_bytes((recordings / name).read_bytes())
    (folder / "broken[take2].wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")  # [..]: not rich markup
    out, windows, plots = tmp_path / "files.csv", tmp_path / "windows.csv", tmp_path / "plots"
    done = run_cli("classify", folder, "--solution", BASELINE, "--solutions", trained, "--out", out,
                   "--windows", windows, "--plot", plots, "--device", "cpu")
    assert done.returncode == 2, done.stderr
    assert "broken[take2].wav" in done.stderr and "1 of 3 file(s) could not be decoded" in done.stderr
    table = pd.read_csv(out)
    assert sorted(table["file"].map(lambda p: p.rsplit("/", 1)[-1])) == ["short.flac", "street.wav"]
    assert list(table.columns) == ["file", "duration_s", "TARGET", *CLASS_NAMES]
    np.testing.assert_allclose(table[list(CLASS_NAMES)].sum(axis=1), 1.0, atol=1e-5)
    assert table["TARGET"].isin(CLASS_NAMES).all()
    assert len(pd.read_csv(windows)) == 9
    from core.plots import read_plot_data

    assert [p.name for p in plots.iterdir()] == ["street.png"]  # only files longer than one clip
    drawn = read_plot_data(plots / "street.png")
    assert drawn["starts_s"] == [0, 1, 2, 3, 4, 5, 6, 6.5] and drawn["classes"] == list(CLASS_NAMES)
    skipped = run_cli("classify", folder, "--solution", BASELINE, "--solutions", trained, "--skip-bad-audio",
                      "--json", "--device", "cpu")
    assert skipped.returncode == 0, skipped.stderr
    report = json.loads(skipped.stdout)
    assert len(report["files"]) == 2 and [bad["file"].rsplit("/", 1)[-1] for bad in report["bad"]] == ["broken[take2].wav"]


def test_cli_clear_errors_and_no_output_file(trained, recordings, tmp_path):
    out = tmp_path / "out.csv"
    (tmp_path / "empty").mkdir()
    cases = [
        (("classify", tmp_path / "empty", "--solution", BASELINE), "holds no audio files"),
        (("classify", recordings, "--solution", "resnet34_attention"), "train resnet34_attention first"),
        (("classify", recordings), "exactly one of --solution"),
    ]
    other = tiny(BASELINE).derive(name="resampled", frontend=dict(clip_seconds=2.0))
    save_fold_checkpoints(tmp_path / "sols", "resampled", recipe=other)
    save_fold_checkpoints(tmp_path / "sols", BASELINE, recipe=tiny(BASELINE))
    cases.append((("classify", recordings, "--solution", BASELINE, "--solution", "resampled",
                   "--solutions", tmp_path / "sols"), "disagree on sample rate"))
    wrong = tmp_path / "wrong"
    save_fold_checkpoints(wrong, FUSION, recipe=tiny(FUSION))
    (wrong / BASELINE).mkdir()
    (wrong / FUSION / "best_model_fold1.pt").rename(wrong / BASELINE / "best_model_fold1.pt")
    cases.append((("classify", recordings, "--solution", BASELINE, "--solutions", wrong), "belongs to solution"))
    for args, message in cases:
        solutions = [] if "--solutions" in args else ["--solutions", trained]
        done = run_cli(*args, *solutions, "--out", out, "--device", "cpu")
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert not out.exists()
