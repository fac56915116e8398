"""``model.json``, typed: what a bundle's model is and how to use it.

A bare ``model.h5`` without ``model.json`` keeps the original Flask app's meaning:
64x64 RGB, x/255, one sigmoid output, below 0.5 means cancer.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, model_serializer, model_validator

from lungscan.bundle.files import NAME_PATTERN, TWIN_FILE, VERSION_PATTERN
from lungscan.model.calibration import CalibrationSpec
from lungscan.model.conformal import ConformalSpec
from lungscan.model.familiarity import FamiliaritySpec
from lungscan.model.gate import GateSpec

INTENDED_USE = "Research and first-pass triage only. Not a diagnosis: a clinician must review every scan."


class InputSpec(BaseModel):
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]
    colour: Literal["grayscale", "rgb"]
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)


class ResizeSpec(BaseModel):
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    method: Literal["bilinear", "nearest"] = "bilinear"


class NormalisationSpec(BaseModel):
    scale: float = 1.0 / 255.0
    offset: float = 0.0


class DicomWindowSpec(BaseModel):
    """The HU window a bundle was trained with (JSON: {"center": HU, "width": HU})."""

    center: float = Field(allow_inf_nan=False)
    width: float = Field(gt=0, allow_inf_nan=False)


class IntensitySpec(BaseModel):
    """``fixed``: ``x * scale + offset`` (normalisation); ``percentile``: low/high percentiles to 0/1."""

    method: Literal["fixed", "percentile"] = "fixed"
    low: float = Field(default=1.0, ge=0.0, le=100.0)
    high: float = Field(default=99.0, ge=0.0, le=100.0)


class PreprocessingSpec(BaseModel):
    # A step this version does not know is refused, never skipped: served without it, the model would see
    # other pixels than in training and answer confidently wrong.
    model_config = {"extra": "forbid"}

    colour: Literal["grayscale", "rgb"]
    crop_to_body: bool = False  # crop to a square around the body first (lungscan.model.transforms.CropToBody)
    pad_to_square: bool = False  # pad to a square before resizing (keeps the aspect ratio)
    resize: ResizeSpec
    intensity: IntensitySpec = IntensitySpec()
    normalisation: NormalisationSpec = NormalisationSpec()
    dicom_window: DicomWindowSpec = DicomWindowSpec(center=-600.0, width=1500.0)


class ModelJsonSection(BaseModel):
    """A section of ``model.json`` whose content varies with the bundle: the fields named, and any others kept.

    Read like the JSON object it is (``section["test"]``, ``section.get("smoke")``, ``"smoke" in section``);
    written back with only the fields it holds, in the order named (``training.measure.evaluate`` builds them so).
    """

    model_config = {"extra": "allow", "protected_namespaces": ()}

    @model_serializer(mode="wrap")
    def _as_held(self, handler) -> dict:
        data = handler(self)
        return {key: value for key, value in data.items() if key in self._held()}

    def _held(self) -> dict:
        named = {key: getattr(self, key) for key in type(self).model_fields if key in self.model_fields_set}
        return named | (self.__pydantic_extra__ or {})

    def __getitem__(self, key: str):
        return self._held()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._held()

    def get(self, key: str, default=None):
        return self._held().get(key, default)

    def keys(self):
        return self._held().keys()


class BundleMetrics(ModelJsonSection):
    """``metrics``: held-out figures (``training.measure.evaluate``); ``publish`` and ``list`` compare the headlines."""

    evaluated_on: str | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    macro_roc_auc: float | None = None
    ece: float | None = None
    suspicious_sensitivity: float | None = None
    suspicious_specificity: float | None = None
    majority_baseline: dict | None = None
    conformal_coverage: float | None = None
    conformal_mean_set_size: float | None = None
    evaluation_set: dict | None = None  # split, n, fingerprint: publish compares models on equal fingerprints
    calibration: dict | None = None  # the calibration candidates, the one chosen, ECE before/after
    test: dict | None = None  # per-split figures (training.measure.metrics.classification_metrics)
    validation: dict | None = None
    calibration_split: dict | None = None
    smoke: dict | None = None  # report/smoke.npz, which publish re-checks
    served_path: str | None = None


class TrainingRecord(ModelJsonSection):
    """``training``: how the model was made (``training.fit.train``); the model card's Training section."""

    preset: str | None = None
    recipe: dict | None = None
    matches_preset_recipe: bool | None = None
    architecture: str | None = None
    parameters: int | None = None
    epochs_run: int | None = None
    weights_from_epoch: int | None = None
    early_stopping: str | None = None
    optimizer: str | None = None
    refit_on_validation: bool | None = None
    class_weight: dict[str, float] | None = None
    augmentation: str | None = None
    seed: int | None = None
    fit_wall_time_s: float | None = None
    train_wall_time_s: float | None = None
    tensorboard_log_dir: str | None = None
    command: str | None = None
    evaluate_wall_time_s: float | None = None


class ReportRecord(ModelJsonSection):
    """``report``: the sha256 of every file under report/ and of the model card; publish uploads and checks them."""

    files: dict[str, str] = {}


# Names of the twin graph's outputs (training/release/twin.py writes them).
PROBABILITIES = "probabilities"  # the model's own output, as model.h5 gives it
FEATURES = "features"  # the last 4D activations (N, h, w, K): Grad-CAM's target layer
# d score / d features for every class: its spatial mean (N, classes, K), Grad-CAM's channel weights, when the
# head pools the maps; per cell (N, classes, h, w, K) when the head flattens them (the map is gradient x input).
CAM_WEIGHTS = "cam_weights"


class TwinParity(BaseModel):
    """How closely the twin reproduces model.h5, measured when it was derived."""

    on: str  # what it was measured on, e.g. "report/smoke.npz (24 held-out test inputs)"
    n: int = Field(ge=1)
    max_abs_diff: float = Field(ge=0.0)  # served (calibrated) probabilities, twin vs Keras
    labels_equal: bool
    tolerance: float
    gradcam_max_abs_diff: float = Field(ge=0.0)  # Grad-CAM maps in [0, 1], every class, twin vs Keras


class TwinSpec(BaseModel):
    """``model.json``'s ``twin``: a runtime copy of model.h5 that serves without TensorFlow."""

    file: Literal["model.onnx"] = TWIN_FILE
    format: Literal["onnx"] = "onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # the model.h5 it was derived from
    opset: int = Field(ge=7)
    converter: str  # e.g. "tf2onnx 1.17.0"
    outputs: list[str] = [PROBABILITIES, FEATURES, CAM_WEIGHTS]
    # gradcam-gap-dense: GAP -> Dense head(s); gradient-input-flatten-dense: Flatten -> Dense head(s), per-cell weights
    explain: Literal["gradcam-gap-dense", "gradient-input-flatten-dense"] = "gradcam-gap-dense"
    parity: TwinParity


class BundleMetadata(BaseModel):
    """What ``model.json`` holds. Unknown keys (reports, changelog...) are kept."""

    model_config = {"extra": "allow", "protected_namespaces": ()}

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    created_at: str | None = None
    classes: list[str] = Field(min_length=2)
    positive_classes: list[str] = Field(min_length=1)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    output: Literal["softmax", "sigmoid"] = "softmax"
    temperature: float = Field(default=1.0, gt=0.0)  # older bundles' calibration; 1 when ``calibration`` is set
    calibration: CalibrationSpec | None = None  # the served rescaling of the probabilities (lungscan.model.calibration)
    input: InputSpec
    preprocessing: PreprocessingSpec
    metrics: BundleMetrics = BundleMetrics()
    dataset: dict = {}
    framework: dict = {}
    intended_use: str = INTENDED_USE
    purpose: str = ""  # which images and which question this model is for (GET /model, the page's picker)
    sha256: str | None = None
    twin: TwinSpec | None = None  # model.onnx derived from model.h5 (served by lungscan/model/runtime.py)
    gate: GateSpec | None = None  # the not-CT gate (lungscan.model.gate); None: served without one (legacy)
    conformal: ConformalSpec | None = None  # conformal prediction sets (lungscan.model.conformal)
    # the unfamiliar-CT detector on the model's own features (lungscan.model.familiarity); None: no signal
    familiarity: FamiliaritySpec | None = None
    training: TrainingRecord | None = None  # absent from a bundle not made by `training train`
    report: ReportRecord | None = None  # absent until `training evaluate`

    @model_validator(mode="after")
    def _consistent(self) -> BundleMetadata:
        unknown = set(self.positive_classes) - set(self.classes)
        if unknown:
            raise ValueError(f"positive_classes {sorted(unknown)} are not among classes")
        if self.output == "sigmoid" and len(self.classes) != 2:
            raise ValueError("a sigmoid output needs exactly two classes")
        if (self.input.height, self.input.width) != (self.preprocessing.resize.height, self.preprocessing.resize.width):
            raise ValueError("preprocessing.resize must match the input size")
        if self.input.colour != self.preprocessing.colour:
            raise ValueError("preprocessing.colour must match input.colour")
        if self.conformal is not None:
            self.conformal.check_classes(self.classes)
        if self.calibration is not None:
            if self.output == "sigmoid" or self.temperature != 1.0:
                raise ValueError("calibration applies to a softmax output, instead of a temperature")
            self.calibration.check_classes(self.classes)
        return self


# What decides the answers: two model.json that agree on these answer alike with the same model.h5.
SERVED_FIELDS = frozenset(
    {"classes", "positive_classes", "threshold", "output", "temperature", "calibration", "input", "preprocessing"}
    | {"gate", "conformal", "familiarity"}
)


# Parts of served fields that only record how they were fitted and how they scored: no answer depends on them.
REPORTED_PARTS = {
    "gate": {"fitted_on", "evaluation"},
    "conformal": {"method", "calibration", "evaluation"},
    "familiarity": {"method", "fitted_on", "evaluation"},
}
# The same fit on another machine differs in the 7th-8th decimal (BLAS, threads); no answer moves at 1e-6.
SERVED_TOLERANCE = 1e-6


def served_differences(a: BundleMetadata, b: BundleMetadata) -> list[str]:
    """The served fields in which two bundles' metadata differ (publish keeps versions immutable with it):
    numbers beyond :data:`SERVED_TOLERANCE`, anything else at all, the reported-only parts ignored."""
    return sorted(name for name in SERVED_FIELDS if not _alike(_served_part(a, name), _served_part(b, name)))


def _served_part(metadata: BundleMetadata, name: str):
    value = getattr(metadata, name)
    return value.model_dump(exclude=REPORTED_PARTS.get(name)) if isinstance(value, BaseModel) else value


def _alike(x, y) -> bool:
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_alike(x[key], y[key]) for key in x)
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return len(x) == len(y) and all(_alike(u, v) for u, v in zip(x, y, strict=True))
    numbers = (int, float)
    if isinstance(x, numbers) and isinstance(y, numbers) and not isinstance(x, bool) and not isinstance(y, bool):
        return math.isclose(x, y, rel_tol=SERVED_TOLERANCE, abs_tol=SERVED_TOLERANCE)
    return x == y


def legacy_metadata(sha256: str | None = None) -> BundleMetadata:
    """The original app's contract: sigmoid p = P(no cancer), so below 0.5 = cancer."""
    return BundleMetadata(
        name="legacy",
        version="original",
        classes=["cancer", "normal"],
        positive_classes=["cancer"],
        threshold=0.5,
        output="sigmoid",
        input=InputSpec(height=64, width=64, channels=3, colour="rgb"),
        preprocessing=PreprocessingSpec(colour="rgb", resize=ResizeSpec(height=64, width=64)),
        sha256=sha256,
    )


def utc_timestamp() -> str:
    """Now, in UTC, to the second: ``2026-11-27T11:00:00Z`` (model.json's and history.json's times)."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
