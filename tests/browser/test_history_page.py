"""Sign-in and the patient timeline in headless Chromium, against `make run`'s stack and its local Cognito pool."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from helpers import FIXTURES_DIR, PHONE, serious_axe_violations
from playwright.sync_api import expect

from infrastructure.local_accounts import DEMO_PASSWORD

pytestmark = pytest.mark.slow

NORMAL_PNG = FIXTURES_DIR / "ct_normal_256.png"
MALIGNANT_JPG = FIXTURES_DIR / "ct_malignant_256.jpg"


def sign_in(page, email: str) -> None:
    page.fill("#sign-in-email", email)
    page.fill("#sign-in-password", DEMO_PASSWORD)
    page.click("#sign-in-button")
    expect(page.locator("#signed-in")).to_be_visible()
    expect(page.locator("#signed-in-who")).to_contain_text(email)


def classify(page, path) -> None:
    page.set_input_files("#file-input", [str(path)])
    page.click("#classify-button")
    card = page.locator(".scan-card").filter(has=page.locator(".scan-name", has_text=path.name))
    expect(card).to_have_attribute("data-state", "done", timeout=60_000)


def show_history(page, patient: str) -> None:
    page.fill("#patient-ref", patient)
    page.click("#show-history-button")
    expect(page.locator("#timeline-section")).to_be_visible()
    expect(page.locator("#timeline-status")).not_to_have_text("Loading earlier scans…")


def test_signed_out_the_page_works_as_before_and_stores_nothing(open_page):
    page, watch = open_page()
    expect(page.locator("#accounts")).to_be_visible()
    expect(page.locator("#patient-box")).to_be_hidden()
    classify(page, NORMAL_PNG)
    assert len([r for r in watch.requests if r[1].split("?")[0].endswith("/predict")]) == 1
    assert not any("/patients" in url for _, url in watch.requests)
    expect(page.locator("#timeline-section")).to_be_hidden()


def test_a_stored_scan_is_shared_with_the_team_only_and_sign_out_ends_the_session(open_page, tmp_path):
    patient = "P-" + uuid.uuid4().hex[:8]

    # Clinician A signs in, classifies two scans for the patient: the timeline shows both, new beside previous.
    page_a, watch_a = open_page()
    sign_in(page_a, "clinician-a@example.org")
    expect(page_a.locator("#signed-in-who")).to_contain_text("team oncology")
    page_a.fill("#patient-ref", patient)
    classify(page_a, NORMAL_PNG)
    timeline = page_a.locator("#timeline .timeline-item")
    expect(timeline).to_have_count(1)
    first = timeline.first
    # The tier's words, never the deprecated "Cancer Detected".
    expect(first.locator(".timeline-verdict")).to_contain_text(
        re.compile("Suspicious — review first|Malignancy not excluded — review|No suspicious finding")
    )
    expect(first.locator(".timeline-verdict")).not_to_contain_text("Cancer Detected")
    expect(first.locator(".timeline-meta")).to_contain_text("model iq-oth-3class")
    expect(first.locator(".timeline-meta")).to_contain_text("clinician-a@example.org")
    assert first.locator("img.timeline-thumb").get_attribute("src").startswith("data:image/png;base64,")
    assert page_a.evaluate("() => localStorage.length") == 0
    assert page_a.evaluate("() => sessionStorage.getItem('lungscan.session')")

    classify(page_a, MALIGNANT_JPG)
    expect(timeline).to_have_count(2)
    expect(timeline.first).to_have_class("timeline-item is-new")
    # Two slices of the same day (no acquisition date: the upload day) are not "this scan vs the previous one".
    expect(page_a.locator("#compare")).to_be_hidden()
    expect(timeline.first.locator(".timeline-meta")).to_contain_text("(no acquisition date)")

    # A colleague in the same team sees both.
    page_b, _ = open_page()
    sign_in(page_b, "clinician-b@example.org")
    show_history(page_b, patient)
    expect(page_b.locator("#timeline .timeline-item")).to_have_count(2)

    # Another team does not.
    page_c, _ = open_page()
    sign_in(page_c, "clinician-c@example.org")
    show_history(page_c, patient)
    expect(page_c.locator("#timeline .timeline-item")).to_have_count(0)
    expect(page_c.locator("#timeline-status")).to_contain_text("No scans stored for this patient in your team")

    # A deletes the older scan, after confirming; B then sees one.
    page_a.once("dialog", lambda dialog: dialog.dismiss())
    page_a.locator("#timeline .timeline-delete").nth(1).click()
    expect(timeline).to_have_count(2)  # dismissed: nothing deleted
    page_a.once("dialog", lambda dialog: dialog.accept())
    page_a.locator("#timeline .timeline-delete").nth(1).click()
    expect(timeline).to_have_count(1)
    show_history(page_b, patient)
    expect(page_b.locator("#timeline .timeline-item")).to_have_count(1)

    # Sign-out: the session is gone, the timeline hidden, and the page classifies anonymously again.
    page_a.click("#sign-out-button")
    expect(page_a.locator("#sign-in-form")).to_be_visible()
    expect(page_a.locator("#timeline-section")).to_be_hidden()
    assert page_a.evaluate("() => sessionStorage.getItem('lungscan.session')") is None
    watch_a.requests.clear()
    again = tmp_path / "after-sign-out.png"
    again.write_bytes(NORMAL_PNG.read_bytes())
    classify(page_a, again)
    assert not any("/patients" in url for _, url in watch_a.requests)


def test_a_wrong_password_and_a_name_as_reference_read_plainly(open_page):
    page, _ = open_page()
    page.fill("#sign-in-email", "clinician-a@example.org")
    page.fill("#sign-in-password", "wrong-password-1!")
    page.click("#sign-in-button")
    expect(page.locator("#auth-status")).to_contain_text("Sign-in failed")
    expect(page.locator("#signed-in")).to_be_hidden()
    sign_in(page, "clinician-a@example.org")
    page.fill("#patient-ref", "..")  # a URL would drop it: /patients/../scans is /scans
    expect(page.locator("#patient-ref-error")).to_be_visible()
    page.fill("#patient-ref", "P-0001")
    expect(page.locator("#patient-ref-error")).to_be_hidden()
    page.fill("#patient-ref", "John Smith")
    expect(page.locator("#patient-ref-error")).to_be_visible()
    page.set_input_files("#file-input", [str(NORMAL_PNG)])
    page.click("#classify-button")
    card = page.locator(".scan-card").first
    expect(card).to_have_attribute("data-state", "failed", timeout=60_000)
    expect(card.locator(".error-title")).to_contain_text("never a name")


def acquired_on(*days: str | None):
    """Rewrites the stored records' answer (newest upload first): each gets the study date given (None: none)."""

    def rewrite(route):
        response = route.fetch()
        body = response.json()
        for record, day in zip(body["scans"], days, strict=False):
            record["study_date"] = day
        route.fulfill(response=response, body=json.dumps(body))

    return rewrite


def test_the_timeline_orders_by_acquisition_date_and_compares_with_an_earlier_day(open_page, tmp_path):
    page, _ = open_page()
    sign_in(page, "clinician-a@example.org")
    page.fill("#patient-ref", "P-" + uuid.uuid4().hex[:8])
    classify(page, NORMAL_PNG)
    # The newest upload is a scan acquired a year ago; the older upload has no date: its upload day counts.
    page.route(re.compile(r".*/patients/[^/]+/scans.*"), acquired_on("20251103", None))
    classify(page, MALIGNANT_JPG)
    timeline = page.locator("#timeline .timeline-item")
    expect(timeline).to_have_count(2)
    expect(timeline.nth(0).locator(".timeline-meta")).to_contain_text("(no acquisition date)")
    expect(timeline.nth(1).locator(".timeline-meta")).to_contain_text("acquired 2025-11-03")
    expect(timeline.nth(1)).to_have_class("timeline-item is-new")
    expect(page.locator("#timeline-status")).to_contain_text("newest acquisition first")
    expect(page.locator("#compare")).to_be_hidden()  # the new scan is the older one: nothing earlier to compare

    page.unroute(re.compile(r".*/patients/[^/]+/scans.*"))
    page.route(re.compile(r".*/patients/[^/]+/scans.*"), acquired_on("2026-11-02", "2026-05-02"))
    third = tmp_path / "third.png"
    third.write_bytes(NORMAL_PNG.read_bytes())
    classify(page, third)  # the new one acquired 2026-11-02, compared with 2026-05-02's
    expect(timeline).to_have_count(3)
    expect(page.locator("#compare figure")).to_have_count(2)
    expect(page.locator("#compare figcaption").first).to_contain_text("This scan — acquired 2026-11-02")
    expect(page.locator("#compare figcaption").nth(1)).to_contain_text("Previous scan — acquired 2026-05-02")


def test_a_study_record_reads_as_its_summary_tier_and_uncertainty(open_page):
    page, _ = open_page()
    sign_in(page, "clinician-a@example.org")
    page.fill("#patient-ref", "P-" + uuid.uuid4().hex[:8])

    def as_study(route):  # the record a whole study leaves (the studies work's shape), in place of a slice's
        response = route.fetch()
        body = response.json()
        body["scans"][0].update(
            tier="not_excluded",
            uncertain=True,
            study_date="2026-10-30",
            input={"format": "study", "width": None, "height": None},
            study={"study_id": "s-1", "flagged": 3, "total": 240, "failed": 2, "most_suspicious_index": 7},
        )
        route.fulfill(response=response, body=json.dumps(body))

    page.route(re.compile(r".*/patients/[^/]+/scans.*"), as_study)
    classify(page, NORMAL_PNG)
    item = page.locator("#timeline .timeline-item").first
    expect(item.locator(".timeline-verdict")).to_have_text(
        "New: Malignancy not excluded — review · study: 3 flagged of 240 slices (2 not classified)"
        " · uncertain — needs review"
    )
    expect(item.locator(".timeline-meta")).to_contain_text("acquired 2026-10-30")


def test_axe_and_a_phone_find_no_problem_in_the_signed_in_timeline(open_page, axe_script, tmp_path):
    page, _ = open_page(PHONE, mobile=True)
    sign_in(page, "clinician-b@example.org")
    page.fill("#patient-ref", "MRN-" + uuid.uuid4().hex[:6])
    classify(page, NORMAL_PNG)
    page.route(re.compile(r".*/patients/[^/]+/scans.*"), acquired_on("2026-11-02", "2026-05-02"))
    classify(page, MALIGNANT_JPG)
    expect(page.locator("#compare figure")).to_have_count(2)
    sizes = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert sizes[0] <= sizes[1] <= PHONE["width"], sizes
    serious = serious_axe_violations(page, axe_script)
    assert not serious, "\n".join(serious)
