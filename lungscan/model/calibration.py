"""Served probability calibration: ``softmax(scale * log p + bias)`` on the model's softmax output.

One form holds the three families ``training.measure.evaluate`` fits on the calibration split and chooses
between by cross-validation there: a temperature (one shared scale, no bias), a per-class bias (scale 1: a
correction of the class priors the model learned, which can change the most probable class) and
vector scaling (a scale and a bias per class). ``log p`` differs from the logits by a constant
per image, which the softmax cancels, so this is the usual logit-space calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

CalibrationFamily = Literal["temperature", "class_bias", "vector_scaling"]
# The fits stay well inside these (scales e^-3..20, biases +-20); beyond them log p * scale can overflow.
Scale = Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]


class CalibrationSpec(BaseModel):
    """``model.json``'s ``calibration``: the served rescaling and how it was chosen."""

    family: CalibrationFamily
    scale: list[Scale] = Field(min_length=2)  # one per class, in the order of ``classes``
    bias: list[Bias] = Field(min_length=2)
    method: str = ""  # plain words for the model card

    @model_validator(mode="after")
    def _family_fits(self) -> CalibrationSpec:
        # The card describes the family ("the most probable class is unchanged"): the numbers must be of it.
        if self.family == "temperature" and (len(set(self.scale)) != 1 or any(self.bias)):
            raise ValueError("a temperature is one scale shared by all classes, without a bias")
        if self.family == "class_bias" and any(s != 1.0 for s in self.scale):
            raise ValueError("a class bias keeps every scale at 1")
        return self

    def check_classes(self, classes: Sequence[str]) -> None:
        if len(self.scale) != len(classes) or len(self.bias) != len(classes):
            raise ValueError(f"calibration needs one scale and one bias per class ({len(classes)})")


def apply_calibration(probabilities: np.ndarray, spec: CalibrationSpec) -> np.ndarray:
    """Softmax probabilities ``(N, K)`` rescaled by the spec (``training.measure.calibrate`` fits it with this)."""
    return _rescale(probabilities, np.asarray(spec.scale), np.asarray(spec.bias))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax outputs divided in logit space by a temperature: older bundles' ``temperature``
    (``training.measure.metrics.fit_temperature`` fits it with this function)."""
    return _rescale(probabilities, 1.0 / temperature, 0.0)


def _rescale(probabilities: np.ndarray, scale, bias) -> np.ndarray:
    """``softmax(scale * log p + bias)``: log p differs from the logits by a constant the softmax cancels."""
    logits = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)) * scale + bias
    scaled = np.exp(logits - logits.max(axis=1, keepdims=True))
    return scaled / scaled.sum(axis=1, keepdims=True)
