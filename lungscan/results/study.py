"""A finished study's DICOM results, from what the studies path keeps: its summary, its slices, its model, the
identity of its most suspicious slices and the top slice's heatmap overlay."""

from __future__ import annotations

from typing import Any

from PIL import Image
from pydicom import Dataset
from pydicom.uid import CTImageStorage

from lungscan.errors import DicomResultsUnavailableError
from lungscan.results.identity import SourceSlice
from lungscan.results.key_image import build_key_image
from lungscan.results.report import StudyFinding, build_report


def key_slices(summary: dict[str, Any], slices: dict[int, dict[str, Any]], sop_classes: dict[int, str]):
    """The summary's most suspicious slices that are DICOM instances (most suspicious first)."""
    found = []
    for pointer in summary.get("most_suspicious_slices") or []:
        item = slices.get(pointer["index"]) or {}
        if item.get("sop_instance_uid") and item.get("series"):
            found.append(
                SourceSlice(
                    sop_instance_uid=item["sop_instance_uid"],
                    series_instance_uid=item["series"],
                    sop_class_uid=sop_classes.get(pointer["index"], CTImageStorage),
                    instance_number=item.get("instance_number"),
                    position=item.get("position"),
                    positive_probability=item.get("positive_probability"),
                )
            )
    return tuple(found)


def study_results(
    identity: dict[str, str],
    summary: dict[str, Any],
    slices: dict[int, dict[str, Any]],
    model: dict[str, str],
    *,
    sop_classes: dict[int, str],
    overlay: Image.Image | None,
    seed: str,
    disclaimer: str,
) -> tuple[Dataset, Dataset]:
    """(the SR, the key image) of a finished study; ``slices`` by index (at least the summary's pointers)."""
    chosen = key_slices(summary, slices, sop_classes)
    if not chosen:
        raise DicomResultsUnavailableError("the study has no classified DICOM slice", code="not_dicom_study")
    if overlay is None:
        raise DicomResultsUnavailableError("the key slice's heatmap could not be drawn", code="no_key_image")
    top = slices[summary["most_suspicious_slices"][0]["index"]]
    finding = StudyFinding(
        tier=summary["tier"],
        suspicious=bool(summary["suspicious"]),
        uncertain=bool(summary.get("uncertain")),
        flagged=int(summary.get("flagged") or 0),
        total=int(summary.get("total") or 0),
        model_name=model["name"],
        model_version=model["version"],
        key_slices=chosen,
        disclaimer=disclaimer,
        prediction_set=tuple(top.get("prediction_set") or ()),
    )
    key_image = build_key_image(identity, chosen[0], overlay, seed=seed, disclaimer=disclaimer)
    return build_report(identity, finding, key_image=key_image, seed=seed), key_image
