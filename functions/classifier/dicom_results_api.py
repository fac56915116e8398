"""``GET /studies/{study_id}/dicom``: a finished DICOM study's results as DICOM objects, built on request.

A Structured Report and the key image (a secondary capture with the heatmap), in the study's own study as new
series, built in memory by the core (``lungscan.results``) and answered base64 in JSON: never stored. What they need
and the uploads no longer hold is kept by the summary step (``kept_for_results``): the few identifiers a PACS files
them by and the key slices' UIDs, in the study's item, gone with the study (its expiry). Never logged.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import studies_api
from api_schemas import DicomObject, DicomResultsResponse, answers
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from PIL import Image

from lungscan.errors import ConflictError, DicomResultsUnavailableError, LungScanError
from lungscan.inputs.dicom import looks_like_dicom
from lungscan.model.classifier import DISCLAIMER
from lungscan.results.identity import read_identity, same_study

logger = Logger(child=True)
router = APIGatewayRouter()
# What of each key slice the results refer to (its place and score are in the SR's words).
KEPT_SLICE_FIELDS = (
    "series",
    "sop_instance_uid",
    "instance_number",
    "position",
    "positive_probability",
    "prediction_set",
)
FILES = {"sr": "lungscan-report.dcm", "key_image": "lungscan-key-image.dcm"}


def read_for_results(data: bytes, prediction_set: list[str] | None) -> dict[str, Any] | None:
    """What the summary step keeps of a key slice it reads anyway: its identity, SOP class and prediction set (DICOM
    only)."""
    if not looks_like_dicom(data):
        return None
    try:
        identity, sop_class = read_identity(data)
    except LungScanError:
        return None
    return {"identity": identity, "sop_class_uid": sop_class, "prediction_set": prediction_set}


def kept_for_results(summary: dict[str, Any], ordered: list[dict[str, Any]], read: dict[int, dict | None]) -> dict:
    """The study's record for its DICOM results: the top key slice's identity, and each DICOM key slice's UIDs
    (``read``: ``read_for_results`` by slice index). ``{"unavailable": code}`` where there can be none."""
    by_index = {item["index"]: item for item in ordered}
    keys = [pointer["index"] for pointer in summary.get("most_suspicious_slices") or []]
    headers: dict[int, dict] = {index: header for index in keys if (header := read.get(index))}
    if not keys or keys[0] not in headers:
        return {"unavailable": "not_dicom_study"}
    try:
        identity = same_study([header["identity"] for header in headers.values()])
    except DicomResultsUnavailableError as error:
        return {"unavailable": error.code}
    slices = {
        str(index): {name: by_index[index].get(name) for name in KEPT_SLICE_FIELDS}
        | {"sop_class_uid": header["sop_class_uid"], "prediction_set": header["prediction_set"]}
        for index, header in headers.items()
    }
    return {"identity": identity, "slices": slices}


@router.get("/studies/<study_id>/dicom", tags=["studies"], responses=answers(400, 401, 403, 404, 409, 422, 503))
def get_study_dicom(study_id: str) -> DicomResultsResponse:
    """The study's DICOM SR and key image (base64 Part 10 files), made now for this request and not kept."""
    # highdicom (~0.2 s to import) loads with the first request for DICOM results, not at the function's init.
    from lungscan.results.study import study_results

    study = studies_api.find_study(study_id)
    if study["status"] != "done":
        raise ConflictError("The study is not done: its DICOM results come with its summary.", code="study_not_done")
    outcome = study.get("outcome") or {}
    kept = outcome.get("dicom") or {"unavailable": "not_dicom_study"}
    if "unavailable" in kept:
        raise DicomResultsUnavailableError(_WHY.get(kept["unavailable"], "No DICOM results."), code=kept["unavailable"])
    summary = study["summary"]
    top = summary["most_suspicious_slices"][0]
    overlay = _image(top.get("heatmap_key"))
    slices = {int(index): {"index": int(index), **item} for index, item in kept["slices"].items()}
    report, key_image = study_results(
        kept["identity"],
        summary,
        slices,
        outcome["model"],
        sop_classes={index: item["sop_class_uid"] for index, item in slices.items()},
        overlay=overlay,
        seed=study_id,
        disclaimer=DISCLAIMER,
    )
    logger.info("dicom results built", extra={"key_slices": len(slices)})  # counts only: no identifier
    return DicomResultsResponse(
        study_id=study_id,
        objects=[_object("sr", report), _object("key_image", key_image)],
        disclaimer=DISCLAIMER,
    )


_WHY = {
    "not_dicom_study": "The study's most suspicious slice is no DICOM instance: DICOM results need a DICOM study.",
    "mixed_studies": "The study's files belong to more than one DICOM study: results are filed into one study.",
    "no_study_uid": "The study's DICOM files name no StudyInstanceUID.",
}


def _image(key: str | None) -> Image.Image | None:
    if not key:
        return None
    body = studies_api.client("s3").get_object(Bucket=studies_api.configuration()[0], Key=key)["Body"].read()
    return Image.open(io.BytesIO(body)).convert("RGB")


def _object(kind: str, dataset) -> DicomObject:
    from lungscan.results.report import dicom_bytes

    return DicomObject(
        kind=kind,
        filename=FILES[kind],
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        dicom=base64.b64encode(dicom_bytes(dataset)).decode("ascii"),
    )
