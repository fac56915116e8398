"""ClassifierFunction: the Lambda adapter around the ``lungscan`` core, and its routes.

HTTP only: read the request (``api_body``), call the core (``lungscan.uploads.classify_upload``),
shape the answer (``api_answers``, ``api_schemas``), map the core's errors to statuses (one table and one
error body for every route, the history routes included). The models are loaded once per container, at
import (the Lambda init phase); a registry refresh runs in a background thread started by
``ModelStore.get``, so a request never waits for S3.
"""

import json
import os
import time
import uuid
from typing import Annotated

import dicom_results_api  # and a study's DICOM SR and key image
import history_api  # beside this file: the patient history routes
import studies_api  # and the whole-study routes
from api_answers import describe_model, predict_answer
from api_body import document_predict_body, read_upload
from api_schemas import (
    ModelsResponse,
    PredictOptions,
    PredictResponse,
    QueryOptions,
    StudyResponse,
    answers,
    document_errors,
)
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from lungscan.accounts.access import declared_methods, openapi_security
from lungscan.errors import (
    ConflictError,
    ConflictingRequestError,
    DicomResultsUnavailableError,
    ForbiddenError,
    HistoryUnavailableError,
    LungScanError,
    MalformedInputError,
    ModelUnavailableError,
    NotACTSliceError,
    PayloadTooLargeError,
    RecordNotFoundError,
    StudiesUnavailableError,
    UnauthorizedError,
    UnknownModelError,
    UnsupportedFormatError,
)
from lungscan.model.classifier import DISCLAIMER
from lungscan.registry.model_store import DEFAULT_REGISTRY_DEADLINE, ModelStore
from lungscan.uploads import classify_upload

logger = Logger()
# Powertools' Tracer imports the X-Ray SDK, which creates its sampling client (~0.25 s of a cold start), even when
# tracing is off: the function makes one only when traces are sent (POWERTOOLS_TRACE_DISABLED unset, as deployed).
TRACING = os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() not in {
    "1",
    "true",
    "t",
    "yes",
    "y",
    "on",
}
tracer = Tracer() if TRACING else None
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
app.include_router(studies_api.router)
app.include_router(dicom_results_api.router)
OPENAPI_TITLE = "LungScan API"

STATUS_BY_ERROR: dict[type[LungScanError], int] = {  # the first kind that matches: subclasses first
    ConflictingRequestError: 422,
    MalformedInputError: 400,
    UnauthorizedError: 401,
    ForbiddenError: 403,  # no_team, access_revoked, not_author
    UnknownModelError: 404,
    RecordNotFoundError: 404,
    ConflictError: 409,
    PayloadTooLargeError: 413,
    UnsupportedFormatError: 415,
    NotACTSliceError: 422,
    DicomResultsUnavailableError: 422,
    ModelUnavailableError: 503,
    HistoryUnavailableError: 503,
    StudiesUnavailableError: 503,
}


# The registry is read in a background thread (lungscan.registry.model_store): these timeouts only bound how long
# that thread hangs on a slow S3; requests never wait for it, and cold start waits at most the deadline.
REGISTRY_CLIENT_CONFIG = {"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 2}}


def _registry_client():
    """The S3 client of the model registry; boto3 is imported here, at init, only when there is a registry."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(**REGISTRY_CLIENT_CONFIG))


def _create_store() -> ModelStore:
    bucket = os.environ.get("MODEL_BUCKET")
    default_name = os.environ.get("MODEL_NAME", "malignancy-screen")
    names = [name for name in os.environ.get("MODEL_NAMES", default_name).split(",") if name]
    store = ModelStore(
        default_name,
        baked_bundle=os.environ.get("MODEL_DIR") or None,
        s3=_registry_client() if bucket else None,
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
studies_api.use_models(store)


# ---------------------------------------------------------------- routes


@app.get("/health", responses=answers())
def health() -> dict:
    loaded = sorted(store.models)
    return {"status": "ok" if loaded else "degraded", "models": loaded}


@app.get("/model", responses=answers(503))
def describe_models() -> ModelsResponse:
    default = store.get()  # 503 when nothing is loaded
    snapshot = store.snapshot  # one consistent view, even while a refresh swaps models in
    descriptions = [
        describe_model(classifier, name == default.metadata.name, snapshot.sources.get(name, "baked"))
        for name, classifier in snapshot.models.items()
    ]
    return ModelsResponse(default=default.metadata.name, models=descriptions, disclaimer=DISCLAIMER)


@app.get("/openapi.json", responses=answers())
def openapi():  # no return annotation: a Response is not a pydantic type
    # Configured here, not at init: its security schemes are Powertools' OpenAPI models (~0.2 s to import).
    app.configure_openapi(title=OPENAPI_TITLE, security_schemes=history_api.security_schemes())
    document = json.loads(app.get_openapi_json_schema(title=OPENAPI_TITLE))
    document = document_errors(document_access(studies_api.document_study_body(document_predict_body(document))))
    return Response(200, content_types.APPLICATION_JSON, json.dumps(document))


def document_access(document: dict) -> dict:
    """Each operation's ``security``, from the one table of who may call what (``lungscan.accounts.access``)."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            security = openapi_security((method.upper(), path))
            if security is not None:
                operation["security"] = security
    return document


# A token only to store a patient's scan (lungscan.accounts.access).
@app.post("/predict", responses=answers(400, 401, 403, 404, 413, 415, 422, 503))
def predict(query: Annotated[QueryOptions, Query()]) -> PredictResponse | StudyResponse:
    """Classify one CT slice, or the slices of one study.

    The body is JSON (``image`` or ``images`` in base64), raw image bytes (PNG, JPEG,
    DICOM) or ``multipart/form-data`` with a ``file`` field; options go in the JSON body,
    the form fields or the query string.
    """
    started = time.perf_counter()
    upload = read_upload(app.current_event, PredictOptions(**query.model_dump(exclude_unset=True)))
    options = upload.options
    is_study = upload.is_study or options.all_frames
    caller = history_api.caller_for_prediction(app.current_event, options.patient, is_study)  # None: store nothing
    classifier = store.get(options.model)
    result = classify_upload(classifier, upload.images, options, study=upload.is_study)
    for prediction in result.predictions:
        metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=f"Predicted_{prediction.label}", unit=MetricUnit.Count, value=1)
    answer = predict_answer(classifier, result, _request_id())
    if caller is not None:  # one slice: a study with a patient was refused above
        assert isinstance(answer, PredictResponse) and options.patient is not None  # as caller_for_prediction checked
        answer.record_id = history_api.store_prediction(
            caller, options.patient, classifier.metadata, result, len(upload.images[0])
        )
    elapsed_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name="PredictLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    logger.info(
        "classified",
        extra={
            "bytes": sum(len(data) for data in upload.images),
            "slices": len(result.predictions),
            "format": result.inputs[0].format,
            "explain": options.explain,
            "model_name": classifier.metadata.name,
            "model_version": classifier.metadata.version,
            "latency_ms": round(elapsed_ms, 2),
        },
    )
    return answer


def _request_id() -> str:
    """API Gateway's request id (its own error answers carry it too), else the Lambda invocation's: never null."""
    try:
        request_id = app.current_event.request_context.request_id
    except (AttributeError, KeyError, TypeError):  # no current event (outside a request)
        request_id = None
    if not request_id:  # an event that did not come through API Gateway
        request_id = getattr(getattr(app, "lambda_context", None), "aws_request_id", None)
    return request_id or str(uuid.uuid4())


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "request_id": _request_id()}}
    return Response(status, content_types.APPLICATION_JSON, json.dumps(body), headers=headers)


@app.exception_handler(LungScanError)
def handle_domain_error(error: LungScanError) -> Response:
    status = next((code for kind, code in STATUS_BY_ERROR.items() if isinstance(error, kind)), 400)
    logger.info("request refused", extra={"status": status, "code": error.code})
    metrics.add_metric(name=f"Errors{status}", unit=MetricUnit.Count, value=1)
    return _error(status, error.code, error.message)


@app.exception_handler(RequestValidationError)
def handle_validation_error(error: RequestValidationError) -> Response:
    locations = [tuple(issue.get("loc", ())) for issue in error.errors()]
    # ("query", "query", "frame"): the name of predict's QueryOptions parameter is no field of the request.
    locations = [loc[:1] + loc[2:] if loc[:2] == ("query", "query") else loc for loc in locations]
    fields = ", ".join(".".join(str(part) for part in loc) for loc in locations)
    metrics.add_metric(name="Errors400", unit=MetricUnit.Count, value=1)
    return _error(400, "invalid_request", f"Invalid request parameters: {fields}.")


@app.exception_handler(RequestUnsupportedContentType)
def handle_unsupported_content_type(error: RequestUnsupportedContentType) -> Response:
    # A JSON route (POST /studies) sent another Content-Type: Powertools' validation refuses it before the route.
    metrics.add_metric(name="Errors415", unit=MetricUnit.Count, value=1)
    return _error(415, "unsupported_media_type", "Send this route's body as JSON (Content-Type: application/json).")


@app.not_found
def handle_not_found(error: NotFoundError) -> Response:
    # A known path asked with a method it does not declare: 405 and what it does answer (CORS preflights
    # are answered before this, by the resolver).
    allowed = declared_methods(app.current_event.path)
    if allowed:
        methods = ", ".join([*allowed, "OPTIONS"])
        return _error(405, "method_not_allowed", f"This route answers {methods}.", headers={"Allow": methods})
    return _error(404, "not_found", "No such route. See GET /openapi.json.")


@app.exception_handler(Exception)
def handle_unexpected(error: Exception) -> Response:
    # The trace goes to the logs (which never hold image bytes), never to the client.
    logger.exception("unexpected error")
    metrics.add_metric(name="Errors500", unit=MetricUnit.Count, value=1)
    return _error(500, "internal_error", "Internal error. Quote the request id when reporting it.")


# ---------------------------------------------------------------- entry point


def _traced(handler):
    if tracer is None:
        return handler
    return tracer.capture_lambda_handler(capture_response=False)(handler)  # answers hold images: keep them out of X-Ray


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@_traced
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
