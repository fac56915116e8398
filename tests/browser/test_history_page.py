"""Sign-in and the patient timeline in headless Chromium, against `make run`'s stack and its local Cognito pool."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
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
    assert not any(re.search(r"/patients($|[/?])", url) for _, url in watch.requests)  # the API, not patients.js
    expect(page.locator("#timeline-section")).to_be_hidden()


def config_with(stack: str, extra: str) -> str:
    """The stack's own config.js (API, local pool) with ``extra`` after it."""
    with urllib.request.urlopen(stack + "/config.js", timeout=10) as response:
        return response.read().decode() + "\n" + extra + "\n"


def test_a_stored_scan_is_shared_with_the_team_only_and_sign_out_ends_the_session(open_page, stack, tmp_path):
    patient = "P-" + uuid.uuid4().hex[:8]

    # Clinician A signs in, classifies two scans for the patient: the timeline shows both, new beside previous.
    page_a, watch_a = open_page(config=config_with(stack, "window.LUNGSCAN_CONFIG.deleteUndoMs = 1500;"))
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
    expect(first.locator(".timeline-meta")).to_contain_text("by Dr A. Demo")  # the administrator's name
    expect(first.locator(".timeline-meta")).not_to_contain_text("@example.org")  # never the editable email
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
    expect(page_b.locator("#timeline .timeline-delete")).to_have_count(0)  # only the author may delete

    # Another team does not.
    page_c, _ = open_page()
    sign_in(page_c, "clinician-c@example.org")
    show_history(page_c, patient)
    expect(page_c.locator("#timeline .timeline-item")).to_have_count(0)
    expect(page_c.locator("#timeline-status")).to_contain_text("No scans stored for this patient in your team")

    # A deletes the older scan, after confirming, and may undo it for a moment; B then sees one.
    page_a.once("dialog", lambda dialog: dialog.dismiss())
    page_a.locator("#timeline .timeline-delete").nth(1).click()
    expect(timeline).to_have_count(2)  # dismissed: nothing deleted
    page_a.once("dialog", lambda dialog: dialog.accept())
    page_a.locator("#timeline .timeline-delete").nth(1).click()
    expect(timeline).to_have_count(1)
    page_a.click("#undo-button")  # undone: nothing was sent
    expect(timeline).to_have_count(2)
    expect(page_a.locator("#undo-bar")).to_be_hidden()
    page_a.wait_for_timeout(2000)  # past the undo window: still nothing deleted
    assert not [url for method, url in watch_a.requests if method == "DELETE"]
    page_a.once("dialog", lambda dialog: dialog.accept())
    page_a.locator("#timeline .timeline-delete").nth(1).click()
    expect(timeline).to_have_count(1)
    expect(page_a.locator("#undo-bar")).to_be_visible()
    expect(page_a.locator("#undo-bar")).to_be_hidden(timeout=10_000)  # the window passed: deleted on the server
    expect(page_a.locator("#timeline-status")).to_contain_text("deleted")
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
    assert not any(re.search(r"/patients($|[/?])", url) for _, url in watch_a.requests)


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


def refresh_refused(stack: str, client_id: str, refresh_token: str) -> bool:
    """Whether the local pool refuses to renew a session with this refresh token (asked through the page's proxy)."""
    request = urllib.request.Request(
        stack + "/cognito-idp/",
        data=json.dumps(
            {
                "AuthFlow": "REFRESH_TOKEN_AUTH",
                "ClientId": client_id,
                "AuthParameters": {"REFRESH_TOKEN": refresh_token},
            }
        ).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            return False
    except urllib.error.HTTPError as error:
        return error.code == 400


def test_the_page_renews_its_short_lived_token_and_sign_out_revokes_the_refresh_token(open_page, stack):
    """Issue 24, finding 5: the page's "Sign out" only cleared the browser, and ID tokens lived an hour."""
    page, _ = open_page()
    sign_in(page, "clinician-c@example.org")
    session = page.evaluate("() => JSON.parse(sessionStorage.getItem('lungscan.session'))")
    assert session["refreshToken"] and session["idToken"]
    client_id = json.loads(config_with(stack, "").split("window.LUNGSCAN_CONFIG.cognito = ", 1)[1].split(";")[0])[
        "clientId"
    ]

    # The token is about to end: on load the page renews it with the refresh token, and stays signed in.
    page.evaluate(
        "() => { const s = JSON.parse(sessionStorage.getItem('lungscan.session'));"
        " s.expiresAt = Date.now() + 1000; sessionStorage.setItem('lungscan.session', JSON.stringify(s)); }"
    )
    time.sleep(1.1)  # moto's tokens carry whole seconds: a renewed one differs
    page.reload()
    expect(page.locator("#signed-in")).to_be_visible()
    page.wait_for_function(
        "(old) => JSON.parse(sessionStorage.getItem('lungscan.session')).idToken !== old", arg=session["idToken"]
    )
    renewed = page.evaluate("() => JSON.parse(sessionStorage.getItem('lungscan.session'))")
    assert renewed["refreshToken"] == session["refreshToken"] and renewed["expiresAt"] > session["expiresAt"] - 1000
    show_history(page, "P-" + uuid.uuid4().hex[:8])  # the renewed token is accepted
    expect(page.locator("#timeline-status")).to_contain_text("No scans stored")

    # Sign out: the refresh token is revoked at the pool, so no copy of this session can be renewed.
    assert not refresh_refused(stack, client_id, session["refreshToken"])
    with page.expect_request(
        lambda request: (
            request.url.endswith("/cognito-idp/") and request.headers.get("x-amz-target", "").endswith("RevokeToken")
        )
    ):
        page.click("#sign-out-button")
    expect(page.locator("#sign-in-form")).to_be_visible()
    expect(page.locator("#auth-status")).to_have_text("Signed out. Results are no longer stored.")
    assert refresh_refused(stack, client_id, session["refreshToken"])
    assert page.evaluate("() => sessionStorage.getItem('lungscan.session')") is None


class FakeCognito:
    """Cognito's side of the deployed sign-in, played for the page: SRP (the server's half of the exchange,
    written from the protocol with pycognito's hashing helpers, so the page's proof is checked, not trusted),
    then the TOTP setup at the first sign-in and the code at the next. Anything else (renewal, RevokeToken)
    goes on to the local pool, whose tokens the final answer hands over."""

    POOL_ID = "us-east-1_TestPool"
    USER_ID = "7d3c-user-id"
    CODE = "123456"

    def __init__(self, password: str, tokens: dict) -> None:
        import secrets

        from pycognito.aws_srp import G_HEX, N_HEX, hash_sha256, hex_hash, hex_to_long, pad_hex

        self.n, self.g = hex_to_long(N_HEX), hex_to_long(G_HEX)
        self.k = hex_to_long(hex_hash("00" + N_HEX + "0" + G_HEX))
        self.salt = "8" + secrets.token_hex(15)  # a first digit that needs the 00 padding
        identity = hash_sha256(f"{self.POOL_ID.split('_')[1]}{self.USER_ID}:{password}".encode())
        self.verifier = pow(self.g, hex_to_long(hex_hash(pad_hex(self.salt) + identity)), self.n)
        self.tokens, self.mfa_ready, self.calls = tokens, False, []

    def proof_holds(self, srp_a: int, server: tuple[int, int], responses: dict) -> bool:
        import hashlib
        import hmac

        from pycognito.aws_srp import compute_hkdf, hex_hash, hex_to_long, long_to_hex, pad_hex

        b, big_b = server
        u = hex_to_long(hex_hash(pad_hex(srp_a) + pad_hex(big_b)))
        shared = pow(srp_a * pow(self.verifier, u, self.n), b, self.n)
        key = compute_hkdf(bytearray.fromhex(pad_hex(shared)), bytearray.fromhex(pad_hex(long_to_hex(u))))
        message = (
            self.POOL_ID.split("_")[1].encode()
            + self.USER_ID.encode()
            + base64.b64decode(responses["PASSWORD_CLAIM_SECRET_BLOCK"])
            + responses["TIMESTAMP"].encode()
        )
        expected = base64.b64encode(hmac.new(bytes(key), message, hashlib.sha256).digest()).decode()
        return hmac.compare_digest(expected, responses["PASSWORD_CLAIM_SIGNATURE"])

    def handle(self, route) -> None:
        import secrets

        action = route.request.headers.get("x-amz-target", "").rsplit(".", 1)[-1]
        body = json.loads(route.request.post_data or "{}")
        self.calls.append((action, body.get("AuthFlow") or body.get("ChallengeName")))

        def answer(status: int, payload: dict) -> None:
            route.fulfill(status=status, body=json.dumps(payload), content_type="application/x-amz-json-1.1")

        if action == "InitiateAuth" and body.get("AuthFlow") == "USER_SRP_AUTH":
            assert set(body["AuthParameters"]) == {"USERNAME", "SRP_A"}  # the password never leaves the page
            b = secrets.randbelow(self.n)
            big_b = (self.k * self.verifier + pow(self.g, b, self.n)) % self.n
            self.server, self.srp_a = (b, big_b), int(body["AuthParameters"]["SRP_A"], 16)
            parameters = {
                "SALT": self.salt,
                "SRP_B": format(big_b, "x"),
                "SECRET_BLOCK": base64.b64encode(secrets.token_bytes(48)).decode(),
                "USER_ID_FOR_SRP": self.USER_ID,
                "USERNAME": self.USER_ID,
            }
            return answer(200, {"ChallengeName": "PASSWORD_VERIFIER", "ChallengeParameters": parameters})
        challenge = body.get("ChallengeName")
        if action == "RespondToAuthChallenge" and challenge == "PASSWORD_VERIFIER":
            if not self.proof_holds(self.srp_a, self.server, body["ChallengeResponses"]):
                return answer(400, {"__type": "NotAuthorizedException", "message": "Incorrect username or password."})
            step = "SOFTWARE_TOKEN_MFA" if self.mfa_ready else "MFA_SETUP"
            return answer(200, {"ChallengeName": step, "Session": "s-code", "ChallengeParameters": {}})
        if action == "AssociateSoftwareToken":
            return answer(200, {"SecretCode": "JBSWY3DPEHPK3PXP", "Session": "s-associated"})
        if action == "VerifySoftwareToken":
            self.mfa_ready = body["UserCode"] == self.CODE
            return answer(200, {"Status": "SUCCESS" if self.mfa_ready else "ERROR", "Session": "s-verified"})
        if action == "RespondToAuthChallenge" and challenge in ("MFA_SETUP", "SOFTWARE_TOKEN_MFA"):
            code = body["ChallengeResponses"].get("SOFTWARE_TOKEN_MFA_CODE", self.CODE)
            if code != self.CODE:
                return answer(400, {"__type": "CodeMismatchException", "message": "Invalid code received."})
            return answer(200, {"AuthenticationResult": self.tokens})
        return route.continue_()


def test_the_deployed_sign_in_proves_the_password_with_srp_then_asks_for_the_authenticator_code(open_page, stack):
    """Issue 24, finding 9: the page sent the password itself (USER_PASSWORD_AUTH) and knew no MFA."""
    config = config_with(stack, "")
    client_id = json.loads(config.split("window.LUNGSCAN_CONFIG.cognito = ", 1)[1].split(";")[0])["clientId"]
    request = urllib.request.Request(
        stack + "/cognito-idp/",
        data=json.dumps(
            {
                "AuthFlow": "USER_PASSWORD_AUTH",
                "ClientId": client_id,
                "AuthParameters": {"USERNAME": "clinician-c@example.org", "PASSWORD": DEMO_PASSWORD},
            }
        ).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        tokens = json.loads(response.read())["AuthenticationResult"]
    fake = FakeCognito(DEMO_PASSWORD, tokens)
    deployed = (  # as deploy.sh writes it: SRP against the pool
        "window.LUNGSCAN_CONFIG.cognito.passwordSignIn = false;"
        f' window.LUNGSCAN_CONFIG.cognito.userPoolId = "{FakeCognito.POOL_ID}";'
    )
    page, _ = open_page(config=config_with(stack, deployed))
    page.context.route("**/cognito-idp/", fake.handle)

    page.fill("#sign-in-email", "clinician-c@example.org")
    page.fill("#sign-in-password", "not-the-password-1!")
    page.click("#sign-in-button")
    expect(page.locator("#auth-status")).to_contain_text("Sign-in failed")  # the proof of a wrong password fails

    page.fill("#sign-in-password", DEMO_PASSWORD)
    page.click("#sign-in-button")
    expect(page.locator("#code-form")).to_be_visible()  # first sign-in: set up the authenticator app
    expect(page.locator("#code-secret")).to_have_text("JBSWY3DPEHPK3PXP")
    expect(page.locator("#code-uri")).to_contain_text("otpauth://totp/LungScan:")
    page.fill("#code-input", FakeCognito.CODE)
    page.click("#code-button")
    expect(page.locator("#signed-in")).to_be_visible()
    expect(page.locator("#signed-in-who")).to_contain_text("Dr C. Demo")
    expect(page.locator("#code-form")).to_be_hidden()
    assert page.evaluate("() => document.getElementById('code-secret').textContent") == ""  # not left in the page

    page.click("#sign-out-button")
    expect(page.locator("#sign-in-form")).to_be_visible()
    sign_in_again = [("#sign-in-email", "clinician-c@example.org"), ("#sign-in-password", DEMO_PASSWORD)]
    for selector, value in sign_in_again:
        page.fill(selector, value)
    page.click("#sign-in-button")
    expect(page.locator("#code-form")).to_be_visible()  # later sign-ins: the code only
    expect(page.locator("#code-setup")).to_be_hidden()
    page.fill("#code-input", "654321")
    page.click("#code-button")
    expect(page.locator("#auth-status")).to_contain_text("authenticator code did not match")
    expect(page.locator("#signed-in")).to_be_hidden()
    assert ("InitiateAuth", "USER_PASSWORD_AUTH") not in fake.calls
    assert ("RespondToAuthChallenge", "SOFTWARE_TOKEN_MFA") in fake.calls


def test_the_team_s_patients_are_listed_a_page_at_a_time_and_open_their_timeline(
    open_page, stack, axe_script, tmp_path
):
    """Issue 21, item 4: the page lists the team's patients (GET /patients), paged by the API's `next`."""
    tag = uuid.uuid4().hex[:6]
    refs = [f"L{tag}-1", f"L{tag}-2", f"L{tag}-3"]
    small = "window.LUNGSCAN_CONFIG.patientsPageSize = 2; window.LUNGSCAN_CONFIG.deleteUndoMs = 1000;"
    page, watch = open_page(PHONE, mobile=True, config=config_with(stack, small))
    expect(page.locator("#patients-box")).to_be_hidden()
    sign_in(page, "clinician-a@example.org")
    expect(page.locator("#patients-box")).to_be_visible()
    stored = [(refs[1], NORMAL_PNG), (refs[0], NORMAL_PNG), (refs[2], MALIGNANT_JPG), (refs[0], MALIGNANT_JPG)]
    for index, (ref, source) in enumerate(stored):
        page.fill("#patient-ref", ref)
        copy = tmp_path / f"scan-{index}{source.suffix}"  # a name of its own: classify() finds its card by name
        copy.write_bytes(source.read_bytes())
        classify(page, copy)
    expect(page.locator("#timeline .timeline-item")).to_have_count(2)
    status = page.locator("#patients-status")
    items = page.locator("#patients-list .patients-item")
    expect(status).not_to_contain_text("Loading")
    expect(items).to_have_count(2)  # the first page only: the API was asked 2 at a time
    more = page.locator("#patients-more")
    for _ in range(100):  # a page that did not follow `next` would list the first page again and again
        if not more.is_visible():
            break
        before = page.locator("#patients-list .patients-ref").all_text_contents()
        more.click()
        expect(status).not_to_contain_text("Loading")
        after = page.locator("#patients-list .patients-ref").all_text_contents()
        assert after[: len(before)] == before and 0 < len(after) - len(before) <= 2
        assert not set(after[len(before) :]) & set(before), after  # new patients, not the same page again
    expect(more).to_be_hidden()
    listed = page.locator("#patients-list .patients-ref").all_text_contents()
    assert listed == sorted(listed) and len(set(listed)) == len(listed), listed  # reference order, each once
    assert [ref for ref in listed if ref.startswith(f"L{tag}")] == refs
    asked = [url for method, url in watch.requests if method == "GET" and "/patients?" in url]
    assert all("limit=2" in url for url in asked) and any("next=" in url for url in asked), asked

    def row(ref):
        return page.locator("#patients-list .patients-item").filter(
            has=page.locator(".patients-ref", has_text=re.compile("^" + re.escape(ref) + "$"))
        )

    expect(row(refs[0]).locator(".patients-meta")).to_contain_text("2 scans · last ")
    expect(row(refs[1]).locator(".patients-meta")).to_contain_text("1 scan · last ")
    tiers = re.compile("^(Suspicious — review first|Malignancy not excluded — review|No suspicious finding)$")
    for ref in refs:
        expect(row(ref).locator(".patients-verdict")).to_have_text(tiers)
    sizes = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert sizes[0] <= sizes[1] <= PHONE["width"], sizes
    serious = serious_axe_violations(page, axe_script)
    assert not serious, "\n".join(serious)

    # Choosing a patient (mouse, then keyboard) fills the reference and shows that patient's timeline.
    page.fill("#patient-ref", "")
    row(refs[1]).locator("button").click()
    expect(page.locator("#patient-ref")).to_have_value(refs[1])
    expect(page.locator("#timeline-patient")).to_have_text(refs[1])
    expect(page.locator("#timeline .timeline-item")).to_have_count(1)
    expect(page.locator("#timeline-title")).to_be_focused()
    row(refs[0]).locator("button").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#timeline-patient")).to_have_text(refs[0])
    expect(page.locator("#timeline .timeline-item")).to_have_count(2)

    # A delete, once sent, is counted in the list.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#timeline .timeline-delete").first.click()
    expect(page.locator("#timeline-status")).to_contain_text("deleted", timeout=10_000)
    expect(row(refs[0]).locator(".patients-meta")).to_contain_text("1 scan · last ")

    # Signed out: the list is hidden and emptied.
    page.click("#sign-out-button")
    expect(page.locator("#patients-box")).to_be_hidden()
    expect(page.locator("#patients-list .patients-item")).to_have_count(0)
