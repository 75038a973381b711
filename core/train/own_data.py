"""How a recipe meets a data set: the head takes the data's classes; a fusion recipe needs salience.

The recipe's sample rate and clip length stay the modelling choice (clips are resampled, padded or
centre-cropped to them); `train --clip-seconds` changes the clip length knowingly (recipe field
frontend.clip_seconds, hence part of the run identity).
"""
from __future__ import annotations

from core.data.metadata import LAYOUT_NAMES, DataSource
from core.errors import UserError
from core.recipe import Recipe


def recipe_for_data(recipe: Recipe, source: DataSource) -> Recipe:
    """`recipe` with the data set's classes; a recipe that fuses salience is refused on data without it.

    Salience (foreground/background) is a human annotation: there is no constant to stand in for it.
    """
    if recipe.fusion.uses_salience and not source.has_salience:
        raise UserError(f"{recipe.name} fuses salience (fusion {recipe.fusion.kind!r}), but the "
                        f"{LAYOUT_NAMES[source.layout]} data in {source.root} has no salience annotation; "
                        f"train a solution that does not need it: {', '.join(solutions_without_salience())}")
    if recipe.classes == source.class_names:
        return recipe
    return recipe.derive(classes=source.class_names)


def solutions_without_salience() -> list[str]:
    """The registered solutions whose recipe does not use salience, in registry order."""
    from core import registry

    return [name for name in registry.names() if not registry.get(name).fusion.uses_salience]


def describe_data(source: DataSource, recipe: Recipe) -> str:
    """One line on what the data is and how the recipe meets it, for a layout other than UrbanSound8K's, e.g.
    'ESC-50 data: 50 classes, folds 1-5, no salience; native rates 44100 Hz: 2000 clips -> the recipe's 32000 Hz,
    5 s clips'."""
    from core.folds import fold_span

    folds = fold_span(source.folds) + (" (assigned)" if source.folds_assigned else "")
    return (f"{LAYOUT_NAMES[source.layout]} data: {source.num_classes} classes, folds {folds}, "
            f"{'salience' if source.has_salience else 'no salience'}; native rates {source.sample_rates.describe()} "
            f"-> the recipe's {recipe.frontend.sample_rate} Hz, {recipe.frontend.clip_seconds:g} s clips")
