"""ClassifierFunction: the Lambda adapter around the ``lungscan`` core.

HTTP only: parse the request, call the core, shape the answer, map errors to statuses.
The models are loaded once per container, at import (the Lambda init phase), never in
the request path.
"""

import base64
import email.errors
import email.parser
import email.policy
import io
import json
import os
import re
import time
import uuid
from collections import Counter
from typing import Annotated, Any

import boto3
import history_api  # beside this file: the patient history routes
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config as BotocoreConfig
from pydantic import BaseModel, Field, ValidationError, model_validator

from lungscan.dicom import DicomOptions
from lungscan.errors import (
    LungScanError,
    MalformedInputError,
    ModelUnavailableError,
    NotACTSliceError,
    PayloadTooLargeError,
    UnknownModelError,
    UnsupportedFormatError,
)
from lungscan.imaging import DEFAULT_LIMITS, DecodedImage, decode_base64
from lungscan.predict import DISCLAIMER, VERDICT_CLEAR, Classifier, Prediction
from lungscan.serving import DEFAULT_REGISTRY_DEADLINE, ModelStore
from lungscan.uploads import MAX_STUDY_SLICES, StudySlice, decode_upload, plan_study

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LungScan"))


class StackCORS(CORSConfig):
    """Cross-origin access for ``ALLOWED_ORIGIN`` (the local page, or a hospital's own page) and for the
    origin the API Gateway stage names in its ``allowedOrigin`` stage variable: the deployed site's
    CloudFront origin, which the template cannot put in this function's environment (the site's CSP
    names this API, so that would be a dependency cycle). Stage variables come from the API's
    configuration, never from the caller. Neither set: no cross-origin access at all, never "*".
    """

    @staticmethod
    def _stage_origin() -> str | None:
        try:
            return (app.current_event.stage_variables or {}).get("allowedOrigin") or None
        except (AttributeError, KeyError, TypeError):  # no current event (outside a request)
            return None

    def allowed_origin(self, extracted_origin: str) -> str | None:
        if extracted_origin and extracted_origin == self._stage_origin():
            return extracted_origin
        return super().allowed_origin(extracted_origin)

    def to_dict(self, origin: str | None) -> dict[str, str]:
        if origin and origin == self._stage_origin():
            return CORSConfig(allow_origin=origin, max_age=self.max_age).to_dict(origin)
        return super().to_dict(origin)


cors = StackCORS(allow_origin=os.environ.get("ALLOWED_ORIGIN", ""), max_age=300)
app = APIGatewayRestResolver(cors=cors, enable_validation=True)
app.include_router(history_api.router)
app.configure_openapi(title="LungScan API", security_schemes=history_api.SECURITY_SCHEMES)

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Lambda takes at most 6 MB per synchronous request, event envelope included; the same for its answer.
MAX_BODY_CHARS = 6 * 1024 * 1024 - 64 * 1024
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 - 64 * 1024
# Heatmaps and previews are shown, not measured: a 4096x4096 overlay alone would overflow the answer.
MAX_IMAGE_SIDE = 1024
# A form holds the files of one study and the options; counted before the parser runs.
MAX_FORM_PARTS = MAX_STUDY_SLICES + 16
# A browser writes a few hundred bytes of headers per part; the email package's header parser
# is quadratic in some shapes (1 MB of "()" takes a minute), so longer header blocks are refused.
MAX_PART_HEADER_BYTES = 8 * 1024
RAW_IMAGE_TYPES = {
    "image/png",
    "image/jpeg",
    "image/bmp",
    "image/tiff",
    "application/dicom",
    "application/octet-stream",
}
STATUS_BY_ERROR: dict[type[LungScanError], int] = {
    MalformedInputError: 400,
    UnknownModelError: 404,
    PayloadTooLargeError: 413,
    UnsupportedFormatError: 415,
    NotACTSliceError: 422,
    ModelUnavailableError: 503,
}


# The registry is read in a background thread (lungscan.serving): these timeouts only bound how long
# that thread hangs on a slow S3; requests never wait for it, and cold start waits at most the deadline.
REGISTRY_CLIENT_CONFIG = BotocoreConfig(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2})


def _create_store() -> ModelStore:
    bucket = os.environ.get("MODEL_BUCKET")
    default_name = os.environ.get("MODEL_NAME", "iq-oth-3class")
    names = [name for name in os.environ.get("MODEL_NAMES", default_name).split(",") if name]
    store = ModelStore(
        default_name,
        baked_bundle=os.environ.get("MODEL_DIR") or None,
        s3=boto3.client("s3", config=REGISTRY_CLIENT_CONFIG) if bucket else None,
        bucket=bucket,
        names=names,
        refresh_seconds=float(os.environ.get("MODEL_REFRESH_SECONDS", "300")),
        registry_deadline=float(os.environ.get("MODEL_REGISTRY_DEADLINE_SECONDS", str(DEFAULT_REGISTRY_DEADLINE))),
        cache_dir=os.environ.get("MODEL_CACHE_DIR", "/tmp/lungscan-models"),
        logger=logger,
    )
    store.load()
    return store


store = _create_store()


# ---------------------------------------------------------------- request and response models


class Window(BaseModel):
    """A CT display window in Hounsfield units."""

    center: float = Field(ge=-2000, le=4000)
    width: float = Field(gt=0, le=10000)


class PredictOptions(BaseModel):
    """What a request may choose, in the JSON body, multipart fields or the query string."""

    model_config = {"extra": "ignore", "protected_namespaces": ()}

    model: str | None = Field(
        default=None, pattern=MODEL_NAME_PATTERN, description="Model name; default model if absent"
    )
    explain: bool = Field(default=False, description="Add a Grad-CAM heatmap overlay (PNG, base64)")
    explain_class: str | None = Field(default=None, max_length=64, description="Class to explain; the label if absent")
    window: Window | None = Field(default=None, description="DICOM window; the lung window (-600/1500) if absent")
    frame: int | None = Field(default=None, ge=0, description="Frame of a multi-frame DICOM; the middle one if absent")
    all_frames: bool = Field(default=False, description="Classify every frame of a multi-frame DICOM as a study")
    allow_non_ct: bool = Field(default=False, description="Accept DICOM modalities other than CT")
    patient: str | None = Field(default=None, description="Pseudonymous patient reference: store (signed in)")


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


class SliceResult(BaseModel):
    label: str
    verdict: str
    suspicious: bool
    confidence: float
    suspicion: float = Field(description="Summed probability of the model's positive classes")
    probabilities: dict[str, float]
    input: InputInfo
    heatmap: str | None = Field(default=None, description="Grad-CAM overlay (PNG, base64) at the input's size")
    explained_class: str | None = None
    preview: str | None = Field(default=None, description="PNG (base64) of what the model saw, for DICOM input")


class PredictResponse(SliceResult):
    prediction: str = Field(description="The original app's field: same text as verdict")
    threshold: float
    model: ModelInfo
    disclaimer: str
    request_id: str
    record_id: str | None = Field(default=None, description="The stored history record (signed in, with patient)")


class StudySummary(BaseModel):
    slices: int
    suspicious: bool
    verdict: str
    most_suspicious_slice: int = Field(description="Index of the slice with the highest suspicion")
    max_suspicion: float
    label_counts: dict[str, int]


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
    sha256: str | None
    source: str = Field(description="Where the served copy came from: 'registry' (S3) or 'baked' (the image)")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelDescription]
    disclaimer: str


class Upload(BaseModel):
    images: list[bytes]
    is_study: bool = False
    options: PredictOptions = PredictOptions()


# ---------------------------------------------------------------- routes


@app.get("/health")
def health() -> dict:
    loaded = sorted(store.models)
    return {"status": "ok" if loaded else "degraded", "models": loaded}


@app.get("/model")
def describe_models() -> ModelsResponse:
    default = store.get()  # 503 when nothing is loaded
    snapshot = store.snapshot  # one consistent view, even while a refresh swaps models in
    descriptions = [
        _describe(classifier, name == default.metadata.name, snapshot.sources.get(name, "baked"))
        for name, classifier in snapshot.models.items()
    ]
    return ModelsResponse(default=default.metadata.name, models=descriptions, disclaimer=DISCLAIMER)


@app.get("/openapi.json")
def openapi():  # no return annotation: a Response is not a pydantic type
    return Response(200, content_types.APPLICATION_JSON, app.get_openapi_json_schema(title="LungScan API"))


@app.post("/predict", security=history_api.OPTIONAL_TOKEN)  # a token only to store a patient's scan
def predict(
    model: Annotated[str | None, Query(pattern=MODEL_NAME_PATTERN, description="Model name")] = None,
    explain: Annotated[bool, Query(description="Add a Grad-CAM heatmap")] = False,
    frame: Annotated[int | None, Query(ge=0, description="Frame of a multi-frame DICOM")] = None,
    all_frames: Annotated[bool, Query(description="Classify every DICOM frame as a study")] = False,
    patient: Annotated[str | None, Query(description="Pseudonymous patient reference (signed in)")] = None,
) -> PredictResponse | StudyResponse:
    """Classify one CT slice, or the slices of one study.

    The body is JSON (``image`` or ``images`` in base64), raw image bytes (PNG, JPEG,
    DICOM) or ``multipart/form-data`` with a ``file`` field; options go in the JSON body,
    the form fields or the query string.
    """
    started = time.perf_counter()
    query = PredictOptions(model=model, explain=explain, frame=frame, all_frames=all_frames, patient=patient)
    upload = _read_upload(query)
    options = upload.options
    is_study = upload.is_study or options.all_frames
    caller = history_api.caller_for_prediction(app.current_event, options.patient, is_study)  # None: store nothing
    classifier = store.get(options.model)
    dicom = DicomOptions(
        # The request's window, else the one the model's bundle declares it was trained with.
        window=options.window.model_dump()
        if options.window
        else classifier.metadata.preprocessing.dicom_window.model_dump(),
        frame=options.frame,
        allow_non_ct=options.allow_non_ct,
    )
    if is_study:
        # Slice count and pixel budget come from the headers, before any slice is decoded.
        answer = _study_answer(classifier, plan_study(upload.images, DEFAULT_LIMITS, dicom), dicom, options)
        slices, input_format = answer.study.slices, answer.slices[0].input.format
    else:
        decoded = decode_upload(upload.images[0], DEFAULT_LIMITS, dicom)
        answer = _single_answer(classifier, decoded, options)
        slices, input_format = 1, answer.input.format
    _check_answer_size(answer)
    if caller is not None:  # one slice: a study with a patient was refused above
        side = max(classifier.metadata.input.height, classifier.metadata.input.width)
        answer.record_id = history_api.store_prediction(
            caller, options.patient, answer.model_dump(), decoded.image, side, len(upload.images[0])
        )
    elapsed_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name="PredictLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    logger.info(
        "classified",
        extra={
            "bytes": sum(len(data) for data in upload.images),
            "slices": slices,
            "format": input_format,
            "explain": options.explain,
            "model_name": classifier.metadata.name,
            "model_version": classifier.metadata.version,
            "latency_ms": round(elapsed_ms, 2),
        },
    )
    return answer


def _single_answer(classifier: Classifier, decoded: DecodedImage, options: PredictOptions) -> PredictResponse:
    prediction = classifier.classify(decoded, explain=options.explain, explain_class=options.explain_class)
    _count(prediction.label)
    return PredictResponse(
        **_slice_result(_input_info(decoded), prediction, images_from=decoded).model_dump(),
        prediction=prediction.verdict,
        threshold=prediction.threshold,
        model=_model_info(classifier),
        disclaimer=DISCLAIMER,
        request_id=_request_id(),
    )


def _study_answer(
    classifier: Classifier, plan: list[StudySlice], dicom: DicomOptions, options: PredictOptions
) -> StudyResponse:
    predictions: list[Prediction] = []
    inputs: list[InputInfo] = []
    worst, worst_decoded = 0, None
    for index, item in enumerate(plan):
        # Decode, classify, drop: at most this slice and the most suspicious so far are held.
        decoded = item.decode(DEFAULT_LIMITS, dicom)
        predictions.append(classifier.classify(decoded))
        inputs.append(_input_info(decoded))
        if worst_decoded is None or predictions[index].suspicion > predictions[worst].suspicion:
            worst, worst_decoded = index, decoded
        del decoded
    if options.explain:  # explain the slice that matters; all heatmaps would overflow the response
        predictions[worst] = classifier.classify(worst_decoded, explain=True, explain_class=options.explain_class)
    results = [
        _slice_result(info, prediction, images_from=worst_decoded if index == worst else None)
        for index, (info, prediction) in enumerate(zip(inputs, predictions, strict=True))
    ]
    for prediction in predictions:
        _count(prediction.label)
    suspicious = any(prediction.suspicious for prediction in predictions)
    return StudyResponse(
        study=StudySummary(
            slices=len(predictions),
            suspicious=suspicious,
            verdict=predictions[worst].verdict if suspicious else VERDICT_CLEAR,
            most_suspicious_slice=worst,
            max_suspicion=predictions[worst].suspicion,
            label_counts=dict(Counter(prediction.label for prediction in predictions)),
        ),
        slices=results,
        threshold=classifier.metadata.threshold,
        model=_model_info(classifier),
        disclaimer=DISCLAIMER,
        request_id=_request_id(),
    )


def _input_info(decoded: DecodedImage) -> InputInfo:
    return InputInfo(
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        window=decoded.window,
        frame=decoded.meta.get("frame"),
    )


def _slice_result(info: InputInfo, prediction: Prediction, images_from: DecodedImage | None) -> SliceResult:
    """``images_from``: the decoded slice whose heatmap and (DICOM) preview the answer carries, if any."""
    with_images = images_from is not None
    show_preview = with_images and images_from.format == "DICOM"
    return SliceResult(
        label=prediction.label,
        verdict=prediction.verdict,
        suspicious=prediction.suspicious,
        confidence=prediction.confidence,
        suspicion=prediction.suspicion,
        probabilities=prediction.probabilities,
        input=info,
        heatmap=_png_base64(prediction.heatmap) if with_images and prediction.heatmap is not None else None,
        explained_class=prediction.explained_class if with_images else None,
        preview=_png_base64(images_from.image) if show_preview else None,
    )


def _check_answer_size(answer: BaseModel) -> None:
    """Lambda turns an answer over 6 MB into a bare 502: refuse it here, with a reason, instead."""
    if len(answer.model_dump_json()) > MAX_RESPONSE_BYTES:
        raise PayloadTooLargeError(
            f"The answer would exceed the {MAX_RESPONSE_BYTES // 2**20} MB Lambda can return: "
            "ask without explain, or send fewer slices.",
            code="response_too_large",
        )


def _count(label: str) -> None:
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name=f"Predicted_{label}", unit=MetricUnit.Count, value=1)


def _model_info(classifier: Classifier) -> ModelInfo:
    metadata = classifier.metadata
    return ModelInfo(name=metadata.name, version=metadata.version, sha256=metadata.sha256)


# ---------------------------------------------------------------- request parsing


def _read_upload(query: PredictOptions) -> Upload:
    """Turn the proxy event's body into image bytes and options, whatever its framing."""
    event = app.current_event
    body = event.body or ""
    # Decide on size before decoding anything.
    if len(body) > MAX_BODY_CHARS:
        raise PayloadTooLargeError(
            f"The request is larger than {MAX_BODY_CHARS // 2**20} MB, the most API Gateway and Lambda carry."
        )
    if not body:
        raise MalformedInputError("The request body is empty: send an image.", code="empty_body")
    content_type = event.get_header_value("content-type", default_value="", case_sensitive=False) or ""
    media_type = content_type.split(";", 1)[0].strip().lower()
    raw = _body_bytes(body, event.is_base64_encoded)
    if media_type == "application/json" or (not media_type and raw.lstrip().startswith(b"{")):
        return _read_json(raw, query)
    if media_type == "multipart/form-data":
        return _read_multipart(content_type, raw, query)
    if media_type in RAW_IMAGE_TYPES:
        return Upload(images=[raw], options=query)
    raise UnsupportedFormatError(
        "Unsupported Content-Type: send application/json, multipart/form-data, "
        "image/png, image/jpeg or application/dicom.",
        code="unsupported_media_type",
    )


def _body_bytes(body: str, is_base64_encoded: bool) -> bytes:
    if not is_base64_encoded:
        return body.encode("utf-8", errors="surrogateescape")
    try:
        return base64.b64decode(body, validate=True)
    except ValueError as error:
        raise MalformedInputError("The request body is not valid base64.", code="invalid_base64") from error


def _read_json(raw: bytes, query: PredictOptions) -> Upload:
    try:
        request = PredictRequest.model_validate_json(raw)
    except ValidationError as error:
        raise _invalid(error) from None
    options = PredictOptions(**{**query.model_dump(exclude_unset=True), **request.model_dump(exclude_unset=True)})
    if request.images is not None:
        if len(request.images) > MAX_STUDY_SLICES:
            raise PayloadTooLargeError(f"A study may hold at most {MAX_STUDY_SLICES} slices.")
        return Upload(images=[decode_base64(image) for image in request.images], is_study=True, options=options)
    return Upload(images=[decode_base64(request.image or "")], options=options)


def _read_multipart(content_type: str, raw: bytes, query: PredictOptions) -> Upload:
    """The original Flask app's contract: ``multipart/form-data`` with a ``file`` field."""
    header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", errors="replace")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    try:
        boundary = parser.parsebytes(header, headersonly=True).get_boundary()
        if len(content_type) > MAX_PART_HEADER_BYTES:
            raise MalformedInputError("The Content-Type header is too long.", code="invalid_multipart")
        if boundary:
            _check_form_shape(raw, boundary.encode("latin-1", errors="replace"))
        message = parser.parsebytes(header + raw)
        if not message.is_multipart():
            raise MalformedInputError("The multipart body could not be parsed.", code="invalid_multipart")
        files: list[bytes] = []
        fields: dict[str, str] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "file":
                files.append(payload)
            elif name in PredictOptions.model_fields and name not in fields:
                fields[str(name)] = payload.decode("utf-8", errors="replace").strip()
    except (RecursionError, LookupError, ValueError, TypeError, AttributeError, email.errors.MessageError) as error:
        # The email package's header parser recurses on nested comments: "((((...".
        raise MalformedInputError("The multipart body could not be parsed.", code="invalid_multipart") from error
    if not files:
        raise MalformedInputError("The form has no 'file' field.", code="missing_file")
    if len(files) > MAX_STUDY_SLICES:
        raise PayloadTooLargeError(f"A study may hold at most {MAX_STUDY_SLICES} slices.")
    try:
        options = PredictOptions(**{**query.model_dump(exclude_unset=True), **fields})
    except ValidationError as error:
        raise _invalid(error) from None
    return Upload(images=files, is_study=len(files) > 1, options=options)


def _check_form_shape(raw: bytes, boundary: bytes) -> None:
    """Count the parts and bound their header blocks before the email parser sees the body: it
    takes seconds per ten thousand parts, and a study needs at most 64 files plus the options."""
    delimiters = re.finditer(rb"(?:\A|\n)--" + re.escape(boundary), raw)
    for count, delimiter in enumerate(delimiters):
        if count > MAX_FORM_PARTS:  # the last delimiter closes the form: count + 1 delimiters, count parts
            raise PayloadTooLargeError(f"A form may hold at most {MAX_FORM_PARTS} parts.", code="too_many_parts")
        head = raw[delimiter.end() : delimiter.end() + MAX_PART_HEADER_BYTES]
        ends_in_reach = b"\n\r\n" in head or b"\n\n" in head or len(head) < MAX_PART_HEADER_BYTES
        if not head.startswith(b"--") and not ends_in_reach:
            raise MalformedInputError(
                f"A form part's headers are longer than {MAX_PART_HEADER_BYTES // 1024} KB.", code="invalid_multipart"
            )


def _invalid(error: ValidationError) -> MalformedInputError:
    """Name the fields, never echo their values (they hold image data)."""
    if any(issue["type"] == "json_invalid" for issue in error.errors()):
        return MalformedInputError("The body is not valid JSON.", code="invalid_json")
    problems = [f"{'.'.join(str(part) for part in issue['loc']) or 'body'}: {issue['msg']}" for issue in error.errors()]
    return MalformedInputError("Invalid request: " + "; ".join(problems), code="invalid_request")


# ---------------------------------------------------------------- answers


def _describe(classifier: Classifier, is_default: bool, source: str) -> ModelDescription:
    metadata = classifier.metadata
    return ModelDescription(
        name=metadata.name,
        version=metadata.version,
        default=is_default,
        classes=metadata.classes,
        positive_classes=metadata.positive_classes,
        threshold=metadata.threshold,
        input=metadata.input.model_dump(),
        metrics=metadata.metrics,
        dataset=metadata.dataset,
        intended_use=metadata.intended_use,
        sha256=metadata.sha256,
        source=source,
    )


def _png_base64(image) -> str:
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # keeps the aspect ratio
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: level 6 costs ~100 ms on a 512x512 overlay
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _request_id() -> str:
    try:
        return app.current_event.request_context.request_id or str(uuid.uuid4())
    except (AttributeError, KeyError, TypeError):
        return str(uuid.uuid4())


def _error(status: int, code: str, message: str) -> Response:
    body = {"error": {"code": code, "message": message, "request_id": _request_id()}}
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body))


@app.exception_handler(LungScanError)
def handle_domain_error(error: LungScanError) -> Response:
    status = next((code for kind, code in STATUS_BY_ERROR.items() if isinstance(error, kind)), 400)
    logger.info("request refused", extra={"status": status, "code": error.code})
    metrics.add_metric(name=f"Errors{status}", unit=MetricUnit.Count, value=1)
    return _error(status, error.code, error.message)


@app.exception_handler(RequestValidationError)
def handle_validation_error(error: RequestValidationError) -> Response:
    fields = ", ".join(".".join(str(part) for part in issue.get("loc", ())) for issue in error.errors())
    metrics.add_metric(name="Errors400", unit=MetricUnit.Count, value=1)
    return _error(400, "invalid_request", f"Invalid request parameters: {fields}.")


@app.not_found
def handle_not_found(error: NotFoundError) -> Response:
    return _error(404, "not_found", "No such route. See GET /openapi.json.")


@app.exception_handler(Exception)
def handle_unexpected(error: Exception) -> Response:
    # The trace goes to the logs (which never hold image bytes), never to the client.
    logger.exception("unexpected error")
    metrics.add_metric(name="Errors500", unit=MetricUnit.Count, value=1)
    return _error(500, "internal_error", "Internal error. Quote the request id when reporting it.")


# ---------------------------------------------------------------- entry point


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler(capture_response=False)  # answers hold images: keep them out of X-Ray
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
