"""The study view's DICOM downloads, in headless Chromium: "Download DICOM SR" and "Download key image (DICOM)" save
what ``GET /studies/{id}/dicom`` answers, and a study of images offers neither. The /studies service is canned at
the page's boundary (Playwright routes), its DICOM objects built by the real core (``lungscan.results``) for the
series dropped; ``tests/unit/test_dicom_results_api.py`` and ``tests/integration/test_pacs.py`` test the route
itself."""

from __future__ import annotations

import base64
import json
import re

import pydicom
import pytest
from helpers import FIXTURES_DIR, dicom_bytes, scanner_study
from PIL import Image
from playwright.sync_api import expect

from lungscan.results.identity import study_identity
from lungscan.results.report import dicom_bytes as part10
from lungscan.results.study import study_results

pytestmark = pytest.mark.slow
DISCLAIMER = "Research tool. Not a diagnosis."


class CannedStudy:
    """One finished study of ``series`` (None: images) at the page's boundary; records the DICOM requests."""

    def __init__(self, page, stack: str, series: list[pydicom.Dataset] | None, count: int) -> None:
        self.series, self.count, self.stack = series, count, stack
        self.dicom_requests = 0
        page.route(re.compile(r".*/studies$"), self.create)
        page.route(re.compile(r".*/__uploads/\d+$"), lambda route: route.fulfill(status=204))
        page.route(re.compile(r".*/studies/s-1/start$"), lambda route: route.fulfill(status=202, json={}))
        page.route(re.compile(r".*/studies/s-1\?.*$"), self.get)
        page.route(re.compile(r".*/studies/s-1/dicom$"), self.dicom)

    def create(self, route):
        uploads = [{"index": i, "url": f"{self.stack}/__uploads/{i}", "fields": {}} for i in range(self.count)]
        route.fulfill(status=201, json={"study_id": "s-1", "expires_at": "2026-12-05T00:00:00Z", "uploads": uploads})

    def slices(self) -> list[dict]:
        return [
            {
                "index": i,
                "series": self.series[i].SeriesInstanceUID if self.series else "uploads",
                "instance_number": i + 1 if self.series else None,
                "position": -100.0 + 5.0 * i if self.series else None,
                "label": "malignant" if i == 1 else "normal",
                "probabilities": {"normal": 0.5, "malignant": 0.5},
                "positive_probability": 0.9 if i == 1 else 0.1,
                "suspicious": i == 1,
                "uncertain": False,
                "tier": "suspicious" if i == 1 else "clear",
                "unfamiliar": False,
                "sop_instance_uid": self.series[i].SOPInstanceUID if self.series else None,
                "study_date": None,
            }
            for i in range(self.count)
        ]

    def summary(self) -> dict:
        top = {"index": 1, "series": self.slices()[1]["series"], "positive_probability": 0.9}
        return {
            "suspicious": True,
            "tier": "suspicious",
            "uncertain": False,
            "flagged": 1,
            "total": self.count,
            "failed": 0,
            "most_suspicious_slices": [top | {"instance_number": 2, "position": -95.0, "preview_url": None}],
            "positive_probabilities": [],
        }

    def get(self, route):
        body = {
            "study_id": "s-1",
            "status": "done",
            "progress": {"done": self.count, "total": self.count, "failed": 0},
            "model": {"name": "malignancy-screen", "version": "canned"},
            "summary": self.summary(),
            "series": [{"series": self.slices()[0]["series"], "summary": self.summary()}],
            "slices": self.slices(),
            "next_cursor": None,
            "disclaimer": DISCLAIMER,
        }
        route.fulfill(status=200, body=json.dumps(body), content_type="application/json")

    def dicom(self, route):
        self.dicom_requests += 1
        assert self.series is not None
        slices = {item["index"]: item for item in self.slices()}
        report, image = study_results(
            study_identity(self.series[0]),
            self.summary(),
            slices,
            {"name": "malignancy-screen", "version": "canned"},
            sop_classes={},
            overlay=Image.open(FIXTURES_DIR / "ct_malignant_256.jpg"),
            seed="s-1",
            disclaimer=DISCLAIMER,
        )
        objects = [
            {"kind": kind, "filename": name, "dicom": base64.b64encode(part10(dataset)).decode()}
            for kind, name, dataset in (
                ("sr", "lungscan-report.dcm", report),
                ("key_image", "lungscan-key-image.dcm", image),
            )
        ]
        route.fulfill(status=200, json={"study_id": "s-1", "objects": objects, "disclaimer": DISCLAIMER})


def drop_folder(page, folder, files: dict[str, bytes]) -> None:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    page.set_input_files("#folder-input", str(folder))
    page.click("#study-start-button")


def test_a_dicom_study_downloads_its_report_and_key_image(open_page, stack, tmp_path):
    page, watch = open_page()
    series = scanner_study(3, patient_id="PAGE-1")
    canned = CannedStudy(page, stack, series, len(series))
    drop_folder(page, tmp_path / "series", {f"IM{d.InstanceNumber:04d}": dicom_bytes(d) for d in series})
    expect(page.locator("#study-count")).to_have_text(re.compile(r"1 flagged of 3 slices"))
    saved = {}
    for button, kind in (("#study-download-sr", "SR"), ("#study-download-key-image", "OT")):
        with page.expect_download() as download:
            page.click(button)
        path = tmp_path / download.value.suggested_filename
        download.value.save_as(path)
        dataset = pydicom.dcmread(path)
        assert dataset.Modality == kind and dataset.StudyInstanceUID == series[0].StudyInstanceUID
        assert dataset.PatientID == "PAGE-1"
        saved[kind] = download.value.suggested_filename
    assert saved == {"SR": "lungscan-report.dcm", "OT": "lungscan-key-image.dcm"} and canned.dicom_requests == 2
    expect(page.locator("#study-exports .export-status")).to_contain_text("lungscan-key-image.dcm saved")
    assert not watch.errors


def test_a_refused_download_reads_plainly(open_page, stack, tmp_path):
    page, watch = open_page()
    series = scanner_study(2)
    CannedStudy(page, stack, series, len(series))
    error = {"error": {"code": "mixed_studies", "message": "The study's files belong to more than one DICOM study."}}
    page.route(re.compile(r".*/studies/s-1/dicom$"), lambda route: route.fulfill(status=422, json=error))
    drop_folder(page, tmp_path / "series", {f"IM{d.InstanceNumber:04d}": dicom_bytes(d) for d in series})
    page.click("#study-download-sr")
    expect(page.locator("#study-exports .export-status")).to_have_text(
        "No DICOM file: The study's files belong to more than one DICOM study."
    )
    assert not watch.errors


def test_a_study_of_images_offers_no_dicom_download(open_page, stack, tmp_path):
    page, watch = open_page()
    canned = CannedStudy(page, stack, None, 2)
    png = (FIXTURES_DIR / "ct_normal_256.png").read_bytes()
    drop_folder(page, tmp_path / "images", {"a.png": png, "b.png": png})
    expect(page.locator("#study-count")).to_have_text(re.compile(r"flagged of 2 slices"))
    expect(page.locator("#study-exports")).to_be_hidden()
    assert canned.dicom_requests == 0 and not watch.errors
