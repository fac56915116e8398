"""Issue 24's accounts findings through the handler: revoked clinicians (5), identity that cannot be self-edited (6),
history pages within Lambda's answer limit and author-only deletes (7), every refusal audited (8). Claims as API
Gateway's Cognito authorizer passes them; the pool and the table are moto's, in-process."""

from __future__ import annotations

import base64
import io
import json
import logging

import numpy as np
import pytest
from botocore.exceptions import EndpointConnectionError
from helpers import HistoryWorld, ct_like_image, encode, make_event
from PIL import Image

from lungscan.accounts import history

ALICE = {"sub": "sub-a", "email": "a@example.org", "cognito:groups": "oncology", "custom:display_name": "Dr A"}
BOB = {"sub": "sub-b", "email": "b@example.org", "cognito:groups": "oncology"}
CAROL = {"sub": "sub-c", "email": "c@example.org", "cognito:groups": "radiology"}
LAMBDA_ANSWER_LIMIT = 6 * 1024 * 1024


@pytest.fixture
def world(app_module, monkeypatch):
    import history_api
    from moto import mock_aws

    with mock_aws():
        world = HistoryWorld(monkeypatch, history_api)
        for claims in (ALICE, BOB, CAROL):
            world.enroll(claims["sub"], claims["cognito:groups"])
        yield world


def call(app_module, lambda_context, method, path, claims, *, query=None, body=None) -> tuple[int, dict, int]:
    """(status, JSON body, bytes of the answer as Lambda returns it)."""
    event = make_event(method, path, query=query, body=body, content_type="application/json" if body else None)
    if claims is not None:
        event["requestContext"]["authorizer"] = {"claims": dict(claims)}
    result = app_module.lambda_handler(event, lambda_context)
    return result["statusCode"], json.loads(result["body"]) if result.get("body") else {}, len(json.dumps(result))


def store_scan(app_module, lambda_context, claims, patient="P-0001", seed=0) -> tuple[int, dict]:
    body = json.dumps({"image": base64.b64encode(encode(ct_like_image(seed=seed))).decode(), "patient": patient})
    status, answer, _ = call(app_module, lambda_context, "POST", "/predict", claims, body=body)
    return status, answer


def scans(app_module, lambda_context, claims, patient="P-0001", **query):
    return call(app_module, lambda_context, "GET", f"/patients/{patient}/scans", claims, query=query or None)


def delete(app_module, lambda_context, claims, record_id, patient="P-0001"):
    return call(app_module, lambda_context, "DELETE", f"/patients/{patient}/scans/{record_id}", claims)


# ---------------------------------------------------------------- 5: revocation


def test_a_disabled_clinicians_token_can_no_longer_store_or_delete_and_reads_stop_within_the_cache(
    app_module, lambda_context, world, monkeypatch
):
    status, answer = store_scan(app_module, lambda_context, ALICE)
    assert status == 200, answer
    assert scans(app_module, lambda_context, ALICE)[0] == 200  # remembered as enabled for the cache's minute
    world.cognito.admin_disable_user(UserPoolId=world.pool, Username="sub-a")

    monkeypatch.setattr(app_module.store, "get", lambda *a, **k: pytest.fail("classified for a disabled account"))
    status, error = store_scan(app_module, lambda_context, ALICE, seed=1)  # the same, still unexpired, token
    assert (status, error["error"]["code"]) == (403, "access_revoked")
    status, error, _ = delete(app_module, lambda_context, ALICE, answer["record_id"])
    assert (status, error["error"]["code"]) == (403, "access_revoked")
    assert len(scans(app_module, lambda_context, BOB)[1]["scans"]) == 1  # nothing deleted, nothing stored

    world.clock.now += 61  # past the read cache: reads are refused too
    status, error, _ = scans(app_module, lambda_context, ALICE)
    assert (status, error["error"]["code"]) == (403, "access_revoked")
    assert call(app_module, lambda_context, "GET", "/patients", ALICE, query=None)[0] == 403


def test_a_clinician_moved_to_another_team_keeps_nothing_of_the_old_one(app_module, lambda_context, world):
    _, answer = store_scan(app_module, lambda_context, ALICE)
    world.leave("sub-a", "oncology")
    world.join("sub-a", "radiology")
    status, error = store_scan(app_module, lambda_context, ALICE, seed=1)  # the token still says oncology
    assert (status, error["error"]["code"]) == (403, "access_revoked")
    assert delete(app_module, lambda_context, ALICE, answer["record_id"])[0] == 403
    world.clock.now += 61
    assert scans(app_module, lambda_context, ALICE)[0] == 403
    assert len(scans(app_module, lambda_context, BOB)[1]["scans"]) == 1


def test_a_clinician_added_to_a_second_team_is_refused_not_given_the_tokens_team(app_module, lambda_context, world):
    world.join("sub-b", "radiology")  # the token says oncology; the pool now says oncology and radiology
    status, error = store_scan(app_module, lambda_context, BOB)
    assert (status, error["error"]["code"]) == (403, "access_revoked")


def test_a_deleted_account_is_refused(app_module, lambda_context, world):
    world.cognito.admin_delete_user(UserPoolId=world.pool, Username="sub-b")
    status, error = store_scan(app_module, lambda_context, BOB)
    assert (status, error["error"]["code"]) == (403, "access_revoked")


def test_writes_are_refused_when_the_pool_cannot_be_asked(app_module, lambda_context, world, monkeypatch):
    _, answer = store_scan(app_module, lambda_context, ALICE)

    def unreachable(**kwargs):
        raise EndpointConnectionError(endpoint_url="https://cognito-idp.us-east-1.amazonaws.com")

    monkeypatch.setattr(world.cognito, "admin_get_user", unreachable)
    status, error, _ = delete(app_module, lambda_context, ALICE, answer["record_id"])
    assert (status, error["error"]["code"]) == (503, "history_unavailable")
    assert scans(app_module, lambda_context, ALICE)[0] == 200  # a read within the cache still answers
    assert scans(app_module, lambda_context, BOB)[0] == 503  # nobody's standing is guessed
    assert len(world.store.scans("oncology", "P-0001")[0]) == 1  # nothing deleted


# ---------------------------------------------------------------- 6: identity


def test_records_name_the_administrators_display_name_never_the_self_edited_email(app_module, lambda_context, world):
    edited = ALICE | {"email": "chief.radiologist@example.org"}  # changed with the clinician's own access token
    store_scan(app_module, lambda_context, edited)
    (record,) = scans(app_module, lambda_context, BOB)[1]["scans"]
    assert record["clinician"]["name"] == "Dr A" and record["clinician"]["sub"] == "sub-a"
    assert "chief.radiologist" not in json.dumps(record)
    # No display name set yet: the pool's username (an id), still never the email.
    store_scan(app_module, lambda_context, BOB | {"email": "chief.radiologist@example.org"}, seed=1)
    newest = scans(app_module, lambda_context, ALICE)[1]["scans"][0]
    assert newest["clinician"]["name"] == "sub-b" and "chief" not in json.dumps(newest)


# ---------------------------------------------------------------- 7: page sizes, heatmaps, authors


def noisy_png(mode: str, seed: int) -> bytes:
    """A 256 px PNG that does not compress: the largest preview or heatmap a record may hold."""
    rng = np.random.default_rng(seed)
    shape = (256, 256) if mode == "L" else (256, 256, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_page_of_history_stays_well_under_lambdas_answer_limit_and_the_next_page_continues(
    app_module, lambda_context, world
):
    preview, heatmap = noisy_png("L", 0), noisy_png("RGB", 1)
    ids = []
    for index in range(100):
        record = {
            "record_id": f"20260101T{index:09d}Z-{index:012x}",
            "created_at": "2026-01-01T00:00:00.000Z",
            "clinician": {"sub": "sub-a", "name": "Dr A"},
            "model": {"name": "m", "version": "v1"},
            "label": "normal",
            "verdict": "No Cancer Detected",
            "probabilities": {"normal": 1.0},
            "input": {"format": "PNG", "width": 256, "height": 256},
            "input_bytes": 1,
            "preview": preview,
            "heatmap": heatmap,
        }
        ids.append(world.store.add("oncology", "P-0001", record))
    assert (len(preview) + len(heatmap)) * 100 * 4 / 3 > LAMBDA_ANSWER_LIMIT  # one page of all would not fit

    seen, token, pages = [], None, 0
    while True:
        status, page, size = scans(app_module, lambda_context, BOB, limit="100", **({"next": token} if token else {}))
        assert status == 200, page
        assert size < LAMBDA_ANSWER_LIMIT * 0.6, size  # a margin for headers and the base64 API Gateway adds
        assert all("heatmap" not in record and record["has_heatmap"] for record in page["scans"])
        seen += [record["record_id"] for record in page["scans"]]
        pages += 1
        token = page["next"]
        if not token:
            break
    assert seen == ids[::-1] and pages > 1
    status, shown, _ = call(app_module, lambda_context, "GET", f"/patients/P-0001/scans/{ids[0]}/heatmap", CAROL)
    assert (status, shown["error"]["code"]) == (404, "not_found")  # another team's record: as if none


def test_the_teams_patients_come_in_pages(app_module, lambda_context, world):
    for number in range(5):
        store_scan(app_module, lambda_context, ALICE, patient=f"P-{number}")
    seen, token = [], None
    while True:
        query = {"limit": "2", **({"next": token} if token else {})}
        status, page, _ = call(app_module, lambda_context, "GET", "/patients", BOB, query=query)
        assert status == 200 and len(page["patients"]) <= 2, page
        seen += [patient["patient"] for patient in page["patients"]]
        token = page["next"]
        if not token:
            break
    assert seen == [f"P-{number}" for number in range(5)]
    status, error, _ = call(app_module, lambda_context, "GET", "/patients", BOB, query={"next": "Li4"})  # ".."
    assert (status, error["error"]["code"]) == (400, "malformed_input")


def test_only_the_author_deletes_a_record(app_module, lambda_context, world):
    _, answer = store_scan(app_module, lambda_context, ALICE)
    status, error, _ = delete(app_module, lambda_context, BOB, answer["record_id"])  # a colleague
    assert (status, error["error"]["code"]) == (403, "not_author")
    assert "stored this record" in error["error"]["message"]
    assert delete(app_module, lambda_context, CAROL, answer["record_id"])[0] == 404  # another team: not found
    assert len(scans(app_module, lambda_context, BOB)[1]["scans"]) == 1
    assert delete(app_module, lambda_context, ALICE, answer["record_id"])[0] == 204


# ---------------------------------------------------------------- 8: every refusal audited


def test_every_refused_or_failed_history_action_is_one_audit_line_without_the_reference(
    app_module, lambda_context, world
):
    log_copy = io.StringIO()
    handler = logging.StreamHandler(log_copy)
    handler.setFormatter(app_module.logger.registered_formatter)
    app_module.logger.addHandler(handler)
    try:
        _, answer = store_scan(app_module, lambda_context, ALICE, patient="MRN-424242")
        record_id = answer["record_id"]
        delete(app_module, lambda_context, CAROL, record_id, patient="MRN-424242")  # another team's: 404
        delete(app_module, lambda_context, BOB, record_id, patient="MRN-424242")  # a colleague's: 403
        call(app_module, lambda_context, "GET", "/patients", {"sub": "sub-x", "cognito:groups": ""})  # no team
        scans(app_module, lambda_context, CAROL, patient="MRN-424242")  # probing: 404
        world.cognito.admin_disable_user(UserPoolId=world.pool, Username="sub-b")
        store_scan(app_module, lambda_context, BOB, patient="MRN-424242", seed=1)  # revoked: 403
        store_scan(app_module, lambda_context, None, patient="MRN-424242", seed=2)  # no token: 401
        delete(app_module, lambda_context, ALICE, "Jane-Doe-1970", patient="MRN-424242")  # no record id: 404
    finally:
        app_module.logger.removeHandler(handler)
    logs = log_copy.getvalue()
    assert "MRN-424242" not in logs
    audits = [json.loads(line)["audit"] for line in logs.splitlines() if '"audit"' in line]
    assert [(a["action"], a["outcome"], a["sub"]) for a in audits] == [
        ("scan.create", "ok", "sub-a"),
        ("scan.delete", "not_found", "sub-c"),
        ("scan.delete", "not_author", "sub-b"),
        ("patients.list", "no_team", "sub-x"),
        ("scans.list", "not_found", "sub-c"),
        ("scan.create", "access_revoked", "sub-b"),
        ("scan.create", "unauthorized", None),
        ("scan.delete", "not_found", "sub-a"),
    ]
    assert audits[-1]["record_id"] is None and "Jane-Doe" not in logs  # a typed segment is not logged
    hashed = history.hash_ref(b"test-hash-key", "MRN-424242")
    assert {a["patient_hash"] for a in audits if a["action"] != "patients.list"} == {hashed}
    assert audits[1]["record_id"] == audits[2]["record_id"] == record_id
