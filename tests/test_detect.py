"""detect: frames and post-processing on hand-made curves, events on generated soundscapes, the field's formats."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import median_filter

from core import CLASS_NAMES
from core.errors import UserError
from core.infer.detect import FrameGrid, check_soundscape_leakage, detect_files, events_frame, scores_frame, seen_folds
from core.infer.events import Event, PostProcessing, scores_to_events
from core.infer.predictors import ModelSpec
from core.sed.evaluate import event_metrics
from core.sed.formats import read_event_list, read_reference, write_event_list

HOP = 0.5
DOG, SIREN = CLASS_NAMES.index("dog_bark"), CLASS_NAMES.index("siren")


def curve(values: list[float], label: int = DOG) -> np.ndarray:
    """Scores [frames, classes]: `values` for one class, zero elsewhere."""
    scores = np.zeros((len(values), len(CLASS_NAMES)))
    scores[:, label] = values
    return scores


def rules(on=0.5, off=0.3, median_frames=1, min_length=0.0, min_gap=0.0) -> PostProcessing:
    return PostProcessing.uniform(on, off, median_frames, min_length, min_gap)


# ------------------------------------------------------------------------------------- post-processing

def test_hysteresis_keeps_an_event_open_between_the_two_thresholds():
    values = [0.1, 0.6, 0.4, 0.35, 0.55, 0.2, 0.1]
    assert scores_to_events(curve(values), HOP, 3.5, rules(0.5, 0.3)) == [Event(0.5, 2.5, "dog_bark")]
    # Without hysteresis (off = on) the dip below 0.5 splits it in two.
    assert scores_to_events(curve(values), HOP, 3.5, rules(0.5, 0.5)) == [Event(0.5, 1.0, "dog_bark"),
                                                                             Event(2.0, 2.5, "dog_bark")]


def test_short_events_are_dropped_and_short_gaps_merged():
    values = [0.9, 0.9, 0.0, 0.9, 0.9, 0.0, 0.0, 0.0, 0.9, 0.0]   # events [0,1), [1.5,2.5), [4,4.5)
    assert scores_to_events(curve(values), HOP, 5.0, rules(min_length=0.6)) == [
        Event(0.0, 1.0, "dog_bark"), Event(1.5, 2.5, "dog_bark")]
    assert scores_to_events(curve(values), HOP, 5.0, rules(min_gap=0.5)) == [
        Event(0.0, 2.5, "dog_bark"), Event(4.0, 4.5, "dog_bark")]
    assert scores_to_events(curve(values), HOP, 5.0, rules(min_gap=0.5, min_length=0.6)) == [
        Event(0.0, 2.5, "dog_bark")]


def test_median_filter_equals_scipy_nearest_and_removes_a_one_frame_flicker():
    from core.infer.events import EventTracker

    rng = np.random.default_rng(0)
    scores = rng.random((23, len(CLASS_NAMES)))
    tracker = EventTracker(rules(median_frames=5), HOP)
    filtered = []
    tracker._step = lambda row: filtered.append(row) or []  # observe the filter's output only
    for row in scores:
        tracker.push(row)
    tracker.close(23 * HOP)
    np.testing.assert_allclose(np.stack(filtered), median_filter(scores, size=(5, 1), mode="nearest"))
    flicker = [0.0, 0.0, 0.9, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 0.0]
    assert scores_to_events(curve(flicker), HOP, 5.0, rules(median_frames=3)) == [Event(2.5, 4.5, "dog_bark")]


def test_an_event_open_at_the_end_closes_at_the_recording_end():
    assert scores_to_events(curve([0.0, 0.9, 0.9]), HOP, 1.2, rules()) == [Event(0.5, 1.2, "dog_bark")]


def test_classes_are_independent_and_one_class_never_overlaps_itself():
    rng = np.random.default_rng(1)
    scores = median_filter(rng.random((200, len(CLASS_NAMES))), size=(5, 1))
    events = scores_to_events(scores, HOP, 100.0, rules(0.55, 0.45, 3, 0.5, 0.5))
    assert events
    for label in CLASS_NAMES:
        mine = [e for e in events if e.label == label]
        assert all(a.offset < b.onset for a, b in zip(mine, mine[1:], strict=False))  # disjoint, gaps > min_gap


# ------------------------------------------------------------------------------------- frames

def test_frame_k_is_scored_by_the_window_centred_on_it():
    grid = FrameGrid(clip=8, hop=2)
    signal = np.arange(1, 12, dtype=np.float32)                  # 11 samples -> 6 frames
    assert grid.frame_count(len(signal)) == 6 and grid.left_pad == 3
    np.testing.assert_array_equal(grid.window(signal, 0), [0, 0, 0, 1, 2, 3, 4, 5])   # centre at sample 1
    np.testing.assert_array_equal(grid.window(signal, 5), [8, 9, 10, 11, 0, 0, 0, 0])  # centre at sample 11


# ------------------------------------------------------------------------------------- soundscapes

@pytest.fixture(scope="module")
def official_data(tmp_path_factory):
    from core.demo.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("official") / "data"
    return write_synthetic_dataset(root, seed=2, clips_per_class_fold=1, test_clips_per_class=1, layout="official")


@pytest.fixture(scope="module")
def soundscapes(official_data, tmp_path_factory):
    from core.data.soundscapes import SoundscapeSettings, write_soundscapes

    out = tmp_path_factory.mktemp("scapes") / "test"
    return write_soundscapes(official_data, (9, 10), out, 3, 0, SoundscapeSettings(augment=False))


def oracle(reference: pd.DataFrame, filename: str, hop: float, rate: int = 8000, clip: int = 32000) -> ModelSpec:
    """A scorer stub that knows the truth: score 1 for each class with an annotated event overlapping the frame
    of the window it is given (detect scores frames in order, so the n-th window is frame n)."""
    events = reference[reference["filename"] == filename]
    frame = iter(range(10 ** 6))

    def predict(windows: np.ndarray, salience_values) -> np.ndarray:
        out = np.zeros((len(windows), len(CLASS_NAMES)), dtype=np.float32)
        for row in range(len(windows)):
            start = next(frame) * hop
            active = events[(events["onset"] < start + hop) & (events["offset"] > start)]
            out[row, [CLASS_NAMES.index(label) for label in active["event_label"]]] = 1.0
        return out

    return ModelSpec(rate, clip, predict, False, "oracle")


def test_soundscapes_follow_their_record_and_are_reproducible(soundscapes, official_data, tmp_path):
    import json

    import soundfile

    from core.data.soundscapes import SoundscapeSettings, write_soundscapes

    truth, files = read_reference(soundscapes)
    assert files == ["soundscape_00000.wav", "soundscape_00001.wav", "soundscape_00002.wav"]
    record = json.loads((soundscapes / "soundscapes.json").read_text())
    assert record["folds"] == [9, 10]
    assert {e["fold"] for s in record["soundscapes"] for e in s["events"]} <= {9, 10}
    for name in files:
        mine = truth[truth["filename"] == name]
        assert 1 <= len(mine) <= 9 and (mine["onset"] >= 0).all() and (mine["offset"] <= 10.0).all()
        assert soundfile.info(soundscapes / "audio" / name).duration == pytest.approx(10.0)
    # URBAN-SED's per-file text annotations say the same as the event list.
    urban, _ = read_reference(soundscapes / "annotations")
    pd.testing.assert_frame_equal(urban.sort_values(["filename", "onset"]).reset_index(drop=True),
                                  truth.sort_values(["filename", "onset"]).reset_index(drop=True), check_dtype=False)
    again = write_soundscapes(official_data, (9, 10), tmp_path / "again", 1, 0, SoundscapeSettings(augment=False))
    assert (again / "audio" / files[0]).read_bytes() == (soundscapes / "audio" / files[0]).read_bytes()


def test_an_oracle_scorer_gives_the_annotated_events_within_one_hop_and_segment_f1_1(soundscapes):
    truth, files = read_reference(soundscapes)
    found = []
    for name in files:
        detection = detect_files([soundscapes / "audio" / name], oracle(truth, name, HOP), rules(0.5, 0.5),
                                 hop_seconds=HOP)
        assert not detection.bad
        found.append(events_frame(detection))
        for event in detection.files[0].events:  # each event covers annotated events of its class, within a hop
            same = truth[(truth["filename"] == name) & (truth["event_label"] == event.label)
                         & (truth["onset"] < event.offset) & (truth["offset"] > event.onset)]
            assert len(same) >= 1
            assert same["onset"].min() - HOP < event.onset <= same["onset"].min() + 1e-6
            assert same["offset"].max() - 1e-6 <= event.offset < same["offset"].max() + HOP
    predicted = pd.concat(found, ignore_index=True)
    figures = event_metrics(predicted, truth, files)
    assert figures["segment_based"]["overall"]["f1"] == pytest.approx(1.0)
    assert figures["segment_based"]["overall"]["error_rate"] == pytest.approx(0.0)


def test_event_list_and_score_tables_round_trip(soundscapes, tmp_path):
    from core.sed.formats import write_score_table

    truth, files = read_reference(soundscapes)
    detection = detect_files([soundscapes / "audio" / files[0]], oracle(truth, files[0], HOP), rules(0.5, 0.5),
                             hop_seconds=HOP)
    write_event_list(events_frame(detection), tmp_path / "events.tsv")
    back = read_event_list(tmp_path / "events.tsv")
    assert list(back.columns) == ["filename", "onset", "offset", "event_label"] and len(back) >= 1
    table = scores_frame(detection.files[0])
    assert list(table.columns) == ["onset", "offset", *CLASS_NAMES] and len(table) == 20  # 10 s / 0.5 s
    assert table["offset"].iloc[-1] == pytest.approx(10.0)
    path = write_score_table(table, tmp_path / "scores", files[0])
    from sed_scores_eval import io

    np.testing.assert_allclose(io.read_sed_scores(path)[list(CLASS_NAMES)].to_numpy(), detection.files[0].frame_scores)


def test_soundscapes_of_folds_the_models_saw_are_refused(soundscapes, tmp_path):
    wav = soundscapes / "audio" / "soundscape_00000.wav"
    assert seen_folds((1, 2)) == set(range(1, 9))                 # kaggle fold models saw folds 1-8
    assert check_soundscape_leakage([wav], (1, 2, 3), allowed=False) is None   # made from folds 9,10: fine
    assert seen_folds((9,)) == set(range(1, 11)) - {9}           # us8k-10fold model 9: tested on 9, saw the rest
    with pytest.raises(UserError, match="fold.*allow-fold-leakage"):
        check_soundscape_leakage([wav], (9,), allowed=False)
    assert "optimistic" in check_soundscape_leakage([wav], (9,), allowed=True)


def test_soundscapes_need_folds_with_clips(official_data, tmp_path):
    from core.data.soundscapes import SoundscapeSettings, write_soundscapes

    with pytest.raises(UserError, match="official layout"):
        from core.data.soundscapes import clips_of_folds
        clips_of_folds(None, (9,), tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="not an empty folder"):
        write_soundscapes(official_data, (9,), tmp_path / "full", 1, 0, SoundscapeSettings(augment=False))


def test_bad_files_get_a_reason_and_no_events(soundscapes, tmp_path):
    truth, files = read_reference(soundscapes)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    detection = detect_files([broken], oracle(truth, files[0], HOP), rules(), hop_seconds=HOP)
    assert detection.files == [] and list(detection.bad) == [str(broken)]
    assert events_frame(detection).empty


def test_the_command_writes_every_format_and_exits_2_on_bad_audio(soundscapes, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO, save_fold_checkpoints, subprocess_env, tiny

    from core.plots import read_plot_data

    name = "resnet34_pcen_sam_8fold"
    save_fold_checkpoints(tmp_path / "solutions", name, folds=(1,), recipe=tiny(name))
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    wav = soundscapes / "audio" / "soundscape_00000.wav"
    result = subprocess.run(
        [sys.executable, "-m", "core", "detect", str(wav), str(tmp_path / "broken.wav"), "--solution", name,
         "--solutions", str(tmp_path / "solutions"), "--device", "cpu", "--on", "0.1", "--off", "0.05",
         "--events", str(tmp_path / "events.tsv"), "--scores", str(tmp_path / "scores"), "--plot",
         str(tmp_path / "plots"), "--reference", str(soundscapes), "--json"],
        capture_output=True, text=True, cwd=REPO, env=subprocess_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert [bad["file"] for bad in report["bad"]] == [str(tmp_path / "broken.wav")]
    events = read_event_list(tmp_path / "events.tsv")
    assert len(events) == len(report["files"][0]["events"])
    assert (tmp_path / "scores" / "soundscape_00000.tsv").is_file()
    drawn = read_plot_data(tmp_path / "plots" / "soundscape_00000.png")
    assert len(drawn["reference"]) == len(read_reference(soundscapes)[0].query("filename == 'soundscape_00000.wav'"))


@pytest.mark.slow  # librosa's first pitch shift compiles numba kernels (~30 s)
def test_pitch_shift_and_time_stretch_follow_the_drawn_values(official_data, tmp_path):
    import json

    from core.data.soundscapes import SoundscapeSettings, write_soundscapes

    out = write_soundscapes(official_data, (9,), tmp_path / "aug", 1, 3, SoundscapeSettings(duration=6.0))
    (scape,) = json.loads((out / "soundscapes.json").read_text())["soundscapes"]
    assert scape["onset_distribution"] == "uniform"            # soundscape i: uniform, unimodal, bimodal by i % 3
    for event in scape["events"]:
        assert -3 <= event["pitch_semitones"] <= 3 and 0.8 <= event["time_stretch"] <= 1.2
        assert 6 <= event["snr_db"] <= 30 and event["fold"] == 9 and 0 <= event["onset"] < event["offset"] <= 6.0
        assert event["excerpt_seconds"] <= 4.0                       # URBAN-SED: 0.5-4 s, at most the clip
        # Scaper's convention: the stretch factor multiplies the excerpt's length (librosa rounds to a hop).
        assert event["offset"] - event["onset"] == pytest.approx(event["excerpt_seconds"] * event["time_stretch"],
                                                                 abs=0.02)


def test_onsets_follow_urban_sed_three_distributions():
    from scipy.stats import truncnorm

    from core.data.soundscapes import SoundscapeSettings, draw_onset

    def truncated(mean: float):  # Scaper's truncnorm: N(mean, 2 s) cut to [0, 10] s
        return truncnorm((0 - mean) / 2, (10 - mean) / 2, loc=mean, scale=2)

    settings, rng = SoundscapeSettings(), np.random.default_rng(0)
    draws = {name: np.array([draw_onset(rng, name, settings) for _ in range(4000)])
             for name in ("uniform", "unimodal", "bimodal")}
    assert all(((d >= 0) & (d <= 10)).all() for d in draws.values())
    assert abs(draws["uniform"].mean() - 5) < 0.2 and abs(draws["uniform"].std() - 10 / 12 ** 0.5) < 0.1
    assert abs(draws["unimodal"].mean() - 5) < 0.1 and abs(draws["unimodal"].std() - truncated(5).std()) < 0.1
    low, high = truncated(3), truncated(7)                          # bimodal: a coin between means 3 s and 7 s
    second_moment = (low.var() + low.mean() ** 2 + high.var() + high.mean() ** 2) / 2
    assert abs(draws["bimodal"].std() - (second_moment - 25) ** 0.5) < 0.1
    assert abs(np.mean(draws["bimodal"] < 3) - (low.cdf(3) + high.cdf(3)) / 2) < 0.03
