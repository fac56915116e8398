"""``lungscan pacs`` against a real PACS: Debian's Orthanc with its DICOMweb plugin, fed by DCMTK's storescu as
a scanner feeds it. Skipped, with the reason, only where Orthanc cannot be installed (``make test`` installs it)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
from pathlib import Path

import highdicom
import pydicom
import pytest
from helpers import FIXTURES_DIR, dicom_bytes, scanner_study
from PIL import Image

from infrastructure.local_pacs import AE_TITLE, orthanc_missing, running_orthanc
from infrastructure.local_stack import stack_subprocess
from lungscan.results.identity import SourceSlice, study_identity
from lungscan.results.key_image import build_key_image
from lungscan.results.report import StudyFinding, build_report
from lungscan_client.cli import main
from lungscan_client.pacs import PACS_AUTH_ENV, PacsError, find_ct_series, pacs_client, retrieve, store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    missing = orthanc_missing() or (None if shutil.which("storescu") else "DCMTK's storescu is not installed")
    if missing:
        pytest.skip(f"{missing}: make test installs it with apt-get")
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as running:
        yield running


def push(orthanc, series: list[pydicom.Dataset], folder: Path) -> None:
    """C-STORE the series into Orthanc with DCMTK's storescu, as a scanner sends a study."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for dataset in series:
        path = folder / f"{dataset.InstanceNumber:04d}.dcm"
        path.write_bytes(dicom_bytes(dataset))
        files.append(str(path))
    done = subprocess.run(
        ["storescu", "-aec", AE_TITLE, "127.0.0.1", str(orthanc.dicom_port), *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def ct_study(orthanc, tmp_path_factory) -> list[pydicom.Dataset]:
    series = scanner_study(4)
    push(orthanc, series, tmp_path_factory.mktemp("scanner"))
    return series


def run_pacs(monkeypatch, capsys, orthanc, *argv: str, authorization: str | None = "orthanc"):
    if authorization is None:
        monkeypatch.delenv(PACS_AUTH_ENV, raising=False)
    else:
        monkeypatch.setenv(PACS_AUTH_ENV, orthanc.authorization if authorization == "orthanc" else authorization)
    code = main(["pacs", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


SC_CLASS = pydicom.uid.SecondaryCaptureImageStorage
API = "http://127.0.0.1:9"  # never reached in these tests: each fails before anything is classified


def test_a_study_the_pacs_does_not_hold_is_a_clear_failure(monkeypatch, capsys, orthanc, ct_study):
    code, out, err = run_pacs(
        monkeypatch, capsys, orthanc, "--dicomweb", orthanc.dicomweb, "--study", "1.2.3.4.5", "--api", API
    )
    assert code == 1
    assert "study_not_found: the PACS holds no study with that StudyInstanceUID" in err
    assert json.loads(out)["error"]["code"] == "study_not_found"


def test_a_study_without_ct_is_not_screened(monkeypatch, capsys, orthanc, tmp_path):
    mr = scanner_study(2, modality="MR")
    push(orthanc, mr, tmp_path)
    code, _, err = run_pacs(
        monkeypatch, capsys, orthanc, "--dicomweb", orthanc.dicomweb, "--study", mr[0].StudyInstanceUID, "--api", API
    )
    assert code == 1 and "not_ct: the study holds no CT series (modalities: MR)" in err


def test_credentials_come_from_the_environment(monkeypatch, capsys, orthanc, ct_study):
    study = ct_study[0].StudyInstanceUID
    code, _, err = run_pacs(
        monkeypatch, capsys, orthanc, "--dicomweb", orthanc.dicomweb, "--study", study, "--api", API, authorization=None
    )
    assert code == 1 and f"refused the credentials (401) while looking the study up: set ${PACS_AUTH_ENV}" in err
    with pytest.raises(SystemExit):  # no such option: a password never goes on the command line
        main(["pacs", "--dicomweb", orthanc.dicomweb, "--study", study, "--api", API, "--authorization", "x"])


def test_a_pacs_that_is_down_or_slow_fails_in_bounded_time(monkeypatch, capsys, orthanc):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        code, _, err = run_pacs(
            monkeypatch, capsys, orthanc, "--dicomweb", f"http://127.0.0.1:{port}", "--study", "1.2.3", "--api", API
        )
    assert code == 1 and "pacs_unreachable: cannot reach the PACS while looking the study up" in err
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, _, err = run_pacs(
            monkeypatch, capsys, orthanc, "--dicomweb", url, "--study", "1.2.3", "--api", API, "--timeout", "0.5"
        )
    assert code == 1 and "pacs_timeout: the PACS did not answer in time while looking the study up" in err


def results_for(series: list[pydicom.Dataset], seed: str) -> list[pydicom.Dataset]:
    identity = study_identity(series[0])
    key = SourceSlice(series[1].SOPInstanceUID, series[1].SeriesInstanceUID, positive_probability=0.9)
    overlay = Image.open(FIXTURES_DIR / "ct_malignant_256.jpg")
    image = build_key_image(identity, key, overlay, seed=seed, disclaimer="Research tool.")
    finding = StudyFinding("suspicious", True, False, 1, len(series), "m", "v", (key,), "Research tool.")
    return [build_report(identity, finding, key_image=image, seed=seed), image]


def test_a_refused_stow_says_which_result_is_missing(orthanc, ct_study):
    client = pacs_client(orthanc.dicomweb, authorization=orthanc.authorization)
    report, image = results_for(ct_study, "refused")
    with pytest.raises(PacsError) as refused:  # filed under another study's URL: Orthanc refuses both
        store(client, "1.2.826.0.1.3680043.8.498.1", [report, image])
    assert refused.value.code == "stow_refused"
    assert "did not store the Structured Report and the key image (failure reason 0x" in refused.value.message
    held = {instance["MainDicomTags"]["SOPInstanceUID"] for instance in orthanc.rest("/instances?expand")}
    assert held and not held & {report.SOPInstanceUID, image.SOPInstanceUID}


def test_wado_retrieves_the_ct_series_and_stow_files_both_results(orthanc, ct_study, tmp_path):
    client = pacs_client(orthanc.dicomweb, authorization=orthanc.authorization)
    study = ct_study[0].StudyInstanceUID
    paths = retrieve(client, study, find_ct_series(client, study), tmp_path)
    retrieved = sorted(pydicom.dcmread(path).SOPInstanceUID for path in paths)
    assert retrieved == sorted(dataset.SOPInstanceUID for dataset in ct_study)
    stored = store(client, study, results_for(ct_study, "stored"))
    assert [item["kind"] for item in stored] == ["sr", "key_image"]
    held = {tags["SOPInstanceUID"] for tags in _study_instances(orthanc, study)}
    assert {item["sop_instance_uid"] for item in stored} <= held


def _study_instances(orthanc, study_uid: str) -> list[dict]:
    (found,) = [s for s in orthanc.rest("/studies?expand") if s["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    return [
        orthanc.rest(f"/instances/{instance}/simplified-tags")
        for series in found["Series"]
        for instance in orthanc.rest(f"/series/{series}")["Instances"]
    ]


# ---------------------------------------------------------------- the whole round trip, with the local stack


@pytest.fixture(scope="module")
def stack(model_bundle_dir, tmp_path_factory):
    """``make run``'s stack on free ports (the studies engine on moto); yields its base URL."""
    with stack_subprocess(tmp_path_factory.mktemp("pacs-stack") / "stack.log", [model_bundle_dir]) as running:
        yield running.base_url


def test_the_round_trip_files_the_report_and_key_image_into_the_study(monkeypatch, capsys, orthanc, ct_study, stack):
    study = ct_study[0].StudyInstanceUID
    code, out, err = run_pacs(
        monkeypatch, capsys, orthanc, "--dicomweb", orthanc.dicomweb, "--study", study, "--api", stack
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["ok"] and answer["instances"] == len(ct_study) and answer["status"] == "done"
    assert "SR and key image stored in the PACS" in err
    held = {tags["SOPInstanceUID"]: tags for tags in _study_instances(orthanc, study)}
    stored = {item["kind"]: item["sop_instance_uid"] for item in answer["stored"]}
    assert held[stored["sr"]]["Modality"] == "SR" and held[stored["key_image"]]["SOPClassUID"] == SC_CLASS
    (report_id,) = [
        instance["ID"]
        for instance in orthanc.rest("/instances?expand")
        if instance["MainDicomTags"]["SOPInstanceUID"] == stored["sr"]
    ]
    report_bytes = orthanc.raw(f"/instances/{report_id}/file")
    report = highdicom.sr.srread(io.BytesIO(report_bytes))
    assert report.StudyInstanceUID == study and report.PatientID == ct_study[0].PatientID
    referenced = _image_references(report)
    assert stored["key_image"] in referenced and referenced <= set(held)  # each reference is an instance Orthanc holds
    assert referenced & {dataset.SOPInstanceUID for dataset in ct_study}  # and the key slices are the scanner's
    dump = subprocess.run(["dsrdump", "-"], input=report_bytes, capture_output=True, timeout=30)
    assert dump.returncode == 0, dump.stderr
    assert b"LungScan" in dump.stdout and b"Best illustration of finding" in dump.stdout


def _image_references(node) -> set[str]:
    """The SOP Instance UIDs of every IMAGE item in an SR's content tree."""
    found = set()
    for item in getattr(node, "ContentSequence", []):
        if item.ValueType == "IMAGE":
            found.add(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        found |= _image_references(item)
    return found


def test_since_does_each_new_ct_study_once(monkeypatch, capsys, orthanc, stack, tmp_path):
    new = scanner_study(2, StudyDate="20261201")
    push(orthanc, new, tmp_path)
    argv = ("--dicomweb", orthanc.dicomweb, "--since", "2026-11-30", "--api", stack)
    code, out, err = run_pacs(monkeypatch, capsys, orthanc, *argv)
    assert code == 0, err
    (done,) = [json.loads(line) for line in out.splitlines()]  # the older CT study and the MR one are not listed
    assert done["study_instance_uid"] == new[0].StudyInstanceUID and done["ok"] and len(done["stored"]) == 2
    code, out, err = run_pacs(monkeypatch, capsys, orthanc, *argv)  # the next scheduled run
    assert code == 0 and json.loads(out)["status"] == "skipped" and "already holds LungScan results" in err
