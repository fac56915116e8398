"""The API's request and response models: what ``/openapi.json`` publishes and every answer is built from."""

import json
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from lungscan.accounts.history import RECORD_ID_PATTERN
from lungscan.bundle.files import NAME_PATTERN
from lungscan.model.classifier import Tier
from lungscan.uploads import MAX_STUDY_SLICES, UploadOptions

# lungscan.accounts.history's PATIENT_REF_PATTERN without '.' and '..' (refused too), as a lookahead-free
# pattern that any JSON Schema tool reads.
PATIENT_REF_SCHEMA_PATTERN = (
    r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}|\.\.[A-Za-z0-9._-]{1,62})$"
)

# Base64 as decode_base64 reads it (a data: prefix allowed), at least one byte: what the schema can say of an image.
# Whether the bytes are a CT slice it cannot say (415 or 422).
BASE64_IMAGE_PATTERN = (
    r"^(?:data:[A-Za-z0-9.+/_-]*;base64,)?"
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$"
)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable code for programs (docs/api.md#errors): invalid_json, not_ct_like...")
    message: str = Field(description="Plain words for a person; never echoes the request's values")
    request_id: str = Field(description="API Gateway's request id: quote it when reporting a problem")


class ErrorResponse(BaseModel):
    """The body of every error the function answers, on every route (app.py's one error table)."""

    error: ErrorDetail


class GatewayError(BaseModel):
    """API Gateway's own refusals, before the function runs (throttling): its body, not the function's."""

    message: str


# What each status means on this API; a route lists the ones it can answer (``answers``).
ERROR_MEANINGS: dict[int, str] = {
    400: "Malformed request: body, JSON, base64, form, parameters, page token or patient reference",
    401: "No valid ID token where the route (or storing a patient's scan) needs one",
    403: "The caller belongs to no single care team, is no longer enabled or in that team, or is not the author",
    404: "No such model, patient, record or study (another team's is the same 404)",
    409: "The resource is not ready for this: a study started before all its files are uploaded",
    413: "Too large: body, image, pixels, slices or form parts (bodies over 10 MB: API Gateway answers itself)",
    415: "Unsupported Content-Type or image format, or a compressed DICOM without a decoder",
    422: "Well formed but not processable: a file that cannot be a CT slice (not_ct_like, too small, empty...: no "
    "verdict), or options that contradict each other (two patients, a study with a patient)",
    500: "Unexpected error: no details, quote the request id",
    503: "No model could be loaded, or this deployment keeps no history or studies, or the user pool cannot be asked",
}
_JSON = "application/json"


def answers(*errors: int, ok: int = HTTPStatus.OK) -> dict[int, Any]:
    """A route's OpenAPI ``responses``: its success (the return annotation's model; 204 has no body), each error
    status it can answer with the one error body (500 on every route), and API Gateway's 429."""
    success: dict[str, Any] = {"description": HTTPStatus(ok).phrase}
    if ok == HTTPStatus.NO_CONTENT:
        success["content"] = {}
    responses: dict[int, Any] = {int(ok): success}
    for status in sorted({*errors, HTTPStatus.INTERNAL_SERVER_ERROR}):
        responses[int(status)] = {"description": ERROR_MEANINGS[status], "content": {_JSON: {"model": ErrorResponse}}}
    responses[int(HTTPStatus.TOO_MANY_REQUESTS)] = {
        "description": "Throttled by API Gateway (deployed only): retry later",
        "content": {_JSON: {"model": GatewayError}},
    }
    return responses


class PredictOptions(UploadOptions):
    """What a request may choose, in the JSON body, multipart fields or the query string: the core's
    options for reading and explaining the images, and which model answers."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str | None = Field(default=None, pattern=NAME_PATTERN, description="Model name; default model if absent")
    # The pattern is documented, not validated here: check_patient_ref answers a bad one with its own message.
    patient: str | None = Field(
        default=None,
        description="Pseudonymous patient reference: store (signed in)",
        json_schema_extra={"pattern": PATIENT_REF_SCHEMA_PATTERN},
    )


# The options a query string may carry, as PredictOptions declares them (the others are JSON or form only).
_QUERY_FIELDS: dict[str, Any] = {
    name: (PredictOptions.model_fields[name].annotation, PredictOptions.model_fields[name])
    for name in ("model", "explain", "frame", "all_frames", "patient")
}
QueryOptions = create_model("QueryOptions", **_QUERY_FIELDS)


class PredictRequest(PredictOptions):
    """JSON body of ``POST /predict``: exactly one of ``image`` (one slice) or ``images`` (the slices of one study)."""

    # The one-of rule, in the schema too: a generated client (or Schemathesis) knows a body with neither is refused.
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["image"]}, {"required": ["images"]}]})

    # Absent, never null: the schema says a string (or an array), and so does the check below.
    image: SkipJsonSchema[None] | str = Field(
        default=None,
        min_length=1,
        description="Base64 image; a data: prefix is accepted",
        json_schema_extra={"pattern": BASE64_IMAGE_PATTERN},
    )
    images: SkipJsonSchema[None] | list[str] = Field(
        default=None,
        min_length=1,
        description=f"At most {MAX_STUDY_SLICES} slices (more: 413)",
        json_schema_extra={"items": {"type": "string", "pattern": BASE64_IMAGE_PATTERN}, "minItems": 1},
    )
    filename: str | None = Field(default=None, max_length=255, description="Never logged")

    @field_validator("image", "images", mode="before")
    @classmethod
    def _absent_not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("leave it out rather than send null")
        return value

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


# Path parameters as the routes check them: Powertools writes a bare string. A bad record id is a 404.
PATH_PARAMETER_SCHEMAS: dict[str, dict[str, Any]] = {
    "ref": {"type": "string", "pattern": PATIENT_REF_SCHEMA_PATTERN, "description": "Pseudonymous patient reference"},
    "record_id": {"type": "string", "pattern": RECORD_ID_PATTERN, "description": "A record's id, as listed"},
}


def document_errors(document: dict) -> dict:
    """Powertools documents a 422 ``HTTPValidationError`` on every route, but this API answers a bad parameter
    400 with the one error body (``answers``): that shape is never sent, so it goes. Path parameters get the
    patterns their routes check."""
    for operations in document["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                del responses["422"]
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in PATH_PARAMETER_SCHEMAS:
                    parameter["schema"] = PATH_PARAMETER_SCHEMAS[parameter["name"]]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


# ---------------------------------------------------------------- whole studies (docs/api.md "Whole studies")


class StudyFile(BaseModel):
    """One file to upload: its size only (a file name is patient data: never sent, never kept)."""

    model_config = ConfigDict(extra="ignore")

    size: int = Field(ge=1, description="Bytes; the upload target accepts 1 to this many")

    @field_validator("size", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # JSON Schema's integer: 1024 or 1024.0, never "1024" (which pydantic's lax mode would take).
        if isinstance(value, str | bool):
            raise ValueError("must be a JSON number")
        return value


class CreateStudyRequest(BaseModel):
    """JSON body of ``POST /studies``."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)

    files: list[StudyFile] = Field(min_length=1, description="One entry per file, at most 2,000 and 2 GiB in all")
    model: str | None = Field(default=None, pattern=NAME_PATTERN, description="Model name; default model if absent")
    patient: str | None = Field(
        default=None,
        description="Pseudonymous patient reference: one history record (signed in)",
        json_schema_extra={"pattern": PATIENT_REF_SCHEMA_PATTERN},
    )
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
