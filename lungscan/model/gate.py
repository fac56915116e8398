"""The not-CT gate: refuse an image that is not a CT slice at all, before any verdict.

It answers one question only: "is this a CT slice of the chest?" (photos, charts, logos,
screenshots, text, noise, X-ray radiographs and MR images are not). Whether a CT slice is
like the ones a model learned from is another question, answered by the bundle's unfamiliar
detector (``lungscan.model.familiarity``, which reads these features too), never by a refusal.

Serving needs numpy and Pillow only: the features are cheap image statistics of the decoded
image (``lungscan.model.gate_features``), and the fitted parameters (``GateSpec``, stored in
``model.json`` as ``gate``) are a standardisation, a small neural network (one hidden layer)
CT-vs-not-CT, and a Mahalanobis distance to the CT feature distribution (for kinds of non-CT nobody
showed the classifier). ``training/gate/fit.py`` fits them with scikit-learn.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, TypeVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer, PrivateAttr, model_validator

from lungscan.errors import NotCTLikeError
from lungscan.inputs.imaging import DecodedImage
from lungscan.model.gate_features import (  # the features live beside: re-exported for the gate's users
    FEATURE_NAMES,
    FEATURES_VERSION,
    FEATURES_VERSIONS,
    gate_feature_rows,
    gate_features,
)
from lungscan.model.thumbnail import SliceView

__all__ = ["FEATURES_VERSION", "FEATURE_NAMES", "GateSpec", "check_ct_like", "gate_feature_rows", "gate_features"]

T = TypeVar("T")

NOT_CT_MESSAGE = (
    "This does not look like a CT slice of the chest, so no verdict is given. "
    "Send one axial slice of a chest CT scan: the DICOM file from the scanner, or a PNG or JPEG export "
    "of that slice. Photos, screenshots of other things, charts, drawings, X-ray radiographs and MR images "
    "are not read."
)


def _packed(values: list) -> dict:
    """A list of floats (or of rows) as model.json stores it: float32, little-endian, base64 (3.7x smaller than
    the numbers written out, and parsed in microseconds instead of milliseconds)."""
    array = np.asarray(values, dtype="<f4")
    return {"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode("ascii")}


def _unpacked(value: object) -> object:
    """``{"shape": [...], "float32": "<base64>"}`` as (nested) lists of floats; a list as it is (older bundles)."""
    if not isinstance(value, dict):
        return value
    if set(value) != {"shape", "float32"}:
        raise ValueError('a packed array is {"shape": [...], "float32": "<base64>"}')
    shape, text = value["shape"], value["float32"]
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape) and isinstance(text, str)):
        raise ValueError("a packed array needs a list of sizes and a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError("a packed array's float32 is not valid base64") from error
    if len(data) != 4 * math.prod(shape):
        raise ValueError(f"a packed array of shape {shape} needs {4 * math.prod(shape)} bytes, not {len(data)}")
    return np.frombuffer(data, dtype="<f4").astype(np.float64).reshape(shape).tolist()


PackedVector = Annotated[list[float], BeforeValidator(_unpacked), PlainSerializer(_packed, when_used="json")]
PackedMatrix = Annotated[list[list[float]], BeforeValidator(_unpacked), PlainSerializer(_packed, when_used="json")]


class ArrayCache:
    """A spec's list fields converted to numpy arrays once, kept beside them (:meth:`GateSpec.arrays`).

    Converted again only when a field was replaced (``model_copy``); one tuple, set at once, so a reader in
    another thread never sees arrays of other fields. A cache: it never tells two specs apart (it compares
    equal to any other, and pydantic compares private attributes).
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple, Any] | None = None

    def get(self, sources: tuple, convert: Callable[[tuple], T]) -> T:
        entry = self._entry
        if entry is None or any(a is not b for a, b in zip(entry[0], sources, strict=True)):
            entry = (sources, convert(sources))
            self._entry = entry
        return entry[1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArrayCache)

    __hash__ = None  # type: ignore[assignment]


class GateArrays(NamedTuple):
    """A gate's parameters as numpy arrays, for :func:`gate_scores`."""

    mean: np.ndarray
    scale: np.ndarray
    hidden_weights: np.ndarray
    hidden_bias: np.ndarray
    output_weights: np.ndarray
    ct_location: np.ndarray
    ct_precision: np.ndarray


class GateSpec(BaseModel):
    """The fitted gate, as stored in ``model.json`` (``gate``).

    A slice passes when both say CT: the classifier's probability of CT is at least
    ``probability_threshold`` and the squared Mahalanobis distance of its standardised
    features to the CT training features is at most ``distance_threshold``.

    The vectors and matrices are float32 in model.json (see :func:`_packed`; lists of numbers, as older
    bundles wrote them, are read too) and lists of floats in Python.
    """

    features_version: int = FEATURES_VERSION
    feature_names: list[str]
    mean: PackedVector
    scale: PackedVector
    hidden_weights: PackedMatrix  # (features, hidden): one ReLU layer, then a logistic output
    hidden_bias: PackedVector
    output_weights: PackedVector
    output_bias: float
    probability_threshold: float = Field(gt=0.0, lt=1.0)
    ct_location: PackedVector
    ct_precision: PackedMatrix
    distance_threshold: float = Field(gt=0.0)
    fitted_on: dict = {}
    evaluation: dict = {}
    _arrays: ArrayCache = PrivateAttr(default_factory=ArrayCache)

    @model_validator(mode="after")
    def _consistent(self) -> GateSpec:
        n = len(self.feature_names)
        if self.features_version not in FEATURES_VERSIONS or self.feature_names != FEATURE_NAMES:
            raise ValueError("gate features differ from this version of lungscan.model.gate: refit the gate")
        hidden = len(self.hidden_bias)
        sized: list[list] = [self.mean, self.scale, self.ct_location, self.ct_precision, self.hidden_weights]
        if any(len(values) != n for values in sized) or len(self.output_weights) != hidden:
            raise ValueError("gate parameters do not match its feature count")
        if any(len(row) != n for row in self.ct_precision) or any(len(row) != hidden for row in self.hidden_weights):
            raise ValueError("gate weight matrices have the wrong shape")
        return self

    def arrays(self) -> GateArrays:
        """The parameters as arrays, converted once (again only if a field was replaced, e.g. by ``model_copy``)."""
        sources = tuple(getattr(self, name) for name in GateArrays._fields)
        return self._arrays.get(sources, lambda lists: GateArrays(*(np.asarray(v, dtype=np.float64) for v in lists)))


def gate_scores(features: np.ndarray, spec: GateSpec) -> tuple[np.ndarray, np.ndarray]:
    """(probability of CT, squared Mahalanobis distance to CT) for a (N, F) or (F,) feature array."""
    weights = spec.arrays()
    standard = (np.atleast_2d(features) - weights.mean) / weights.scale
    hidden = np.maximum(standard @ weights.hidden_weights + weights.hidden_bias, 0.0)
    logits = hidden @ weights.output_weights + spec.output_bias
    probability = 1.0 / (1.0 + np.exp(-np.clip(logits, -500, 500)))
    centred = standard - weights.ct_location
    distance = ((centred @ weights.ct_precision) * centred).sum(axis=1)
    return probability, distance


def is_ct_like(features: np.ndarray, spec: GateSpec) -> np.ndarray:
    """Boolean per row: the gate lets it through."""
    probability, distance = gate_scores(features, spec)
    return (probability >= spec.probability_threshold) & (distance <= spec.distance_threshold)


def gate_passes(view: SliceView, spec: GateSpec) -> bool:
    """Whether the gate lets this slice through (on the features of the gate's own version)."""
    return bool(is_ct_like(gate_features(view, spec.features_version), spec)[0])


def check_ct_like(decoded: DecodedImage, spec: GateSpec, view: SliceView | None = None) -> None:
    """Refuse an image that does not look like a CT slice, whatever its wrapper.

    The pixels decide: a DICOM's ``Modality: CT`` proves nothing (scouts, dose screens and screen
    captures carry it too, and any picture can be wrapped in one), so a DICOM faces the gate on what
    its window makes of it, as a PNG or JPEG does.

    Args:
        view: the slice's :class:`SliceView` when the caller has one (its thumbnails are shared with the crop).

    Raises:
        NotCTLikeError: (HTTP 422, ``not_ct_like``) with what to send instead.
    """
    if not gate_passes(view or SliceView(decoded.image), spec):
        raise NotCTLikeError(NOT_CT_MESSAGE)
