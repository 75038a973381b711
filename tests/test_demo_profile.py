"""The demo profile shrinks what the user did not set, keeps the architecture and says what it changed."""
from pathlib import Path

from core import registry
from core.demo.profile import apply_demo_profile
from core.model.network import count_parameters
from core.train.options import TrainOptions


def shrink(name: str, explicit: set[str], **option_values):
    recipe = registry.get(name)
    options = TrainOptions(out=Path("unused"), **option_values)
    return recipe, *apply_demo_profile(recipe, options, explicit)


def test_baseline_demo_shrinks_folds_epochs_batch_and_mixup_and_lists_each_change():
    recipe, demo_recipe, options, changes = shrink("resnet34_pcen_sam_8fold", set())
    assert options.folds == (1,) and options.epochs == recipe.demo.epochs < recipe.training.epochs
    assert demo_recipe.training.batch_size == 16 and demo_recipe.augment.mixup_alpha == 0.2
    assert changes == ["batch size 128 -> 16", "mixup alpha 1 -> 0.2", "folds 1,2,3,4,5,6,7,8 -> 1",
                       f"epochs 100 -> {recipe.demo.epochs}"]
    assert options.precision == "auto"  # the platform default (fp32 on CPU): nothing to report


def test_demo_keeps_what_the_user_set_explicitly():
    _, demo_recipe, options, changes = shrink("resnet34_pcen_sam_8fold", {"folds", "epochs", "batch_size"},
                                              folds=(2, 3), epochs=3)
    assert options.folds == (2, 3) and options.epochs == 3
    assert demo_recipe.training.batch_size == 128
    assert not any(line.startswith(("folds", "epochs", "batch size")) for line in changes)


def test_costly_plugins_shrink_clips_not_the_architecture():
    recipe, demo_recipe, options, changes = shrink("wideresnet", set())
    assert options.max_clips_per_fold == recipe.demo.max_clips_per_fold is not None
    assert options.max_test_clips == recipe.demo.max_test_clips is not None
    assert f"clips per train fold -> {recipe.demo.max_clips_per_fold}" in changes
    assert demo_recipe.backbone == recipe.backbone and demo_recipe.frontend == recipe.frontend
    assert count_parameters(demo_recipe) == count_parameters(recipe)


def test_clip_limit_takes_each_fold_round_robin_over_classes_in_metadata_order():
    import pandas as pd

    from core.train.data import _limit_train

    # Per fold the classes come in runs (as in the synthetic set): a plain head(N) would keep one class.
    train = pd.DataFrame({"fold": [1] * 6 + [2] * 6, "classID": [0, 0, 0, 1, 1, 2] + [2, 2, 5, 5, 7, 7],
                          "slice_file_name": [f"clip{index}.wav" for index in range(12)]})
    subset = _limit_train(train, 3)
    assert subset["slice_file_name"].tolist() == ["clip0.wav", "clip3.wav", "clip5.wav",
                                                  "clip6.wav", "clip8.wav", "clip10.wav"]
    assert _limit_train(train, 4)["slice_file_name"].tolist()[:4] == ["clip0.wav", "clip1.wav", "clip3.wav", "clip5.wav"]
    assert _limit_train(train, None) is train
