"""ClassifierFunction: the Lambda adapter around the ``lungscan`` core.

HTTP only: parse the request, call the core, shape the answer, map errors to statuses.
The models are loaded once per container, at import (the Lambda init phase), never in
the request path.
"""

import base64
import email.parser
import email.policy
import io
import json
import os
import re
import time
import uuid
from typing import Annotated, Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field, ValidationError

from lungscan.errors import (
    LungScanError,
    MalformedInputError,
    ModelUnavailableError,
    NotACTSliceError,
    PayloadTooLargeError,
    UnknownModelError,
    UnsupportedFormatError,
)
from lungscan.imaging import DEFAULT_LIMITS, decode_base64
from lungscan.predict import DISCLAIMER, Classifier
from lungscan.serving import ModelStore
from lungscan.uploads import decode_upload

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LungScan"))
cors = CORSConfig(allow_origin=os.environ.get("ALLOWED_ORIGIN", "*"), max_age=300)
app = APIGatewayRestResolver(cors=cors, enable_validation=True)

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# JSON or multipart framing around the base64 image: allow some room beyond the image limit.
MAX_BODY_CHARS = (DEFAULT_LIMITS.max_bytes * 4) // 3 + 64 * 1024
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


def _create_store() -> ModelStore:
    bucket = os.environ.get("MODEL_BUCKET")
    default_name = os.environ.get("MODEL_NAME", "iq-oth-3class")
    names = [name for name in os.environ.get("MODEL_NAMES", default_name).split(",") if name]
    store = ModelStore(
        default_name,
        baked_bundle=os.environ.get("MODEL_DIR") or None,
        s3=boto3.client("s3") if bucket else None,
        bucket=bucket,
        names=names,
        refresh_seconds=float(os.environ.get("MODEL_REFRESH_SECONDS", "300")),
        cache_dir=os.environ.get("MODEL_CACHE_DIR", "/tmp/lungscan-models"),
        logger=logger,
    )
    store.load()
    return store


store = _create_store()


# ---------------------------------------------------------------- request and response models


class PredictRequest(BaseModel):
    """JSON body of ``POST /predict``."""

    model_config = {"extra": "ignore", "protected_namespaces": ()}

    image: str = Field(min_length=1, description="Base64 image; a data:...;base64, prefix is accepted")
    filename: str | None = Field(default=None, max_length=255, description="Never logged")
    explain: bool = False
    model: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)


class ModelInfo(BaseModel):
    name: str
    version: str
    sha256: str | None


class InputInfo(BaseModel):
    format: str
    width: int
    height: int
    window: dict[str, float] | None = None


class PredictResponse(BaseModel):
    label: str
    verdict: str
    prediction: str = Field(description="The original app's field: same text as verdict")
    suspicious: bool
    confidence: float
    probabilities: dict[str, float]
    threshold: float
    model: ModelInfo
    input: InputInfo
    heatmap: str | None = None
    preview: str | None = Field(default=None, description="PNG (base64) of what the model saw, for DICOM input")
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


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelDescription]
    disclaimer: str


class Upload(BaseModel):
    data: bytes
    explain: bool = False
    model: str | None = None


# ---------------------------------------------------------------- routes


@app.get("/health")
def health() -> dict:
    loaded = sorted(store.models)
    return {"status": "ok" if loaded else "degraded", "models": loaded}


@app.get("/model")
def describe_models() -> ModelsResponse:
    default = store.get()  # 503 when nothing is loaded
    descriptions = [_describe(classifier, classifier is default) for classifier in store.models.values()]
    return ModelsResponse(default=default.metadata.name, models=descriptions, disclaimer=DISCLAIMER)


@app.get("/openapi.json")
def openapi():  # no return annotation: a Response is not a pydantic type
    return Response(200, content_types.APPLICATION_JSON, app.get_openapi_json_schema(title="LungScan API"))


@app.post("/predict")
def predict(
    model: Annotated[str | None, Query(pattern=MODEL_NAME_PATTERN, description="Model name")] = None,
) -> PredictResponse:
    """Classify one CT slice: JSON base64, raw image bytes, or multipart ``file``."""
    started = time.perf_counter()
    upload = _read_upload()
    classifier = store.get(upload.model or model)
    decoded = decode_upload(upload.data, DEFAULT_LIMITS)
    prediction = classifier.classify(decoded)
    metadata = classifier.metadata
    elapsed_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name=f"Predicted_{prediction.label}", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="PredictLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    logger.info(
        "classified",
        extra={
            "bytes": len(upload.data),
            "format": decoded.format,
            "model_name": metadata.name,
            "model_version": metadata.version,
            "label": prediction.label,
            "latency_ms": round(elapsed_ms, 2),
        },
    )
    return PredictResponse(
        label=prediction.label,
        verdict=prediction.verdict,
        prediction=prediction.verdict,
        suspicious=prediction.suspicious,
        confidence=prediction.confidence,
        probabilities=prediction.probabilities,
        threshold=prediction.threshold,
        model=ModelInfo(name=metadata.name, version=metadata.version, sha256=metadata.sha256),
        input=InputInfo(format=decoded.format, width=decoded.width, height=decoded.height, window=decoded.window),
        preview=_png_base64(decoded.image) if decoded.format == "DICOM" else None,
        disclaimer=DISCLAIMER,
        request_id=_request_id(),
    )


# ---------------------------------------------------------------- request parsing


def _read_upload() -> Upload:
    """Turn the proxy event's body into image bytes, whatever its framing."""
    event = app.current_event
    body = event.body or ""
    # Decide on size before decoding anything.
    if len(body) > MAX_BODY_CHARS:
        raise PayloadTooLargeError(f"The request is larger than the {DEFAULT_LIMITS.max_bytes // 2**20} MB limit.")
    if not body:
        raise MalformedInputError("The request body is empty: send an image.", code="empty_body")
    content_type = event.get_header_value("content-type", default_value="", case_sensitive=False) or ""
    media_type = content_type.split(";", 1)[0].strip().lower()
    raw = _body_bytes(body, event.is_base64_encoded)
    if media_type == "application/json" or (not media_type and raw.lstrip().startswith(b"{")):
        return _read_json(raw)
    if media_type == "multipart/form-data":
        return _read_multipart(content_type, raw)
    if media_type in RAW_IMAGE_TYPES:
        return Upload(data=raw)
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


def _read_json(raw: bytes) -> Upload:
    try:
        request = PredictRequest.model_validate_json(raw)
    except ValidationError as error:
        # Name the fields, never echo their values (they hold image data).
        problems = [
            f"{'.'.join(str(part) for part in issue['loc']) or 'body'}: {issue['msg']}" for issue in error.errors()
        ]
        code = "invalid_json" if any(issue["type"] == "json_invalid" for issue in error.errors()) else "invalid_request"
        message = "The body is not valid JSON." if code == "invalid_json" else "Invalid request: " + "; ".join(problems)
        raise MalformedInputError(message, code=code) from None
    return Upload(data=decode_base64(request.image), explain=request.explain, model=request.model)


def _read_multipart(content_type: str, raw: bytes) -> Upload:
    """The original Flask app's contract: ``multipart/form-data`` with a ``file`` field."""
    header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", errors="replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + raw)
    if not message.is_multipart():
        raise MalformedInputError("The multipart body could not be parsed.", code="invalid_multipart")
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name and name not in fields:
            fields[str(name)] = part.get_payload(decode=True) or b""
    if "file" not in fields:
        raise MalformedInputError("The form has no 'file' field.", code="missing_file")
    model = fields.get("model", b"").decode("utf-8", errors="replace").strip() or None
    if model is not None and not re.match(MODEL_NAME_PATTERN, model):
        raise MalformedInputError("Invalid model name.", code="invalid_request")
    explain = fields.get("explain", b"").strip().lower() in (b"1", b"true", b"yes", b"on")
    return Upload(data=fields["file"], explain=explain, model=model)


# ---------------------------------------------------------------- answers


def _describe(classifier: Classifier, is_default: bool) -> ModelDescription:
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
    )


def _png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
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
