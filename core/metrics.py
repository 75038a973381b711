"""The competition metric (0.8 x accuracy + 0.2 x macro-F1) and its parts: one implementation."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from core.folds import URBANSOUND8K_CLASSES

ACCURACY_WEIGHT = 0.8
F1_WEIGHT = 0.2


@dataclass(frozen=True)
class Scores:
    """Fractions in [0, 1]."""

    accuracy: float
    macro_f1: float
    composite: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def score(y_true: np.ndarray, y_pred: np.ndarray) -> Scores:
    """Accuracy, macro-F1 (sklearn, over the classes present in y_true or y_pred) and composite."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"need two equal-length non-empty label vectors, got {y_true.shape} and {y_pred.shape}")
    accuracy = float(np.mean(y_true == y_pred))
    macro_f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    return Scores(accuracy, macro_f1, ACCURACY_WEIGHT * accuracy + F1_WEIGHT * macro_f1)


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray,
                    num_classes: int = len(URBANSOUND8K_CLASSES)) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support over all `num_classes` labels (UrbanSound8K's 10 unless given)."""
    labels = np.arange(num_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = len(URBANSOUND8K_CLASSES)) -> np.ndarray:
    """num_classes x num_classes confusion counts (rows = true class; UrbanSound8K's 10 unless given)."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
