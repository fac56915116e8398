"""The page in headless Chromium against the local stack: uploads, results, errors, keyboard, a11y, phone."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from helpers import FIXTURES_DIR, PHONE, REPO_ROOT, serious_axe_violations
from PIL import Image
from playwright.sync_api import expect

pytestmark = pytest.mark.slow

NORMAL_PNG = FIXTURES_DIR / "ct_normal_256.png"
MALIGNANT_JPG = FIXTURES_DIR / "ct_malignant_256.jpg"
# The card shows the tier in words, never the original app's "Cancer Detected".
TIERS = {"Suspicious — review first", "Malignancy not excluded — review", "No suspicious finding"}
TIER_CODES = {"suspicious", "not_excluded", "clear"}
CLASSES = {"normal", "benign", "malignant"}  # the stack here serves the 3-class bundle alone
DEFAULT_MODEL = "iq-oth-3class"
VENDOR = REPO_ROOT / "frontend" / "vendor"
# dist/dicomParser.min.js of the npm package dicom-parser 1.8.21.
DICOM_PARSER_SHA256 = "2b990e92de021a9c0d58f7dca693c95fa76be6398648b68441df9423de284a2b"


def config_max_bytes() -> int:
    text = (REPO_ROOT / "frontend" / "config.js").read_text()
    return int(re.search(r"maxUploadBytes:\s*(\d+)", text).group(1))


def dicom_bytes() -> bytes:
    return (REPO_ROOT / "tests" / "fixtures" / "ct_normal_256.dcm").read_bytes()  # real CT pixels in HU


def upload(name: str, data: bytes, mime: str = "") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def card(page, name: str):
    return page.locator(".scan-card").filter(has=page.locator(".scan-name", has_text=name))


def classify(page, *files, expect_state: str = "done") -> None:
    """Add files with the picker, press Classify, wait until every card has an outcome."""
    page.set_input_files("#file-input", list(files))
    page.click("#classify-button")
    for file in files:
        name = file["name"] if isinstance(file, dict) else Path(file).name
        expect(card(page, name)).to_have_attribute("data-state", expect_state, timeout=60_000)


def tab_to(page, selector: str, limit: int = 60) -> None:
    """Press Tab until the element matching ``selector`` has focus (keyboard only)."""
    for _ in range(limit):
        if page.evaluate("(s) => document.activeElement === document.querySelector(s)", selector):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"Tab never reached {selector}")


def focus_is_visible(page, selector: str) -> bool:
    return page.evaluate(
        """(s) => {
            const style = getComputedStyle(document.querySelector(s));
            return style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
        }""",
        selector,
    )


def png_overlay(width: int, height: int) -> str:
    image = Image.new("RGBA", (width, height), (220, 60, 20, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def rewrite_answers(page, change) -> None:
    """Pass /predict to the real API, then let ``change`` edit the JSON answer."""

    def handler(route):
        response = route.fetch()
        answer = response.json()
        change(answer)
        route.fulfill(response=response, body=json.dumps(answer))

    page.route("**/predict", handler)


# ---------------------------------------------------------------- config


def test_config_carries_the_api_url_and_the_api_upload_limit():
    from lungscan.inputs.imaging import DEFAULT_LIMITS

    text = (REPO_ROOT / "frontend" / "config.js").read_text()
    assert re.search(r'apiUrl:\s*""', text), "the committed config.js must stay same-origin"
    assert config_max_bytes() == DEFAULT_LIMITS.max_bytes, "frontend/config.js maxUploadBytes != the API's limit"


def test_page_has_no_inline_code_or_external_links():
    for path in sorted((REPO_ROOT / "frontend").rglob("*")):
        if path.is_dir() or VENDOR in path.parents:
            continue
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), f"{path.name} links outside the site"
    html = (REPO_ROOT / "frontend" / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script>"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"\sstyle\s*=", html), "inline style attribute"


def test_the_vendored_dicom_parser_is_the_npm_package_with_its_licence():
    """Shipped with the site (deploy.sh copies frontend/ as it is), unchanged, beside its MIT licence."""
    script = (VENDOR / "dicom-parser" / "dicomParser.min.js").read_bytes()
    assert hashlib.sha256(script).hexdigest() == DICOM_PARSER_SHA256, "re-vendor it from `npm pack dicom-parser`"
    assert "MIT License" in (VENDOR / "dicom-parser" / "LICENSE").read_text()
    assert {path.name for path in VENDOR.rglob("*") if path.is_file()} == {"dicomParser.min.js", "LICENSE", "README.md"}
    loader = (REPO_ROOT / "frontend" / "dicom-slices.js").read_text()
    assert 'const PARSER_URL = "vendor/dicom-parser/dicomParser.min.js";' in loader


def test_the_page_is_es_modules_from_main_js_that_read_config_once_and_write_text_only():
    """index.html loads config.js, then main.js; every other script is a module main.js reaches by import."""
    frontend = REPO_ROOT / "frontend"
    html = (frontend / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script src="config.js" defer>',
        '<script type="module" src="main.js">',
    ]
    scripts = {path.name: path.read_text() for path in frontend.glob("*.js")}
    reached, todo = set(), ["main.js"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        assert name in scripts, f"a module imports ./{name}, which is not in frontend/"
        reached.add(name)
        todo += re.findall(r'^import\b[^;]*?\bfrom "\./([\w.-]+\.js)";', scripts[name], re.MULTILINE | re.DOTALL)
    assert reached == set(scripts) - {"config.js"}, "frontend/ holds a script no page loads"
    for name, text in scripts.items():
        text = re.sub(r"^\s*//.*$", "", text, flags=re.MULTILINE)  # the code, not the comments about it
        # Server data and file names go into the page as text: never parsed as HTML.
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(", text), name
        if name not in ("config.js", "settings.js"):
            assert "LUNGSCAN_CONFIG" not in text, f"{name} reads config.js itself: import config from settings.js"


# ---------------------------------------------------------------- results


def test_a_real_ct_png_gets_a_result_and_sends_no_file_name(open_page):
    page, watch = open_page()
    expect(page.locator("#disclaimer")).to_contain_text("Not a diagnosis")
    expect(page.locator("#max-size")).to_have_text(f"{config_max_bytes() // 2**20} MB")
    with page.expect_request("**/predict") as sent:
        page.set_input_files("#file-input", str(NORMAL_PNG))
        expect(card(page, "ct_normal_256.png")).to_have_attribute("data-state", "waiting")
        expect(card(page, "ct_normal_256.png").locator(".scan-preview")).to_be_visible()  # local preview
        page.click("#classify-button")
    body = sent.value.post_data_json
    assert body["explain"] is True and body["image"]
    assert "filename" not in body and "ct_normal" not in sent.value.post_data

    result = card(page, "ct_normal_256.png")
    expect(result).to_have_attribute("data-state", "done", timeout=60_000)
    assert result.locator(".verdict").inner_text() in TIERS
    assert result.locator(".label-value").inner_text() in CLASSES
    expect(result.locator(".confidence-value")).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
    fill = result.locator(".confidence .bar-fill")
    assert 0 < float(fill.evaluate("(e) => e.style.getPropertyValue('--value')")) <= 1
    assert fill.evaluate("(e) => e.getBoundingClientRect().width") > 0
    rows = result.locator(".probabilities tbody tr")
    expect(rows).to_have_count(3)
    assert {rows.nth(i).locator("th").inner_text() for i in range(3)} == CLASSES
    expect(result.locator(".model-line")).to_contain_text(DEFAULT_MODEL)
    expect(result.locator(".confidence-explain")).to_contain_text("never 100%")
    expect(result).not_to_contain_text("Cancer Detected")
    expect(result.locator(".model-line")).to_contain_text("version")
    expect(result.locator(".answer-disclaimer")).to_contain_text("Not a diagnosis")
    expect(page.locator("#history-body tr")).to_have_count(1)
    expect(page.locator("#status")).to_contain_text("1 scan classified")
    assert all("ct_normal" not in url for _, url in watch.requests)


def test_several_files_dropped_at_once_are_queued_classified_and_exported(open_page):
    page, _ = open_page()
    files = [
        {"name": "ct_normal_256.png", "type": "image/png", "data": NORMAL_PNG.read_bytes()},
        {"name": "=HYPERLINK(1).jpg", "type": "image/jpeg", "data": MALIGNANT_JPG.read_bytes()},
    ]
    page.evaluate(
        """(files) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, {type: f.type}));
            }
            const zone = document.getElementById('drop-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
            }
        }""",
        [{**f, "data": base64.b64encode(f["data"]).decode()} for f in files],
    )
    expect(page.locator(".scan-card")).to_have_count(2)
    expect(page.locator("#classify-button")).to_have_text("Classify 2 files")
    page.click("#classify-button")
    for f in files:
        expect(card(page, f["name"])).to_have_attribute("data-state", "done", timeout=60_000)
    expect(page.locator("#history-body tr")).to_have_count(2)
    expect(page.locator("#status")).to_contain_text("2 scans classified")

    with page.expect_download() as download:
        page.click("#export-button")
    assert download.value.suggested_filename.endswith(".csv")
    text = Path(download.value.path()).read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["file"] for row in rows] == ["ct_normal_256.png", "'=HYPERLINK(1).jpg"]  # no formula
    for row in rows:
        assert row["tier"] in TIER_CODES and row["label"] in CLASSES
        assert abs(sum(float(row[f"p_{name}"]) for name in CLASSES) - 1) < 1e-3
        assert row["model_name"] == DEFAULT_MODEL and row["request_id"]
        assert row["uncertain"] in ("true", "false") and row["unfamiliar"] in ("true", "false")
        assert row["prediction_set"].split("|")[0] == row["label"]
        answer_set = set(row["prediction_set"].split("|"))
        assert answer_set <= CLASSES
        mixed = "malignant" in answer_set and len(answer_set) > 1
        assert (row["uncertain"] == "true") is (mixed or row["unfamiliar"] == "true")

    page.click("#clear-history-button")
    expect(page.locator("#history-body tr")).to_have_count(0)
    expect(page.locator("#export-button")).to_have_attribute("aria-disabled", "true")


def test_a_dicom_without_extension_gets_the_api_preview_and_a_result(open_page):
    page, _ = open_page()
    classify(page, upload("slice-0001", dicom_bytes()))
    result = card(page, "slice-0001")
    preview = result.locator(".scan-preview")
    expect(preview).to_be_visible()
    assert preview.get_attribute("src").startswith("data:image/png;base64,")
    assert preview.evaluate("(img) => img.naturalWidth") > 0
    expect(result.locator(".no-preview")).to_be_hidden()
    assert result.locator(".verdict").inner_text() in TIERS
    expect(result.locator(".model-line")).to_contain_text("DICOM")
    expect(result.locator(".model-line")).to_contain_text("lung window")


def test_heatmap_toggle_and_opacity_follow_the_api_answer(open_page):
    page, _ = open_page()
    with page.expect_response("**/predict") as answered:
        classify(page, str(MALIGNANT_JPG))
    result = card(page, "ct_malignant_256.jpg")
    heatmap = answered.value.json().get("heatmap")
    controls, overlay = result.locator(".heatmap-controls"), result.locator(".scan-overlay")
    if not heatmap:  # the API decides; the page shows controls only for a heatmap
        expect(controls).to_be_hidden()
        rewrite_answers(page, lambda answer: answer.update(heatmap=png_overlay(256, 256)))
        classify(page, upload("with-heatmap.jpg", MALIGNANT_JPG.read_bytes(), "image/jpeg"))
        result = card(page, "with-heatmap.jpg")
        controls, overlay = result.locator(".heatmap-controls"), result.locator(".scan-overlay")
    expect(controls).to_be_visible()
    expect(overlay).to_be_hidden()
    toggle = result.locator(".heatmap-toggle")
    expect(result.get_by_label("Show heatmap")).to_have_count(1)
    expect(result.get_by_label("Heatmap opacity")).to_be_disabled()
    toggle.check()
    expect(overlay).to_be_visible()
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    box, image_box = overlay.bounding_box(), result.locator(".scan-preview").bounding_box()
    assert abs(box["width"] - image_box["width"]) < 1 and abs(box["height"] - image_box["height"]) < 1
    result.get_by_label("Heatmap opacity").fill("80")
    assert overlay.evaluate("(e) => getComputedStyle(e).opacity") == "0.8"
    expect(result.locator(".heatmap-opacity-value")).to_have_text("80%")
    toggle.uncheck()
    expect(overlay).to_be_hidden()

    page.unroute("**/predict")
    for empty in ("", None):
        rewrite_answers(page, lambda answer, empty=empty: answer.update(heatmap=empty))
        name = f"no-heatmap-{empty!r}.png"
        classify(page, upload(name, NORMAL_PNG.read_bytes(), "image/png"))
        if card(page, name).locator(".details-button").is_visible():  # a worklist from 4 files: open the card
            card(page, name).locator(".details-button").click()
        expect(card(page, name).locator(".verdict")).to_be_visible()
        expect(card(page, name).locator(".heatmap-controls")).to_be_hidden()
        page.unroute("**/predict")


# ---------------------------------------------------------------- refusals and errors


def test_a_text_file_gets_a_plain_error_and_the_page_keeps_working(open_page):
    page, _ = open_page()
    classify(page, upload("notes.txt", b"Patient notes, not an image.\n", "text/plain"), expect_state="failed")
    failed = card(page, "notes.txt")
    expect(failed.locator(".error-title")).to_have_text(
        "This file is not a PNG, JPEG or DICOM image the service can read."
    )
    expect(failed.locator(".error-detail")).to_contain_text("Request id:")
    expect(failed.locator(".retry-button")).to_be_hidden()  # retrying cannot help
    expect(page.locator("#status")).to_contain_text("1 failed")
    classify(page, str(NORMAL_PNG))  # not frozen


def test_an_oversize_file_is_refused_before_upload(open_page):
    page, watch = open_page()
    limit = config_max_bytes()
    page.set_input_files(
        "#file-input",
        [upload("huge.dcm", b"\0" * (limit + 1)), upload("empty.png", b"", "image/png")],
    )
    huge = card(page, "huge.dcm")
    expect(huge).to_have_attribute("data-state", "refused")
    expect(huge.locator(".error-title")).to_contain_text(
        f"Too large: {(limit + 1) / 2**20:.1f} MB. The limit is {limit // 2**20} MB per file."
    )
    expect(huge.locator(".error-detail")).to_contain_text("It was not sent")
    expect(card(page, "empty.png").locator(".error-title")).to_have_text("This file is empty.")
    expect(page.locator("#status")).to_contain_text("2 files were refused")
    expect(page.locator("#classify-button")).to_have_attribute("aria-disabled", "true")
    page.click("#classify-button", force=True)  # aria-disabled: it still answers, with a hint
    expect(page.locator("#status")).to_have_text("Add CT slices first.")
    page.wait_for_timeout(300)
    assert watch.predict_requests() == []
    page.click("#clear-queue-button")
    expect(page.locator(".scan-card")).to_have_count(0)
    assert watch.predict_requests() == []


def test_api_errors_network_failures_and_timeouts_read_plainly(open_page):
    page, _ = open_page(config='window.LUNGSCAN_CONFIG = {apiUrl: "", maxUploadBytes: 4194304, requestTimeoutMs: 700};')
    png = NORMAL_PNG.read_bytes()
    error = {"error": {"code": "model_unavailable", "message": "No model could be loaded.", "request_id": "r-1"}}
    cases = [
        ("503.png", lambda route: route.fulfill(status=503, json=error), "The model is not available right now."),
        (
            "502.png",
            lambda route: route.fulfill(status=502, body="<html>Bad gateway</html>", content_type="text/html"),
            "The service had a problem (status 502).",
        ),
        (
            "429.png",
            lambda route: route.fulfill(status=429, json={"message": "Too Many Requests"}),
            "The service is busy.",
        ),
        ("offline.png", lambda route: route.abort("internetdisconnected"), "Could not reach the LungScan service."),
        ("slow.png", lambda route: None, "The service did not answer within 1 second."),  # never answers
    ]
    for name, handler, message in cases:
        page.route("**/predict", handler)
        classify(page, upload(name, png, "image/png"), expect_state="failed")
        expect(card(page, name).locator(".error-title")).to_contain_text(message)
        expect(card(page, name).locator(".retry-button")).to_be_visible()
        page.unroute("**/predict")
    expect(card(page, "503.png").locator(".error-detail")).to_contain_text("No model could be loaded. Request id: r-1.")

    not_ct = {"error": {"code": "not_ct_like", "message": "Send a chest CT slice.", "request_id": "r-2"}}
    page.route("**/predict", lambda route: route.fulfill(status=422, json=not_ct))
    classify(page, upload("photo.png", png, "image/png"), expect_state="failed")
    expect(card(page, "photo.png").locator(".error-title")).to_have_text(
        "This does not look like a CT slice of the chest, so no verdict was given. "
        "Add one chest CT slice (DICOM, PNG or JPEG)."
    )
    expect(card(page, "photo.png").locator(".error-detail")).to_contain_text("Send a chest CT slice.")
    page.unroute("**/predict")

    answer = {
        "label": "benign",
        "tier": "not_excluded",
        "tier_text": "Malignancy not excluded — review",
        "verdict": "Cancer Detected",
        "prediction": "Cancer Detected",
        "suspicious": True,
        "confidence": 0.7,
        "probabilities": {"normal": 0.2, "benign": 0.7, "malignant": 0.1},
        "prediction_set": ["benign", "normal", "malignant"],
        "uncertain": True,
        "unfamiliar": True,
        "notes": ["This scan looks unlike the scans this model learned from; its answer is unreliable."],
        "threshold": 0.5,
        "model": {"name": "iq-oth-3class", "version": "canned", "sha256": None},
        "input": {"format": "PNG", "width": 256, "height": 256, "window": None},
        "heatmap": None,
        "preview": None,
        "disclaimer": "Research tool. Not a diagnosis.",
        "request_id": "r-2",
    }
    page.route("**/predict", lambda route: route.fulfill(status=200, json=answer))
    card(page, "slow.png").locator(".retry-button").click()
    expect(card(page, "slow.png")).to_have_attribute("data-state", "done")
    expect(card(page, "slow.png").locator(".error-title")).to_be_hidden()
    # The tier in words (never the deprecated "Cancer Detected" the answer still carries for old scripts).
    expect(card(page, "slow.png").locator(".verdict")).to_have_text("Malignancy not excluded — review")
    expect(card(page, "slow.png")).not_to_contain_text("Cancer Detected")
    # Unfamiliar in plain words; the conformal set and its guarantee explained next to it.
    expect(card(page, "slow.png").locator(".unfamiliar-note")).to_contain_text("unlike the scans this model learned")
    expect(card(page, "slow.png").locator(".uncertain-note")).to_be_visible()
    expect(card(page, "slow.png").locator(".uncertain-note")).to_contain_text("Uncertain — needs review")
    expect(card(page, "slow.png").locator(".set-value")).to_have_text("benign, normal, malignant")
    expect(card(page, "slow.png").locator(".set-explain")).to_contain_text("9 times in 10")
    expect(page.locator("#history-body tr").first).to_contain_text("uncertain — needs review")
    expect(page.locator("#status")).to_contain_text("Finished: 1 scan classified")


# ---------------------------------------------------------------- keyboard, accessibility, phone


def test_the_whole_flow_works_with_the_keyboard_alone(open_page):
    page, _ = open_page()
    # Listening turns on Chromium's file chooser interception; do it before a key can open one.
    page.on("filechooser", lambda chooser: None)
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    assert focus_is_visible(page, ".skip-link")
    tab_to(page, "#file-input")
    assert focus_is_visible(page, ".choose-label"), "the focused file input shows no focus ring"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(NORMAL_PNG))
    tab_to(page, "#classify-button")
    assert focus_is_visible(page, "#classify-button")
    page.keyboard.press("Enter")
    result = card(page, "ct_normal_256.png")
    expect(result).to_have_attribute("data-state", "done", timeout=60_000)
    expect(page.locator("#classify-button")).to_be_focused()  # focus is not lost while it works

    if result.locator(".heatmap-controls").is_visible():
        tab_to(page, "#scan-1 .heatmap-toggle")
        page.keyboard.press("Space")
        expect(result.locator(".scan-overlay")).to_be_visible()
        page.keyboard.press("Tab")
        expect(result.locator(".heatmap-opacity")).to_be_focused()
        page.keyboard.press("ArrowRight")
        expect(result.locator(".heatmap-opacity-value")).to_have_text("55%")

    tab_to(page, "#export-button")
    assert focus_is_visible(page, "#export-button")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert "ct_normal_256.png" in Path(download.value.path()).read_text(encoding="utf-8-sig")


def test_axe_finds_no_serious_or_critical_violations(open_page, axe_script):
    page, _ = open_page()
    rewrite_answers(page, lambda answer: answer.update(heatmap=answer.get("heatmap") or png_overlay(256, 256)))
    classify(page, str(NORMAL_PNG))
    card(page, "ct_normal_256.png").locator(".heatmap-toggle").check()
    page.unroute("**/predict")
    classify(page, upload("notes.txt", b"not an image", "text/plain"), expect_state="failed")
    page.set_input_files("#file-input", upload("huge.png", b"\0" * (config_max_bytes() + 1), "image/png"))
    page.set_input_files("#file-input", str(MALIGNANT_JPG))  # one waiting, with Remove

    serious = serious_axe_violations(page, axe_script)
    assert not serious, "\n".join(serious)


def test_a_phone_sized_viewport_has_no_horizontal_scroll(open_page, axe_script):
    page, _ = open_page(PHONE, mobile=True)

    def assert_no_horizontal_scroll():
        sizes = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth, window.innerWidth]"
        )
        assert sizes[0] <= sizes[1] <= PHONE["width"], f"scrollWidth, clientWidth, innerWidth = {sizes}"

    assert_no_horizontal_scroll()
    classify(page, upload("a-very-long-file-name-without-any-spaces-" + "x" * 60 + ".png", NORMAL_PNG.read_bytes()))
    classify(page, upload("notes.txt", b"not an image", "text/plain"), expect_state="failed")
    page.set_input_files("#file-input", upload("huge.png", b"\0" * (config_max_bytes() + 1)))
    expect(page.locator("#history-body tr")).to_have_count(1)
    assert_no_horizontal_scroll()
    for button in ("#classify-button", "#export-button"):
        assert page.locator(button).bounding_box()["height"] >= 40  # a finger-sized target
    serious = serious_axe_violations(page, axe_script)  # the narrow layout too
    assert not serious, "\n".join(serious)


def test_a_config_without_the_limit_falls_back_to_the_apis(open_page):
    """deploy.sh may write only apiUrl: the page then assumes the API's own limit."""
    from lungscan.inputs.imaging import DEFAULT_LIMITS

    page, _ = open_page(config='window.LUNGSCAN_CONFIG = {apiUrl: ""};\n')
    expect(page.locator("#max-size")).to_have_text(f"{DEFAULT_LIMITS.max_bytes // 2**20} MB")
    page.set_input_files("#file-input", upload("big.png", b"\0" * (DEFAULT_LIMITS.max_bytes + 1)))
    expect(card(page, "big.png")).to_have_attribute("data-state", "refused")


def test_an_api_key_from_config_is_sent_and_a_refusal_reads_plainly(open_page):
    page, _ = open_page(config='window.LUNGSCAN_CONFIG = {apiUrl: "", maxUploadBytes: 4194304, apiKey: "k-123"};')
    seen = []

    def gateway(route):
        seen.append(route.request.headers.get("x-api-key"))
        route.fulfill(status=403, json={"message": "Forbidden"})

    page.route("**/predict", gateway)
    classify(page, upload("scan.png", NORMAL_PNG.read_bytes(), "image/png"), expect_state="failed")
    assert seen == ["k-123"]
    expect(card(page, "scan.png").locator(".error-title")).to_contain_text("The service refused access")
    expect(card(page, "scan.png").locator(".retry-button")).to_be_hidden()
