r"""Synthetic demo data: an UrbanSound8K-like set of procedurally generated urban sounds.

`write_synthetic_dataset` (and `python -m core synth`) writes the Kaggle layout
    metadata/kaggle_train.csv        slice_file_name,fsID,start,end,salience,fold,classID,class (folds 1-8)
    metadata/kaggle_test.csv         ID,slice_file_name,salience
    metadata/kaggle_test_labels.csv  ID,TARGET
    audio/fold<k>/*.wav, audio/test/*.wav
or, with layout="official", UrbanSound8K's own: metadata/UrbanSound8K.csv (same columns, folds 1-10;
the test clips become folds 9 and 10, alternately) and audio/fold1..10/*.wav.
with the 10 UrbanSound8K classes, each from its own generator (below) with random pitch, rhythm,
envelope and duration (0.3-4 s); salience 1 (foreground) or 2 (quieter, under ambience noise);
22.05/44.1/48 kHz, mono and stereo, 16- and 24-bit PCM. The same seed gives the same bytes (each
clip draws from its own seeded RNG, so the number of worker processes does not matter).
With `like=UrbanSound8K.csv` it mirrors the real metadata row for row (names, fsID, folds,
durations capped at 4 s, salience, classes): folds 1-8 -> train, folds 9-10 -> test.
With layout="esc50" | "csv" | "folders" it writes one set of clips (`clips_per_class_fold` x 5 folds per
class, two clips per recording) in the layouts for your own data (core/data/layouts.py):
    esc50:   meta/esc50.csv (filename,fold,target,category,esc10,src_file,take) and audio/*.wav; its 5 folds
             are the ones fold_assignment gives these clips grouped by recording
    csv:     metadata.csv (file,label,salience,group) and audio/*.wav; no folds (they are assigned)
    folders: <class>/*.wav (the second clip of each recording in <class>/more/); no folds, no groups
             (--group-pattern '^(\d+)-' recovers the recordings, and then the same folds as esc50)
The set is built in a hidden temporary folder and renamed into place when complete.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from core.atomic import exclusive_lock, write_csv
from core.data.fold_assignment import assign_folds
from core.data.layouts import ESC50_CSV, GENERIC_CSV
from core.errors import UserError
from core.folds import TEST_FOLDS, TRAIN_FOLDS, URBANSOUND8K_CLASSES
from core.progress import progress_bar

SAMPLE_RATES = (22050, 44100, 48000)
CHANNEL_COUNTS = (1, 2)
SUBTYPES = ("PCM_16", "PCM_24")
FORMATS = tuple(product(SAMPLE_RATES, CHANNEL_COUNTS, SUBTYPES))
LAYOUTS = ("kaggle", "official", "esc50", "csv", "folders")
OWN_LAYOUTS = ("esc50", "csv", "folders")
OWN_FOLDS = 5                     # ESC-50's fold count; the csv and folders sets get theirs assigned
CLIPS_PER_RECORDING = 2           # takes A, B of one recording (a group that must stay in one fold)
GROUP_PATTERN = r"^(\d+)-"        # the recording in a synthetic own-layout file name ({fs_id}-{class}-{take}.wav)
MIN_SECONDS, MAX_SECONDS = 0.3, 4.0
FOREGROUND_SHARE = 0.65           # UrbanSound8K: 5702 of 8732 clips are salience 1
FULL_LENGTH_SHARE = (0.95, 0.5, 0.9, 0.6, 0.8, 0.95, 0.4, 0.8, 0.95, 1.0)  # per class: share of 4 s clips
FOREGROUND_SNR_DB = (12.0, 30.0)  # source over ambience
BACKGROUND_SNR_DB = (5.0, 12.0)
PEAK_RANGE = {1: (0.3, 0.95), 2: (0.08, 0.4)}  # background clips are also quieter overall
TRAIN_COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
LIKE_REQUIRED = ("slice_file_name", "start", "end", "salience", "fold", "classID")


@dataclass(frozen=True)
class ClipPlan:
    """One clip to synthesise and its metadata row."""

    slice_file_name: str
    fs_id: int
    start: float
    seconds: float
    salience: int
    class_id: int
    fold: int | None          # None: a test clip
    test_id: int | None       # None: a train clip
    sample_rate: int
    channels: int
    subtype: str
    audio_dir: str | None = None  # own layouts: the folder (relative to the set) that holds the file

    @property
    def folder(self) -> str:
        return "test" if self.fold is None else f"fold{self.fold}"

    @property
    def relative_path(self) -> str:
        """Where the clip's file goes, relative to the set's folder."""
        folder = f"audio/{self.folder}" if self.audio_dir is None else self.audio_dir
        return f"{folder}/{self.slice_file_name}"


def write_synthetic_dataset(out: Path, seed: int = 0, like: Path | None = None, clips_per_class_fold: int = 5,
                            test_clips_per_class: int = 20, *, workers: int | None = None,
                            progress: bool = False, layout: str = "kaggle") -> Path:
    """Write a synthetic dataset in `layout` to `out` (which must not exist or be empty); return `out`.

    `like`: an UrbanSound8K.csv to mirror row for row (then the two clip counts are ignored).
    Built in a hidden sibling folder and renamed into place, so `out` is either absent or complete.
    `workers`: rendering processes (None: the number of cores for large sets); output bytes do not depend on it.
    """
    out = Path(out)
    _check_target(out)
    if clips_per_class_fold < 1 or test_clips_per_class < 1:
        raise UserError("--clips-per-class-fold and --test-clips-per-class must be at least 1")
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if layout in OWN_LAYOUTS and like is not None:
        raise UserError(f"--like mirrors UrbanSound8K's metadata; it does not apply to --layout {layout}")
    if layout in OWN_LAYOUTS:
        plans = plan_own(seed, clips_per_class_fold, layout)
    elif like is not None:
        plans = plan_like(Path(like), seed)
    else:
        plans = plan_default(seed, clips_per_class_fold, test_clips_per_class)
    if layout == "official":
        plans = [plan if plan.fold is not None else dataclasses.replace(plan, fold=TEST_FOLDS[plan.test_id % 2])
                 for plan in plans]
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock"):
        if out.is_dir() and any(out.iterdir()):
            return out  # a concurrent call finished the same build while we waited (builds appear whole)
        _check_target(out)
        building = out.parent / f".{out.name}.partial"
        if building.exists():
            shutil.rmtree(building)  # left by an interrupted build (we hold the lock)
        _render_all(plans, building, seed, workers=workers, progress=progress)
        METADATA_WRITERS[layout](plans, building)
        if out.exists():
            out.rmdir()
        os.replace(building, out)
    return out


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; remove it or choose another --out")


# --------------------------------------------------------------------------------------- planning

def plan_default(seed: int, clips_per_class_fold: int, test_clips_per_class: int) -> list[ClipPlan]:
    """A class-balanced set: folds 1-8 x 10 classes x `clips_per_class_fold`, plus a shuffled labelled test split."""
    rng = np.random.default_rng([seed, 0])
    train_keys = [(fold, class_id) for fold in TRAIN_FOLDS for class_id in range(len(URBANSOUND8K_CLASSES))
                  for _ in range(clips_per_class_fold)]
    test_classes = rng.permutation(np.repeat(np.arange(len(URBANSOUND8K_CLASSES)), test_clips_per_class))
    keys = train_keys + [(None, int(class_id)) for class_id in test_classes]
    fs_ids = rng.choice(np.arange(10_000, 200_000), size=len(keys), replace=False)
    formats = _balanced_formats(rng, len(keys))
    plans = []
    for index, (fold, class_id) in enumerate(keys):
        full = rng.random() < FULL_LENGTH_SHARE[class_id]
        seconds = MAX_SECONDS if full else round(float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), 6)
        start = round(float(rng.uniform(0, 120)), 6)
        salience = 1 if rng.random() < FOREGROUND_SHARE else 2
        sample_rate, channels, subtype = formats[index]
        plans.append(ClipPlan(
            slice_file_name=f"{fs_ids[index]}-{class_id}-0-{int(start * 2)}.wav", fs_id=int(fs_ids[index]),
            start=start, seconds=seconds, salience=salience, class_id=class_id, fold=fold,
            test_id=None if fold is not None else index - len(train_keys),
            sample_rate=sample_rate, channels=channels, subtype=subtype))
    return plans


def plan_own(seed: int, clips_per_class_fold: int, layout: str) -> list[ClipPlan]:
    """The clips of the own-data layouts: OWN_FOLDS x `clips_per_class_fold` per class, two per recording.

    `fold` holds the fold that fold_assignment gives the clips grouped by recording (written by the esc50
    layout only); the names, labels, groups and sounds do not depend on `layout`, only the folders do.
    """
    rng = np.random.default_rng([seed, 2])
    per_class = OWN_FOLDS * clips_per_class_fold
    keys = [(class_id, clip // CLIPS_PER_RECORDING, clip % CLIPS_PER_RECORDING)
            for class_id in range(len(URBANSOUND8K_CLASSES)) for clip in range(per_class)]
    recordings = sorted({(class_id, recording) for class_id, recording, _ in keys})
    fs_id_of = dict(zip(recordings, rng.choice(np.arange(10_000, 200_000), size=len(recordings), replace=False),
                        strict=True))
    folds = assign_folds([class_id for class_id, _, _ in keys],
                         [str(fs_id_of[class_id, recording]) for class_id, recording, _ in keys], OWN_FOLDS)
    formats = _balanced_formats(rng, len(keys))
    plans = []
    for index, (class_id, recording, take) in enumerate(keys):
        full = rng.random() < FULL_LENGTH_SHARE[class_id]
        seconds = MAX_SECONDS if full else round(float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), 6)
        fs_id = int(fs_id_of[class_id, recording])
        sample_rate, channels, subtype = formats[index]
        plans.append(ClipPlan(
            slice_file_name=f"{fs_id}-{class_id}-{'AB'[take]}.wav", fs_id=fs_id, start=0.0, seconds=seconds,
            salience=1 if rng.random() < FOREGROUND_SHARE else 2, class_id=class_id, fold=int(folds[index]),
            test_id=None, sample_rate=sample_rate, channels=channels, subtype=subtype,
            audio_dir=_own_audio_dir(layout, class_id, take)))
    return plans


def _own_audio_dir(layout: str, class_id: int, take: int) -> str:
    if layout != "folders":
        return "audio"
    return URBANSOUND8K_CLASSES[class_id] + ("/more" if take else "")  # a nested folder: <class>/**/ is searched


def plan_like(csv_path: Path, seed: int) -> list[ClipPlan]:
    """Mirror an UrbanSound8K.csv row for row (durations capped at 4 s); folds 9-10 become the test split."""
    if not csv_path.is_file():
        raise UserError(f"--like {csv_path}: no such file; pass the path of an UrbanSound8K.csv")
    table = pd.read_csv(csv_path)
    missing = [column for column in LIKE_REQUIRED if column not in table.columns]
    if missing:
        raise UserError(f"--like {csv_path}: missing column(s) {', '.join(missing)}; it needs "
                        f"{', '.join(LIKE_REQUIRED)} (the UrbanSound8K.csv columns)")
    problems = _like_problems(table)
    if problems:
        from core.errors import format_problems

        raise UserError(format_problems(f"--like {csv_path} cannot be mirrored:", problems))
    rng = np.random.default_rng([seed, 0])
    formats = _balanced_formats(rng, len(table))
    fs_ids = table["fsID"].to_numpy() if "fsID" in table.columns else np.arange(len(table))
    plans, test_id = [], 0
    for index, row in enumerate(table.itertuples(index=False)):
        is_test = int(row.fold) in TEST_FOLDS
        seconds = float(min(float(row.end) - float(row.start), MAX_SECONDS))
        sample_rate, channels, subtype = formats[index]
        plans.append(ClipPlan(
            slice_file_name=str(row.slice_file_name), fs_id=int(fs_ids[index]), start=float(row.start),
            seconds=seconds, salience=int(row.salience), class_id=int(row.classID),
            fold=None if is_test else int(row.fold), test_id=test_id if is_test else None,
            sample_rate=sample_rate, channels=channels, subtype=subtype))
        test_id += is_test
    return plans


def _like_problems(table: pd.DataFrame) -> list[str]:
    problems = []
    checks = (("fold", TRAIN_FOLDS + TEST_FOLDS), ("classID", tuple(range(len(URBANSOUND8K_CLASSES)))), ("salience", (1, 2)))
    for column, allowed in checks:
        bad = ~pd.to_numeric(table[column], errors="coerce").isin(allowed)
        problems += [f"line {position + 2}, column {column}: {table[column][position]!r} is not one of {allowed}"
                     for position in table.index[bad]]
    seconds = pd.to_numeric(table["end"], errors="coerce") - pd.to_numeric(table["start"], errors="coerce")
    problems += [f"line {position + 2}: end - start must be a positive duration" for position
                 in table.index[~(seconds > 0)]]
    duplicated = table["slice_file_name"].duplicated()
    problems += [f"line {position + 2}: {table['slice_file_name'][position]!r} is listed twice"
                 for position in table.index[duplicated]]
    return problems


def _balanced_formats(rng: np.random.Generator, count: int) -> list[tuple[int, int, str]]:
    """Every (rate, channels, subtype) combination equally often (so any 12 clips cover them all), shuffled."""
    cycles = -(-count // len(FORMATS))
    order = np.concatenate([rng.permutation(len(FORMATS)) for _ in range(cycles)])[:count]
    return [FORMATS[int(choice)] for choice in order]


# -------------------------------------------------------------------------------------- rendering

def render_clip(plan: ClipPlan, seed: int, index: int) -> np.ndarray:
    """The clip's samples, float32 [frames, channels] within [-1, 1]; depends only on (plan, seed, index)."""
    rng = np.random.default_rng([seed, 1, index])
    frames = max(1, int(round(plan.seconds * plan.sample_rate)))
    source = unit_rms(GENERATORS[plan.class_id](rng, plan.sample_rate, frames))
    snr_db = rng.uniform(*(FOREGROUND_SNR_DB if plan.salience == 1 else BACKGROUND_SNR_DB))
    noise_level = 10.0 ** (-snr_db / 20.0)
    channels = []
    for _ in range(plan.channels):
        gain = 10.0 ** (rng.uniform(-3.0, 0.0) / 20.0) if plan.channels > 1 else 1.0
        channels.append(gain * source + noise_level * ambience(rng, plan.sample_rate, frames))
    samples = np.stack(channels, axis=1)
    peak = float(np.max(np.abs(samples)))
    target_peak = rng.uniform(*PEAK_RANGE[plan.salience])
    if peak > 0:
        samples *= target_peak / peak
    return samples.astype(np.float32)


def render_files(folder: Path, seed: int, items: list[tuple[int, ClipPlan]]) -> int:
    """Render and write (index, plan) items as WAV files under `folder`; return how many were written."""
    import soundfile

    for index, plan in items:
        path = folder / plan.relative_path
        with open(path, "wb") as handle:
            soundfile.write(handle, render_clip(plan, seed, index), plan.sample_rate, subtype=plan.subtype,
                            format="WAV")
            handle.flush()
            os.fsync(handle.fileno())
    return len(items)


def _render_all(plans: list[ClipPlan], folder: Path, seed: int, *, workers: int | None, progress: bool) -> None:
    from core.data.cache import process_pool, resolve_workers

    for plan_folder in sorted({Path(plan.relative_path).parent for plan in plans}):
        (folder / plan_folder).mkdir(parents=True, exist_ok=True)
    items = list(enumerate(plans))
    chunks = [items[start:start + 16] for start in range(0, len(items), 16)]
    task = partial(render_files, folder, seed)
    workers = resolve_workers(workers, len(items))
    with progress_bar(len(items), "Synthesising clips", enabled=progress) as advance:
        if workers == 1:
            for chunk in chunks:
                advance(task(chunk))
            return
        with process_pool(workers) as pool:
            for written in pool.imap_unordered(task, chunks):
                advance(written)


def _clip_rows(plans: list[ClipPlan]) -> pd.DataFrame:
    """UrbanSound8K.csv-style rows (the Kaggle train CSV has the same columns)."""
    return pd.DataFrame({
        "slice_file_name": [plan.slice_file_name for plan in plans],
        "fsID": [plan.fs_id for plan in plans],
        "start": [plan.start for plan in plans],
        "end": [round(plan.start + plan.seconds, 6) for plan in plans],
        "salience": [plan.salience for plan in plans],
        "fold": [plan.fold for plan in plans],
        "classID": [plan.class_id for plan in plans],
        "class": [URBANSOUND8K_CLASSES[plan.class_id] for plan in plans],
    })


def _write_official_metadata(plans: list[ClipPlan], folder: Path) -> None:
    """metadata/UrbanSound8K.csv: every clip with its fold (1-10) and label."""
    write_csv(_clip_rows(plans), folder / "metadata" / "UrbanSound8K.csv")


def _write_metadata(plans: list[ClipPlan], folder: Path) -> None:
    train = [plan for plan in plans if plan.fold is not None]
    test = sorted((plan for plan in plans if plan.fold is None), key=lambda plan: plan.test_id)
    metadata = folder / "metadata"
    write_csv(_clip_rows(train), metadata / "kaggle_train.csv")
    write_csv(pd.DataFrame({
        "ID": [plan.test_id for plan in test],
        "slice_file_name": [plan.slice_file_name for plan in test],
        "salience": [plan.salience for plan in test],
    }), metadata / "kaggle_test.csv")
    write_csv(pd.DataFrame({"ID": [plan.test_id for plan in test], "TARGET": [plan.class_id for plan in test]}),
              metadata / "kaggle_test_labels.csv")


def _write_esc50_metadata(plans: list[ClipPlan], folder: Path) -> None:
    """meta/esc50.csv as ESC-50 distributes it (esc10 False: the synthetic classes are not ESC-10's)."""
    write_csv(pd.DataFrame({
        "filename": [plan.slice_file_name for plan in plans],
        "fold": [plan.fold for plan in plans],
        "target": [plan.class_id for plan in plans],
        "category": [URBANSOUND8K_CLASSES[plan.class_id] for plan in plans],
        "esc10": ["False"] * len(plans),
        "src_file": [plan.fs_id for plan in plans],
        "take": [plan.slice_file_name.rsplit("-", 1)[1].removesuffix(".wav") for plan in plans],
    }), folder / ESC50_CSV)


def _write_generic_metadata(plans: list[ClipPlan], folder: Path) -> None:
    """metadata.csv: file,label,salience,group (no fold column: the folds are assigned when it is read)."""
    write_csv(pd.DataFrame({
        "file": [plan.relative_path for plan in plans],
        "label": [URBANSOUND8K_CLASSES[plan.class_id] for plan in plans],
        "salience": [plan.salience for plan in plans],
        "group": [plan.fs_id for plan in plans],
    }), folder / GENERIC_CSV)


def _write_no_metadata(plans: list[ClipPlan], folder: Path) -> None:
    """The class-folder layout is its folders."""


METADATA_WRITERS: dict[str, Callable[[list[ClipPlan], Path], None]] = {
    "kaggle": _write_metadata, "official": _write_official_metadata, "esc50": _write_esc50_metadata,
    "csv": _write_generic_metadata, "folders": _write_no_metadata,
}


# ================================================================================ sound generators
# Each generator takes (rng, sample_rate, num_frames) and returns a float64 mono signal of that length
# with its own acoustic signature and random variation. The signatures differ in band, harmonicity and
# temporal pattern so that a small CNN on PCEN mel spectrograms separates the classes; levels are
# arbitrary (render_clip normalises and mixes).

SoundGenerator = Callable[[np.random.Generator, int, int], np.ndarray]
TWO_PI = 2.0 * np.pi


# ------------------------------------------------------------------------------------ building blocks

def unit_rms(signal: np.ndarray) -> np.ndarray:
    """`signal` scaled to RMS 1 (unchanged if silent)."""
    rms = float(np.sqrt(np.mean(signal ** 2))) if signal.size else 0.0
    return signal / rms if rms > 0 else signal


def filtered_noise(rng: np.random.Generator, num_frames: int, sample_rate: int, low: float = 0.0,
                   high: float | None = None, order: int = 2, tilt: float = 0.0) -> np.ndarray:
    """White noise shaped in the frequency domain: Butterworth-like band [low, high], slope f^-tilt/2."""
    size = _fast_length(num_frames)  # FFT sizes with large prime factors are slow: shape a longer noise, crop it
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    safe = np.maximum(freqs, 1.0)
    gain = np.ones_like(freqs)
    if high is not None:
        gain /= np.sqrt(1.0 + (freqs / high) ** (2 * order))
    if low > 0:
        gain /= np.sqrt(1.0 + (low / safe) ** (2 * order))
    if tilt:
        gain *= safe ** (-tilt / 2.0)
    return unit_rms(np.fft.irfft(spectrum * gain, size)[:num_frames])


def lowpass(signal: np.ndarray, sample_rate: int, cutoff: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth-like low-pass in the frequency domain (zero-padded to a fast FFT size)."""
    size = _fast_length(signal.size)
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    gain = 1.0 / np.sqrt(1.0 + (freqs / cutoff) ** (2 * order))
    return np.fft.irfft(np.fft.rfft(signal, size) * gain, size)[:signal.size]


def _fast_length(size: int) -> int:
    from scipy.fft import next_fast_len

    return int(next_fast_len(size, real=True))


def harmonic_tone(rng: np.random.Generator, f0: np.ndarray | float, sample_rate: int, num_frames: int,
                  amplitudes: np.ndarray) -> np.ndarray:
    """Sum of harmonics h*f0(t) with the given amplitudes and random phases; harmonics above 0.45 fs are dropped."""
    f0_track = np.broadcast_to(np.asarray(f0, dtype=np.float64), (num_frames,))
    phase = TWO_PI * np.cumsum(f0_track) / sample_rate
    tone = np.zeros(num_frames)
    nyquist_guard = 0.45 * sample_rate
    for harmonic, amplitude in enumerate(amplitudes, start=1):
        audible = harmonic * f0_track < nyquist_guard
        if not audible.any():
            break
        tone += amplitude * audible * np.sin(harmonic * phase + rng.uniform(0, TWO_PI))
    return tone


def burst_envelope(num_frames: int, sample_rate: int, onset: float, length: float,
                   attack: float, release: float) -> np.ndarray:
    """Trapezoid envelope: linear attack, hold, linear release, zero outside [onset, onset + length]."""
    time = np.arange(num_frames) / sample_rate - onset
    rise = np.clip(time / max(attack, 1e-4), 0.0, 1.0)
    fall = np.clip((length - time) / max(release, 1e-4), 0.0, 1.0)
    return rise * fall


def decay_envelope(num_frames: int, sample_rate: int, onset: float, tau: float, attack: float = 0.002) -> np.ndarray:
    """Short linear attack then exponential decay exp(-t / tau) from `onset`; zero before it."""
    time = np.arange(num_frames) / sample_rate - onset
    envelope = np.exp(-np.maximum(time, 0.0) / tau) * np.clip(time / attack, 0.0, 1.0)
    return np.where(time >= 0, envelope, 0.0)


def event_sequence(rng: np.random.Generator, duration: float, count: int, length_range: tuple[float, float],
                   gap_range: tuple[float, float]) -> list[tuple[float, float]]:
    """(onset, length) of `count` events in order, squeezed to fit `duration`, placed at a random offset."""
    lengths = rng.uniform(*length_range, size=count)
    gaps = rng.uniform(*gap_range, size=max(count - 1, 0))
    total = lengths.sum() + gaps.sum()
    if total > duration:  # short clip: shrink the pattern, keep its shape
        lengths, gaps = lengths * duration / total, gaps * duration / total
        total = duration
    onset = rng.uniform(0.0, duration - total) if duration > total else 0.0
    events = []
    for index, length in enumerate(lengths):
        events.append((float(onset), float(length)))
        onset += length + (gaps[index] if index < len(gaps) else 0.0)
    return events


def event_spans(rng: np.random.Generator, sample_rate: int, num_frames: int, count: int,
                length_range: tuple[float, float], gap_range: tuple[float, float]) -> list[tuple[slice, float]]:
    """(sample span, length in s) of `event_sequence`'s events in a clip of `num_frames` (drawn before use)."""
    events = event_sequence(rng, num_frames / sample_rate, count, length_range, gap_range)
    return [(_span(sample_rate, num_frames, onset, length), length) for onset, length in events]


def _span(sample_rate: int, num_frames: int, onset: float, length: float) -> slice:
    start = min(int(onset * sample_rate), max(num_frames - 1, 0))
    return slice(start, min(num_frames, start + max(1, int(np.ceil(length * sample_rate)))))


def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


# ------------------------------------------------------------------------------------------ classes

def air_conditioner(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """Steady low-passed broadband noise + fan hum harmonics, a slow slight wobble, faint hiss."""
    time = np.arange(num_frames) / sample_rate
    body = filtered_noise(rng, num_frames, sample_rate, low=40, high=rng.uniform(400, 1500), order=2)
    hiss = filtered_noise(rng, num_frames, sample_rate, low=2000, high=8000) * rng.uniform(0.05, 0.15)
    f0 = rng.uniform(60, 180) * (1 + 0.003 * np.sin(TWO_PI * rng.uniform(0.1, 0.5) * time))
    hum = unit_rms(harmonic_tone(rng, f0, sample_rate, num_frames, 1.0 / np.arange(1, 7) ** rng.uniform(0.8, 1.5)))
    wobble = 1 + rng.uniform(0.02, 0.1) * np.sin(TWO_PI * rng.uniform(0.2, 1.0) * time + rng.uniform(0, TWO_PI))
    return (body + rng.uniform(0.3, 0.8) * hum + hiss) * wobble


def car_horn(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """Loud bright harmonic tone at 350-500 Hz (often a two-tone horn) in 1-2 bursts."""
    duration = num_frames / sample_rate
    f0 = rng.uniform(350, 500)
    amplitudes = 1.0 / np.arange(1, 11) ** rng.uniform(0.5, 0.9)
    tone = harmonic_tone(rng, f0, sample_rate, num_frames, amplitudes)
    if rng.random() < 0.6:
        tone += 0.8 * harmonic_tone(rng, f0 * rng.choice([1.19, 1.26, 1.33]), sample_rate, num_frames, amplitudes)
    envelope = np.zeros(num_frames)
    for onset, length in event_sequence(rng, duration, int(rng.integers(1, 3)), (0.4, 1.5), (0.1, 0.4)):
        envelope += burst_envelope(num_frames, sample_rate, onset, length, 0.01, 0.03)
    return tone * envelope


def children_playing(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """Several overlapping high voice-like formant glides and shrieks over a distant crowd murmur."""
    duration = num_frames / sample_rate
    signal = 0.15 * filtered_noise(rng, num_frames, sample_rate, low=500, high=4000)
    for _ in range(int(rng.integers(4, 8))):
        length = min(rng.uniform(0.25, 1.0), duration)
        span = _span(sample_rate, num_frames, rng.uniform(0, duration - length), length)
        frames = span.stop - span.start
        progress = np.linspace(0.0, 1.0, frames)
        start_f0 = rng.uniform(300, 550)
        vibrato = 1 + rng.uniform(0.02, 0.04) * np.sin(TWO_PI * rng.uniform(5, 7) * progress * length)
        f0 = start_f0 * rng.uniform(0.75, 1.4) ** progress * vibrato
        harmonics = np.arange(1, 21)
        formants = [(rng.uniform(800, 1200), 200.0), (rng.uniform(1800, 3000), 250.0), (rng.uniform(3000, 4000), 300.0)]
        amplitudes = sum(1.0 / (1.0 + ((harmonics * start_f0 - centre) / width) ** 2) for centre, width in formants)
        voice = harmonic_tone(rng, f0, sample_rate, frames, amplitudes)
        voice *= burst_envelope(frames, sample_rate, 0.0, length, 0.03, 0.08)
        signal[span] += rng.uniform(0.5, 1.0) * unit_rms(voice)
    for _ in range(int(rng.integers(1, 4))):
        length = min(rng.uniform(0.1, 0.3), duration)
        span = _span(sample_rate, num_frames, rng.uniform(0, duration - length), length)
        frames = span.stop - span.start
        glide = rng.uniform(1500, 2200) * rng.uniform(1.3, 1.8) ** np.linspace(0.0, 1.0, frames)
        shriek = harmonic_tone(rng, glide, sample_rate, frames, np.array([1.0, 0.4, 0.2]))
        signal[span] += 0.7 * unit_rms(shriek * burst_envelope(frames, sample_rate, 0.0, length, 0.02, 0.05))
    return signal


def dog_bark(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """1-4 short raspy barks: a harmonic "wuf" (pitch jumps up, then falls) in a noisy formant band, fast decay."""
    signal = np.zeros(num_frames)
    for span, length in event_spans(rng, sample_rate, num_frames, int(rng.integers(1, 5)), (0.1, 0.22), (0.12, 0.45)):
        frames = span.stop - span.start
        progress = np.linspace(0.0, 1.0, frames)
        peak_f0 = rng.uniform(450, 800)
        f0 = peak_f0 * (1 - 0.3 * np.abs(progress - 0.2) / 0.8 - 0.25 * np.clip(0.2 - progress, 0, None) / 0.2)
        body = harmonic_tone(rng, f0, sample_rate, frames, 1.0 / np.arange(1, 13) ** rng.uniform(0.5, 0.9))
        rasp = filtered_noise(rng, frames, sample_rate, low=rng.uniform(600, 1000), high=rng.uniform(3000, 5000))
        envelope = decay_envelope(frames, sample_rate, 0.0, length / 3, attack=0.01)
        bark = (unit_rms(body) + rng.uniform(0.6, 1.0) * rasp) * envelope
        signal[span] += rng.uniform(0.7, 1.0) * bark
    return signal


def drilling(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """High (1.5-3 kHz) buzzing tone with fast amplitude modulation and a motor whine, in 1-2 runs."""
    duration = num_frames / sample_rate
    time = np.arange(num_frames) / sample_rate
    f0 = rng.uniform(1500, 3000) * (1 + 0.01 * np.sin(TWO_PI * rng.uniform(1, 4) * time))
    buzz = harmonic_tone(rng, f0, sample_rate, num_frames, np.array([1.0, 0.5, 0.3, 0.2]))
    modulation = 1 - rng.uniform(0.3, 0.8) * (0.5 + 0.5 * np.sin(TWO_PI * rng.uniform(8, 30) * time))
    motor = unit_rms(harmonic_tone(rng, rng.uniform(150, 350), sample_rate, num_frames, 1.0 / np.arange(1, 7)))
    grit = filtered_noise(rng, num_frames, sample_rate, low=1000, high=6000)
    gate = np.zeros(num_frames)
    for onset, length in event_sequence(rng, duration, int(rng.integers(1, 3)), (1.0, 3.5), (0.1, 0.4)):
        gate += burst_envelope(num_frames, sample_rate, onset, length, 0.03, 0.05)
    return (unit_rms(buzz) * modulation + 0.15 * motor + 0.2 * grit * modulation) * gate


def engine_idling(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """Low firing pulse train (20-60 Hz, slightly irregular) + rumble + faint valve ticking."""
    time = np.arange(num_frames) / sample_rate
    rate = rng.uniform(20, 60)
    periods = (1.0 / rate) * (1 + 0.02 * rng.standard_normal(int(num_frames / sample_rate * rate) + 2))
    onsets = (np.cumsum(periods) - rng.uniform(0, 1.0 / rate)) * sample_rate
    onsets = onsets[(onsets >= 0) & (onsets < num_frames)].astype(np.int64)
    train = np.zeros(num_frames)
    train[onsets] = rng.uniform(0.8, 1.2, size=onsets.size)
    pulses = unit_rms(lowpass(train, sample_rate, rng.uniform(150, 300), order=4))
    rumble = filtered_noise(rng, num_frames, sample_rate, low=20, high=rng.uniform(80, 200), order=3)
    ticking = filtered_noise(rng, num_frames, sample_rate, low=500, high=2000) * (0.5 + 0.5 * np.sin(TWO_PI * rate * time))
    return pulses + 0.5 * rumble + 0.05 * ticking


def gun_shot(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """1-3 impulsive broadband cracks with a low boom and a decaying reverberant tail."""
    signal = np.zeros(num_frames)
    for span, _ in event_spans(rng, sample_rate, num_frames, int(rng.integers(1, 4)), (0.3, 1.0), (0.05, 0.5)):
        frames = span.stop - span.start
        crack = rng.standard_normal(frames) * decay_envelope(frames, sample_rate, 0.0, rng.uniform(0.005, 0.02), 0.0005)
        boom = filtered_noise(rng, frames, sample_rate, low=30, high=400) * decay_envelope(
            frames, sample_rate, 0.0, rng.uniform(0.05, 0.15), 0.001)
        tail = filtered_noise(rng, frames, sample_rate, low=100, high=5000, tilt=1.0) * decay_envelope(
            frames, sample_rate, 0.0, rng.uniform(0.2, 0.6), 0.005)
        signal[span] += rng.uniform(0.6, 1.0) * (3.0 * crack + boom + 0.3 * tail)
    return signal


def jackhammer(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """Periodic broadband impacts with a metallic ring at 10-20 Hz, in 1-2 runs."""
    duration = num_frames / sample_rate
    rate = rng.uniform(10, 20)
    kernel_frames = max(1, int(0.04 * sample_rate))
    kernel_time = np.arange(kernel_frames) / sample_rate
    kernel = (filtered_noise(rng, kernel_frames, sample_rate, low=200, high=8000) * np.exp(-kernel_time / rng.uniform(0.003, 0.008))
              + 0.6 * np.sin(TWO_PI * rng.uniform(800, 2500) * kernel_time) * np.exp(-kernel_time / 0.015))
    train = np.zeros(num_frames)
    for onset, length in event_sequence(rng, duration, int(rng.integers(1, 3)), (1.0, 3.5), (0.1, 0.5)):
        hits = np.arange(onset, onset + length, 1.0 / rate)
        hits = hits + rng.normal(0, 0.002, size=hits.size)
        positions = np.clip((hits * sample_rate).astype(np.int64), 0, num_frames - 1)
        train[positions] = rng.uniform(0.8, 1.2, size=positions.size)
    size = _fast_length(num_frames + kernel_frames - 1)
    impacts = np.fft.irfft(np.fft.rfft(train, size) * np.fft.rfft(kernel, size), size)[:num_frames]
    thud = lowpass(train, sample_rate, 150, order=2)
    return unit_rms(impacts) + 0.3 * unit_rms(thud)


def siren(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """Slow frequency sweep (wail) between ~600-750 Hz and ~1350-1500 Hz, a few weak harmonics."""
    time = np.arange(num_frames) / sample_rate
    low, high = rng.uniform(600, 750), rng.uniform(1350, 1500)
    sweep = 0.5 - 0.5 * np.cos(TWO_PI * time / rng.uniform(1.5, 4.5) + rng.uniform(0, TWO_PI))
    tone = harmonic_tone(rng, low + (high - low) * sweep, sample_rate, num_frames, np.array([1.0, 0.35, 0.15, 0.08]))
    return tone * (1 + 0.1 * np.sin(TWO_PI * rng.uniform(0.1, 0.5) * time))


def street_music(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """Plucked chords and a pentatonic melody of harmonic notes over a kick-drum beat."""
    duration = num_frames / sample_rate
    beat = 60.0 / rng.uniform(80, 140)
    root = float(rng.integers(55, 65))
    scale = np.array([0, 2, 4, 7, 9]) if rng.random() < 0.5 else np.array([0, 3, 5, 7, 10])
    timbre = 1.0 / np.arange(1, 7) ** rng.uniform(1.0, 1.6)
    signal = np.zeros(num_frames)

    def note(onset: float, length: float, pitch: float, tau: float, level: float) -> None:
        span = _span(sample_rate, num_frames, onset, length)
        frames = span.stop - span.start
        tone = harmonic_tone(rng, _midi_hz(pitch), sample_rate, frames, timbre)
        signal[span] += level * tone * decay_envelope(frames, sample_rate, 0.0, tau, attack=0.005)

    offset = rng.uniform(0, beat)
    beats = np.arange(offset - beat, duration, beat)
    for index, onset in enumerate(beats):
        if index % 4 == 0:  # a new chord every bar
            chord_root = root - 12 + scale[int(rng.integers(0, len(scale)))]
            for interval in (0, 4 if rng.random() < 0.5 else 3, 7):
                note(max(onset, 0.0), 4 * beat, chord_root + interval, rng.uniform(0.4, 1.0), 0.35)
        for half in range(int(rng.integers(1, 3))):
            start = onset + half * beat / 2
            if 0 <= start < duration:
                pitch = root + 12 + scale[int(rng.integers(0, len(scale)))]
                note(start, beat / 2, pitch, rng.uniform(0.1, 0.3), 0.6)
        if 0 <= onset < duration:  # kick: a falling 60 -> 40 Hz thump
            span = _span(sample_rate, num_frames, onset, 0.25)
            frames = span.stop - span.start
            kick_time = np.arange(frames) / sample_rate
            kick_f0 = 40 + 25 * np.exp(-kick_time / 0.03)
            signal[span] += 1.2 * np.sin(TWO_PI * np.cumsum(kick_f0) / sample_rate) * np.exp(-kick_time / 0.08)
        for step, (low, high, tau, level) in enumerate(((6000, 10000, 0.02, 0.25), (1000, 5000, 0.06, 0.5))):
            start = onset + beat / 2 if step == 0 else onset  # hi-hat on the off-beat, snare on beats 2 and 4
            if 0 <= start < duration and (step == 0 or index % 2 == 1):
                span = _span(sample_rate, num_frames, start, 0.2)
                frames = span.stop - span.start
                signal[span] += level * filtered_noise(rng, frames, sample_rate, low=low, high=high) * decay_envelope(
                    frames, sample_rate, 0.0, tau, attack=0.001)
    return signal


GENERATORS: tuple[SoundGenerator, ...] = (
    air_conditioner, car_horn, children_playing, dog_bark, drilling,
    engine_idling, gun_shot, jackhammer, siren, street_music,
)


def ambience(rng: np.random.Generator, sample_rate: int, num_frames: int) -> np.ndarray:
    """Distant city background: pink-to-brown noise, band-limited, unit RMS."""
    return filtered_noise(rng, num_frames, sample_rate, low=30, high=rng.uniform(3000, 8000), order=2,
                          tilt=rng.uniform(0.8, 1.6))
