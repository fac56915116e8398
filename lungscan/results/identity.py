"""What of a DICOM study's header its results need: the patient and study identifiers a PACS files them by.

The least patient data that puts a result into the right study: the Patient and General Study module
attributes below, as strings, and nothing else of the header. A serving adapter keeps this dict only as long
as the study itself (its expiry) and never logs it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage

from lungscan.errors import DicomResultsUnavailableError

# What a PACS files a derived object by: the patient's name and ID, the study's UID, ID, date, time and accession
# number (Patient and General Study modules). Birth date, sex and the referring physician stay out: the PACS holds
# them already, and the results leave them empty (type 2).
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "SpecificCharacterSet",
)
LEFT_EMPTY = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName")


def study_identity(dataset: Dataset) -> dict[str, str]:
    """The identifiers of ``dataset``'s patient and study (absent ones empty), as JSON-ready strings."""
    if not str(dataset.get("StudyInstanceUID") or ""):
        raise DicomResultsUnavailableError("the DICOM file names no StudyInstanceUID", code="no_study_uid")
    identity = {}
    for keyword in IDENTITY_KEYWORDS:
        value = dataset.get(keyword)
        if keyword == "SpecificCharacterSet" and isinstance(value, list | tuple):
            value = "\\".join(value)
        identity[keyword] = "" if value is None else str(value)
    return identity


def read_identity(data: bytes) -> tuple[dict[str, str], str]:
    """The identity and the SOP Class UID of a DICOM file already accepted by the decoder: only these tags are
    parsed (no pixels, no other patient tag)."""
    try:
        dataset = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=[*IDENTITY_KEYWORDS, "SOPClassUID"])
    except (InvalidDicomError, ValueError, EOFError, OSError) as error:
        raise DicomResultsUnavailableError("the slice's DICOM header cannot be read", code="not_dicom_study") from error
    return study_identity(dataset), str(dataset.get("SOPClassUID") or CTImageStorage)


def same_study(identities: list[dict[str, str]]) -> dict[str, str]:
    """The one study all ``identities`` belong to; results filed into two studies at once are refused."""
    studies = {identity["StudyInstanceUID"] for identity in identities}
    if len(studies) != 1:
        raise DicomResultsUnavailableError(
            "the DICOM files belong to more than one study: results are filed into one study",
            code="mixed_studies" if studies else "not_dicom_study",
        )
    return identities[0]


UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://lungscan/results")


@dataclass(frozen=True)
class SourceSlice:
    """A classified slice of the study, as the results reference it."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str = CTImageStorage
    instance_number: int | None = None
    position: float | None = None  # ImagePositionPatient z, mm
    positive_probability: float | None = None


def reference_dataset(identity: dict[str, str], source: SourceSlice) -> Dataset:
    """A header-only stand-in for a slice: what highdicom reads from evidence (identifiers and UIDs), no pixels."""
    dataset = Dataset()
    for keyword in LEFT_EMPTY:
        setattr(dataset, keyword, "")
    for keyword, value in identity.items():
        if keyword == "SpecificCharacterSet":
            if value:
                dataset.SpecificCharacterSet = value.split("\\")
            continue
        setattr(dataset, keyword, value)
    dataset.SeriesInstanceUID = source.series_instance_uid
    dataset.SOPClassUID = source.sop_class_uid
    dataset.SOPInstanceUID = source.sop_instance_uid
    dataset.Modality = "CT"
    return dataset


def result_uid(seed: str, part: str) -> str:
    """A UID derived from ``seed`` (the LungScan study id) and ``part``: building the same study's results twice
    gives the same UIDs, so a retried STOW files the same objects again instead of a second copy."""
    # 2.25: a UID made of a UUID (ITU-T X.667), here a name-based one (uuid5), so no OID root is needed.
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, f'{seed}/{part}').int}"
