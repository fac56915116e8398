"""The API's request and response models: what ``/openapi.json`` publishes and every answer is built from."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from lungscan.bundle.files import NAME_PATTERN
from lungscan.model.classifier import Tier
from lungscan.uploads import MAX_STUDY_SLICES, UploadOptions


class PredictOptions(UploadOptions):
    """What a request may choose, in the JSON body, multipart fields or the query string: the core's
    options for reading and explaining the images, and which model answers."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str | None = Field(default=None, pattern=NAME_PATTERN, description="Model name; default model if absent")
    patient: str | None = Field(default=None, description="Pseudonymous patient reference: store (signed in)")


# The options a query string may carry, as PredictOptions declares them (the others are JSON or form only).
_QUERY_FIELDS: dict[str, Any] = {
    name: (PredictOptions.model_fields[name].annotation, PredictOptions.model_fields[name])
    for name in ("model", "explain", "frame", "all_frames", "patient")
}
QueryOptions = create_model("QueryOptions", **_QUERY_FIELDS)


class PredictRequest(PredictOptions):
    """JSON body of ``POST /predict``: one ``image``, or the slices of one study in ``images``."""

    image: str | None = Field(default=None, min_length=1, description="Base64 image; a data: prefix is accepted")
    images: list[str] | None = Field(default=None, min_length=1, description=f"At most {MAX_STUDY_SLICES} slices")
    filename: str | None = Field(default=None, max_length=255, description="Never logged")

    @model_validator(mode="after")
    def _one_of_image_or_images(self) -> "PredictRequest":
        if (self.image is None) == (self.images is None):
            raise ValueError("send exactly one of 'image' or 'images'")
        return self


class ModelInfo(BaseModel):
    name: str
    version: str
    sha256: str | None


class InputInfo(BaseModel):
    format: str
    width: int
    height: int
    window: dict[str, float] | None = None
    frame: int | None = None


TierCode = Tier  # suspicious, not_excluded, clear (lungscan.model.classifier)


class SliceResult(BaseModel):
    label: str
    tier: TierCode = Field(
        description="What a clinician reads, consistent with the set: 'suspicious' (Suspicious — review first: a "
        "flagged class is the label), 'not_excluded' (Malignancy not excluded — review: a flagged class is in the "
        "set but is not the label), 'clear' (No suspicious finding: no flagged class in the set)"
    )
    tier_text: str = Field(description="The tier in the page's words")
    verdict: str = Field(
        deprecated=True,
        description="Deprecated: the original app's text ('Cancer Detected' / 'No Cancer Detected'), derived from "
        "suspicious; for its page and scripts only",
    )
    suspicious: bool = Field(description="The screening flag: true for the tiers suspicious and not_excluded")
    confidence: float
    positive_probability: float = Field(description="Summed probability of the model's positive classes")
    # The first name of positive_probability, kept for the integrations that read it.
    suspicion: float = Field(deprecated=True, description="Deprecated alias of positive_probability (the same value)")
    probabilities: dict[str, float]
    prediction_set: list[str] | None = Field(
        default=None,
        description="Conformal prediction set: the classes that could not be ruled out at the model's calibrated "
        "coverage (90%: the true class is in the set for about 9 cases in 10), most probable first",
    )
    uncertain: bool | None = Field(
        default=None,
        description="True when the prediction set holds both a flagged and an unflagged class, or the slice is "
        "unfamiliar: needs review. A set such as {normal, benign} is not uncertain about malignancy",
    )
    unfamiliar: bool | None = Field(
        default=None,
        description="True when the slice looks unlike the scans this model learned from (its bundle's detector): "
        "answered, its set widened to hold every flagged class, and its answer unreliable; null without a detector",
    )
    notes: list[str] = Field(default=[], description="Plain words on what this answer's tier and set mean")
    input: InputInfo
    heatmap: str | None = Field(default=None, description="Grad-CAM overlay (PNG, base64) at the input's size")
    explained_class: str | None = None
    preview: str | None = Field(default=None, description="PNG (base64) of what the model saw, for DICOM input")


class PredictResponse(SliceResult):
    prediction: str = Field(deprecated=True, description="Deprecated: the original app's field, same text as verdict")
    threshold: float
    model: ModelInfo
    disclaimer: str
    request_id: str
    record_id: str | None = Field(default=None, description="The stored history record (signed in, with patient)")


class StudySummary(BaseModel):
    slices: int
    suspicious: bool
    tier: TierCode = Field(description="The study's highest tier over its slices (suspicious > not_excluded > clear)")
    verdict: str = Field(deprecated=True, description="Deprecated: the original app's text, derived from suspicious")
    most_suspicious_slice: int = Field(description="Index of the slice with the highest positive_probability")
    max_positive_probability: float = Field(description="positive_probability of the most suspicious slice")
    max_suspicion: float = Field(
        deprecated=True, description="Deprecated alias of max_positive_probability (the same value)"
    )
    label_counts: dict[str, int]
    uncertain: bool | None = Field(default=None, description="True when any slice's answer is uncertain")
    uncertain_slices: list[int] = Field(default=[], description="Indices of the slices whose answer is uncertain")
    unfamiliar_slices: list[int] = Field(default=[], description="Indices of the slices that look unfamiliar")


class StudyResponse(BaseModel):
    """Several slices of one study. Heatmap and preview come for the most suspicious slice only,
    which keeps the answer within Lambda's 6 MB response limit."""

    study: StudySummary
    slices: list[SliceResult]
    threshold: float
    model: ModelInfo
    disclaimer: str
    request_id: str


class ModelDescription(BaseModel):
    name: str
    version: str
    default: bool
    classes: list[str]
    positive_classes: list[str]
    threshold: float
    input: dict[str, Any]
    metrics: dict[str, Any]
    dataset: dict[str, Any]
    intended_use: str
    purpose: str = Field(default="", description="Which images and which question this model is for")
    sha256: str | None
    source: str = Field(description="Where the served copy came from: 'registry' (S3) or 'baked' (the image)")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelDescription]
    disclaimer: str


# ---------------------------------------------------------------- whole studies (docs/api.md "Whole studies")


class StudyFile(BaseModel):
    """One file to upload: its size only (a file name is patient data: never sent, never kept)."""

    model_config = ConfigDict(extra="ignore")

    size: int = Field(ge=1, description="Bytes; the upload target accepts 1 to this many")


class CreateStudyRequest(BaseModel):
    """JSON body of ``POST /studies``."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    files: list[StudyFile] = Field(min_length=1, description="One entry per file, at most 2,000 and 2 GiB in all")
    model: str | None = Field(default=None, pattern=NAME_PATTERN, description="Model name; default model if absent")
    patient: str | None = Field(default=None, description="Pseudonymous patient reference: one history record")
    explain: bool = Field(default=True, description="Heatmaps of the most suspicious slices")


class StudyUpload(BaseModel):
    index: int
    url: str = Field(description="Presigned POST target (multipart/form-data: the fields, then the file)")
    fields: dict[str, str]


class CreateStudyResponse(BaseModel):
    study_id: str = Field(description="Unguessable: an anonymous study is reached by this id alone")
    expires_at: str = Field(description="UTC, ISO 8601: the study, its uploads and its images are deleted then")
    uploads: list[StudyUpload]


class StartStudyResponse(BaseModel):
    study_id: str
    status: str


class StudyProgress(BaseModel):
    done: int = Field(description="Files answered or refused so far")
    total: int
    failed: int = Field(description="Files refused (corrupt, a localizer, not CT...)")


class StudyModel(BaseModel):
    name: str
    version: str


class StudyStatusResponse(BaseModel):
    """A study: its state, and once done its summary, series and one page of slices in reading order."""

    study_id: str
    status: str = Field(description="uploading, running, done or failed")
    progress: StudyProgress
    model: StudyModel
    summary: dict[str, Any] | None = Field(
        description="suspicious, tier, uncertain, flagged, total, failed, most_suspicious_slices (with short-lived "
        "preview_url and heatmap_url), positive_probabilities; null until done"
    )
    series: list[dict[str, Any]] = Field(description="One {series, summary} per DICOM series")
    slices: list[dict[str, Any]] = Field(description="This page of slices (an answer, or an error)")
    next_cursor: str | None = Field(description="The next page's cursor; null on the last page")
    disclaimer: str


# ---------------------------------------------------------------- a study's DICOM results (docs/pacs.md)


class DicomObject(BaseModel):
    """One DICOM result: a Part 10 file, base64, with the UIDs it is filed by."""

    kind: str = Field(description="sr (the Structured Report) or key_image (the secondary capture with the heatmap)")
    filename: str = Field(description="A name to save it under")
    sop_class_uid: str
    sop_instance_uid: str = Field(description="The same for a study on every request: a retried STOW files it once")
    series_instance_uid: str
    dicom: str = Field(description="The Part 10 file, base64 (application/dicom)")


class DicomResultsResponse(BaseModel):
    """``GET /studies/{study_id}/dicom``: the SR and the key image, in the study's own DICOM study; built for this
    request, never stored."""

    study_id: str
    objects: list[DicomObject]
    disclaimer: str
