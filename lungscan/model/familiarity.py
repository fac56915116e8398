"""The unfamiliar-CT signal: is this CT slice like the ones this model learned from?

A second question, apart from the not-CT gate's "is this a CT slice at all?" (``lungscan.model.gate``).
Every hospital that uses LungScan is a new source, and on another source a model can be confidently
wrong; an unfamiliar slice is still answered, never refused, but flagged so that its answer is read as
unreliable (``Classifier.interpret``: ``unfamiliar``, ``uncertain``, the flagged classes in its set).

The detector reads two views of a slice, side by side: the look of the decoded image (the not-CT gate's
cheap statistics: histogram, the body's layout, texture, noise; ``lungscan.model.gate.gate_features``)
and what the model itself sees (its explained feature maps, the runtime's ``features``, averaged over
space). Measured on the two datasets at hand, the model's features alone miss half of the other
hospital's slices for the 3-class model; the image statistics catch them (``training/measure/familiarity.py``
and the cards show the figures). Fitted on the bundle's training split only, it is a probabilistic PCA
of the standardised features: the leading principal directions with their variances, and one variance
for everything else. The score is the squared Mahalanobis distance under that model (per feature); its
threshold lets through all but a set share (5%) of the bundle's own held-out slices. Serving needs numpy
only; the parameters are a few thousand numbers in ``model.json`` (``familiarity``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from lungscan.model.gate import FEATURE_NAMES, FEATURES_VERSION, FEATURES_VERSIONS, ArrayCache

FAMILIARITY_METHOD = (
    "probabilistic PCA distance on standardised image statistics (the gate's features) and the model's "
    "spatially averaged feature maps"
)


class FamiliarityArrays(NamedTuple):
    """A detector's parameters as numpy arrays, for :func:`familiarity_scores`."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    variances: np.ndarray


class FamiliaritySpec(BaseModel):
    """``model.json``'s ``familiarity``: the fitted detector of slices unlike the training data."""

    method: str = FAMILIARITY_METHOD
    # lungscan.model.gate's features, the first part of a vector: a detector reads the version it was fitted on
    image_features_version: int = FEATURES_VERSION
    mean: list[float]  # (K,) mean feature vector of the training split: image statistics, then the model's
    scale: list[float]  # (K,) their standard deviations
    components: list[list[float]]  # (d, K) leading principal directions, unit length
    variances: list[float] = Field(min_length=1)  # (d,) their variances
    residual_variance: float = Field(gt=0.0)  # the mean variance of the other K - d directions
    threshold: float = Field(gt=0.0)  # scores above it are unfamiliar
    target_share: float = Field(default=0.05, gt=0.0, lt=1.0)  # of its own held-out slices flagged
    fitted_on: dict = {}  # which split, how many slices, where the threshold came from
    evaluation: dict = {}  # measured share flagged, per split and per source
    _arrays: ArrayCache = PrivateAttr(default_factory=ArrayCache)

    @model_validator(mode="after")
    def _shapes(self) -> FamiliaritySpec:
        width = len(self.mean)
        if self.image_features_version not in FEATURES_VERSIONS or width <= len(FEATURE_NAMES):
            raise ValueError("familiarity was fitted on other image features than lungscan.model.gate's: refit it")
        if len(self.scale) != width or any(value <= 0 for value in self.scale):
            raise ValueError("familiarity scale must be positive, one per feature")
        if len(self.components) != len(self.variances) or any(len(row) != width for row in self.components):
            raise ValueError("familiarity components do not match its mean and variances")
        if any(value <= 0 for value in self.variances):
            raise ValueError("familiarity variances must be positive")
        return self

    def arrays(self) -> FamiliarityArrays:
        """The parameters as arrays, converted once (again only if a field was replaced): a request does not
        convert thousands of numbers from lists."""
        sources = tuple(getattr(self, name) for name in FamiliarityArrays._fields)
        return self._arrays.get(sources, lambda lists: FamiliarityArrays(*(np.asarray(v, np.float64) for v in lists)))


def pool_features(feature_maps: np.ndarray) -> np.ndarray:
    """(N, h, w, K) feature maps -> (N, K): the mean over space."""
    maps = np.asarray(feature_maps, dtype=np.float64)
    return maps.reshape(len(maps), -1, maps.shape[-1]).mean(axis=1)


def familiarity_vectors(image_features: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """(N, F + K): each slice's image statistics (``gate_features``), then its pooled model features."""
    return np.hstack([np.atleast_2d(image_features), np.atleast_2d(pooled)]).astype(np.float64)


def familiarity_scores(vectors: np.ndarray, spec: FamiliaritySpec) -> np.ndarray:
    """(N,) scores: the squared distance to the training features under the PPCA model, per feature."""
    arrays = spec.arrays()
    centred = (np.atleast_2d(np.asarray(vectors, dtype=np.float64)) - arrays.mean) / arrays.scale
    projected = centred @ arrays.components.T
    residual = (centred**2).sum(axis=1) - (projected**2).sum(axis=1)
    inside = (projected**2 / arrays.variances).sum(axis=1)
    return (inside + np.maximum(residual, 0.0) / spec.residual_variance) / centred.shape[1]


def is_unfamiliar(vectors: np.ndarray, spec: FamiliaritySpec) -> np.ndarray:
    """Boolean per row of ``familiarity_vectors``: the slice is unlike the training data."""
    return familiarity_scores(vectors, spec) > spec.threshold
