"""Whole studies: ``POST /studies`` (upload targets), ``POST /studies/{study_id}/start`` (the engine),
``GET /studies/{study_id}`` (progress, summary, slices paged).

HTTP only: the limits, the order of slices, the summary and the store are the core's (``lungscan.studies``); the
engine is the state machine (``template.yaml``, ``study_tasks.py``). The function never carries a study's bytes:
browsers and scripts upload each file straight to S3 with a presigned POST. Who may read a study: an anonymous
study, whoever holds its unguessable id; a study created with an ID token, that care team only (404 to others).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import boto3
import history_api
from api_schemas import (
    CreateStudyRequest,
    CreateStudyResponse,
    StartStudyResponse,
    StudyModel,
    StudyProgress,
    StudyStatusResponse,
    StudyUpload,
)
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from botocore.config import Config as BotocoreConfig
from botocore.exceptions import BotoCoreError, ClientError

from lungscan.accounts.history import Clinician, check_patient_ref
from lungscan.errors import ConflictError, RecordNotFoundError, StudiesUnavailableError
from lungscan.model.classifier import DISCLAIMER
from lungscan.registry.model_store import ModelStore
from lungscan.studies.plan import (
    STUDY_TTL_SECONDS,
    check_sizes,
    is_study_id,
    new_study_id,
    results_prefix,
    upload_key,
    upload_prefix,
)
from lungscan.studies.store import StudyStore

logger = Logger(child=True)
router = APIGatewayRouter()

UPLOAD_URL_SECONDS = 3600  # an upload target is valid for an hour (the study itself for a day)
IMAGE_URL_SECONDS = 300  # previews and heatmaps: short-lived links
ANONYMOUS = "anonymous"
DEFAULT_SLICES_PAGE = 100
MAX_SLICES_PAGE = 500
ENGINE_DEADLINE_SECONDS = 20 * 60  # a study still running after this is checked with its execution

_models: ModelStore | None = None
_clients: dict[str, Any] = {}


def use_models(store: ModelStore) -> None:
    """The function's model store (app.py's), for the model a study is answered by."""
    global _models
    _models = store


def configuration() -> tuple[str, str, str]:
    """``(uploads bucket, studies table, state machine ARN)``; 503 where this deployment runs no engine."""
    names = (os.environ.get("UPLOADS_BUCKET"), os.environ.get("STUDIES_TABLE"), os.environ.get("STUDY_STATE_MACHINE"))
    if not all(names):
        raise StudiesUnavailableError()
    return names  # type: ignore[return-value]


def client(service: str):
    if service not in _clients:
        config, endpoint = None, None
        if service == "s3" and os.environ.get("AWS_ENDPOINT_URL_S3"):  # the local stack's moto server
            config = BotocoreConfig(signature_version="s3v4", s3={"addressing_style": "path"})
        elif service == "s3":
            # SigV4 on the regional host, https://<bucket>.s3.<region>.amazonaws.com: what an SSE-KMS bucket needs,
            # and what the site's CSP names (template.yaml).
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
            config = BotocoreConfig(signature_version="s3v4", s3={"addressing_style": "virtual"})
            endpoint = f"https://s3.{region}.amazonaws.com"
        _clients[service] = boto3.client(service, config=config, endpoint_url=endpoint)  # type: ignore[call-overload]
    return _clients[service]


def study_store() -> StudyStore:
    return StudyStore(client("dynamodb"), configuration()[1])


def owner_of(caller: Clinician | None) -> str:
    return f"team:{caller.team}" if caller is not None else ANONYMOUS


def find_study(study_id: str) -> dict[str, Any]:
    """The study the caller may see: an anonymous one, or one of the caller's team; else 404, whether it exists
    or not."""
    caller = history_api.caller_for(router.current_event)
    study = study_store().get(study_id) if is_study_id(study_id) else None
    if study is None or (study["owner"] != ANONYMOUS and study["owner"] != owner_of(caller)):
        raise RecordNotFoundError("No such study (or it has expired).")
    return study


# ---------------------------------------------------------------- routes


@router.post(
    "/studies",
    tags=["studies"],
    responses={201: {"description": "Created", "content": {"application/json": {"model": CreateStudyResponse}}}},
)
def create_study(request: CreateStudyRequest):  # no return annotation: a 201 Response is not a pydantic type
    """A new study: one presigned POST per file, to upload straight to S3. Over the limits: 413, before any upload."""
    sizes = [item.size for item in request.files]
    check_sizes(sizes)
    if request.patient is not None:
        check_patient_ref(request.patient)
    caller = history_api.caller_for(router.current_event, request.patient)
    if request.patient is not None:
        history_api.get_store()  # 503 now, not after the upload, when this deployment keeps no history
    bucket, _, _ = configuration()
    classifier = _models.get(request.model) if _models is not None else None  # 404 for a model not served
    study_id = new_study_id()
    expires_at = int(time.time()) + STUDY_TTL_SECONDS
    fields: dict[str, Any] = {
        "model": {"name": classifier.metadata.name, "version": classifier.metadata.version}
        if classifier is not None
        else {"name": request.model or "", "version": ""},
        "explain": request.explain,
        "created_at": _iso(time.time()),
    }
    if request.patient is not None and caller is not None:
        fields["patient"] = request.patient
        fields["clinician"] = {"sub": caller.sub, "email": caller.email, "team": caller.team}
    study_store().create(study_id, owner_of(caller), len(sizes), fields, expires_at)
    s3 = client("s3")
    uploads = [
        StudyUpload(index=index, **_presigned_post(s3, bucket, upload_key(study_id, index), size))
        for index, size in enumerate(sizes)
    ]
    logger.info("study created", extra={"files": len(sizes), "bytes": sum(sizes), "signed_in": caller is not None})
    body = CreateStudyResponse(study_id=study_id, expires_at=_iso(expires_at), uploads=uploads)
    return Response(201, content_types.APPLICATION_JSON, body.model_dump_json())


def _presigned_post(s3, bucket: str, key: str, size: int) -> dict[str, Any]:
    post = s3.generate_presigned_post(
        Bucket=bucket, Key=key, Conditions=[["content-length-range", 1, size]], ExpiresIn=UPLOAD_URL_SECONDS
    )
    return {"url": post["url"], "fields": post["fields"]}


@router.post(
    "/studies/<study_id>/start",
    tags=["studies"],
    responses={202: {"description": "Started", "content": {"application/json": {"model": StartStudyResponse}}}},
)
def start_study(study_id: str):  # no return annotation: a 202 Response is not a pydantic type
    """Start classifying: 202 once every file is uploaded (409 ``uploads_incomplete`` before); again: no-op."""
    study = find_study(study_id)
    bucket, _, machine = configuration()
    if study["status"] == "uploading":
        missing = study["files"] - _uploaded(bucket, study_id, study["files"])
        if missing:
            raise ConflictError(
                f"{missing} of the study's {study['files']} files are not uploaded yet.", code="uploads_incomplete"
            )
        execution = {
            "bucket": bucket,
            "prefix": upload_prefix(study_id),
            "study_id": study_id,
            "model": study["model"]["name"] or None,
            "results_bucket": bucket,
            "results_prefix": results_prefix(study_id),
        }
        # Named after the study: a second start (a retry, two tabs) is the same execution, then the status moves.
        client("stepfunctions").start_execution(stateMachineArn=machine, name=study_id, input=json.dumps(execution))
        if study_store().move(study_id, "running", only_from=("uploading",)):
            logger.info("study started", extra={"files": study["files"]})
        study = find_study(study_id)
    body = StartStudyResponse(study_id=study_id, status=study["status"])
    return Response(202, content_types.APPLICATION_JSON, body.model_dump_json())


def _uploaded(bucket: str, study_id: str, files: int) -> int:
    """How many of the study's expected objects are in the bucket."""
    expected = {upload_key(study_id, index) for index in range(files)}
    pages = client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=upload_prefix(study_id))
    return sum(1 for page in pages for item in page.get("Contents", []) if item["Key"] in expected)


@router.get("/studies/<study_id>", tags=["studies"])
def get_study(
    study_id: str,
    limit: Annotated[int, Query(ge=1, le=MAX_SLICES_PAGE, description="Slices per page")] = DEFAULT_SLICES_PAGE,
    cursor: Annotated[str | None, Query(max_length=12, pattern=r"^[0-9]+$", description="next_cursor")] = None,
) -> StudyStatusResponse:
    """The study's status and progress; once done, its summary, series and slices in reading order, paged."""
    study = find_study(study_id)
    store = study_store()
    outcome = study.get("outcome") or {}
    if study["status"] in ("done", "failed") and outcome:
        done, failed = outcome.get("done", 0), outcome.get("failed", 0)
    else:
        done, failed = store.progress(study_id) if study["status"] == "running" else (0, 0)
    if study["status"] == "running" and (done >= study["files"] or _overdue(study)) and _engine_gave_up(study_id):
        study["status"] = "failed"
    slices, next_rank = store.rows(study_id, int(cursor or 0), limit) if "summary" in study else ([], None)
    bucket = configuration()[0]
    summary = _linked(study.get("summary"), bucket)
    series = [
        {"series": item["series"], "summary": _linked(item["summary"], bucket)} for item in study.get("series", [])
    ]
    model = outcome.get("model") or study["model"]
    return StudyStatusResponse(
        study_id=study_id,
        status=study["status"],
        progress=StudyProgress(done=min(done, study["files"]), total=study["files"], failed=failed),
        model=StudyModel(name=model["name"], version=model["version"]),
        summary=summary,
        series=series,
        slices=slices,
        next_cursor=None if next_rank is None else str(next_rank),
        disclaimer=DISCLAIMER,
    )


def _overdue(study: dict[str, Any]) -> bool:
    created = datetime.fromisoformat(study.get("created_at", "1970-01-01T00:00:00Z").replace("Z", "+00:00"))
    return time.time() - created.timestamp() > ENGINE_DEADLINE_SECONDS


def _engine_gave_up(study_id: str) -> bool:
    """Whether the study's execution ended without its summary (a summary step that failed, a timeout): then the
    study is failed for good, not running forever. Asked only once the slices are in, or the study is overdue, so
    polling clients do not spend Step Functions' DescribeExecution quota."""
    machine = configuration()[2]
    arn = f"{machine.replace(':stateMachine:', ':execution:')}:{study_id}"
    try:
        status = client("stepfunctions").describe_execution(executionArn=arn)["status"]
    except (ClientError, BotoCoreError):  # not known yet, or throttled: ask again on the next poll
        return False
    if status not in ("FAILED", "TIMED_OUT", "ABORTED"):
        return False
    study_store().move(study_id, "failed", only_from=("running",))
    logger.warning("study engine ended without a summary", extra={"execution_status": status})
    return True


def _linked(summary: dict[str, Any] | None, bucket: str) -> dict[str, Any] | None:
    """The summary with its images' keys turned into short-lived presigned GETs."""
    if summary is None:
        return None
    shown = dict(summary)
    pointers = []
    for pointer in summary.get("most_suspicious_slices", []):
        pointer = dict(pointer)
        for name in ("preview", "heatmap"):
            key = pointer.pop(f"{name}_key", None)
            pointer[f"{name}_url"] = (
                client("s3").generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=IMAGE_URL_SECONDS
                )
                if key
                else None
            )
        pointers.append(pointer)
    shown["most_suspicious_slices"] = pointers
    return shown


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
