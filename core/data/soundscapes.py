"""URBAN-SED-style soundscapes from the clips of chosen UrbanSound8K folds, with their annotations.

Settings followed: URBAN-SED's generation scripts (Salamon et al., "Scaper: a library for soundscape synthesis
and augmentation", WASPAA 2017; github.com/justinsalamon/scaper_waspaa2017, notebooks/2_generate_*.ipynb),
with Scaper's own rules for what they leave implicit (github.com/justinsalamon/scaper, scaper/core.py):
- 10 s (--duration), 44.1 kHz mono; background: Brownian noise at the reference level (-50);
- 1 to 9 foreground events (uniform); each event's label uniform over the classes, its clip uniform among
  that class's clips not yet used in this soundscape (Scaper's allow_repeated_source=False);
- the excerpt starts at the clip's start (source time 0) and lasts uniform [0.5, 4] s, capped at the clip's
  length; the time stretch factor multiplies that length (Scaper's convention: > 1 is longer);
- onset: one third of the soundscapes each (by index: uniform, unimodal, bimodal, as URBAN-SED's three
  subsets) uniform over [0, duration], truncated normal (mean 5 s, std 2 s, within [0, 10] s) or the same
  around 3 s or 7 s (a coin per event), scaled with --duration; an event that would end after the soundscape
  is moved earlier to end with it (Scaper's rule);
- SNR uniform in [6, 30] dB over the background; pitch shift uniform in [-3, 3] semitones, time stretch
  uniform in [0.8, 1.2].
What differs from Scaper (which needs the SoX binary, absent here, so it is not used): the SNR is a ratio of
RMS levels over the event's samples, not of LUFS loudness; pitch shift and time stretch are librosa's phase
vocoder, not SoX's; no reverb (URBAN-SED adds SoX reverb 0.1); a class whose clips are all used already in
one soundscape reuses one (Scaper raises; only small sets such as the demo run out); a mixture whose peak
would exceed 1 is scaled down as a whole (annotations unchanged).

Written: audio/<id>.wav, annotations/<id>.txt (URBAN-SED: onset offset label, no header), jams/<id>.jams,
events.tsv (DCASE event list over all soundscapes) and soundscapes.json (folds, seed, settings, the onset
distribution and the clip of every event), so `detect` can refuse a solution that trained on these folds (the
fold-leakage guard).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.atomic import atomic_open
from core.data.audio import load_signal
from core.errors import UserError
from core.folds import URBANSOUND8K_CLASSES

RECORD_NAME = "soundscapes.json"


@dataclass(frozen=True)
class SoundscapeSettings:
    """URBAN-SED's generation distributions (module docstring)."""

    duration: float = 10.0
    sample_rate: int = 44100
    min_events: int = 1
    max_events: int = 9
    event_seconds: tuple[float, float] = (0.5, 4.0)   # excerpt length before stretching, capped at the clip's
    snr_db: tuple[float, float] = (6.0, 30.0)
    pitch_semitones: tuple[float, float] = (-3.0, 3.0)
    time_stretch: tuple[float, float] = (0.8, 1.2)
    background_dbfs: float = -50.0          # RMS of the Brownian noise
    augment: bool = True                    # pitch shift and time stretch (False: the clips as they are)
    onset_std: float = 0.2                  # truncated normals: std 2 s of 10 s
    onset_modes: tuple[float, ...] = (0.3, 0.7)  # bimodal means: 3 s and 7 s of 10 s (unimodal: 0.5)


ONSET_DISTRIBUTIONS = ("uniform", "unimodal", "bimodal")  # URBAN-SED's three subsets; soundscape i: i % 3


@dataclass(frozen=True)
class PlacedEvent:
    onset: float
    offset: float
    label: str
    source: str             # the clip's file name
    fold: int
    excerpt_seconds: float  # the clip's first seconds used, before stretching
    snr_db: float
    pitch_semitones: float
    time_stretch: float


def clips_of_folds(all_folds: pd.DataFrame | None, folds: tuple[int, ...], data: Path) -> pd.DataFrame:
    """The labelled clips (slice_file_name, fold, classID, path) of `folds`; a clear error when absent."""
    if all_folds is None:
        raise UserError(f"{data}: soundscapes need the official layout (UrbanSound8K.csv, audio/fold1..fold10), "
                        "whose folds 9-10 are labelled; write the demo set with `./run.sh synth --layout official`")
    chosen = all_folds[all_folds["fold"].isin(folds)]
    absent = [fold for fold in folds if fold not in set(chosen["fold"])]
    if absent:
        raise UserError(f"{data} has no clips in fold(s) {', '.join(map(str, absent))}")
    return chosen.reset_index(drop=True)


def brownian_noise(rng: np.random.Generator, num_samples: int, dbfs: float) -> np.ndarray:
    """Integrated white noise, its slow drift removed (mean and linear trend), at `dbfs` RMS."""
    noise = np.cumsum(rng.standard_normal(num_samples))
    ramp = np.arange(num_samples, dtype=np.float64)
    noise -= np.polyval(np.polyfit(ramp, noise, 1), ramp)
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12) * 10 ** (dbfs / 20)).astype(np.float32)


def transform(clip: np.ndarray, rate: int, semitones: float, stretch: float) -> np.ndarray:
    """Pitch shift then time stretch (librosa's phase vocoder); `stretch` multiplies the length (Scaper's factor)."""
    import librosa

    shifted = librosa.effects.pitch_shift(clip, sr=rate, n_steps=semitones)
    return librosa.effects.time_stretch(shifted, rate=1.0 / stretch).astype(np.float32)


def draw_onset(rng: np.random.Generator, distribution: str, settings: SoundscapeSettings) -> float:
    """An onset (seconds) from one of URBAN-SED's three distributions over [0, duration]."""
    duration = settings.duration
    if distribution == "uniform":
        return float(rng.uniform(0.0, duration))
    mean = 0.5 if distribution == "unimodal" else settings.onset_modes[int(rng.integers(2))]
    while True:  # a normal truncated to [0, duration], by rejection
        onset = float(rng.normal(mean * duration, settings.onset_std * duration))
        if 0.0 <= onset <= duration:
            return onset


def make_soundscape(clips: pd.DataFrame, settings: SoundscapeSettings, rng: np.random.Generator,
                    onset_distribution: str = "uniform") -> tuple[np.ndarray, list[PlacedEvent]]:
    """One soundscape and its events, drawn from `rng` (module docstring)."""
    rate, length = settings.sample_rate, int(round(settings.duration * settings.sample_rate))
    mixture = brownian_noise(rng, length, settings.background_dbfs).astype(np.float64)
    background_rms = 10 ** (settings.background_dbfs / 20)
    classes = sorted(set(clips["classID"]))
    events, used = [], set()
    for _ in range(int(rng.integers(settings.min_events, settings.max_events + 1))):
        class_id = classes[int(rng.integers(len(classes)))]
        rows = clips[clips["classID"] == class_id]
        unused = rows[~rows["slice_file_name"].isin(used)]
        rows = unused if len(unused) else rows  # a small set may run out of unused clips (module docstring)
        row = rows.iloc[int(rng.integers(len(rows)))]
        used.add(row["slice_file_name"])
        wanted = float(rng.uniform(*settings.event_seconds))
        semitones = float(rng.uniform(*settings.pitch_semitones)) if settings.augment else 0.0
        stretch = float(rng.uniform(*settings.time_stretch)) if settings.augment else 1.0
        snr = float(rng.uniform(*settings.snr_db))
        onset = draw_onset(rng, onset_distribution, settings)
        clip = load_signal(Path(row["path"]), rate)
        clip = clip[:max(1, int(round(wanted * rate)))]   # from the clip's start, at most its length
        excerpt = len(clip) / rate
        if settings.augment:
            clip = transform(clip, rate, semitones, stretch)
        clip = clip[:length]
        start = min(int(round(onset * rate)), length - len(clip))   # ends with the soundscape at the latest
        rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
        if rms > 0:
            mixture[start:start + len(clip)] += clip * (background_rms * 10 ** (snr / 20) / rms)
        events.append(PlacedEvent(round(start / rate, 6), round((start + len(clip)) / rate, 6),
                                  URBANSOUND8K_CLASSES[int(class_id)], str(row["slice_file_name"]), int(row["fold"]),
                                  round(excerpt, 6), snr, semitones, stretch))
    peak = float(np.max(np.abs(mixture)))
    if peak > 1.0:
        mixture *= 0.999 / peak  # keep the mixture in range as a whole; relative levels stay
    return mixture.astype(np.float32), sorted(events, key=lambda e: e.onset)


def write_soundscapes(data: Path, folds: tuple[int, ...], out: Path, count: int, seed: int,
                      settings: SoundscapeSettings, name_prefix: str = "soundscape") -> Path:
    """Write `count` soundscapes from the clips of `folds` in `data` to `out` (absent or empty), atomically."""
    import soundfile

    from core.data.metadata import load_source
    from core.sed.formats import EVENT_COLUMNS, write_event_list

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new folder")
    clips = clips_of_folds(load_source(Path(data), allow_fold_leakage=True).all_folds, folds, Path(data))
    building = out.parent / f".{out.name}.partial"
    if building.exists():
        shutil.rmtree(building)  # left by an interrupted run
    for folder in ("audio", "annotations", "jams"):
        (building / folder).mkdir(parents=True)
    rows, record = [], []
    for index in range(count):
        name = f"{name_prefix}_{index:05d}"
        distribution = ONSET_DISTRIBUTIONS[index % len(ONSET_DISTRIBUTIONS)]
        audio, events = make_soundscape(clips, settings, np.random.default_rng([seed, index]), distribution)
        soundfile.write(building / "audio" / f"{name}.wav", audio, settings.sample_rate, subtype="PCM_16")
        (building / "annotations" / f"{name}.txt").write_text(
            "".join(f"{e.onset:.6f}\t{e.offset:.6f}\t{e.label}\n" for e in events))
        write_jams(building / "jams" / f"{name}.jams", events, settings, folds, seed, index)
        rows.extend({"filename": f"{name}.wav", "onset": e.onset, "offset": e.offset, "event_label": e.label}
                    for e in events)
        record.append({"file": f"{name}.wav", "onset_distribution": distribution, "events": [asdict(e) for e in events]})
    write_event_list(pd.DataFrame(rows, columns=EVENT_COLUMNS), building / "events.tsv")
    with atomic_open(building / RECORD_NAME, "w") as handle:
        json.dump({"folds": list(folds), "seed": seed, "count": count, "data": str(Path(data).resolve()),
                   "settings": asdict(settings), "soundscapes": record}, handle, indent=1)
    if out.exists():
        out.rmdir()
    os.replace(building, out)
    return out


def write_jams(path: Path, events: list[PlacedEvent], settings: SoundscapeSettings, folds: tuple[int, ...],
               seed: int, index: int) -> None:
    """The soundscape's annotation as JAMS (one sound_event annotation, as URBAN-SED ships)."""
    import jams

    document = jams.JAMS()
    document.file_metadata.duration = settings.duration
    annotation = jams.Annotation(namespace="tag_open", duration=settings.duration)
    for event in events:
        annotation.append(time=event.onset, duration=event.offset - event.onset, value=event.label, confidence=1.0)
    annotation.annotation_metadata.data_source = f"UrbanSound8K folds {','.join(map(str, folds))}"
    annotation.sandbox.update(generator="core soundscapes (URBAN-SED settings)", seed=seed, index=index,
                              events=[asdict(e) for e in events])
    document.annotations.append(annotation)
    document.save(str(path))


def soundscape_folds(path: Path) -> tuple[int, ...] | None:
    """The UrbanSound8K folds the soundscapes at `path` (a file or folder written here) came from, else None."""
    for folder in [Path(path).resolve(), *Path(path).resolve().parents]:
        record = folder / RECORD_NAME
        if record.is_file():
            return tuple(json.loads(record.read_text())["folds"])
    return None
