"""The evaluation report's figures (``report/*.png``): confusion matrix, ROC curves, reliability."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lungscan.bundle.metadata import BundleMetadata
from training.measure.metrics import expected_calibration_error, reliability, roc_curve


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _title(metadata: BundleMetadata, what: str) -> str:
    return f"{metadata.name} {metadata.version}\n{what}"


def plot_confusion(path: Path, metrics: dict, metadata: BundleMetadata) -> None:
    plt = _pyplot()
    classes = metadata.classes
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    fig, ax = plt.subplots(figsize=(1.3 * len(classes) + 2.5, 1.1 * len(classes) + 2.2), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), [c.replace("_", "\n") for c in classes], fontsize=8)
    ax.set_yticks(range(len(classes)), [c.replace("_", "\n") for c in classes], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_title(metadata, f"test confusion (n={metrics['n']}, macro-F1 {metrics['macro_f1']:.3f})"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_roc(path: Path, labels: np.ndarray, probabilities: np.ndarray, classes: list[str], metadata) -> None:
    axes = ("false positive rate", "true positive rate")
    with _unit_square(path, metadata, "test ROC, one class vs the rest", axes, legend="lower right") as ax:
        for k, name in enumerate(classes):
            positive = labels == k
            if positive.all() or not positive.any():
                continue
            fpr, tpr = roc_curve(positive, probabilities[:, k])
            ax.plot(fpr, tpr, label=f"{name} (AUC {np.trapezoid(tpr, fpr):.3f})")


def plot_reliability(path: Path, labels, before: np.ndarray, after: np.ndarray, metadata) -> None:
    what = "test reliability, calibration fitted on the calibration split"
    family = metadata.calibration.family.replace("_", " ")
    axes = ("confidence (top class)", "accuracy")
    with _unit_square(path, metadata, what, axes, legend="upper left") as ax:
        for probabilities, name in ((before, "as trained"), (after, f"after {family}")):
            bins = reliability(labels, probabilities)
            ece = expected_calibration_error(labels, probabilities)
            ax.plot(
                [b["confidence"] for b in bins],
                [b["accuracy"] for b in bins],
                marker="o",
                label=f"{name}, ECE {ece:.3f}",
            )


@contextmanager
def _unit_square(path: Path, metadata: BundleMetadata, what: str, axes: tuple[str, str], *, legend: str) -> Iterator:
    """A curve figure over [0, 1]x[0, 1]: the caller draws its curves on the axes it gets; the dotted
    diagonal (chance for ROC, perfect calibration for reliability), the axis names, title and legend
    follow, and the figure is saved to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.6), dpi=100)
    yield ax
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(_title(metadata, what), fontsize=9)
    ax.legend(fontsize=8, loc=legend)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
