"""The Structured Report: LungScan's finding for a study, filed into that study as a new series.

A Comprehensive SR whose content says, in words a PACS viewer shows as they are: the algorithm (LungScan, the
model's name and version), the finding (the tier, the flag, the prediction set, how many slices were flagged),
the most suspicious slices as references to their SOP Instance UIDs, the key image, and the disclaimer.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import highdicom
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ImageContentItem,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom import Dataset, dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from lungscan.errors import DicomResultsUnavailableError
from lungscan.results.identity import SourceSlice, reference_dataset, result_uid
from lungscan.results.key_image import MANUFACTURER

SERIES_NUMBER = 9901
# LungScan's own concepts, in a private coding scheme ("99" designators are local by the standard).
SCHEME = "99LUNGSCAN"
SCREENING_TIER = CodedConcept("TIER", SCHEME, "Screening tier")
SUSPICIOUS_FLAG = CodedConcept("FLAG", SCHEME, "Suspicious")
PREDICTION_SET = CodedConcept("PSET", SCHEME, "Prediction set")
KEY_SLICE = CodedConcept("KEYSLICE", SCHEME, "Most suspicious slice")
AI_HEATMAP = CodedConcept("HEATMAP", SCHEME, "AI heatmap key image")
DISCLAIMER = CodedConcept("DISCLAIMER", SCHEME, "Disclaimer")
TIERS = {
    "suspicious": "Suspicious - review first",
    "not_excluded": "Malignancy not excluded - review",
    "clear": "No suspicious finding",
}
CONTAINS = RelationshipTypeValues.CONTAINS


@dataclass(frozen=True)
class StudyFinding:
    """What the report says: the study's summary and the model that made it."""

    tier: str
    suspicious: bool
    uncertain: bool
    flagged: int
    total: int
    model_name: str
    model_version: str
    key_slices: tuple[SourceSlice, ...]  # most suspicious first
    disclaimer: str
    prediction_set: tuple[str, ...] = ()  # the most suspicious slice's set, where the answer has one

    def in_words(self) -> str:
        words = f"{TIERS[self.tier]}. {self.flagged} of {self.total} slices flagged"
        if self.prediction_set:
            words += f"; the most suspicious slice's prediction set: {{{', '.join(self.prediction_set)}}}"
        return words + (". Uncertain: a clinician must decide." if self.uncertain else ".")


def _text(concept, value: str) -> TextContentItem:
    return TextContentItem(name=concept, value=value[:1024], relationship_type=CONTAINS)  # UT-safe, short


def _slice_words(rank: int, source: SourceSlice) -> str:
    parts = [f"Most suspicious slice {rank}"]
    if source.instance_number is not None:
        parts.append(f"instance {source.instance_number}")
    if source.position is not None:
        parts.append(f"z {source.position:.1f} mm")
    if source.positive_probability is not None:
        parts.append(f"positive probability {source.positive_probability:.2f}")
    return ", ".join(parts)


def _content(finding: StudyFinding, key_image: Dataset | None, seed: str) -> ContainerContentItem:
    if finding.tier not in TIERS:
        raise DicomResultsUnavailableError(f"unknown tier {finding.tier!r}", code="no_summary")
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=highdicom.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(seed, "device"),
            name="LungScan",
            manufacturer_name=MANUFACTURER,
            model_name=f"{finding.model_name} {finding.model_version}"[:64],
        ),
    )
    findings: list = [
        _text(codes.DCM.Finding, finding.in_words()),
        CodeContentItem(
            name=SCREENING_TIER,
            value=CodedConcept(finding.tier.upper(), SCHEME, TIERS[finding.tier]),
            relationship_type=CONTAINS,
        ),
        CodeContentItem(
            name=SUSPICIOUS_FLAG,
            value=codes.SCT.Yes if finding.suspicious else codes.SCT.No,
            relationship_type=CONTAINS,
        ),
    ]
    if finding.prediction_set:
        findings.append(_text(PREDICTION_SET, ", ".join(finding.prediction_set)))
    for rank, source in enumerate(finding.key_slices, start=1):
        findings.append(_text(KEY_SLICE, _slice_words(rank, source)))
        findings.append(
            ImageContentItem(
                name=codes.DCM.BestIllustrationOfFinding,
                referenced_sop_class_uid=source.sop_class_uid,
                referenced_sop_instance_uid=source.sop_instance_uid,
                relationship_type=CONTAINS,
            )
        )
    if key_image is not None:
        findings.append(
            ImageContentItem(
                name=AI_HEATMAP,
                referenced_sop_class_uid=key_image.SOPClassUID,
                referenced_sop_instance_uid=key_image.SOPInstanceUID,
                relationship_type=CONTAINS,
            )
        )
    findings_container = ContainerContentItem(name=codes.DCM.Findings, relationship_type=CONTAINS)
    findings_container.ContentSequence = DicomSequence(findings)
    root = ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id=None)
    root.ContentSequence = DicomSequence(
        [
            *ObservationContext(observer_device_context=device),
            _text(codes.DCM.AlgorithmName, f"LungScan {finding.model_name}"),
            _text(codes.DCM.AlgorithmVersion, finding.model_version),
            findings_container,
            _text(DISCLAIMER, finding.disclaimer),
        ]
    )
    return root


def build_report(
    identity: dict[str, str], finding: StudyFinding, *, key_image: Dataset | None = None, seed: str
) -> Dataset:
    """The SR in ``identity``'s study (a new series), referencing ``finding``'s key slices and ``key_image``."""
    if not finding.key_slices:
        raise DicomResultsUnavailableError("the study has no classified DICOM slice to refer to", code="no_key_slice")
    evidence = [reference_dataset(identity, source) for source in finding.key_slices]
    if key_image is not None:
        evidence.append(key_image)
    return highdicom.sr.ComprehensiveSR(
        evidence=evidence,
        content=_content(finding, key_image, seed),
        series_instance_uid=result_uid(seed, "report-series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=result_uid(seed, "report"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="LungScan AI result - not a diagnosis",
        manufacturer_model_name=f"{finding.model_name} {finding.model_version}"[:64],
    )


def dicom_bytes(dataset: Dataset) -> bytes:
    """A Part 10 file of ``dataset`` (the preamble and file meta a PACS and a download expect)."""
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
