"""Inference never imports the training loop: core.infer and the inference commands load without core.train."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

INFERENCE_MODULES = [
    "core.infer.classify", "core.infer.detect", "core.infer.events", "core.infer.fold_models", "core.infer.predictors",
    "core.infer.stream", "core.export", "core.commands.classify", "core.commands.detect", "core.commands.monitor",
]


def loaded_training_modules(statement: str) -> list[str]:
    """Run `statement` in a fresh interpreter; the core.train modules it left in sys.modules."""
    probe = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('core.train'))))"
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.parametrize("module", INFERENCE_MODULES)
def test_inference_module_does_not_import_training(module):
    assert loaded_training_modules(f"import {module}") == []


def test_loading_fold_models_does_not_import_training(tmp_path):
    # The call path too, not only the import: a missing solution fails inside load_fold_models.
    statement = ("from pathlib import Path\nfrom core.errors import UserError\nfrom core.runtime import Runtime\n"
                 "from core.infer.fold_models import load_fold_models\n"
                 f"try:\n    load_fold_models(Path({str(tmp_path)!r}), 'x', Runtime.resolve('cpu', 'fp32'))\n"
                 "except UserError:\n    pass")
    assert loaded_training_modules(statement) == []


def test_the_probe_sees_training_imports():
    # Guards the guard: importing the fold loop is seen.
    assert "core.train.fold" in loaded_training_modules("import core.train.fold")
