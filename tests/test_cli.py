"""The CLI surface: solutions listing, unknown names, help."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, subprocess_env
from reference import REFERENCE


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=subprocess_env(COLUMNS="200"),
                          capture_output=True, text=True, timeout=300)


def test_solutions_json_lists_the_lineage_with_reference_parameter_counts():
    done = cli("solutions", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["name"] for row in rows] == list(REFERENCE)
    for row in rows:
        parent, params = REFERENCE[row["name"]]
        assert (row["parent"], row["params"]) == (parent, params), row["name"]


def test_solutions_tree_shows_the_chain_from_baseline_to_res2net():
    done = cli("solutions", "--tree")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "params)" in line]
    depth = {name: next(i for i, line in enumerate(lines) if f" {name} (" in line) for name in REFERENCE}
    indent = {name: len(lines[i]) - len(lines[i].lstrip("│├└─ ")) for name, i in depth.items()}
    chain = [name for name in REFERENCE if not name.endswith("_e128")]
    assert [indent[name] for name in chain] == sorted(indent[name] for name in chain)
    assert len(set(indent[name] for name in chain)) == len(chain)  # each one level below its parent


def test_unknown_solution_fails_naming_the_known_ones():
    done = cli("train", "no_such_model")
    assert done.returncode != 0
    assert "no_such_model" in done.stderr and "resnet34_pcen_sam_8fold" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_are_one_line_pointing_at_help_and_exit_2_without_a_traceback():
    for args, message, command in ((("train", "resnet34_pcen_sam_8fold", "--no-such-option"), "No such option", "train"),
                                   (("train", "resnet34_pcen_sam_8fold", "--epochs", "abc"), "--epochs", "train"),
                                   (("no-such-command",), "No such command", "")):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        (line,) = done.stderr.strip().splitlines()
        assert message in line and line.endswith(f"(see: python -m core {command} --help)".replace("  ", " ")), line
        assert "Traceback" not in done.stderr
