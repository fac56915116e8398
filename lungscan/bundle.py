"""The model bundle: ``model.h5`` plus ``model.json`` describing how to use it.

A bare ``model.h5`` without ``model.json`` keeps the original Flask app's meaning:
64x64 RGB, x/255, one sigmoid output, below 0.5 means cancer.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_serializer, model_validator

from lungscan.calibration import CalibrationSpec
from lungscan.conformal import ConformalSpec
from lungscan.errors import InvalidBundleError
from lungscan.gate import GateSpec
from lungscan.runtime import TwinSpec

MODEL_FILE = "model.h5"
METADATA_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"  # written by training.model_card; published beside model.json, never served
REPORT_DIR = "report"  # evaluation figures, split lists, smoke set: for people and tools, not served
# Registry names and versions become S3 keys and local folders: no "/", no "." or ".." alone.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
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
    crop_to_body: bool = False  # crop to a square around the body first (lungscan.transforms.CropToBody)
    pad_to_square: bool = False  # pad to a square before resizing (keeps the aspect ratio)
    resize: ResizeSpec
    intensity: IntensitySpec = IntensitySpec()
    normalisation: NormalisationSpec = NormalisationSpec()
    dicom_window: DicomWindowSpec = DicomWindowSpec(center=-600.0, width=1500.0)


class ModelJsonSection(BaseModel):
    """A section of ``model.json`` whose content varies with the bundle: the fields named, and any others kept.

    Read like the JSON object it is (``section["test"]``, ``section.get("smoke")``, ``"smoke" in section``);
    written back with only the fields it holds, in the order named (``training.evaluate`` builds them so).
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
    """``metrics``: held-out figures (``training.evaluate``); ``publish`` and ``list`` compare the headline ones."""

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
    test: dict | None = None  # per-split figures (training.metrics.classification_metrics)
    validation: dict | None = None
    calibration_split: dict | None = None
    smoke: dict | None = None  # report/smoke.npz, which publish re-checks
    served_path: str | None = None


class TrainingRecord(ModelJsonSection):
    """``training``: how the model was made (``training.train``); the model card's Training section."""

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
    calibration: CalibrationSpec | None = None  # the served rescaling of the probabilities (lungscan.calibration)
    input: InputSpec
    preprocessing: PreprocessingSpec
    metrics: BundleMetrics = BundleMetrics()
    dataset: dict = {}
    framework: dict = {}
    intended_use: str = INTENDED_USE
    sha256: str | None = None
    twin: TwinSpec | None = None  # model.onnx derived from model.h5 (lungscan/runtime.py)
    gate: GateSpec | None = None  # the not-CT gate (lungscan.gate); None: served without one (legacy)
    conformal: ConformalSpec | None = None  # conformal prediction sets (lungscan.conformal)
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
    | {"gate", "conformal"}
)


# Parts of served fields that only record how they were fitted and how they scored: no answer depends on them.
REPORTED_PARTS = {"gate": {"fitted_on", "evaluation"}, "conformal": {"method", "calibration", "evaluation"}}
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(bundle_dir: Path, *, verify_sha256: bool = True) -> BundleMetadata:
    """Read and check a bundle's metadata (or the legacy meaning of a bare model.h5).

    Raises:
        InvalidBundleError: missing model.h5, unreadable/invalid model.json, sha256 mismatch.
    """
    bundle_dir = Path(bundle_dir)
    model_path = bundle_dir / MODEL_FILE
    if not model_path.is_file():
        raise InvalidBundleError(f"{model_path} does not exist")
    actual_sha = file_sha256(model_path)
    metadata_path = bundle_dir / METADATA_FILE
    if not metadata_path.exists():
        return legacy_metadata(actual_sha)
    try:
        metadata = BundleMetadata.model_validate_json(metadata_path.read_text())
    except (ValidationError, OSError, UnicodeDecodeError) as error:
        raise InvalidBundleError(f"{metadata_path} is not a valid model.json: {error}") from error
    if verify_sha256 and metadata.sha256 and metadata.sha256 != actual_sha:
        raise InvalidBundleError(f"sha256 of {model_path} does not match model.json")
    metadata.sha256 = actual_sha
    return metadata


def write_metadata(bundle_dir: Path, metadata: BundleMetadata) -> None:
    """Write model.json with the sha256 of the model.h5 beside it."""
    bundle_dir = Path(bundle_dir)
    metadata.sha256 = file_sha256(bundle_dir / MODEL_FILE)
    absent = {name for name in ("training", "report") if getattr(metadata, name) is None}  # not written as null
    text = json.dumps(metadata.model_dump(mode="json", exclude=absent), indent=2, sort_keys=False)
    (bundle_dir / METADATA_FILE).write_text(text + "\n")
