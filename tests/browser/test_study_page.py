"""Whole studies on the page, in headless Chromium: a DICOM series dropped as a folder, uploaded file by file to
presigned POSTs with progress, classified, then read: "N flagged of M", the plot, the slice viewer (arrow keys,
wheel, window presets), jumps to the most suspicious slices; and many single images as a worklist.

Most study tests here answer /studies with a canned service at the page's boundary (Playwright routes), the way
``test_page.py`` answers /predict's errors: they check what the page does with each of the contract's answers. The
last one runs the same flow against the local stack's real /studies (uploads to moto's S3, the real engine).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURES_DIR, PHONE, ct_dataset, ct_hounsfield, dicom_bytes, serious_axe_violations
from playwright.sync_api import expect

from infrastructure.emulation import ROUTES
from infrastructure.local_accounts import DEMO_PASSWORD

pytestmark = pytest.mark.slow

SLICES = 12
SUSPICIOUS_AT = (7, 8)  # slice order (by z) the canned service flags
SERIES_UID = "1.2.826.0.1.3680043.8.498.1"


def series_folder(folder: Path, count: int = SLICES) -> Path:
    """A DICOM series of real CT pixels (HU), written in reverse z order under numbered names."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        pixels = ct_hounsfield(128, offset=number * 10)
        if number == 0:
            pixels[:16, :16] = 900  # bone-bright corner: the bone window must show it differently from lung
        dataset = ct_dataset(
            [pixels],
            ImagePositionPatient=[0.0, 0.0, -100.0 + 5.0 * number],
            InstanceNumber=number + 1,
            SeriesInstanceUID=SERIES_UID,
            StudyDate="20261102",
            AcquisitionDate="20261102",
            NumberOfFrames=None,
        )
        (folder / f"IM{count - number:04d}").write_bytes(dicom_bytes(dataset))
    return folder


class CannedStudies:
    """The contract's /studies answers for one study of ``count`` slices; records what the page sent."""

    def __init__(
        self, page, stack: str, count: int = SLICES, polls_running: int = 2, fail_upload: bool = False, busy: int = 0
    ):
        self.count, self.polls_running, self.fail_upload = count, polls_running, fail_upload
        self.busy = busy  # the first polls answered 503: the page must poll again, not give up
        self.created: dict | None = None
        self.uploaded: dict[int, int] = {}
        self.started = 0
        self.polls = 0
        self.stack = stack
        page.route(re.compile(r".*/studies(\?.*)?$"), self.create)
        page.route(re.compile(r".*/studies/s-1/start$"), self.start)
        page.route(re.compile(r".*/studies/s-1\?.*$"), self.get)
        page.route(re.compile(r".*/__uploads/\d+$"), self.upload)

    def create(self, route):
        self.created = route.request.post_data_json
        uploads = [
            {"index": i, "url": f"{self.stack}/__uploads/{i}", "fields": {"key": f"studies/s-1/{i:05d}"}}
            for i in range(len(self.created["files"]))
        ]
        route.fulfill(status=201, json={"study_id": "s-1", "expires_at": "2026-12-05T00:00:00Z", "uploads": uploads})

    def upload(self, route):
        index = int(route.request.url.rsplit("/", 1)[1])
        if self.fail_upload:
            route.fulfill(status=403, body="<Error>AccessDenied</Error>")
            return
        body = route.request.post_data_buffer or b""
        assert f'name="key"\r\n\r\nstudies/s-1/{index:05d}'.encode() in body  # the presigned fields, first
        self.uploaded[index] = len(body)  # Playwright leaves the file's own bytes out of a multipart body
        route.fulfill(status=204)

    def start(self, route):
        self.started += 1
        route.fulfill(status=202, json={"study_id": "s-1", "status": "running"})

    def slices(self) -> list[dict]:
        # Upload index i holds the file the page sent i-th; the folder's names are in reverse z order.
        entries = []
        for order in range(self.count):
            index = self.count - 1 - order
            probability = 0.9 - 0.02 * order if order in SUSPICIOUS_AT else 0.05 + 0.01 * order
            suspicious = order in SUSPICIOUS_AT
            entries.append(
                {
                    "index": index,
                    "series": SERIES_UID,
                    "instance_number": order + 1,
                    "position": -100.0 + 5.0 * order,
                    "label": "malignant" if suspicious else "normal",
                    "probabilities": {"normal": 1 - probability, "malignant": probability},
                    "positive_probability": probability,
                    "suspicious": suspicious,
                    "uncertain": False,
                    "tier": "suspicious" if suspicious else "clear",
                    "unfamiliar": False,
                    "sop_instance_uid": f"1.2.3.{order}",
                    "study_date": "2026-11-02",
                }
            )
        return entries

    def summary(self, slices: list[dict]) -> dict:
        ranked = sorted(slices, key=lambda s: -s["positive_probability"])[:5]
        return {
            "suspicious": True,
            "tier": "suspicious",
            "uncertain": False,
            "flagged": len(SUSPICIOUS_AT),
            "total": len(slices),
            "most_suspicious_slices": [
                {
                    **{k: s[k] for k in ("index", "series", "instance_number", "position", "positive_probability")},
                    "preview_url": f"{self.stack}/favicon.svg",  # any same-origin image stands for the PNGs
                    "heatmap_url": f"{self.stack}/favicon.svg",
                }
                for s in ranked
            ],
            "positive_probabilities": [
                {k: s[k] for k in ("index", "position", "positive_probability")} for s in slices
            ],
        }

    def get(self, route):
        if self.busy:
            self.busy -= 1
            route.fulfill(status=503, json={"error": {"code": "busy", "message": "Try again."}})
            return
        self.polls += 1
        query = dict(re.findall(r"[?&](\w+)=([^&]*)", route.request.url))
        running = self.polls <= self.polls_running
        slices = self.slices()
        body = {
            "study_id": "s-1",
            "status": "running" if running else "done",
            "progress": {
                "done": min(self.count, self.polls * 4) if running else self.count,
                "total": self.count,
                "failed": 0,
            },
            "model": {"name": "malignancy-screen", "version": "canned"},
            "summary": None if running else self.summary(slices),
            "series": [] if running else [{"series": SERIES_UID, "summary": self.summary(slices)}],
            "slices": [],
            "next_cursor": None,
            "disclaimer": "Research tool. Not a diagnosis.",
        }
        if not running:  # pages of 5, to check the page follows next_cursor
            start = int(query.get("cursor") or 0)
            body["slices"] = slices[start : start + 5]
            body["next_cursor"] = str(start + 5) if start + 5 < len(slices) else None
        route.fulfill(status=200, body=json.dumps(body), content_type="application/json")


def canvas_pixels(page) -> tuple[int, float]:
    """The viewer's bone-bright corner (grey level) and the whole slice's mean grey level."""
    return tuple(
        page.evaluate(
            """() => {
                const canvas = document.getElementById('viewer-canvas');
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                let sum = 0;
                for (let i = 0; i < data.length; i += 4) sum += data[i];
                return [data[0], sum / (data.length / 4)];
            }"""
        )
    )


def shown_index(page) -> int:
    return int(page.locator("#viewer-frame").get_attribute("data-index"))


def run_study(page, folder: Path) -> None:
    page.set_input_files("#folder-input", str(folder))
    expect(page.locator("#study-section")).to_be_visible()
    expect(page.locator("#study-files")).to_contain_text(f"A folder of {len(list(folder.iterdir()))} files")
    page.click("#study-start-button")


def test_a_dropped_series_is_uploaded_classified_and_read_slice_by_slice(open_page, stack, tmp_path):
    page, watch = open_page()
    folder = series_folder(tmp_path / "SERIES-of-Jane-Doe")
    canned = CannedStudies(page, stack, busy=2)
    seen_progress = []
    page.expose_function("noteProgress", lambda text: seen_progress.append(text))
    page.evaluate(
        """() => new MutationObserver(() => window.noteProgress(document.getElementById('study-progress-label')
            .textContent)).observe(document.getElementById('study-progress-label'), {childList: true})"""
    )
    run_study(page, folder)
    expect(page.locator("#study-count")).to_have_text(f"2 flagged of {SLICES} slices.", timeout=30_000)

    # What the service got: sizes only (no names), then every file to its own presigned POST, then one start.
    assert canned.created["files"] == [{"size": p.stat().st_size} for p in sorted(folder.iterdir())]
    assert "Jane" not in json.dumps(canned.created) and "IM0" not in json.dumps(canned.created)
    assert sorted(canned.uploaded) == list(range(SLICES))  # the bytes themselves: the real-stack test below
    assert canned.started == 1 and canned.busy == 0
    assert not any("Jane" in url for _, url in watch.requests)
    assert any(text.startswith("Uploading") for text in seen_progress), seen_progress
    assert any(text.startswith("Classifying: 4 of 12") for text in seen_progress), seen_progress

    expect(page.locator("#study-verdict")).to_have_text("Suspicious — review first")
    expect(page.locator("#study-model")).to_contain_text("malignancy-screen")
    # The plot: one polyline over every slice, a dot per flagged one.
    points = page.locator("#study-plot polyline").get_attribute("points").split()
    assert len(points) == SLICES
    expect(page.locator("#study-plot circle.plot-flag")).to_have_count(len(SUSPICIOUS_AT))
    expect(page.locator("#study-plot-caption")).to_contain_text("position (z, mm)")

    # The viewer starts at the first slice by z (the last file dropped), decoded here from the user's DICOM.
    frame = page.locator("#viewer-frame")
    expect(frame).to_have_attribute("aria-valuenow", "1")
    assert shown_index(page) == SLICES - 1
    expect(page.locator("#viewer-position")).to_contain_text("Slice 1 of 12 (z -100.0 mm, instance 1)")
    expect(page.locator("#window-presets")).to_be_visible()
    page.wait_for_function("() => document.getElementById('viewer-canvas').width === 128")
    lung = canvas_pixels(page)

    # Window presets change the pixels (the bright corner is bone: white in lung, grey in the bone window).
    page.check("input[name=window][value=bone]")
    page.wait_for_function("() => document.getElementById('viewer-canvas').dataset.window === 'bone'")
    bone = canvas_pixels(page)
    assert lung[0] == 255 and bone[0] < 255 and lung[1] != bone[1]
    page.check("input[name=window][value=mediastinum]")
    page.wait_for_function("() => document.getElementById('viewer-canvas').dataset.window === 'mediastinum'")
    mediastinum = canvas_pixels(page)
    assert mediastinum[1] not in (lung[1], bone[1])

    # Arrow keys and the wheel move through the slices.
    frame.focus()
    page.keyboard.press("ArrowDown")
    expect(frame).to_have_attribute("aria-valuenow", "2")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")
    expect(frame).to_have_attribute("aria-valuenow", "2")
    page.keyboard.press("End")
    expect(frame).to_have_attribute("aria-valuenow", "12")
    page.keyboard.press("Home")
    frame.hover()
    page.mouse.wheel(0, 120)
    expect(frame).to_have_attribute("aria-valuenow", "2")
    page.mouse.wheel(0, 120)
    expect(frame).to_have_attribute("aria-valuenow", "3")
    page.mouse.wheel(0, -120)
    expect(frame).to_have_attribute("aria-valuenow", "2")

    # A jump to each suspicious slice; its heatmap can be shown.
    jumps = page.locator("#study-jumps .jump-button")
    expect(jumps).to_have_count(5)
    expect(jumps.first).to_contain_text("z -65.0 mm, instance 8: 76.0%")
    jumps.first.click()
    expect(frame).to_be_focused()
    expect(frame).to_have_attribute("aria-valuenow", "8")
    expect(page.locator("#viewer-result")).to_contain_text("Suspicious — review first")
    expect(page.locator("#viewer-heatmap-row")).to_be_visible()
    page.check("#viewer-heatmap-toggle")
    expect(page.locator("#viewer-heatmap")).to_be_visible()
    frame.focus()
    page.keyboard.press("Home")  # the first slice is not among the most suspicious: no heatmap
    expect(page.locator("#viewer-heatmap-row")).to_be_hidden()
    expect(page.locator("#viewer-heatmap")).to_be_hidden()


def test_an_upload_refused_by_storage_reads_plainly_and_the_study_is_not_started(open_page, stack, tmp_path):
    page, _ = open_page()
    canned = CannedStudies(page, stack, fail_upload=True)
    run_study(page, series_folder(tmp_path / "series"))
    expect(page.locator("#study-error-title")).to_contain_text("A file could not be uploaded (status 403).")
    assert canned.started == 0
    expect(page.locator("#study-result")).to_be_hidden()


def test_a_study_over_the_limits_is_refused_with_the_apis_words(open_page, stack, tmp_path):
    page, _ = open_page()
    error = {"error": {"code": "too_many_slices", "message": "At most 2000 files per study.", "request_id": "r-9"}}
    page.route(re.compile(r".*/studies$"), lambda route: route.fulfill(status=413, json=error))
    run_study(page, series_folder(tmp_path / "series", 3))
    expect(page.locator("#study-error-title")).to_have_text(
        "This study has more slices than the service accepts in one study."
    )
    expect(page.locator("#study-error-detail")).to_contain_text("At most 2000 files per study. Request id: r-9.")


def test_several_dicom_files_dropped_are_one_study_and_can_be_split_into_slices(open_page, tmp_path):
    page, watch = open_page()
    folder = series_folder(tmp_path / "series", 3)
    files = [
        {"name": path.name, "data": base64.b64encode(path.read_bytes()).decode()} for path in sorted(folder.iterdir())
    ]
    page.evaluate(  # dropped on the page, as from a file manager (DICOM files with no extension)
        """(files) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                transfer.items.add(new File([Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0))], f.name));
            }
            const zone = document.getElementById('drop-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
            }
        }""",
        files,
    )
    expect(page.locator("#study-files")).to_have_text(re.compile(r"^3 files, \d+\.\d KB\.$"))
    page.click("#study-split-button")
    expect(page.locator("#study-section")).to_be_hidden()
    expect(page.locator(".scan-card")).to_have_count(3)
    assert not any("/studies" in url for _, url in watch.requests)
    # And back: waiting slices chosen as one study (PNG slices of one scan, say).
    page.click("#as-study-button")
    expect(page.locator(".scan-card")).to_have_count(0)
    expect(page.locator("#study-files")).to_have_text(re.compile(r"^3 files, "))
    expect(page.locator("#study-title")).to_be_focused()


def test_a_study_with_the_keyboard_alone(open_page, stack, tmp_path):
    page, _ = open_page()
    CannedStudies(page, stack, polls_running=1)
    folder = series_folder(tmp_path / "series")
    page.on("filechooser", lambda chooser: None)
    page.keyboard.press("Tab")
    for _ in range(40):
        if page.evaluate("() => document.activeElement.id") == "folder-input":
            break
        page.keyboard.press("Tab")
    outline = page.evaluate("() => getComputedStyle(document.querySelector('.folder-label')).outlineStyle")
    assert outline != "none", "the focused folder input shows no focus ring"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(folder))
    expect(page.locator("#study-title")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#study-start-button")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#study-count")).to_have_text(f"2 flagged of {SLICES} slices.", timeout=30_000)
    expect(page.locator("#study-title")).to_be_focused()  # not lost with the button that started it
    page.keyboard.press("Tab")
    expect(page.locator("#study-jumps .jump-button").first).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer-frame")).to_be_focused()
    expect(page.locator("#viewer-frame")).to_have_attribute("aria-valuenow", "8")
    page.keyboard.press("PageDown")
    expect(page.locator("#viewer-frame")).to_have_attribute("aria-valuenow", "12")  # ten on, stopped at the end
    page.keyboard.press("PageUp")
    expect(page.locator("#viewer-frame")).to_have_attribute("aria-valuenow", "2")


def test_many_single_images_are_a_worklist_most_suspicious_first(open_page):
    page, _ = open_page()
    probabilities = {"a.png": 0.2, "b.png": 0.95, "c.png": 0.6, "d.png": 0.05, "e.png": 0.7}

    def answer(route):
        response = route.fetch()
        body = response.json()
        # The page sends no names: tell the files apart by the order they are sent in (one at a time).
        name = list(probabilities)[len(sent)]
        sent.append(name)
        p = probabilities[name]
        body.update(positive_probability=p, suspicious=p > 0.5, tier="suspicious" if p > 0.5 else "clear")
        body.pop("tier_text", None)
        route.fulfill(response=response, body=json.dumps(body))

    sent: list[str] = []
    page.route("**/predict", answer)
    png = (FIXTURES_DIR / "ct_normal_256.png").read_bytes()
    page.set_input_files("#file-input", [{"name": n, "mimeType": "image/png", "buffer": png} for n in probabilities])
    expect(page.locator("#study-section")).to_be_hidden()  # PNG slices: not a study
    expect(page.locator("#as-study-button")).to_be_visible()
    page.click("#classify-button")
    cards = page.locator(".scan-card")
    for name in probabilities:
        expect(cards.filter(has_text=name)).to_have_attribute("data-state", "done", timeout=60_000)
    names = [cards.nth(i).locator(".scan-name").inner_text() for i in range(5)]
    assert names == ["b.png", "e.png", "c.png", "a.png", "d.png"]
    # One line each: the page stays short; a card opens to today's full result.
    expect(page.locator(".scan-card .scan-body:visible")).to_have_count(0)
    assert page.locator("#queue").bounding_box()["height"] < 5 * 200
    expect(cards.first.locator(".scan-state")).to_contain_text("Suspicious — review first, 95.0% positive")
    details = cards.first.locator(".details-button")
    expect(details).to_have_attribute("aria-expanded", "false")
    details.focus()
    page.keyboard.press("Enter")
    expect(details).to_have_attribute("aria-expanded", "true")
    expect(cards.first.locator(".verdict")).to_be_visible()
    expect(details).to_be_focused()


def test_the_study_view_is_keyboard_usable_readable_on_a_phone_and_passes_axe(open_page, stack, tmp_path, axe_script):
    page, _ = open_page(PHONE, mobile=True)
    CannedStudies(page, stack, polls_running=0)
    run_study(page, series_folder(tmp_path / "series"))
    expect(page.locator("#study-count")).to_have_text(f"2 flagged of {SLICES} slices.", timeout=30_000)
    sizes = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert sizes[0] <= sizes[1] <= PHONE["width"], sizes
    assert page.locator("#study-plot").bounding_box()["width"] <= PHONE["width"]
    page.click("#viewer-next")
    expect(page.locator("#viewer-frame")).to_have_attribute("aria-valuenow", "2")
    # Tab order: the jumps, then the viewer, then its buttons, then the window presets.
    page.locator("#study-jumps .jump-button").last.focus()
    page.keyboard.press("Tab")
    expect(page.locator("#viewer-frame")).to_be_focused()
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.keyboard.press("Tab")
    expect(page.locator("#viewer-previous")).to_be_focused()
    serious = serious_axe_violations(page, axe_script)
    assert not serious, "\n".join(serious)


def test_series_builder_writes_real_ct_dicom(tmp_path):
    """The series the tests drop: real CT pixels, one z per file, names in reverse z order."""
    import pydicom

    folder = series_folder(tmp_path / "s", 3)
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    assert [float(d.ImagePositionPatient[2]) for d in datasets] == [-90.0, -95.0, -100.0]
    assert all(
        np.array_equal(d.pixel_array[20:], ct_hounsfield(128, offset=i * 10)[20:])
        for i, d in zip((2, 1, 0), datasets, strict=True)
    )


# ---------------------------------------------------------------- against the local stack's real /studies


@pytest.mark.skipif(
    ("POST", "/studies") not in ROUTES, reason="the /studies routes are not in this tree yet (branch `studies`)"
)
def test_a_real_series_through_the_local_stack(open_page, stack_process, tmp_path):
    page, watch = open_page()
    folder = series_folder(tmp_path / "series")
    storage = f"127.0.0.1:{stack_process.s3_port}"
    run_study(page, folder)
    expect(page.locator("#study-progress-label")).to_contain_text(re.compile("Uploading|Classifying"))
    count = page.locator("#study-count")
    line = re.compile(r"^(\d+) flagged of (\d+) slices(?: \((\d+) files? not classified: see each in the viewer\))?\.$")
    expect(count).to_have_text(line, timeout=120_000)
    flagged, total, errors = line.match(count.inner_text()).groups()
    assert int(total) + int(errors or 0) == SLICES and int(flagged) <= int(total)
    uploads = [url for method, url in watch.requests if method == "POST" and storage in url]
    assert len(uploads) == SLICES, "one presigned POST per file, straight to storage"
    assert not any("series" in url for _, url in watch.requests)  # no folder or file name in any request
    expect(page.locator("#study-verdict")).to_have_text(
        re.compile("Suspicious — review first|Malignancy not excluded — review|No suspicious finding")
    )
    assert len(page.locator("#study-plot polyline").get_attribute("points").split()) == int(total)

    frame = page.locator("#viewer-frame")
    expect(frame).to_have_attribute("aria-valuenow", "1")
    # By z: the first slice shown is the last file (the names run against z); the viewer decodes it here.
    assert shown_index(page) == SLICES - 1
    page.wait_for_function("() => document.getElementById('viewer-canvas').width === 128")
    lung = canvas_pixels(page)
    page.check("input[name=window][value=bone]")
    page.wait_for_function("() => document.getElementById('viewer-canvas').dataset.window === 'bone'")
    assert canvas_pixels(page)[1] != lung[1]
    frame.focus()
    page.keyboard.press("ArrowDown")
    expect(frame).to_have_attribute("aria-valuenow", "2")
    assert shown_index(page) == SLICES - 2
    frame.hover()
    page.mouse.wheel(0, 120)
    expect(frame).to_have_attribute("aria-valuenow", "3")

    jumps = page.locator("#study-jumps .jump-button")
    assert 1 <= jumps.count() <= 5
    target = jumps.last.get_attribute("data-index")
    jumps.last.click()
    expect(frame).to_have_attribute("data-index", target)
    expect(frame).to_be_focused()
    # Its heatmap: a short-lived presigned GET of the results' PNG, loaded from storage under the page's CSP.
    expect(page.locator("#viewer-heatmap-row")).to_be_visible()
    page.check("#viewer-heatmap-toggle")
    heatmap = page.locator("#viewer-heatmap")
    expect(heatmap).to_be_visible()
    assert storage in heatmap.get_attribute("src")
    page.wait_for_function("() => document.getElementById('viewer-heatmap').naturalWidth > 0")


@pytest.mark.skipif(
    ("POST", "/studies") not in ROUTES, reason="the /studies routes are not in this tree yet (branch `studies`)"
)
def test_a_signed_in_study_is_one_timeline_record_with_its_summary_and_acquisition_day(open_page, tmp_path):
    page, watch = open_page()
    page.fill("#sign-in-email", "clinician-a@example.org")
    page.fill("#sign-in-password", DEMO_PASSWORD)
    page.click("#sign-in-button")
    expect(page.locator("#signed-in")).to_be_visible()
    patient = "P-" + uuid.uuid4().hex[:8]
    page.fill("#patient-ref", patient)
    run_study(page, series_folder(tmp_path / "series", 4))
    count = page.locator("#study-count")
    expect(count).to_have_text(re.compile(r"^\d+ flagged of \d+ slices"), timeout=120_000)
    created = [r for r in watch.requests if r[0] == "POST" and r[1].endswith("/studies")]
    assert len(created) == 1
    item = page.locator("#timeline .timeline-item")
    expect(item).to_have_count(1)
    flagged, total = re.match(r"^(\d+) flagged of (\d+) slices", count.inner_text()).groups()
    expect(item.locator(".timeline-verdict")).to_contain_text(f"New: {page.locator('#study-verdict').inner_text()}")
    expect(item.locator(".timeline-verdict")).to_contain_text(f"study: {flagged} flagged of {total} slices")
    expect(item.locator(".timeline-meta")).to_contain_text("acquired 2026-11-02")
