"""Bad input corpus: malformed metadata, prediction CSVs, blend recipes and params files make every
command exit 2 with a short message starting "error:" that names the file, no traceback and no
output file. Broken audio (truncated, wrong header, zero-length, all-NaN) is refused and listed;
odd but valid audio (1 sample, 96 kHz 24-bit stereo, 8-bit unsigned) loads.

The CLI runs in-process (core.cli.main with patched argv), so hypothesis can try many files
quickly; an exception escaping main() would be a traceback for the user and fails the test.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from conftest import subprocess_env
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core import NUM_CLASSES, PROB_COLUMNS

REPO = Path(__file__).resolve().parents[1]
SOLUTION = "resnet34_pcen_sam_8fold"
EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_ERROR_LINES = 60  # a multi-problem message lists problems on following lines, never a traceback


# --- running the CLI in-process ----------------------------------------------------------------------

@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: object) -> CliResult:
    """`python -m core ARGS` in this process: exit code and captured output (an escaping exception propagates)."""
    from core.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["core", *map(str, args)]), \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main()
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


def assert_refused(result: CliResult, file_name: str, outputs: tuple[Path, ...] = ()) -> None:
    """Exit 2, a short message starting with "error:" that names `file_name`, and no output written."""
    assert result.code == 2, f"exit {result.code}; stderr:\n{result.stderr}"
    assert result.stderr.startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert file_name in result.stderr, f"{file_name} not named in:\n{result.stderr}"
    assert len(result.stderr.splitlines()) <= MAX_ERROR_LINES, result.stderr
    for output in outputs:
        assert not output.exists(), f"{output} was written"


def refuse_to_run(*args, **kwargs):
    """Stands in for a stage that must not be reached."""
    raise AssertionError("work started on malformed input")


@contextlib.contextmanager
def isolated_run(folder: Path, stage: str = "core.train.solution.train_solution") -> None:
    """Run a command from `folder` with its own cache; fail loudly instead of starting `stage`.

    A malformed input that slipped through validation would otherwise start hours of training.
    """
    with mock.patch(stage, refuse_to_run), contextlib.chdir(folder), \
            mock.patch.object(sys, "path", [str(REPO), *sys.path]), \
            mock.patch.dict("os.environ", {"US8K_CACHE_DIR": str(folder / "cache"), "COLUMNS": "300"}):
        yield  # the repository stays importable (plugins are discovered lazily) from any working folder


# --- cell values ---------------------------------------------------------------------------------------

NOT_A_NUMBER = ["", " ", "nan", "NaN", "abc", "True", "0x1f", "1,5", "١", "--1"]
NOT_AN_INTEGER = NOT_A_NUMBER + ["1.5", "inf", "-inf", "1e400", "-1e400", "99999999999999999999",
                                 "-99999999999999999999", "1e20"]


def invalid_values(column: str, file: str = "") -> list[str]:
    """Cell texts that column `column` of the metadata (of `file`, where it matters) must refuse."""
    out_of_range = {"fold": ["0", "9", "10", "-1", "8.5"], "classID": ["-1", "10", "1000000"],
                    "salience": ["0", "3", "-2"], "TARGET": ["-1", "10"]}
    values = NOT_AN_INTEGER + out_of_range.get(column, [])
    if (file, column) == ("kaggle_test.csv", "salience"):
        # A blank test salience means "unknown" (test_metadata.py::test_empty_test_salience_cells_stay_missing):
        # valid metadata; a solution that needs salience stops later with its own message.
        values = [value for value in values if value.strip()]
    return values


# --- metadata ------------------------------------------------------------------------------------------

METADATA_FILES = {  # file -> the columns whose every cell is validated
    "kaggle_train.csv": ["fold", "classID", "salience", "slice_file_name"],
    "kaggle_test.csv": ["ID", "salience", "slice_file_name"],
    "kaggle_test_labels.csv": ["ID", "TARGET"],
}
REQUIRED = {"kaggle_train.csv": ["slice_file_name", "fold", "classID", "salience"],
            "kaggle_test.csv": ["ID", "slice_file_name"], "kaggle_test_labels.csv": ["ID", "TARGET"]}


@dataclass(frozen=True)
class MetadataDamage:
    """One way to break one metadata file (fields unused by `kind` are ignored)."""

    file: str
    kind: str
    row: int = 0
    column: str = ""
    value: str = ""
    extra_column: bool = False  # a harmless extra column must not hide the real problem
    garbage: bytes = b"\xff\xfe\x00"

    def apply(self, table: pd.DataFrame) -> pd.DataFrame | bytes:
        """The damaged table, or the raw bytes to write instead of a CSV."""
        table = table.copy()
        if self.extra_column:
            table["note"] = "x"
        row = self.row % len(table)
        if self.kind == "drop_column":
            return table.drop(columns=self.column)
        if self.kind == "bad_cell":
            table.loc[row, self.column] = self.value
            return table
        if self.kind == "duplicate_row":
            return pd.concat([table, table.iloc[[row]]], ignore_index=True)
        if self.kind == "empty_file":
            return b""
        if self.kind == "header_only":
            return table.iloc[:0]
        if self.kind == "utf16":
            return table.to_csv(index=False).encode("utf-16")
        if self.kind == "latin1_name":
            column = "slice_file_name" if "slice_file_name" in table else "ID"
            table.loc[row, column] = "caf\u00e9-" + table.loc[row, column]
            return table.to_csv(index=False).encode("latin-1")
        if self.kind == "binary":
            return self.garbage
        if self.kind in ("missing_audio", "folder_in_name"):
            if "slice_file_name" not in table:  # labels file: an ID that the test list does not have
                table.loc[row, "ID"] = str(10_000 + row)
                return table
            prefix = "../" if self.kind == "folder_in_name" else "missing-"
            table.loc[row, "slice_file_name"] = prefix + table.loc[row, "slice_file_name"]
            return table
        raise AssertionError(self.kind)


@st.composite
def metadata_damage(draw) -> MetadataDamage:
    """Any one damage to any one metadata file."""
    file = draw(st.sampled_from(sorted(METADATA_FILES)))
    kind = draw(st.sampled_from(["drop_column", "bad_cell", "duplicate_row", "empty_file", "header_only",
                                 "utf16", "latin1_name", "binary", "missing_audio", "folder_in_name"]))
    if kind == "drop_column":
        column, value = draw(st.sampled_from(REQUIRED[file])), ""
    else:
        column = draw(st.sampled_from([c for c in METADATA_FILES[file] if c != "slice_file_name"]))
        value = draw(st.sampled_from(invalid_values(column, file)))
    garbage = bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=64))) + b"\xff\xfe\x00"
    return MetadataDamage(file, kind, draw(st.integers(0, 9)), column, value, draw(st.booleans()), garbage)


def copy_metadata(tiny_data: Path, root: Path) -> Path:
    """A data folder with its own metadata/ and the tiny set's audio/ (a symlink: nothing is copied)."""
    data = root / "data"
    shutil.copytree(tiny_data / "metadata", data / "metadata")
    (data / "audio").symlink_to(tiny_data / "audio", target_is_directory=True)
    return data


@given(damage=metadata_damage())
@example(damage=MetadataDamage("kaggle_test.csv", "bad_cell", 3, "ID", "99999999999999999999"))  # was a traceback
@example(damage=MetadataDamage("kaggle_test_labels.csv", "bad_cell", 1, "ID", "1e20"))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_malformed_metadata_is_refused_before_any_work(tiny_data, damage):
    name = damage.file
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = copy_metadata(tiny_data, root)
        path = data / "metadata" / name
        damaged = damage.apply(pd.read_csv(path, dtype=str, keep_default_na=False))
        if isinstance(damaged, bytes):
            path.write_bytes(damaged)
        else:
            damaged.to_csv(path, index=False)
        out = root / "out"
        with isolated_run(root):
            result = run_cli("train", SOLUTION, "--data", data, "--out", out, "--device", "cpu", "--no-progress")
        assert_refused(result, name, outputs=(out, root / "cache", root / "submissions"))


# --- prediction CSVs -----------------------------------------------------------------------------------

def probability_text(rows: int = 6, seed: int = 0) -> str:
    """A valid probability CSV (ID,TARGET,0..9)."""
    probs = np.random.default_rng(seed).dirichlet(np.ones(NUM_CLASSES), size=rows)
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "TARGET", probs.argmax(axis=1))
    frame.insert(0, "ID", np.arange(rows))
    return frame.to_csv(index=False)


@st.composite
def damaged_csv(draw, text: str, key: str, integer_columns: tuple[str, ...], value_columns: tuple[str, ...]) -> bytes:
    """A valid CSV `text` with one kind of damage; `key` must be unique, `value_columns` hold probabilities."""
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    row = draw(st.integers(0, len(frame) - 1))
    kind = draw(st.sampled_from(["drop_column", "extra_class", "duplicate_header", "duplicate_key",
                                 "bad_integer", "bad_value", "overflow", "all_zero", "empty_file",
                                 "header_only", "utf16", "latin1", "binary"]
                                if value_columns else
                                ["drop_column", "duplicate_header", "duplicate_key", "bad_integer", "empty_file",
                                 "header_only", "utf16", "latin1", "binary"]))
    if kind == "drop_column":
        frame = frame.drop(columns=draw(st.sampled_from((key, *integer_columns, *value_columns))))
    elif kind == "extra_class":
        frame[str(NUM_CLASSES)] = "0.1"
    elif kind == "duplicate_header":  # the column appears twice: which one holds the data is unclear
        column = draw(st.sampled_from(list(frame.columns)))
        header, *rows = frame.to_csv(index=False).splitlines()
        return "\n".join([f"{header},{column}", *(f"{line},0" for line in rows)]).encode() + b"\n"
    elif kind == "duplicate_key":
        frame = pd.concat([frame, frame.iloc[[row]]], ignore_index=True)
    elif kind == "bad_integer":
        column = draw(st.sampled_from((key, *integer_columns) if key == "ID" else integer_columns))
        frame.loc[row, column] = draw(st.sampled_from(invalid_values(column) if column != "ID" else NOT_AN_INTEGER))
    elif kind == "bad_value":
        frame.loc[row, draw(st.sampled_from(value_columns))] = draw(
            st.sampled_from(NOT_A_NUMBER + ["-0.25", "-1e-9", "inf", "-inf", "1e400"]))
    elif kind == "overflow":
        columns = draw(st.lists(st.sampled_from(value_columns), min_size=2, max_size=4, unique=True))
        frame.loc[row, columns] = draw(st.sampled_from(["1e308", "1.7e308"]))
    elif kind == "all_zero":
        frame.loc[row, list(value_columns)] = "0"
    elif kind == "empty_file":
        return b""
    elif kind == "header_only":
        frame = frame.iloc[:0]
    elif kind == "utf16":
        return frame.to_csv(index=False).encode("utf-16")
    elif kind == "latin1":
        frame.loc[row, key] = "\u00e9" + frame.loc[row, key]
        return frame.to_csv(index=False).encode("latin-1")
    elif kind == "binary":
        return b"\x00\xff" + bytes(draw(st.lists(st.integers(0, 255), max_size=64)))
    return frame.to_csv(index=False).encode()


def with_cells(text: str, row: int, cells: dict[str, str]) -> bytes:
    """`text` (a CSV) with the given cells of data row `row` replaced."""
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    for column, value in cells.items():
        frame.loc[row, column] = value
    return frame.to_csv(index=False).encode()


@given(content=damaged_csv(probability_text(), "ID", (), tuple(PROB_COLUMNS)), method=st.sampled_from(
    ["mean", "geomean", "rank"]))
# Found by this test: the row sum overflowed to inf, normalising gave zeros, the blend said class 0.
@example(content=with_cells(probability_text(), 0, {"3": "1e308", "4": "1e308"}), method="mean")
# Found by this test: an ID beyond int64 wrapped around (two such IDs collided, one became another ID).
@example(content=with_cells(probability_text(), 2, {"ID": "99999999999999999999"}), method="mean")
@EXAMPLES
def test_malformed_blend_member_is_refused(content, method):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "good").mkdir()
        (root / "bad").mkdir()
        (root / "good" / "best_model_fold1.csv").write_text(probability_text(seed=1))
        (root / "bad" / "best_model_fold1.csv").write_bytes(content)
        out = root / "blend.csv"
        result = run_cli("blend", "good/best_model_fold1.csv", "bad/best_model_fold1.csv", "--root", root,
                         "--out", out, "--method", method)
        assert_refused(result, "bad/best_model_fold1.csv", outputs=(out,))


def labels_text(rows: int = 6, seed: int = 0, column: str = "TARGET") -> str:
    """A valid ID,<column> CSV of class indices."""
    labels = np.random.default_rng(seed).integers(0, NUM_CLASSES, size=rows)
    return pd.DataFrame({"ID": np.arange(rows), column: labels}).to_csv(index=False)


@given(content=damaged_csv(labels_text(), "ID", ("TARGET",), ()), damaged=st.sampled_from(["submission", "labels"]))
@EXAMPLES
def test_malformed_submission_or_labels_are_refused_by_score(content, damaged):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        submission, labels, plot = root / "submission.csv", root / "labels.csv", root / "confusion.png"
        submission.write_text(labels_text(seed=1))
        labels.write_text(labels_text(seed=2))
        (submission if damaged == "submission" else labels).write_bytes(content)
        result = run_cli("score", submission, "--labels", labels, "--json", "--plot", plot)
        assert_refused(result, f"{damaged}.csv", outputs=(plot,))
        assert result.stdout == ""


def oof_text(fold: int, rows: int = 5) -> str:
    """A valid OOF CSV of `fold` (slice_file_name,fold,classID,TARGET,0..9)."""
    rng = np.random.default_rng(fold)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), size=rows)
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "TARGET", probs.argmax(axis=1))
    frame.insert(0, "classID", rng.integers(0, NUM_CLASSES, size=rows))
    frame.insert(0, "fold", fold)
    frame.insert(0, "slice_file_name", [f"clip-{fold}-{index}.wav" for index in range(rows)])
    return frame.to_csv(index=False)


@given(content=damaged_csv(oof_text(2), "slice_file_name", ("fold", "classID"), tuple(PROB_COLUMNS)))
@EXAMPLES
def test_malformed_oof_file_is_refused_by_select(content):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for solution in ("alpha", "beta"):
            (root / solution).mkdir()
            for fold in (1, 2):
                (root / solution / f"oof_fold{fold}.csv").write_text(oof_text(fold))
                (root / solution / f"best_model_fold{fold}.csv").write_text(probability_text(seed=fold))
        (root / "beta" / "oof_fold2.csv").write_bytes(content)
        out = root / "selected.toml"
        result = run_cli("select", "--root", root, "--out", out, "--max", "3")
        assert_refused(result, "oof_fold2.csv", outputs=(out,))


# --- recipes: blend recipes and params files -----------------------------------------------------------

BAD_NUMBERS = [0, -1, -0.5, float("nan"), float("inf"), float("-inf"), 1e308, 5e-324, True, "1", None, [1], {}]


@st.composite
def bad_blend_recipe(draw) -> bytes:
    """Blend recipe files that must be refused (the members named in them exist)."""
    kind = draw(st.sampled_from(["syntax", "empty", "unknown_key", "bad_method", "both", "neither",
                                 "members_type", "bad_entry", "bad_weight", "bad_solution_weight", "duplicate",
                                 "utf16", "latin1"]))
    member = "a/best_model_fold1.csv"
    if kind == "syntax":
        return draw(st.sampled_from([b"members = [", b"name = 'x", b"[solutions\na = 1", b"method = mean",
                                     b"members = ['a/best_model_fold1.csv',,]", b"= 1"]))
    if kind == "empty":
        return b""
    if kind == "utf16":
        return f"members = ['{member}']\n".encode("utf-16")
    if kind == "latin1":
        return f"name = 'caf\u00e9'\nmembers = ['{member}']\n".encode("latin-1")
    recipe: dict = {"members": [member]}
    if kind == "unknown_key":
        recipe[draw(st.sampled_from(["weights", "member", "Method", "x"]))] = 1
    elif kind == "bad_method":
        recipe["method"] = draw(st.sampled_from(["median", "", "MEAN", "vote"]))
    elif kind == "both":
        recipe["solutions"] = {"a": 1}
    elif kind == "neither":
        recipe = {"name": "x"}
    elif kind == "members_type":
        recipe["members"] = draw(st.sampled_from([member, 5, [], {"path": member}]))
    elif kind == "bad_entry":
        recipe["members"] = [draw(st.sampled_from([5, 1.5, [member], {"file": member},
                                                   {"path": member, "weight": 1, "x": 2}, {"weight": 1}]))]
    elif kind == "bad_weight":
        recipe["members"] = [{"path": member, "weight": draw(st.sampled_from(BAD_NUMBERS))},
                             {"path": "b/best_model_fold1.csv", "weight": 1}]
    elif kind == "bad_solution_weight":
        recipe = {"solutions": {"a": draw(st.sampled_from(BAD_NUMBERS)), "b": 1}}
    elif kind == "duplicate":
        recipe["members"] = [member, member]
    return toml_text(recipe).encode()


def toml_text(value: dict) -> str:
    """TOML for `value`, also for values tomli_w refuses (None, NaN and inf written the TOML way)."""
    def literal(item) -> str:
        if item is None:
            return "{}"  # TOML has no null: an empty table stands for a wrong type
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, float) and np.isnan(item):
            return "nan"
        if isinstance(item, float) and np.isinf(item):
            return "inf" if item > 0 else "-inf"
        if isinstance(item, (int, float)):
            return repr(item)
        if isinstance(item, str):
            return json.dumps(item)
        if isinstance(item, list):
            return "[" + ", ".join(literal(entry) for entry in item) + "]"
        if isinstance(item, dict):
            return "{" + ", ".join(f"{json.dumps(key)} = {literal(entry)}" for key, entry in item.items()) + "}"
        raise TypeError(item)

    return "".join(f"{json.dumps(key)} = {literal(item)}\n" for key, item in value.items())  # quoted: "lr " stays "lr "


@given(content=bad_blend_recipe())
# Found by this test: weights whose weighted sum overflows turned every row into class 0.
@example(content=b'members = [{path = "a/best_model_fold1.csv", weight = 1e308}, '
                 b'{path = "b/best_model_fold1.csv", weight = 1e308}]\n')
@EXAMPLES
def test_malformed_blend_recipe_is_refused(content):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for solution, seed in (("a", 1), ("b", 2)):
            (root / solution).mkdir()
            (root / solution / "best_model_fold1.csv").write_text(probability_text(seed=seed))
        recipe, out = root / "recipe.toml", root / "blend.csv"
        recipe.write_bytes(content)
        result = run_cli("blend", "--recipe", recipe, "--root", root, "--out", out)
        assert_refused(result, "recipe.toml", outputs=(out,))


PARAM_NAMES = ["n_mels", "freq_mask_ratio", "batch_size", "dropout_rate", "warmup_epochs", "n_fft", "hop_length",
               "lr", "sam_rho", "mixup_alpha", "weight_decay", "time_mask_param"]
INTEGER_PARAMS = ("n_mels", "batch_size", "warmup_epochs", "n_fft", "hop_length", "time_mask_param")
BOUNDED_PARAMS = ("freq_mask_ratio", "dropout_rate")
HUGE_INTEGER = 10 ** 30


@st.composite
def bad_params(draw) -> tuple[str, bytes]:
    """(suffix, content) of a params file that must be refused."""
    suffix = draw(st.sampled_from([".json", ".toml"]))
    kind = draw(st.sampled_from(["syntax", "empty", "not_a_mapping", "unknown_key", "bad_value", "huge",
                                 "inconsistent_derived", "utf16", "latin1"]))
    if kind == "syntax":
        return suffix, draw(st.sampled_from([b"{", b"n_mels = ", b"[1, 2", b"{'n_mels': 64}", b"n_mels: 64"]))
    if kind == "empty":
        return suffix, b""
    if kind == "not_a_mapping":
        return ".json", draw(st.sampled_from([b"[64]", b"64", b"\"n_mels\"", b"null"]))
    if kind == "utf16":
        return suffix, (json.dumps({"n_mels": 64}) if suffix == ".json" else "n_mels = 64\n").encode("utf-16")
    if kind == "latin1":
        return suffix, ("{\"n_mels\": 64, \"caf\u00e9\": 1}" if suffix == ".json"
                        else "n_mels = 64\n\"caf\u00e9\" = 1\n").encode("latin-1")
    name = draw(st.sampled_from(PARAM_NAMES))
    if kind == "unknown_key":
        params = {"n_mels": 64, draw(st.sampled_from(["nmels", "epochs", "N_MELS", "lr "])): 1}
    elif kind == "bad_value":
        wrong = [-1, -0.5, float("nan"), float("inf"), "64", None, True, [64]]
        params = {name: draw(st.sampled_from(wrong + ([1.5] if name in INTEGER_PARAMS else [])))}
    elif kind == "huge":  # integers no machine type holds; a float far outside a bounded range
        params = {name: draw(st.sampled_from([HUGE_INTEGER, 2 ** 63] + ([1e308] if name in BOUNDED_PARAMS else [])))}
    else:
        params = {"n_mels": 64, "freq_mask_ratio": 0.25, "freq_mask_param": 99}
    if suffix == ".json":
        return suffix, json.dumps(params).encode()
    return suffix, toml_text(params).encode()


@given(params=bad_params())
@example(params=(".json", b'{"n_mels": 1000000000000000000000000000000}'))  # found: trained with it
@example(params=(".json", json.dumps({"n_mels": 64}).encode("utf-16")))  # found: UnicodeDecodeError traceback
@example(params=(".toml", b"n_mels = 600\n"))  # more mel bands than the 513 bins of n_fft 1024
@EXAMPLES
def test_malformed_params_file_is_refused_before_any_work(tiny_data, params):
    suffix, content = params
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path, out = root / f"params{suffix}", root / "out"
        path.write_bytes(content)
        with isolated_run(root):
            result = run_cli("train", SOLUTION, "--data", tiny_data, "--out", out, "--params", path,
                             "--device", "cpu", "--no-progress")
        assert_refused(result, path.name, outputs=(out, root / "cache", root / "submissions"))


def test_one_malformed_input_through_a_real_subprocess_prints_no_traceback(tmp_path):
    """The in-process runner above is the CLI: check one refusal end to end in a separate process."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "best_model_fold1.csv").write_text(probability_text().replace("0.", "-0.", 1))
    out = tmp_path / "blend.csv"
    done = subprocess.run([sys.executable, "-m", "core", "blend", "a/best_model_fold1.csv", "--root", str(tmp_path),
                           "--out", str(out)], cwd=tmp_path, env=subprocess_env(COLUMNS="300"),
                          capture_output=True, text=True, timeout=300)
    assert_refused(CliResult(done.returncode, done.stdout, done.stderr), "a/best_model_fold1.csv", outputs=(out,))
    assert "negative values" in done.stderr


# --- audio ---------------------------------------------------------------------------------------------

def wav_bytes(frames: bytes, *, channels: int, rate: int, bits: int, float_format: bool = False) -> bytes:
    """A canonical RIFF/WAVE file around raw sample bytes (written by hand: independent of soundfile)."""
    block_align = channels * bits // 8
    fmt = (int(3 if float_format else 1).to_bytes(2, "little") + channels.to_bytes(2, "little")
           + rate.to_bytes(4, "little") + (rate * block_align).to_bytes(4, "little")
           + block_align.to_bytes(2, "little") + bits.to_bytes(2, "little"))
    chunks = b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(frames).to_bytes(4, "little") + frames
    return b"RIFF" + (4 + len(chunks)).to_bytes(4, "little") + b"WAVE" + chunks


RATE = 32000  # the recipe's rate: no resampling, so expected samples are exact


def pcm16(values: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM sample bytes."""
    return np.asarray(values, dtype="<i2").tobytes()


def bad_audio() -> dict[str, tuple[bytes, str]]:
    """name -> (file content, the reason the loader must give)."""
    good = wav_bytes(pcm16(np.arange(-1000, 1000) * 16), channels=1, rate=RATE, bits=16)
    return {
        "truncated.wav": (good[:len(good) // 2], "truncated"),
        "wrong_header.wav": (b"RIFX" + good[4:], "corrupt header"),
        "zero_length.wav": (b"", "corrupt header"),
        "header_only.wav": (wav_bytes(b"", channels=1, rate=RATE, bits=16), "empty file"),
        "all_nan.wav": (wav_bytes(np.full(400, np.nan, dtype="<f4").tobytes(), channels=1, rate=RATE, bits=32,
                                  float_format=True), "non-finite"),
    }


def good_audio() -> dict[str, tuple[bytes, np.ndarray, int]]:
    """name -> (file content, the expected mono float32 signal, its rate), derived from the raw sample values."""
    rng = np.random.default_rng(3)
    unsigned = rng.integers(0, 256, size=800, dtype=np.uint8)
    left, right = rng.integers(-2 ** 23, 2 ** 23, size=(2, 960))
    stereo24 = np.stack([left, right], axis=1).reshape(-1)
    packed24 = b"".join(int(value).to_bytes(3, "little", signed=True) for value in stereo24)
    return {
        "one_sample.wav": (pcm16([8192]), np.array([0.25], dtype=np.float32), RATE),
        "unsigned_8bit.wav": (unsigned.tobytes(), ((unsigned.astype(np.float32) - 128) / 128), 8000),
        "stereo_96k_24bit.wav": (packed24, ((left + right) / 2 / 2 ** 23).astype(np.float32), 96000),
    }


def write_good_audio(folder: Path) -> dict[str, Path]:
    """Write every good_audio() clip into `folder`; return name -> path."""
    formats = {"one_sample.wav": (1, RATE, 16), "unsigned_8bit.wav": (1, 8000, 8), "stereo_96k_24bit.wav": (2, 96000, 24)}
    paths = {}
    for name, (frames, _, _) in good_audio().items():
        channels, rate, bits = formats[name]
        paths[name] = folder / name
        paths[name].write_bytes(wav_bytes(frames, channels=channels, rate=rate, bits=bits))
    return paths


@pytest.mark.parametrize("name", sorted(bad_audio()))
def test_broken_audio_is_an_error_with_its_reason(tmp_path, name):
    from core.data.audio import AudioError, load_clip

    content, reason = bad_audio()[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError, match=reason):
        load_clip(path, RATE, 4 * RATE)


@pytest.mark.parametrize("name", sorted(good_audio()))
def test_odd_but_valid_audio_loads_exactly(tmp_path, name):
    from core.data.audio import load_clip, read_mono

    path = write_good_audio(tmp_path)[name]
    _, expected, rate = good_audio()[name]
    mono, read_rate = read_mono(path)
    assert read_rate == rate
    np.testing.assert_allclose(mono, expected, atol=1e-6)
    clip = load_clip(path, RATE, 4 * RATE)
    assert clip.shape == (4 * RATE,) and clip.dtype == np.float32 and np.isfinite(clip).all()
    if rate == RATE:  # no resampling: the clip is the signal, zero-padded on the right
        np.testing.assert_array_equal(clip[:len(expected)], expected)
        assert not clip[len(expected):].any()


def test_training_lists_every_broken_clip_and_writes_nothing(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    train = pd.read_csv(data / "metadata" / "kaggle_train.csv")
    first_of_fold = train.groupby("fold").head(1).reset_index(drop=True)
    replaced = {}
    for (_name, (content, reason)), row in zip(sorted(bad_audio().items()), first_of_fold.itertuples(), strict=False):
        path = data / "audio" / f"fold{row.fold}" / row.slice_file_name
        path.write_bytes(content)
        replaced[str(path.resolve())] = reason
    for (_name, path), row in zip(write_good_audio(tmp_path).items(), first_of_fold.iloc[len(replaced):].itertuples(),
                                  strict=False):  # as many folds as there are files; the rest stay good
        shutil.copyfile(path, data / "audio" / f"fold{row.fold}" / row.slice_file_name)
    out = tmp_path / "out"
    with isolated_run(tmp_path, stage="core.train.solution.train_fold"):  # caching runs, training must not
        result = run_cli("train", SOLUTION, "--data", data, "--out", out, "--device", "cpu", "--no-progress",
                         "--max-clips-per-fold", "1")
    assert result.code == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert f"{len(replaced)} audio file(s) cannot be used" in result.stderr
    listed = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(listed) == len(replaced), result.stderr
    for path, reason in replaced.items():
        assert any(path in line and reason in line for line in listed), (path, reason, result.stderr)
    assert [path for path in out.rglob("*") if path.is_file()] == []
    assert [path for path in (tmp_path / "submissions").rglob("*") if path.is_file()] == []
