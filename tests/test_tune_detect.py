"""tune-detect: per-class thresholds chosen out of fold, written into the solution folder, used by detect by default."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import save_fold_checkpoints, tiny
from test_bad_input import run_cli as run_cli_in_process

from core import CLASS_NAMES
from core.folds import fold_roles

BASELINE = "resnet34_pcen_sam_8fold"


@pytest.fixture(scope="module")
def official_data(tmp_path_factory):
    from core.demo.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("official") / "data"
    return write_synthetic_dataset(root, seed=2, clips_per_class_fold=1, test_clips_per_class=1, layout="official")


def run_cli(*args: object) -> tuple[int, str, str]:
    """`python -m core ARGS` in this process: exit code, stdout, stderr (tests/test_bad_input.py runs it)."""
    result = run_cli_in_process(*args)
    return result.code, result.stdout, result.stderr


def test_tune_detect_writes_one_row_per_class_from_each_models_validation_fold_only(official_data, tmp_path,
                                                                                  monkeypatch, one_torch_thread):
    import core.infer.thresholds as thresholds
    from core.commands.detect import post_processing
    from core.data.soundscapes import soundscape_folds
    from core.solution_folder import SolutionFolder

    solutions = tmp_path / "solutions"
    save_fold_checkpoints(solutions, BASELINE, folds=(2, 5), recipe=tiny(BASELINE))
    scored: list[tuple[tuple[int, ...], Path, dict]] = []   # (fold model keys, soundscape file, its record)
    real_detect = thresholds.detect_files

    def recording_detect(files, spec, *args, **kwargs):
        for path in files:  # read what the tuning was given from the generator's own record, as it runs
            record = json.loads((Path(path).parents[1] / "soundscapes.json").read_text())
            entry = next(s for s in record["soundscapes"] if s["file"] == Path(path).name)
            scored.append((spec.fold_keys, Path(path), {"folds": soundscape_folds(path), "entry": entry}))
        return real_detect(files, spec, *args, **kwargs)

    monkeypatch.setattr(thresholds, "detect_files", recording_detect)
    code, out, err = run_cli("tune-detect", "--solution", BASELINE, "--solutions", solutions, "--data",
                             official_data, "--n", 2, "--no-augment", "--device", "cpu", "--precision", "fp32",
                             "--keep", tmp_path / "kept")
    assert code == 0, err

    # Each fold model scored its own soundscapes, made from its validation fold and none it trained on.
    assert sorted({keys for keys, _, _ in scored}) == [(2,), (5,)] and len(scored) == 4
    for (key,), _, seen in scored:
        roles = fold_roles("kaggle", key)
        assert seen["folds"] == (roles.validation,) == (key,)
        assert not set(seen["folds"]) & set(roles.train)
        assert {event["fold"] for event in seen["entry"]["events"]} == {key}

    written = SolutionFolder.of(solutions, BASELINE).detect_thresholds
    table = pd.read_csv(written)
    assert list(table.columns) == ["event_label", "on", "off"] and list(table["event_label"]) == list(CLASS_NAMES)
    assert ((0 <= table["off"]) & (table["off"] <= table["on"]) & (table["on"] <= 1)).all()
    assert all(label in out for label in CLASS_NAMES)

    # detect and monitor take it by default, say so, and give way to --on/--off or --thresholds.
    rules, source = post_processing(0.5, None, None, 1.5, 0.5, 0.5, None, tuple(CLASS_NAMES), written)
    assert list(rules.on) == list(table["on"]) and list(rules.off) == list(table["off"])
    assert "tuned out of fold" in source and str(written) in source
    clip = next((official_data / "audio" / "fold9").glob("*.wav"))
    common = ["--solution", BASELINE, "--solutions", solutions, "--device", "cpu", "--json"]
    code, _, err = run_cli("detect", clip, *common)
    assert code == 0 and "tuned out of fold" in err and str(written) in err, err
    code, _, err = run_cli("detect", clip, *common, "--on", "0.6")
    assert code == 0 and "--on 0.6 / --off 0.3" in err and "tuned" not in err, err
    written.unlink()
    code, _, err = run_cli("detect", clip, *common)
    assert code == 0 and "hand-set defaults, on 0.5 / off 0.3" in err and "tune-detect" in err, err


def test_the_tuning_refuses_soundscapes_of_a_fold_the_model_trained_on(official_data, tmp_path):
    from core.data.soundscapes import SoundscapeSettings, write_soundscapes
    from core.errors import UserError
    from core.infer.events import PostProcessing
    from core.infer.thresholds import score_out_of_fold

    made = write_soundscapes(official_data, (3,), tmp_path / "fold3", 1, 0, SoundscapeSettings(augment=False))

    def never_scored(key):
        raise AssertionError("a model was run on soundscapes of its training folds")

    with pytest.raises(UserError, match="trained on"):   # fold model 2 trains on fold 3
        score_out_of_fold([2], "kaggle", never_scored, lambda fold: made, PostProcessing.uniform(0.5, 0.3), 0.5)


def test_each_class_gets_the_pair_that_detects_its_events(official_data, tmp_path):
    """Scores of 0.45 inside each annotated event and 0.05 outside: the hand-set on = 0.5 finds nothing, the
    tuned on must sit in (0.05, 0.45] and find the events."""
    from core.data.soundscapes import SoundscapeSettings, write_soundscapes
    from core.infer.detect import Detection, FileDetection
    from core.infer.events import PostProcessing
    from core.infer.thresholds import FoldRun, choose_thresholds
    from core.sed.formats import read_reference

    made = write_soundscapes(official_data, (1,), tmp_path / "fold1", 3, 0, SoundscapeSettings(augment=False),
                             name_prefix="fold1")
    reference, files = read_reference(made)
    hop, duration = 0.1, 10.0
    detected = []
    for name in files:
        starts = np.arange(int(duration / hop)) * hop
        scores = np.full((len(starts), len(CLASS_NAMES)), 0.05)
        for onset, offset, label in reference.loc[reference["filename"] == name,
                                                  ["onset", "offset", "event_label"]].itertuples(index=False):
            scores[(starts + hop > onset) & (starts < offset), CLASS_NAMES.index(label)] = 0.45
        detected.append(FileDetection(made / "audio" / name, duration, hop, scores, []))
    run = FoldRun(1, fold_roles("kaggle", 1).train, 1, (1,), made, Detection(detected, {}))
    tuned = choose_thresholds([run], PostProcessing.uniform(0.5, 0.3, 1, 0.0, 0.0))
    present = sorted(set(reference["event_label"]))
    assert present
    for label in present:
        index = CLASS_NAMES.index(label)
        assert 0.05 < tuned.rules.on[index] <= 0.45 and tuned.rules.off[index] <= tuned.rules.on[index]
        assert tuned.event_f1[label] > 0.5, (label, tuned.event_f1[label])   # overlapping same-class events merge
    for label in sorted(set(CLASS_NAMES) - set(present)):   # nothing to find: the tie goes to the hand-set pair
        assert (tuned.rules.on[CLASS_NAMES.index(label)], tuned.rules.off[CLASS_NAMES.index(label)]) == (0.5, 0.3)
