"""``GET /studies/{study_id}/dicom`` through the handler, on moto with the local engine: a DICOM study's SR and key
image built on request from what the summary step kept; refused with a clear code when there can be none."""

from __future__ import annotations

import base64
import io
import json

import highdicom
import pydicom
import pytest
from helpers import FIXTURES_DIR, StudiesOnMoto, dicom_bytes, scanner_study

ALICE = {"sub": "alice", "email": "a@example.org", "cognito:groups": "oncology"}
CAROL = {"sub": "carol", "email": "c@example.org", "cognito:groups": "radiology"}


@pytest.fixture
def studies(app_module, lambda_context, monkeypatch):
    from moto import mock_aws

    with mock_aws():
        yield StudiesOnMoto(app_module, lambda_context, monkeypatch)


def references(node) -> list[str]:
    found = []
    for item in node.get("ContentSequence", []):
        if item.ValueType == "IMAGE":
            found.append(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        found += references(item)
    return found


def test_a_dicom_study_gets_its_report_and_key_image(studies, capsys):
    series = scanner_study(4, patient_id="PID-7781")
    study_id = studies.run([dicom_bytes(dataset) for dataset in series])
    capsys.readouterr()
    status, answer = studies.call("GET", f"/studies/{study_id}/dicom")
    assert status == 200, answer
    assert [item["kind"] for item in answer["objects"]] == ["sr", "key_image"]
    report, image = (pydicom.dcmread(io.BytesIO(base64.b64decode(item["dicom"]))) for item in answer["objects"])
    assert isinstance(
        highdicom.sr.srread(io.BytesIO(base64.b64decode(answer["objects"][0]["dicom"]))), highdicom.sr.ComprehensiveSR
    )
    for dataset in (report, image):
        assert dataset.StudyInstanceUID == series[0].StudyInstanceUID and dataset.PatientID == "PID-7781"
        assert dataset.PatientName == "Test^Series" and dataset.AccessionNumber == "ACC-1"
    uploaded = {dataset.SOPInstanceUID for dataset in series}
    referenced = references(report)
    assert referenced[-1] == image.SOPInstanceUID and set(referenced[:-1]) <= uploaded and referenced[:-1]
    _, study = studies.call("GET", f"/studies/{study_id}")
    top = study["summary"]["most_suspicious_slices"][0]
    top_uid = next(item["sop_instance_uid"] for item in study["slices"] if item["index"] == top["index"])
    assert referenced[0] == top_uid and image.SourceImageSequence[0].ReferencedSOPInstanceUID == top_uid
    findings = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue")
        for item in report.ContentSequence[-2].ContentSequence
    }
    assert findings["Finding"].startswith(("Suspicious", "Malignancy not excluded", "No suspicious finding"))
    assert set(findings["Prediction set"].split(", ")) <= {"normal", "benign", "malignant"}  # the top slice's set
    assert image.BurnedInAnnotation == "YES" and answer["disclaimer"]
    # The same objects on every request (a retried STOW files them once); the identity is never answered or logged.
    _, again = studies.call("GET", f"/studies/{study_id}/dicom")
    assert [item["sop_instance_uid"] for item in again["objects"]] == [
        item["sop_instance_uid"] for item in answer["objects"]
    ]
    assert "PID-7781" not in json.dumps(study) and "Test^Series" not in json.dumps(study)
    logs = capsys.readouterr()
    assert "PID-7781" not in logs.out + logs.err and "Test^Series" not in logs.out + logs.err


def test_a_study_of_images_has_no_dicom_results(studies):
    study_id = studies.run([(FIXTURES_DIR / "ct_normal_256.png").read_bytes()])
    status, error = studies.call("GET", f"/studies/{study_id}/dicom")
    assert status == 422 and error["error"]["code"] == "not_dicom_study"


def test_files_of_two_studies_are_not_filed_into_one(studies):
    files = [dicom_bytes(dataset) for dataset in scanner_study(2) + scanner_study(2)]
    status, error = studies.call("GET", f"/studies/{studies.run(files)}/dicom")
    assert status == 422 and error["error"]["code"] == "mixed_studies"


def test_only_a_finished_study_of_the_callers_team(studies):
    files = [dicom_bytes(dataset) for dataset in scanner_study(2)]
    waiting = studies.run(files, start=False)
    status, error = studies.call("GET", f"/studies/{waiting}/dicom")
    assert status == 409 and error["error"]["code"] == "study_not_done"
    teams = studies.run(files, claims=ALICE)
    assert studies.call("GET", f"/studies/{teams}/dicom", claims=ALICE)[0] == 200
    for claims in (CAROL, None):
        status, error = studies.call("GET", f"/studies/{teams}/dicom", claims=claims)
        assert status == 404 and error["error"]["code"] == "not_found"
    assert studies.call("GET", "/studies/" + "x" * 32 + "/dicom")[0] == 404
