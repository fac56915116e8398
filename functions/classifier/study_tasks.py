"""The study engine's Lambda tasks (same image as the API, other handlers; template.yaml's state machine):

- ``worker_handler``: one batch of the Distributed Map (``{"Items": [{"Key", "Size"...}], "BatchInput": {...}}``,
  as ItemReader lists and ItemBatcher groups them) classified in one pass; each slice written to the studies table;
- ``summary_handler``: the last state: the slices in reading order, the summary, the most suspicious slices' preview
  and heatmap PNGs, the history record of a signed-in study with a patient, then the uploads deleted.

Both take the machine's input (``bucket``, ``prefix``, ``study_id``, ``model``, ``results_bucket``,
``results_prefix``), so an archive prefix is screened by the same machine (issue 23): a run over any bucket but the
uploads bucket is an archive's, whose worker answers finished objects from their records
(``lungscan.studies.archive``) and whose summary writes ``report.json`` beside the Map's result files.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import dicom_results_api
import history_api
import studies_api
from api_answers import shown_image
from aws_lambda_powertools.utilities.typing import LambdaContext
from PIL import Image

from app import logger, store
from lungscan.accounts.history import Clinician, build_study_record, thumbnail_png
from lungscan.errors import LungScanError
from lungscan.model.classifier import VERDICT_CLEAR, VERDICT_SUSPICIOUS
from lungscan.studies.archive import ScreenedRecords, report, screen_batch
from lungscan.studies.batch import STUDY_LIMITS, classify_batch_objects
from lungscan.studies.plan import STUDY_TTL_SECONDS, UPLOAD_PREFIX
from lungscan.studies.store import StudyStore
from lungscan.studies.summary import STATUS_FAILED, conclude, study_date
from lungscan.uploads import UploadOptions, classify_upload


def _store() -> StudyStore:
    return StudyStore(studies_api.client("dynamodb"), os.environ["STUDIES_TABLE"])


@logger.inject_lambda_context
def worker_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One batch: ``{"Items": [...], "BatchInput": {"bucket", "prefix", "study_id", "model"}}``."""
    batch = event.get("BatchInput") or {}
    items = event.get("Items") or []
    started = time.perf_counter()
    classifier = store.get(batch.get("model") or None)
    s3 = studies_api.client("s3")
    if _is_archive(batch):  # finished objects are answered from their records (re-runs of a prefix)
        records = ScreenedRecords(studies_api.client("dynamodb"), os.environ["STUDIES_TABLE"])
        slices = screen_batch(classifier, s3, records, batch["bucket"], items, batch["prefix"])
    else:
        slices = classify_batch_objects(classifier, s3, batch["bucket"], items, batch["prefix"])
    _store().put_slices(batch["study_id"], slices, int(time.time()) + STUDY_TTL_SECONDS)
    failed = sum(1 for item in slices if "error" in item)
    reused = sum(1 for item in slices if item.get("reused"))
    logger.info(
        "batch classified",
        extra={
            "slices": len(slices),
            "failed": failed,
            "reused": reused,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return {"slices": len(slices), "failed": failed, "reused": reused}


@logger.inject_lambda_context
def summary_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The study's answer, once every batch is in (or the Map gave up: then what was answered, or failed)."""
    study_id = event["study_id"]
    studies = _store()
    expires_at = int(time.time()) + STUDY_TTL_SECONDS
    study = studies.get(study_id)
    if study is None:  # a run started without the API (an archive prefix): its study item is made here
        studies.create(study_id, "archive", 0, {"model": {"name": event.get("model") or "", "version": ""}}, expires_at)
        study = studies.get(study_id)
        assert study is not None
    status, ordered, summary, series = conclude(studies.slices(study_id))
    archive = _is_archive(event)
    if archive:  # its answer is the report in S3; the item keeps counts (DynamoDB items stop at 400 KB)
        summary, series = {name: value for name, value in summary.items() if name != "positive_probabilities"}, []
    classifier = store.get(event.get("model") or study["model"]["name"] or None)
    focus = _render(classifier, event, ordered, [summary, *(item["summary"] for item in series)])
    dicom = dicom_results_api.kept_for_results(
        summary, ordered, {index: image.get("dicom") for index, image in focus.items()}
    )
    if not archive:  # an archive's rows are its report in S3 (no API pages them): N writes saved
        studies.put_rows(study_id, ordered, study["expires_at"])
    outcome: dict[str, Any] = {
        "done": len(ordered),
        "failed": summary["failed"],
        "model": {"name": classifier.metadata.name, "version": classifier.metadata.version},
        "study_date": study_date(ordered),
        "finished_at": studies_api._iso(time.time()),
        "dicom": dicom,  # the few identifiers the DICOM results need, gone with the study; never answered or logged
    }
    if status != STATUS_FAILED and study.get("patient") and study.get("clinician"):
        try:
            outcome["record_id"] = _keep_in_history(study, summary, ordered, focus, outcome)
        except LungScanError as error:  # disabled or moved since the upload: answered, not kept (audited)
            outcome["history_refused"] = error.code
    studies.finish(study_id, status, summary, series, outcome)
    _delete_uploads(event)
    logger.info("study summarized", extra={"status": status, "slices": len(ordered), "flagged": summary["flagged"]})
    answer = {"study_id": study_id, "status": status, "flagged": summary["flagged"], "total": summary["total"]}
    if archive:
        answer["report"] = _write_report(event, ordered, outcome["model"])
    return answer


def _is_archive(event: dict[str, Any]) -> bool:
    """A run over another bucket than the uploads bucket: an archive prefix (``lungscan screen``), not a study."""
    return event["bucket"] != os.environ.get("UPLOADS_BUCKET")


def _write_report(event: dict[str, Any], ordered: list[dict], model: dict[str, str]) -> dict[str, Any]:
    """The archive's report (``lungscan screen``), beside the Distributed Map's own result files."""
    screened = report(ordered, model)
    key = f"{event['results_prefix']}report.json"
    body = json.dumps(screened, separators=(",", ":")).encode()
    studies_api.client("s3").put_object(
        Bucket=event["results_bucket"], Key=key, Body=body, ContentType="application/json"
    )
    return {"bucket": event["results_bucket"], "key": key, "summary": screened["summary"]}


def _render(classifier, event: dict[str, Any], ordered: list[dict], summaries: list[dict]) -> dict[int, dict]:
    """Preview and heatmap PNGs of every slice a summary points to, written beside the results; each pointer gets
    their keys (the API links them). Returns the images by slice index, for the history record."""
    s3 = studies_api.client("s3")
    by_index = {item["index"]: item for item in ordered}
    images: dict[int, dict] = {}
    for summary in summaries:
        for pointer in summary["most_suspicious_slices"]:
            index = pointer["index"]
            if index not in images:
                images[index] = _explain(classifier, s3, event, by_index[index])
            pointer |= {name: images[index].get(name) for name in ("preview_key", "heatmap_key")}
    return images


def _explain(classifier, s3, event: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    try:
        data = s3.get_object(Bucket=event["bucket"], Key=item["key"])["Body"].read(STUDY_LIMITS.max_bytes + 1)
        result = classify_upload(classifier, [data], UploadOptions(explain=True), limits=STUDY_LIMITS)
    except Exception as error:  # the type only: an archive's object key (a file name) may be in the message
        logger.warning("slice image not rendered: %s", type(error).__name__)
        return {}
    rendered: dict[str, Any] = {
        "preview_image": result.focus_image.image,
        "heatmap_image": result.predictions[0].heatmap,
        # What the DICOM results (GET /studies/{id}/dicom) need once the uploads are gone: kept with the study.
        "dicom": dicom_results_api.read_for_results(data, result.predictions[0].prediction_set),
    }
    for name in ("preview", "heatmap"):
        image = rendered[f"{name}_image"]
        if image is not None:
            key = f"{event['results_prefix']}images/{item['index']:05d}-{name}.png"
            s3.put_object(Bucket=event["results_bucket"], Key=key, Body=_png(image), ContentType="image/png")
            rendered[f"{name}_key"] = key
    return rendered


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    shown_image(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _keep_in_history(study: dict, summary: dict, ordered: list[dict], images: dict[int, dict], outcome: dict) -> str:
    """The study as one record of its patient's history, led by its most suspicious slice."""
    top = summary["most_suspicious_slices"][0]["index"]
    focus = next(item for item in ordered if item["index"] == top)
    clinician = Clinician(**study["clinician"])
    preview, heatmap = images.get(top, {}).get("preview_image"), images.get(top, {}).get("heatmap_image")
    record = build_study_record(
        summary,
        focus,
        outcome["model"],
        clinician,
        study_id=study["study_id"],
        verdict=VERDICT_SUSPICIOUS if summary["suspicious"] else VERDICT_CLEAR,
        study_date=outcome["study_date"],
        preview=thumbnail_png(preview, 256) if preview is not None else b"",
        heatmap=thumbnail_png(shown_image(heatmap), 256) if heatmap is not None else None,
    )
    with history_api.audited("study.create") as audit:
        audit.caller, audit.patient = clinician, study["patient"]
        # Stored on the clinician's behalf minutes after they asked: still enabled and in that team, asked now.
        history_api.get_directory().check(clinician.username, clinician.team, fresh=True)
        audit.record_id = history_api.get_store().add(clinician.team, study["patient"], record)
    return audit.record_id


def _delete_uploads(event: dict[str, Any]) -> None:
    """A study's uploads go once answered (the bucket's 1-day rule catches the rest); an archive is never touched."""
    bucket, prefix = event["bucket"], event["prefix"]
    if bucket != os.environ.get("UPLOADS_BUCKET") or not prefix.startswith(f"{UPLOAD_PREFIX}/"):
        return
    s3 = studies_api.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
