"""The DICOM results (lungscan.results): a Structured Report and a key-image secondary capture, built in memory
with highdicom, filed into the source study: they parse back, carry its identifiers, and point at its slices."""

from __future__ import annotations

import io

import highdicom
import numpy as np
import pydicom
import pytest
from helpers import FIXTURES_DIR, scanner_study
from helpers import dicom_bytes as part10
from PIL import Image

from lungscan.errors import DicomResultsUnavailableError
from lungscan.results.identity import IDENTITY_KEYWORDS, SourceSlice, read_identity, same_study, study_identity
from lungscan.results.key_image import LABEL, build_key_image, labelled_pixels
from lungscan.results.report import StudyFinding, build_report, dicom_bytes
from lungscan.results.study import study_results

DISCLAIMER = "Research tool. Not a diagnosis. A clinician must review every scan."


def source(dataset: pydicom.Dataset, probability: float) -> SourceSlice:
    return SourceSlice(
        sop_instance_uid=dataset.SOPInstanceUID,
        series_instance_uid=dataset.SeriesInstanceUID,
        sop_class_uid=dataset.SOPClassUID,
        instance_number=int(dataset.InstanceNumber),
        position=float(dataset.ImagePositionPatient[2]),
        positive_probability=probability,
    )


def finding(key_slices: tuple[SourceSlice, ...], tier: str = "not_excluded") -> StudyFinding:
    return StudyFinding(
        tier=tier,
        suspicious=tier != "clear",
        uncertain=True,
        flagged=2,
        total=4,
        model_name="iq-oth-3class",
        model_version="2026-11-27T10-00-00Z",
        key_slices=key_slices,
        disclaimer=DISCLAIMER,
        prediction_set=("benign", "malignant"),
    )


@pytest.fixture
def built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever is written to a relative path would land here
    series = scanner_study(4)
    identity = same_study([study_identity(dataset) for dataset in series])
    key_slices = (source(series[1], 0.93), source(series[3], 0.71))
    overlay = Image.open(FIXTURES_DIR / "ct_malignant_256.jpg")
    key_image = build_key_image(identity, key_slices[0], overlay, seed="study-1", disclaimer=DISCLAIMER)
    report = build_report(identity, finding(key_slices), key_image=key_image, seed="study-1")
    parsed_report = pydicom.dcmread(io.BytesIO(dicom_bytes(report)))
    parsed_image = pydicom.dcmread(io.BytesIO(dicom_bytes(key_image)))
    return series, parsed_report, parsed_image, tmp_path


def content_items(dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def test_both_carry_the_source_study_and_patient(built):
    series, report, image, _ = built
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        assert str(report.get(keyword)) == str(series[0].get(keyword)) == str(image.get(keyword)), keyword
    assert report.Modality == "SR" and image.Modality == "OT"
    # a new series of each, never one of the scanner's
    assert len({report.SeriesInstanceUID, image.SeriesInstanceUID, series[0].SeriesInstanceUID}) == 3


def test_the_report_parses_with_highdicom_and_says_the_finding_in_words(built):
    _series, report, _image, _ = built
    sr = highdicom.sr.srread(io.BytesIO(dicom_bytes(report)))
    assert isinstance(sr, highdicom.sr.ComprehensiveSR)
    texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue") for item in content_items(report)}
    assert texts["Algorithm Name"] == "LungScan iq-oth-3class"
    assert texts["Algorithm Version"] == "2026-11-27T10-00-00Z"
    assert texts["Finding"].startswith("Malignancy not excluded - review. 2 of 4 slices flagged")
    assert texts["Prediction set"] == "benign, malignant"
    assert texts["Disclaimer"] == DISCLAIMER
    codes = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.ConceptCodeSequence[0].CodeMeaning
        for item in content_items(report)
        if item.ValueType == "CODE" and item.RelationshipType == "CONTAINS"
    }
    assert codes == {"Screening tier": "Malignancy not excluded - review", "Suspicious": "Yes"}


def test_the_report_references_the_input_slices_and_the_key_image(built):
    series, report, image, _ = built
    referenced = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in content_items(report)
        if item.ValueType == "IMAGE"
    ]
    assert referenced == [series[1].SOPInstanceUID, series[3].SOPInstanceUID, image.SOPInstanceUID]
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for each in study.ReferencedSeriesSequence
        for sop in each.ReferencedSOPSequence
    }
    assert evidence == set(referenced)
    assert report.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == series[0].StudyInstanceUID


def test_the_key_image_is_the_overlay_with_its_label_burned_in(built):
    series, _, image, _ = built
    assert image.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert image.BurnedInAnnotation == "YES" and LABEL in image.ImageComments
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == series[1].SOPInstanceUID
    pixels = image.pixel_array
    assert pixels.shape == (512, 512, 3)  # the 256-pixel overlay, enlarged so the label reads
    band = pixels[: 512 // 16]
    assert ((band[..., 0] > 200) & (band[..., 1] > 200) & (band[..., 2] < 60)).sum() > 200  # yellow letters
    unlabelled = np.asarray(Image.open(FIXTURES_DIR / "ct_malignant_256.jpg").convert("RGB").resize((512, 512)))
    assert np.abs(pixels[64:].astype(int) - unlabelled[64:]).mean() < 2  # below the band: the overlay itself


def test_the_label_band_scales_with_the_image():
    small = labelled_pixels(Image.new("RGB", (64, 64), (40, 40, 40)))
    assert small.shape == (512, 512, 3) and (small[:32] != 40).any() and (small[40:] == 40).all()


def test_building_twice_gives_the_same_uids_and_another_study_other_ones(built):
    series, report, _image, _ = built
    identity = study_identity(series[0])
    key = (source(series[1], 0.93),)
    again = build_report(identity, finding(key), seed="study-1")
    other = build_report(identity, finding(key), seed="study-2")
    assert again.SOPInstanceUID == report.SOPInstanceUID and again.SeriesInstanceUID == report.SeriesInstanceUID
    assert other.SOPInstanceUID != report.SOPInstanceUID


def test_nothing_is_written(built):
    *_, folder = built
    assert list(folder.iterdir()) == []


def test_the_identity_is_the_patient_and_study_modules_only():
    dataset = scanner_study(1)[0]
    identity = study_identity(dataset)
    assert set(identity) == set(IDENTITY_KEYWORDS)
    assert identity["PatientID"] == "LS-TEST-1" and "InstitutionName" not in identity
    assert "PatientBirthDate" not in identity and "PatientSex" not in identity  # the PACS holds them already


def test_results_refuse_what_cannot_be_filed_into_one_study():
    first, second = scanner_study(1)[0], scanner_study(1)[0]
    with pytest.raises(DicomResultsUnavailableError) as mixed:
        same_study([study_identity(first), study_identity(second)])
    assert mixed.value.code == "mixed_studies"
    first.StudyInstanceUID = ""
    with pytest.raises(DicomResultsUnavailableError) as missing:
        study_identity(first)
    assert missing.value.code == "no_study_uid"
    with pytest.raises(DicomResultsUnavailableError) as empty:
        build_report(study_identity(second), finding(()), seed="s")
    assert empty.value.code == "no_key_slice"


def test_only_the_identity_is_read_from_a_slice():
    dataset = scanner_study(1)[0]
    dataset.PatientBirthDate, dataset.InstitutionName = "19700101", "St Elsewhere"
    identity, sop_class = read_identity(part10(dataset))
    assert identity == study_identity(dataset) and sop_class == dataset.SOPClassUID
    assert "19700101" not in str(identity) and "St Elsewhere" not in str(identity)
    with pytest.raises(DicomResultsUnavailableError):
        read_identity(b"not a DICOM file at all")


def test_a_study_summary_becomes_both_results():

    series = scanner_study(3)
    slices = {
        index: {
            "index": index,
            "series": dataset.SeriesInstanceUID,
            "sop_instance_uid": dataset.SOPInstanceUID,
            "instance_number": index + 1,
            "position": -100.0 + 5 * index,
            "positive_probability": [0.2, 0.9, 0.6][index],
            "prediction_set": ["malignant"],
        }
        for index, dataset in enumerate(series)
    }
    slices[3] = {"index": 3, "series": "uploads", "sop_instance_uid": None}  # a PNG in the same study: no reference
    summary = {
        "tier": "suspicious",
        "suspicious": True,
        "uncertain": False,
        "flagged": 2,
        "total": 4,
        "most_suspicious_slices": [{"index": 1}, {"index": 2}, {"index": 3}],
    }
    model = {"name": "iq-oth-3class", "version": "v9"}
    overlay = Image.open(FIXTURES_DIR / "ct_malignant_256.jpg")
    identity = study_identity(series[0])
    report, image = study_results(
        identity, summary, slices, model, sop_classes={}, overlay=overlay, seed="s", disclaimer=DISCLAIMER
    )
    referenced = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in content_items(report)
        if "ReferencedSOPSequence" in item
    ]
    assert referenced == [series[1].SOPInstanceUID, series[2].SOPInstanceUID, image.SOPInstanceUID]
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == series[1].SOPInstanceUID
    with pytest.raises(DicomResultsUnavailableError) as raster:
        study_results(
            identity,
            summary | {"most_suspicious_slices": [{"index": 3}]},
            slices,
            model,
            sop_classes={},
            overlay=overlay,
            seed="s",
            disclaimer=DISCLAIMER,
        )
    assert raster.value.code == "not_dicom_study"
    with pytest.raises(DicomResultsUnavailableError) as no_heat:
        study_results(identity, summary, slices, model, sop_classes={}, overlay=None, seed="s", disclaimer=DISCLAIMER)
    assert no_heat.value.code == "no_key_image"
