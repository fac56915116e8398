"""The order radiologists read a study in: series by series, each by the slice's position along the body.

A series is its ``SeriesInstanceUID`` (raster images are one series, ``uploads``). Within a series, slices go by
the z of ``ImagePositionPatient`` when every slice has one, else by ``InstanceNumber`` when every slice has one,
else in upload order. Only the tags that place a slice are read (never a patient tag).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

RASTER_SERIES = "uploads"
# The tags read; pydicom parses no other element's value.
PLACING_TAGS = [
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "AcquisitionDate",
    "StudyDate",
    "SeriesDate",
]
UID_PATTERN = re.compile(r"^[0-9.]{1,64}$")


@dataclass(frozen=True)
class SliceTags:
    """Where a slice sits: its series, instance number, z position, its SOP instance and the study's date."""

    series: str | None = None
    instance_number: int | None = None
    position: float | None = None
    sop_instance_uid: str | None = None
    study_date: str | None = None  # YYYY-MM-DD: the acquisition date (else the study's, the series')

    def as_dict(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "instance_number": self.instance_number,
            "position": self.position,
            "sop_instance_uid": self.sop_instance_uid,
            "study_date": self.study_date,
        }


def read_slice_tags(data: bytes, is_dicom: bool) -> SliceTags:
    """The placing tags of a file already checked by the decoder (or refused from its header); a raster image is
    the ``uploads`` series with no tags. A tag that is absent or not what the standard says is None."""
    if not is_dicom:
        return SliceTags(series=RASTER_SERIES)
    import pydicom  # lazily, as lungscan.inputs.dicom does
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():  # pydicom's warnings may quote the file's values: never emitted
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=PLACING_TAGS, force=True)
    except Exception:
        return SliceTags()
    return SliceTags(
        series=_uid(dataset.get("SeriesInstanceUID")),
        instance_number=_integer(dataset.get("InstanceNumber")),
        position=_z(dataset.get("ImagePositionPatient")),
        sop_instance_uid=_uid(dataset.get("SOPInstanceUID")),
        study_date=_date(dataset.get("AcquisitionDate") or dataset.get("StudyDate") or dataset.get("SeriesDate")),
    )


def _uid(value: Any) -> str | None:
    text = str(value or "").strip("\0 ")
    return text if UID_PATTERN.fullmatch(text) else None


def _integer(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if abs(number) < 2**31 else None


def _z(value: Any) -> float | None:
    try:
        z = float(value[2])
    except (TypeError, ValueError, IndexError):
        return None
    return round(z, 4) if abs(z) < 1e7 else None


def _date(value: Any) -> str | None:
    text = str(value or "").strip()
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", text)
    if not match or not ("01" <= match[2] <= "12" and "01" <= match[3] <= "31"):
        return None
    return f"{match[1]}-{match[2]}-{match[3]}"


def order_slices(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``slices`` (each with ``index``, ``series``, ``position``, ``instance_number``) in reading order: series in the
    order their first slice was uploaded, each sorted as the module says; unreadable files (no series) last."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for item in sorted(slices, key=lambda entry: entry["index"]):
        groups.setdefault(item.get("series"), []).append(item)
    ordered: list[dict[str, Any]] = []
    for series, members in sorted(groups.items(), key=lambda group: group[0] is None):
        # Decided on the answered slices: a refused one (a localizer without a position) does not undo the order.
        answered = [item for item in members if "error" not in item] or members
        if series is not None and all(item.get("position") is not None for item in answered):
            members.sort(key=lambda item: (_missing_last(item.get("position")), item.get("instance_number") or 0))
        elif series is not None and all(item.get("instance_number") is not None for item in answered):
            members.sort(key=lambda item: _missing_last(item.get("instance_number")))
        ordered.extend(members)  # sort is stable: ties stay in upload order
    return ordered


def _missing_last(value: float | None) -> tuple[bool, float]:
    return (value is None, value or 0)
