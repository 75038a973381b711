"""Figures written as PNG (matplotlib Agg canvas, no pyplot state, atomic writes)."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.atomic import save_figure

PLOT_DATA_KEY = "plot-data"  # PNG text chunk holding the series a figure was drawn from (JSON)


def _figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_with_data(figure, path: str | os.PathLike, data: Mapping) -> Path:
    """Save `figure` as PNG with the drawn series as JSON in its text chunk PLOT_DATA_KEY (checkable numbers)."""
    return save_figure(figure, path, metadata={PLOT_DATA_KEY: json.dumps(data, default=float)})


def read_plot_data(path: str | os.PathLike) -> dict:
    """The series a PNG of this module was drawn from."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[PLOT_DATA_KEY])


CURVE_PANELS = (  # (title, [(history column, label)])
    ("loss", [("train_loss", "train"), ("val_loss", "validation")]),
    ("validation scores", [("val_accuracy", "accuracy"), ("val_macro_f1", "macro-F1"),
                           ("val_composite", "composite")]),
    ("learning rate", [("lr", "lr")]),
)


def plot_curves(histories: Mapping[int, Sequence[Mapping]], title: str, path: str | os.PathLike) -> Path:
    """Training curves per epoch: losses, validation scores, learning rate; each fold's chosen epoch marked.

    `histories`: fold -> the fold's epoch records (history_fold<k>.csv rows). One fold draws every
    series in its own colour; several folds overlay one colour per fold.
    """
    figure = _figure(15, 4.2)
    panels = figure.subplots(1, len(CURVE_PANELS))
    overlay = len(histories) > 1
    colours = [f"C{index % 10}" for index in range(len(histories))]
    data: dict = {"title": title, "folds": {}}
    for colour, (fold, records) in zip(colours, histories.items(), strict=True):
        epochs = [int(row["epoch"]) for row in records]
        best = [int(row["epoch"]) for row in records if bool(row["best"])]
        chosen = best[-1] if best else None
        data["folds"][str(fold)] = {"epoch": epochs, "chosen_epoch": chosen}
        for axes, (_, series) in zip(panels, CURVE_PANELS, strict=True):
            for style, (column, label) in zip(("-", "--", ":"), series, strict=False):
                values = [float(row[column]) for row in records]
                data["folds"][str(fold)][column] = values
                name = f"fold {fold}" if overlay else label
                axes.plot(epochs, values, style, color=colour if overlay else None,
                          label=name if (not overlay or style == "-") else None, linewidth=1.2)
                if chosen is not None and column != "lr":
                    axes.plot([chosen], [values[epochs.index(chosen)]], "o", color=colour if overlay else "black",
                              markersize=5)
    for axes, (panel, series) in zip(panels, CURVE_PANELS, strict=True):
        styles = ", ".join(f"{label} {line}" for (_, label), line in zip(series, ("solid", "dashed", "dotted"), strict=False))
        axes.set_title(panel if not overlay or len(series) == 1 else f"{panel}: {styles}", fontsize=10)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(f"{title} (dot: the chosen epoch)", fontsize=11)
    return save_with_data(figure, path, data)


def plot_bars(labels: Sequence[str], means: Sequence[float | None], stds: Sequence[float | None], ylabel: str,
              title: str, path: str | os.PathLike) -> Path:
    """One bar per label with +-std error bars; a missing value is shown as 'no results', not dropped."""
    figure = _figure(max(6.0, 1.1 * len(labels) + 2), 5)
    axes = figure.add_subplot()
    positions = np.arange(len(labels))
    heights = [m if m is not None else 0.0 for m in means]
    errors = [s if s is not None else 0.0 for s in stds]
    axes.bar(positions, heights, yerr=errors, capsize=4, color=["C0" if m is not None else "lightgrey" for m in means])
    for position, mean in zip(positions, means, strict=True):
        axes.text(position, (mean or 0.0) + 0.01, "no results" if mean is None else f"{mean:.3f}", ha="center",
                  va="bottom", fontsize=8)
    axes.set_xticks(positions, labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1.05)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    return save_with_data(figure, path, {"labels": list(labels), "means": list(means), "stds": list(stds)})


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: str | os.PathLike) -> Path:
    """Confusion matrix (rows = true class): cell text = count and row share, colour = row share.

    Colours are row-normalised so that rare classes read as clearly as frequent ones.
    """
    counts = np.asarray(matrix)
    classes = len(class_names)
    if counts.shape != (classes, classes):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {classes} class names")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)

    size = 1.5 + 0.8 * classes
    figure = _figure(size + 1.5, size)
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
    row_labels = [f"{label} (n={total:g})" for label, total in zip(labels, row_totals[:, 0], strict=True)]
    axes.set_yticks(range(classes), row_labels, fontsize=9)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class (n = clips)")
    axes.set_title(title, fontsize=10, wrap=True)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class (row-normalised)")
    return save_with_data(figure, path, {"title": title, "confusion": counts.tolist()})


def plot_timeline(starts_s: np.ndarray, window_probs: np.ndarray, clip_seconds: float, duration_s: float,
                  class_names: Sequence[str], title: str, path: str | os.PathLike) -> Path:
    """Class probabilities over time: one row per class (by name), one column per window, drawn at the
    window's centre and one hop wide; the darker, the more probable."""
    figure = _figure(max(8.0, min(24.0, 2.0 + duration_s / 6.0)), 4.8)
    axes = figure.add_subplot()
    starts = np.asarray(starts_s, dtype=float)
    centres = starts + min(clip_seconds, duration_s) / 2.0
    edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2.0, [duration_s]]) if len(centres) > 1 \
        else np.array([0.0, duration_s])
    image = axes.pcolormesh(edges, np.arange(len(class_names) + 1) - 0.5, np.asarray(window_probs).T,
                            cmap="magma_r", vmin=0.0, vmax=1.0, shading="flat")
    axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axes.set_xlabel("time (s): each column is a window, drawn around its centre")
    axes.set_xlim(0.0, duration_s)
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.03, pad=0.02, label="probability")
    return save_with_data(figure, path, {"title": title, "starts_s": starts.tolist(), "centres_s": centres.tolist(),
                                         "classes": list(class_names),
                                         "probabilities": np.asarray(window_probs).tolist()})
