"""Figures written as PNG (matplotlib Agg canvas, no pyplot state, atomic writes)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from core.atomic import save_figure


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: str | os.PathLike) -> Path:
    """Confusion matrix (rows = true class): cell text = count and row share, colour = row share.

    Colours are row-normalised so that rare classes read as clearly as frequent ones.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix)
    classes = len(class_names)
    if counts.shape != (classes, classes):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {classes} class names")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)

    size = 1.5 + 0.8 * classes
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for true_class in range(classes):
        for predicted_class in range(classes):
            count = counts[true_class, predicted_class]
            if count == 0:
                continue
            share = shares[true_class, predicted_class]
            axes.text(predicted_class, true_class, f"{count:g}\n{share:.0%}", ha="center", va="center",
                      fontsize=8, color="white" if share > 0.55 else "black")
    labels = [f"{index} {name}" for index, name in enumerate(class_names)]
    axes.set_xticks(range(classes), labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=9)
    row_labels = [f"{label} (n={total:g})" for label, total in zip(labels, row_totals[:, 0])]
    axes.set_yticks(range(classes), row_labels, fontsize=9)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class (n = clips)")
    axes.set_title(title, fontsize=10, wrap=True)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class (row-normalised)")
    return save_figure(figure, path)
