"""The not-CT gate: refuse an image that is not a CT slice at all, before any verdict.

It answers one question only: "is this a CT slice of the chest?" (photos, charts, logos,
screenshots, text, noise, X-ray radiographs and MR images are not). Whether a CT slice is
like the ones a model learned from is another question, answered by the model's own
uncertainty, never by a refusal.

Serving needs numpy and Pillow only: the features are cheap image statistics of the decoded
image, and the fitted parameters (``GateSpec``, stored in ``model.json`` as ``gate``) are a
standardisation, a small neural network (one hidden layer) CT-vs-not-CT, and a Mahalanobis distance to the CT
feature distribution (for kinds of non-CT nobody showed the classifier). ``training/gate/fit.py``
fits them with scikit-learn.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, NamedTuple

import numpy as np
from PIL import Image
from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer, PrivateAttr, model_validator

from lungscan.errors import NotCTLikeError
from lungscan.inputs.imaging import DecodedImage
from lungscan.model.thumbnail import THUMBNAIL_SIDE, SliceView

GATE_SIZE = THUMBNAIL_SIDE  # every image is looked at as a 128x128 grayscale copy (plus its colours)
THUMBNAIL = 8  # body layout: mean intensity over an 8x8 grid
DARK_GRID = 4  # where the dark (air) pixels are: the lungs inside the body, the air around it
RINGS = 6
ORIENTATIONS = 8
# 2: the grey thumbnail is a box mean (lungscan.model.thumbnail, shared with the crop); 1: Pillow's bilinear
# resize. A gate is scored on the features of its own version: bundles fitted before still load and answer alike.
FEATURES_VERSION = 2
FEATURES_VERSIONS = (1, 2)

NOT_CT_MESSAGE = (
    "This does not look like a CT slice of the chest, so no verdict is given. "
    "Send one axial slice of a chest CT scan: the DICOM file from the scanner, or a PNG or JPEG export "
    "of that slice. Photos, screenshots of other things, charts, drawings, X-ray radiographs and MR images "
    "are not read."
)


def _feature_names() -> list[str]:
    names = ["chroma_mean", "chroma_fraction"]
    names += [f"histogram_{i}" for i in range(16)]
    names += ["entropy", "grey_levels", "dark_fraction", "bright_fraction"]
    names += ["border_mean", "border_dark_fraction", "centre_mean"]
    names += [f"ring_{i}" for i in range(RINGS)]
    names += [f"layout_{row}_{col}" for row in range(THUMBNAIL) for col in range(THUMBNAIL)]
    names += [f"dark_{row}_{col}" for row in range(DARK_GRID) for col in range(DARK_GRID)]
    names += [f"orientation_{i}" for i in range(ORIENTATIONS)]
    names += ["gradient_mean", "flat_fraction", "edge_fraction", "fine_texture", "centre_noise", "symmetry"]
    return names


FEATURE_NAMES = _feature_names()


def _level_table(values: np.ndarray, bins: int) -> np.ndarray:
    """For each 8-bit level, the bin ``np.histogram(values, bins, range=(0, 1))`` counts it in: on numpy's own edges,
    half-open bins and the last one closed (``tests/unit/test_gate.py`` checks it against ``np.histogram``)."""
    edges = np.histogram_bin_edges(values, bins=bins, range=(0.0, 1.0))
    return np.minimum(np.searchsorted(edges, values, side="right") - 1, bins - 1)


# The thumbnail's grey levels as the features see them (float32 level / 255), and what each level counts towards:
# the histograms and fractions are sums over the thumbnail's 256-level histogram, the same numbers as over its pixels.
_GREY = np.arange(256, dtype=np.float32) / 255.0
_BIN_16 = _level_table(_GREY, 16)
_BIN_64 = _level_table(_GREY, 64)
_DARK = _GREY < 0.12
_BRIGHT = _GREY > 0.88
_CENTRE = (GATE_SIZE - 1) / 2.0
_RADIUS = np.hypot(*(np.mgrid[0:GATE_SIZE, 0:GATE_SIZE] - _CENTRE)) / (GATE_SIZE / 2.0)
_RING_INDEX = np.minimum((_RADIUS * RINGS / 1.42).astype(int), RINGS - 1).ravel()
_RING_COUNTS = np.maximum(np.bincount(_RING_INDEX, minlength=RINGS), 1)


def gate_features(image: Image.Image | SliceView, version: int = FEATURES_VERSION) -> np.ndarray:
    """Cheap statistics of a decoded image that separate CT slices from other pictures.

    Colour (CT has none), the intensity histogram (a large dark mode of air), the dark
    border around the body, the body's layout on an 8x8 grid and by ring from the centre,
    gradient orientations (charts and screenshots are axis-aligned), flat areas (drawings),
    fine texture and noise in the middle of the picture (CT has quantum noise; drawings have
    none) and left-right symmetry.

    Everything but colour and the count of grey levels is read from one 128x128 grey thumbnail (version 2:
    the box mean the crop shares, :class:`lungscan.model.thumbnail.SliceView`; version 1: a bilinear
    resize); what only depends on its grey levels (histograms, dark and bright fractions) from the
    thumbnail's 256-level histogram.
    """
    if version not in FEATURES_VERSIONS:
        raise ValueError(f"gate features version {version} is not one of {FEATURES_VERSIONS}")
    view = image if isinstance(image, SliceView) else SliceView(image)
    image = view.image
    features: list[float] = []
    if image.mode == "RGB":
        small = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
        chroma = small.max(axis=2) - small.min(axis=2)
        features += [float(chroma.mean()) / 255.0, float((chroma > 24).mean())]
    else:
        features += [0.0, 0.0]
    original = view.grey
    step = max(1, int(np.sqrt(original.size / 65536)))
    levels = np.count_nonzero(np.bincount(original[::step, ::step].ravel(), minlength=256)) / 256.0

    if version == 1:
        thumbnail = np.asarray(Image.fromarray(original).resize((GATE_SIZE, GATE_SIZE), Image.Resampling.BILINEAR))
    else:
        thumbnail = view.gate_thumbnail
    grey = _GREY[thumbnail]
    size = grey.size
    counts = np.bincount(thumbnail.ravel(), minlength=256)
    histogram = np.bincount(_BIN_16, weights=counts, minlength=16) / size
    fine_histogram = np.bincount(_BIN_64, weights=counts, minlength=64) / size
    nonzero = fine_histogram[fine_histogram > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(64))
    features += histogram.tolist()
    features += [entropy, levels, int(counts[_DARK].sum()) / size, int(counts[_BRIGHT].sum()) / size]

    ring = GATE_SIZE // 10
    border = np.concatenate(
        [grey[:ring].ravel(), grey[-ring:].ravel(), grey[:, :ring].ravel(), grey[:, -ring:].ravel()]
    )
    quarter = GATE_SIZE // 4
    features += [
        float(border.mean()),
        float((border < 0.12).mean()),
        float(grey[quarter:-quarter, quarter:-quarter].mean()),
    ]

    sums = np.bincount(_RING_INDEX, weights=grey.ravel(), minlength=RINGS)
    features += (sums / _RING_COUNTS).tolist()

    block = GATE_SIZE // THUMBNAIL
    features += grey.reshape(THUMBNAIL, block, THUMBNAIL, block).mean(axis=(1, 3)).ravel().tolist()
    block = GATE_SIZE // DARK_GRID
    dark = _DARK[thumbnail].astype(np.float32)
    features += dark.reshape(DARK_GRID, block, DARK_GRID, block).mean(axis=(1, 3)).ravel().tolist()

    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / np.pi * ORIENTATIONS).astype(int), ORIENTATIONS - 1)
    orientation = np.bincount(bins.ravel(), weights=magnitude.ravel(), minlength=ORIENTATIONS)
    features += (orientation / max(float(orientation.sum()), 1e-9)).tolist()

    padded = np.empty((GATE_SIZE + 2, GATE_SIZE + 2), np.float32)  # the edge repeated: np.pad(grey, 1, "edge")
    padded[1:-1, 1:-1] = grey
    padded[0, 1:-1], padded[-1, 1:-1] = grey[0], grey[-1]
    padded[:, 0], padded[:, -1] = padded[:, 1], padded[:, -2]
    blurred = padded[:GATE_SIZE, :GATE_SIZE].copy()  # the 3x3 mean, summed in row order
    for i, j in [(i, j) for i in range(3) for j in range(3)][1:]:
        blurred += padded[i : i + GATE_SIZE, j : j + GATE_SIZE]
    blurred /= 9.0
    mirrored = grey[:, ::-1]
    spread = float(grey.std())
    symmetry = float(((grey - grey.mean()) * (mirrored - mirrored.mean())).mean() / (spread**2)) if spread > 0 else 1.0
    features += [
        float(magnitude.mean()),
        float((magnitude < 0.002).mean()),
        float((magnitude > 0.15).mean()),
        float((grey - blurred).std()),
        # robust to edges: scanner noise inside the picture (drawings and cartoons have none)
        float(np.median(np.abs(grey - blurred)[quarter:-quarter, quarter:-quarter])),
        symmetry,
    ]
    return np.asarray(features, dtype=np.float64)


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
    _arrays: tuple[tuple, GateArrays] | None = PrivateAttr(default=None)

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
        if self._arrays is None or any(a is not b for a, b in zip(self._arrays[0], sources, strict=True)):
            self._arrays = (sources, GateArrays(*(np.asarray(values, dtype=np.float64) for values in sources)))
        return self._arrays[1]


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
