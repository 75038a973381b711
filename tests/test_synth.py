"""The synthetic dataset: deterministic bytes, the promised formats and CSVs, --like mirroring, atomic builds,
and class signatures that match their descriptions."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

import core.demo.synth as synth
from core import CLASS_NAMES
from core.data.metadata import load_source
from core.demo.synth import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared" / "data" / "UrbanSound8K.csv"
TRAIN_COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_same_bytes_whatever_the_worker_count(tiny_data, tmp_path):
    # tiny_data (conftest): seed 1, one clip per class and fold, one test clip per class, one process
    again = write_synthetic_dataset(tmp_path / "again", seed=1, clips_per_class_fold=1, test_clips_per_class=1,
                                    workers=2)
    first, second = all_files(tiny_data), all_files(again)
    assert len(first) == 80 + 10 + 3
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)


def test_another_seed_gives_other_sounds(tmp_path):
    plans = synth.plan_default(seed=2, clips_per_class_fold=1, test_clips_per_class=1)
    other = synth.plan_default(seed=3, clips_per_class_fold=1, test_clips_per_class=1)
    assert [plan.slice_file_name for plan in plans] != [plan.slice_file_name for plan in other]
    a, b = synth.render_clip(plans[0], 2, 0), synth.render_clip(plans[0], 3, 0)
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_formats_cover_rates_channels_and_subtypes(tiny_data):
    infos = [soundfile.info(path) for path in sorted((tiny_data / "audio").rglob("*.wav"))]
    assert {info.samplerate for info in infos} == {22050, 44100, 48000}
    assert {info.channels for info in infos} == {1, 2}
    assert {info.subtype for info in infos} == {"PCM_16", "PCM_24"}
    assert {info.format for info in infos} == {"WAV"}


def test_metadata_files_and_columns(tiny_data):
    train = pd.read_csv(tiny_data / "metadata" / "kaggle_train.csv")
    test = pd.read_csv(tiny_data / "metadata" / "kaggle_test.csv")
    labels = pd.read_csv(tiny_data / "metadata" / "kaggle_test_labels.csv")
    assert list(train.columns) == TRAIN_COLUMNS
    assert list(test.columns) == ["ID", "slice_file_name", "salience"]
    assert list(labels.columns) == ["ID", "TARGET"]
    assert sorted(train["fold"].unique()) == list(range(1, 9))
    assert (train.groupby(["fold", "classID"]).size() == 1).all() and len(train) == 80
    assert train["class"].tolist() == [CLASS_NAMES[class_id] for class_id in train["classID"]]
    assert set(train["salience"]) | set(test["salience"]) == {1, 2}
    assert test["ID"].tolist() == list(range(10)) and labels["ID"].tolist() == list(range(10))
    assert sorted(labels["TARGET"]) == list(range(10))
    assert not set(train["slice_file_name"]) & set(test["slice_file_name"])


def test_durations_match_the_metadata(tiny_data):
    train = pd.read_csv(tiny_data / "metadata" / "kaggle_train.csv")
    seconds = train["end"] - train["start"]
    assert seconds.between(synth.MIN_SECONDS - 1e-6, synth.MAX_SECONDS + 1e-6).all()
    for row in train.itertuples():
        info = soundfile.info(tiny_data / "audio" / f"fold{row.fold}" / row.slice_file_name)
        assert abs(info.frames - (row.end - row.start) * info.samplerate) <= 1


def test_the_set_loads_as_a_kaggle_source(tiny_data):
    source = load_source(tiny_data)
    assert source.layout == "kaggle" and source.has_test_labels and source.has_test_salience
    labels = pd.read_csv(tiny_data / "metadata" / "kaggle_test_labels.csv")
    assert source.test["classID"].tolist() == labels["TARGET"].tolist()


def test_background_clips_are_quieter_and_noisier():
    horn = next(plan for plan in synth.plan_default(seed=0, clips_per_class_fold=1, test_clips_per_class=1)
                if plan.class_id == CLASS_NAMES.index("car_horn"))
    horn = dataclasses.replace(horn, seconds=4.0, channels=1)
    floors, peaks = {}, {}
    for salience in (1, 2):
        clip = synth.render_clip(dataclasses.replace(horn, salience=salience), seed=0, index=0)[:, 0]
        frame_energy = np.sort((clip[: clip.size // 441 * 441].reshape(-1, 441) ** 2).sum(axis=1))
        floors[salience] = frame_energy[: frame_energy.size // 10].mean() / frame_energy[-frame_energy.size // 10:].mean()
        peaks[salience] = float(np.abs(clip).max())
    assert 0.3 <= peaks[1] <= 0.95 and 0.08 <= peaks[2] <= 0.4
    assert floors[2] > 10 * floors[1]  # the ambience between the horn bursts is much closer to the horn's level


@pytest.mark.skipif(not REAL_CSV.is_file(), reason="../shared/data/UrbanSound8K.csv is absent")
def test_like_mirrors_the_real_metadata_row_for_row(tmp_path):
    real = pd.read_csv(REAL_CSV)
    rows = pd.concat([real[real["fold"] == fold].head(2) for fold in range(1, 11)] +
                     [real[(real["end"] - real["start"]) < 1.0].head(2)]).drop_duplicates("slice_file_name")
    like = tmp_path / "slice.csv"
    rows.to_csv(like, index=False)
    out = tmp_path / "mirror"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "core", "synth", "--out", str(out), "--like", str(like),
                             "--seed", "4", "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    train = pd.read_csv(out / "metadata" / "kaggle_train.csv")
    test = pd.read_csv(out / "metadata" / "kaggle_test.csv")
    labels = pd.read_csv(out / "metadata" / "kaggle_test_labels.csv")
    expected_train = rows[rows["fold"] <= 8].reset_index(drop=True)
    expected_test = rows[rows["fold"] >= 9].reset_index(drop=True)
    for column in ("slice_file_name", "fsID", "start", "salience", "fold", "classID", "class"):
        assert train[column].tolist() == expected_train[column].tolist(), column
    capped_end = expected_train["start"] + (expected_train["end"] - expected_train["start"]).clip(upper=4.0)
    np.testing.assert_allclose(train["end"], capped_end, atol=1e-6)
    assert test["slice_file_name"].tolist() == expected_test["slice_file_name"].tolist()
    assert test["ID"].tolist() == list(range(len(expected_test)))
    assert test["salience"].tolist() == expected_test["salience"].tolist()
    assert labels["TARGET"].tolist() == expected_test["classID"].tolist()
    for row in expected_test.itertuples():
        info = soundfile.info(out / "audio" / "test" / row.slice_file_name)
        assert abs(info.frames - min(row.end - row.start, 4.0) * info.samplerate) <= 1


def test_cli_refuses_to_overwrite_a_dataset(tiny_data):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "core", "synth", "--out", str(tiny_data), "--no-progress"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "Traceback" not in result.stderr


def test_interrupted_build_leaves_no_dataset(tmp_path, monkeypatch):
    real_render = synth.render_clip

    def render_then_fail(plan, seed, index):
        if index == 5:
            raise KeyboardInterrupt
        return real_render(plan, seed, index)

    real_plan = synth.plan_default
    monkeypatch.setattr(synth, "plan_default", lambda *args: real_plan(*args)[::8])  # 12 clips keep it fast
    monkeypatch.setattr(synth, "render_clip", render_then_fail)
    out = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(out, seed=0, clips_per_class_fold=1, test_clips_per_class=1, workers=1)
    assert not out.exists()
    assert (tmp_path / ".demo.partial").is_dir()  # the half-built set is hidden, and replaced by the next build
    monkeypatch.setattr(synth, "render_clip", real_render)
    write_synthetic_dataset(out, seed=0, clips_per_class_fold=1, test_clips_per_class=1, workers=1)
    assert len(list((out / "audio").rglob("*.wav"))) == 12 and not (tmp_path / ".demo.partial").exists()


# --------------------------------------------------------------------------------- class signatures

def _spectrum(signal: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.rfftfreq(signal.size, 1 / rate), np.abs(np.fft.rfft(signal)) ** 2


def _render(name: str, seed: int, rate: int = 22050, seconds: float = 4.0) -> np.ndarray:
    generator = synth.GENERATORS[CLASS_NAMES.index(name)]
    return generator(np.random.default_rng(seed), rate, int(rate * seconds))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name, low, high", [
    ("car_horn", 350, 500 * 1.33), ("siren", 600, 1500), ("drilling", 1500, 3000)])
def test_tonal_classes_peak_in_their_band(name, low, high, seed):
    freqs, power = _spectrum(_render(name, seed), 22050)
    bands = np.bincount((freqs // 100).astype(int), weights=power)  # 100 Hz bands: robust to vibrato and AM
    assert low - 100 <= 100 * np.argmax(bands) <= high


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name, cutoff, share", [("engine_idling", 400, 0.9), ("air_conditioner", 2000, 0.9)])
def test_low_classes_keep_their_energy_low(name, cutoff, share, seed):
    freqs, power = _spectrum(_render(name, seed), 22050)
    assert power[freqs < cutoff].sum() / power.sum() >= share


@pytest.mark.parametrize("seed", range(3))
def test_jackhammer_hits_10_to_20_times_a_second(seed):
    rate = 8000
    envelope = np.abs(_render("jackhammer", seed, rate)).reshape(-1, 40).max(axis=1)  # 5 ms frames
    envelope = envelope - envelope.mean()
    autocorrelation = np.correlate(envelope, envelope, "full")[envelope.size - 1:]
    lags = np.arange(10, 21)  # 50-100 ms = 20-10 Hz
    period_frames = lags[np.argmax(autocorrelation[lags])]
    assert 10 <= 200 / period_frames <= 20


def _busy_share(signal: np.ndarray) -> float:
    """Share of 20 ms frames needed to hold 90% of the energy."""
    energy = np.sort((signal.reshape(-1, 441) ** 2).sum(axis=1))[::-1]
    return (np.searchsorted(np.cumsum(energy) / energy.sum(), 0.9) + 1) / energy.size


@pytest.mark.parametrize("seed", range(3))
def test_impulsive_classes_are_sparse_and_steady_ones_are_not(seed):
    for name in ("gun_shot", "dog_bark"):
        assert _busy_share(_render(name, seed)) < 0.2, name
    for name in ("air_conditioner", "siren"):
        assert _busy_share(_render(name, seed)) > 0.8, name


@pytest.mark.slow
def test_demo_set_is_learnable_by_a_small_cnn(tmp_path):
    """The demo set (seed 0, 400 train / 200 test clips): a small CNN on PCEN mels reaches composite > 0.8."""
    import torch
    from torch import nn

    from core.data.cache import load_waveforms
    from core.metrics import score
    from core.model.frontend import PCENFrontend
    from core.recipe import Frontend

    torch.manual_seed(0)
    source = load_source(write_synthetic_dataset(tmp_path / "demo", seed=0))
    frontend = PCENFrontend(Frontend())

    def features(table: pd.DataFrame) -> torch.Tensor:
        waveforms = load_waveforms(list(table["path"]), 32000, 128000, cache_dir=tmp_path / "cache", progress=False)
        with torch.no_grad():
            return torch.cat([frontend(torch.from_numpy(np.asarray(waveforms.waveforms[start:start + 50], np.float32)))
                              for start in range(0, len(table), 50)])

    train_x, test_x = features(source.train), features(source.test)
    train_y = torch.from_numpy(source.train["classID"].to_numpy())

    def block(inputs: int, outputs: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential(nn.BatchNorm2d(1), block(1, 16), block(16, 32), block(32, 64), block(64, 64),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    optimiser = torch.optim.AdamW(model.parameters(), 2e-3)
    for _ in range(8):
        model.train()
        order = torch.randperm(len(train_x))
        for start in range(0, len(order), 16):
            batch = order[start:start + 16]
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        predictions = model(test_x).argmax(dim=1).numpy()
    assert score(source.test["classID"].to_numpy(dtype=np.int64), predictions).composite > 0.8
