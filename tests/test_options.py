"""Options are checked at the door: every numeric option of every command refuses out-of-domain values
(exit 2, one line, no traceback, nothing written), and every --help shows every default.

The commands and their options are discovered from the typer app, so a new option is covered without
editing this file; a numeric option declared without a domain fails the walk.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import REPO, subprocess_env

from core.cli import app, main
from core.commands import options as option_domains
from core.errors import UserError

COMMAND = typer.main.get_command(app)
STRICTLY_POSITIVE_VALUES = ("0", "-1", "nan", "inf")
FOLD_LIST_VALUES = ("0", "1,x", ",")
BEYOND_URBANSOUND8K = "11"  # outside every fold list but export's, whose checkpoints decide (any data set's folds)


def numeric(param) -> bool:
    annotation = param.type_descriptor.annotation
    return annotation in (int, float) and not param.is_flag


def fold_list(param) -> bool:
    return param.name == "folds"


def out_of_domain(param) -> list[str]:
    """Values just outside `param`'s declared domain (its min/max, or the callback that bounds it)."""
    if fold_list(param):
        unbounded = getattr(param.callback, "__wrapped__", None) is option_domains.any_fold_list
        return list(FOLD_LIST_VALUES) + ([] if unbounded else [BEYOND_URBANSOUND8K])
    if getattr(param.callback, "__wrapped__", None) is option_domains.positive:
        return list(STRICTLY_POSITIVE_VALUES)
    values = []
    if param.min is not None:
        values.append(str(param.min - 1))
    if param.max is not None:
        values.append(str(param.max + 1))
    return values


def required_arguments(command, tmp_path: Path) -> list[str]:
    """Placeholder values for a command's required arguments and options (never reached: parsing stops first)."""
    words: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        placeholder = str(tmp_path / "placeholder")
        words += [placeholder] if param.param_type_name == "argument" else [param.opts[0], placeholder]
    return words


CASES = [pytest.param(name, param.opts[0], value, id=f"{name} {param.opts[0]} {value}")
         for name, command in COMMAND.commands.items() for param in command.params
         if (numeric(param) or fold_list(param)) for value in out_of_domain(param) or ["<no domain>"]]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m core ARGV` run in this process."""
    old_argv, code = sys.argv, 0
    sys.argv = ["python -m core", *argv]
    try:
        main()  # returns after --help
    except SystemExit as exited:
        code = exited.code
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_walk_finds_the_numeric_options_of_every_command():
    covered = {(name, option) for name, option, _ in (case.values for case in CASES)}
    for expected in (("train", "--epochs"), ("train", "--batch-size"), ("train", "--lr"),
                     ("train", "--seed"), ("train", "--folds"), ("predict", "--batch-size"), ("tune", "--timeout"),
                     ("classify", "--hop"), ("export", "--opset"), ("synth", "--clips-per-class-fold"),
                     ("select", "--max")):
        assert expected in covered, expected


@pytest.mark.parametrize(("name", "option", "value"), CASES)
def test_out_of_domain_value_is_a_one_line_usage_error_that_writes_nothing(name, option, value, tmp_path,
                                                                             monkeypatch, capsys):
    assert value != "<no domain>", f"{name} {option} is numeric but declares no domain (min=/max= or a callback)"
    assert_one_line_usage_error(name, option, value, tmp_path, monkeypatch, capsys)


def assert_one_line_usage_error(name: str, option: str, value: str, tmp_path, monkeypatch, capsys) -> None:
    """`name OPTION=value` exits 2 with one 'error:' line naming the option, no traceback, nothing written."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("US8K_CACHE_DIR", str(workdir / "cache"))
    argv = [name, *required_arguments(COMMAND.commands[name], tmp_path), f"{option}={value}"]
    code, out, err = run_main(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], err
    assert "Traceback" not in err and out == ""
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("name", ["train", "predict", "tune"])
@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_workers_outside_auto_or_a_count_is_a_one_line_usage_error(name, value, tmp_path, monkeypatch, capsys):
    """--workers is a string option (auto | N), so the numeric walk above does not see it: checked here."""
    assert_one_line_usage_error(name, "--workers", value, tmp_path, monkeypatch, capsys)


def test_train_folds_outside_the_chosen_protocol_are_refused_whichever_comes_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv in (["--folds", "9", "--protocol", "kaggle"], ["--protocol", "kaggle", "--folds", "9"], ["--folds", "9"]):
        code, _, err = run_main(["train", "resnet34_pcen_sam_8fold", *argv], capsys)
        assert code == 2 and "--folds" in err and "1-8" in err, (argv, err)
    code, _, err = run_main(["train", "resnet34_pcen_sam_8fold", "--protocol", "us8k-10fold", "--folds", "11"], capsys)
    assert code == 2 and "1-10" in err
    assert list(tmp_path.iterdir()) == []


def test_export_takes_any_data_sets_fold_and_names_one_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    """A 12-fold set's fold 12 is a fold like any other for export; one without a checkpoint is named."""
    from conftest import save_fold_checkpoints, tiny

    save_fold_checkpoints(tmp_path, "resnet34_pcen_sam_8fold", folds=(1, 12), recipe=tiny("resnet34_pcen_sam_8fold"))
    code, _, err = run_main(["export", "resnet34_pcen_sam_8fold", "--out", str(tmp_path / "m.onnx"), "--folds", "11",
                             "--solutions", str(tmp_path)], capsys)
    assert code == 2 and "no checkpoint for fold(s) 11" in err and "folds present: 1, 12" in err
    assert not (tmp_path / "m.onnx").exists()


def test_epochs_zero_through_a_real_process_exits_2_and_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "core", "train", "resnet34_pcen_sam_8fold", "--epochs", "0"],
                          cwd=tmp_path, env=subprocess_env(US8K_CACHE_DIR=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--epochs" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def compact(text: str) -> str:
    """Text without whitespace: help output wraps lines (and may break at hyphens) wherever it likes."""
    return re.sub(r"\s+", "", text)


def shown_default(param) -> str | None:
    """How --help should show `param`'s default, or None where it has none to show."""
    if param.default is None or (param.is_flag and not param.secondary_opts):
        return None  # absent means "not used"; a lone flag is off unless given
    if isinstance(param.default, bool):
        return (param.opts if param.default else param.secondary_opts)[0].lstrip("-")
    if isinstance(param.default, float) and math.isfinite(param.default):
        return repr(param.default)
    return str(param.default)


@pytest.mark.parametrize("name", sorted(COMMAND.commands))
def test_help_shows_every_option_help_text_and_default(name, capsys):
    code, out, _ = run_main([name, "--help"], capsys)
    assert code == 0
    rendered = compact(out)
    for param in COMMAND.commands[name].params:
        if param.param_type_name != "option" or param.hidden or not param.help:
            continue
        assert compact(param.help) in rendered, f"{name} {param.opts[0]}: help text not shown verbatim"
        default = shown_default(param)
        if default is not None:  # "[default: 10]", or "[default: 10; x>=1]" with the range
            assert re.search(re.escape(compact(f"{param.help}[default: {default}")) + r"[];]", rendered), (
                f"{name} {param.opts[0]}: default {default} not shown")
        elif "[default:" in param.help:  # a default described in words (e.g. "the recipe's") must survive too
            assert compact(param.help[param.help.index("[default:"):]) in rendered


def test_help_runs_in_a_real_process_with_defaults_in_brackets():
    done = subprocess.run([sys.executable, "-m", "core", "train", "--help"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    assert "Epochs per fold [default: the recipe's]." in " ".join(done.stdout.split())


class CacheReached(Exception):
    """Raised by the stand-in loader: the command got as far as reading audio through the cache."""


@pytest.mark.parametrize("name", ["train", "predict", "tune"])
def test_cache_dir_option_reaches_the_audio_cache(name, tiny_data, tmp_path, monkeypatch):
    from conftest import save_fold_checkpoints

    import core.train.data as train_data

    asked: list[Path] = []

    def loader(paths, sample_rate, num_samples, *, cache_dir=None, **kwargs):
        asked.append(cache_dir)
        raise CacheReached

    monkeypatch.setattr(train_data, "load_waveforms", loader)
    monkeypatch.chdir(tmp_path)
    chosen = tmp_path / "shared-cache"
    common = ["--data", str(tiny_data), "--cache-dir", str(chosen), "--device", "cpu", "--precision", "fp32"]
    argv = {"train": ["train", "resnet34_pcen_sam_8fold", "--out", str(tmp_path / "out"), "--no-progress"],
            "predict": ["predict", "resnet34_pcen_sam_8fold", "--solutions", str(tmp_path / "solutions"),
                        "--no-progress"],
            "tune": ["tune", "resnet34_pcen_sam_8fold", "--trials", "1", "--out", str(tmp_path / "out")]}[name]
    if name == "predict":
        save_fold_checkpoints(tmp_path / "solutions", "resnet34_pcen_sam_8fold")
    sys.argv, old_argv = ["python -m core", *argv, *common], sys.argv
    try:
        with pytest.raises(CacheReached):
            main()
    finally:
        sys.argv = old_argv
    assert asked == [chosen]


def test_train_folds_are_checked_against_the_data_sets_folds_before_any_work(tmp_path, monkeypatch, capsys):
    """Beyond UrbanSound8K's 1-10 a data set's folds are trainable; a fold it lacks is one usage line."""
    from test_own_data import write_csv_set

    tones = {"a": 300.0, "b": 900.0, "c": 2000.0}
    twelve = write_csv_set(tmp_path / "twelve", tones, clips_per_fold=1, folds=12)
    three_and_test = write_csv_set(tmp_path / "three", tones, clips_per_fold=1, folds=3, test_clips=1)
    trained = []

    def stop_before_training(recipe, source, options):
        trained.append(options.folds)
        raise UserError("stopped by the test")

    monkeypatch.setattr("core.train.solution.train_solution", stop_before_training)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    out = tmp_path / "out"
    base = ["train", "resnet34_pcen_sam_8fold", "--out", str(out)]
    code, _, err = run_main([*base, "--data", str(twelve), "--protocol", "kfold", "--folds", "11,12"], capsys)
    assert (code, trained) == (2, [(11, 12)]) and "stopped by the test" in err  # the door let 11 and 12 through

    refusals = [(["--folds", "13", "--data", str(twelve), "--protocol", "kfold"],
                 f"--folds 13: fold(s) 13 outside the folds --protocol kfold trains on {twelve.resolve()}: 1-12."),
                (["--protocol", "kfold", "--folds", "2,14,15", "--data", str(twelve)],
                 f"--folds 2,14,15: fold(s) 14,15 outside the folds --protocol kfold trains on {twelve.resolve()}: "
                 "1-12."),
                (["--data", str(three_and_test), "--folds", "4"],  # kaggle: the folds beside the test split
                 f"--folds 4: fold(s) 4 outside the folds --protocol kaggle trains on {three_and_test.resolve()}: 1-3."),
                (["--folds", "9", "--protocol", "kfold"],  # no --data: the demo set, refused before it is built
                 "Invalid value for '--folds': folds must lie in 1-8; got '9': --protocol kfold on the demo set "
                 "trains folds 1-8. (see: ")]
    for argv, message in refusals:
        code, out_text, err = run_main([*base, *argv], capsys)
        lines = err.strip().splitlines()
        assert (code, out_text, len(lines)) == (2, "", 1) and lines[0].startswith(f"error: {message}"), (argv, err)
    assert trained == [(11, 12)] and not out.exists() and list(workdir.iterdir()) == []
    code, _, err = run_main([*base, "--data", str(three_and_test), "--folds", "3"], capsys)
    assert code == 2 and trained[-1] == (3,)


def test_tune_folds_are_checked_against_the_data_sets_folds_before_any_work(tmp_path, monkeypatch, capsys):
    """tune validates on the data's folds beside its test split, like train --protocol kaggle: beyond 1-8 on a
    data set with more folds, a fold it lacks is one usage line, and the default is the recipe's folds it has."""
    from test_own_data import write_csv_set

    import core.commands.tune as tune_command

    tones = {"a": 300.0, "b": 900.0, "c": 2000.0}
    twelve = write_csv_set(tmp_path / "twelve", tones, clips_per_fold=1, folds=12)
    three = write_csv_set(tmp_path / "three", tones, clips_per_fold=1, folds=3, test_clips=1)
    searched = []

    def stop_before_caching(recipe, request, folds, source):
        searched.append(tuple(folds))
        raise UserError("stopped by the test")

    monkeypatch.setattr(tune_command, "_prepare", stop_before_caching)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("US8K_CACHE_DIR", str(workdir / "cache"))
    base = ["tune", "resnet34_pcen_sam_8fold", "--trials", "1"]
    for data, folds, expected in ((twelve, ["--folds", "11,12"], (11, 12)), (three, [], (1, 2, 3))):
        code, _, err = run_main([*base, "--out", str(tmp_path / f"out-{data.name}"), "--data", str(data), *folds],
                                capsys)
        assert code == 2 and "stopped by the test" in err and searched[-1] == expected, err
    refusals = [(["--folds", "13", "--data", str(twelve)],
                 f"--folds 13: fold(s) 13 outside the folds tune validates on {twelve.resolve()}: 1-12."),
                (["--data", str(three), "--folds", "4"],
                 f"--folds 4: fold(s) 4 outside the folds tune validates on {three.resolve()}: 1-3."),
                (["--folds", "9"],  # no --data: the demo set, refused before it is built
                 "Invalid value for '--folds': folds must lie in 1-8; got '9': tune on the demo set validates on "
                 "folds 1-8. (see: ")]
    out = tmp_path / "out-refused"
    for argv, message in refusals:
        code, out_text, err = run_main([*base, "--out", str(out), *argv], capsys)
        lines = err.strip().splitlines()
        assert (code, out_text, len(lines)) == (2, "", 1) and lines[0].startswith(f"error: {message}"), (argv, err)
    assert len(searched) == 2 and not out.exists() and list(workdir.iterdir()) == []


def test_tune_assigns_the_folds_train_assigns_on_data_without_folds(tmp_path, monkeypatch, capsys):
    """tune --n-folds/--group-pattern give the data the very folds train gives it (same files, groups, count)."""
    from test_own_data import folder_set

    import core.commands.tune as tune_command
    from core.data.metadata import load_source

    data = folder_set(tmp_path / "folders")
    seen = []

    def stop_before_caching(recipe, request, folds, source):
        seen.append((tuple(folds), source))
        raise UserError("stopped by the test")

    monkeypatch.setattr(tune_command, "_prepare", stop_before_caching)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["tune", "resnet34_pcen_sam_8fold", "--trials", "1", "--out", str(tmp_path / "out"),
                             "--data", str(data), "--n-folds", "3", "--group-pattern", r"^(\d+)-"], capsys)
    assert code == 2 and "stopped by the test" in err, err
    folds, source = seen[0]
    trains = load_source(data, n_folds=3, group_pattern=r"^(\d+)-")  # what train assigns (and stores)
    assert folds == (1, 2, 3)
    assert source.train["fold"].tolist() == trains.train["fold"].tolist()
    assert source.groups.equals(trains.groups) and source.groups.nunique() == 12  # two clips per recording
