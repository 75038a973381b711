"""A PNG per recording: class scores over time (one row per class) with the detected events as bars, and the
reference events as thinner bars below them when given."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.plots import _figure, save_with_data


def plot_detection(frame_scores: np.ndarray, hop_s: float, duration_s: float, class_names: Sequence[str],
                   events: pd.DataFrame, reference: pd.DataFrame | None, title: str,
                   path: str | os.PathLike) -> Path:
    """Scores as a heat map (frame k spans [k*hop, (k+1)*hop)); events (columns onset, offset, event_label) as
    green bars over their class's row, reference events as black bars under it."""
    figure = _figure(max(8.0, min(24.0, 2.0 + duration_s / 4.0)), 5.2)
    axes = figure.add_subplot()
    edges = np.minimum(np.arange(len(frame_scores) + 1) * hop_s, duration_s)
    image = axes.pcolormesh(edges, np.arange(len(class_names) + 1) - 0.5, np.asarray(frame_scores).T,
                            cmap="Blues", vmin=0.0, vmax=1.0, shading="flat")
    rows = {name: index for index, name in enumerate(class_names)}
    for table, offset, colour in ((events, 0.12, "tab:green"), (reference, -0.28, "black")):
        if table is None:
            continue
        for onset, offset_s, label in zip(table["onset"], table["offset"], table["event_label"], strict=True):
            if label in rows:
                axes.broken_barh([(onset, offset_s - onset)], (rows[label] + offset, 0.16), color=colour)
    axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axes.set_xlabel("time (s)  -  green: detected events" + ("; black: reference" if reference is not None else ""))
    axes.set_xlim(0.0, duration_s)
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.03, pad=0.02, label="score")
    data = {"title": title, "hop_s": hop_s, "classes": list(class_names), "scores": np.asarray(frame_scores).tolist(),
            "events": events.to_dict("records"),
            "reference": None if reference is None else reference.to_dict("records")}
    return save_with_data(figure, path, data)
