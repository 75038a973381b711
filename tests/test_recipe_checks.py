"""Recipe choices are checked once, when a recipe is made or derived; cards name only what they change."""
from __future__ import annotations

import subprocess
import sys
import typing

import pytest
from conftest import REPO, subprocess_env

from core import registry
from core.metrics import Scores
from core.recipe import Backbone, Demo, Fusion, Head, Recipe, RecipeError, SelectMetric, Training, _choice_fields

CHOICES = [(Backbone, "stem"), (Backbone, "cbam"), (Head, "pooling"), (Head, "temporal"), (Fusion, "kind"),
           (Training, "schedule"), (Training, "select_metric"), (Demo, "precision")]


@pytest.mark.parametrize("section, name", CHOICES)
def test_every_choice_is_checked_on_derive_with_the_allowed_values(section, name):
    allowed = _choice_fields(section)[name]
    base = Recipe()
    key = {Backbone: "backbone", Head: "head", Fusion: "fusion", Training: "training", Demo: "demo"}[section]
    with pytest.raises(RecipeError) as refused:
        base.derive(**{key: {name: "typo"}})
    message = str(refused.value)
    assert f"{section.__name__.lower()}.{name} = 'typo'" in message
    assert all(repr(value) in message for value in allowed)
    for value in allowed:  # every allowed value is accepted
        base.derive(**{key: {name: value}})


def test_checkpoint_recipes_are_checked_too():
    from core.recipe import recipe_from_dict

    data = registry.get("resnet34_attention").to_dict()
    assert recipe_from_dict(data) == registry.get("resnet34_attention")
    data["head"]["pooling"] = "avg"
    with pytest.raises(RecipeError, match="head.pooling"):
        recipe_from_dict(data)


def test_every_selection_metric_is_a_score():
    for metric in typing.get_args(SelectMetric):
        assert isinstance(getattr(Scores(0.5, 0.25, 0.45), metric), float)


def test_a_plugin_typo_fails_at_solutions_naming_plugin_field_and_choices(tmp_path):
    (tmp_path / "typo_plugin.py").write_text(
        "from core.registry import register\n"
        "@register(parent='resnet34_pcen_sam_8fold')\n"
        "def typo_solution(parent):\n"
        "    '''A card with a typo.'''\n"
        "    return parent.derive(training=dict(schedule='cosin'))\n")
    code = "import sys, typo_plugin; from core.cli import main; sys.argv = ['core', 'solutions']; main()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=subprocess_env(PYTHONPATH=f"{tmp_path}:{REPO}"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "solution 'typo_solution' (typo_plugin)" in message and "training.schedule = 'cosin'" in message
    assert "'warmup_cosine_per_step'" in message


def test_a_card_names_only_what_it_changes():
    wide = registry.get("wideresnet").to_dict()
    base = registry.get("resnet34_pcen_salience_fusion_attention").to_dict()
    changed = {section for section in wide if wide[section] != base[section]}
    assert changed == {"name", "parent", "summary", "backbone", "demo"}
    assert registry.get("wideresnet").parent == "resnet34_mr_salience_fusion_film_attention"  # lineage unchanged
    names = registry.names()
    assert names.index("resnet34_mr_salience_fusion_film_attention") < names.index("wideresnet") < names.index("res2net50")
