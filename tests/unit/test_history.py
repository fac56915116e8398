"""Patient history through the handler: claims as API Gateway's Cognito authorizer passes them, DynamoDB
(moto, in-process), team isolation, pagination, validation, audit logs; and the token checks."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import HISTORY_TABLE, HistoryWorld, ct_like_image, encode, make_event
from PIL import Image

from lungscan.accounts import access, history
from lungscan.accounts.tokens import CognitoTokenVerifier, InvalidTokenError, as_authorizer_claims
from lungscan.bundle.metadata import BundleMetadata, InputSpec, PreprocessingSpec, ResizeSpec
from lungscan.model.classifier import Prediction
from lungscan.uploads import SliceInput

TABLE = HISTORY_TABLE
ALICE = {
    "sub": "sub-a",
    "email": "clinician-a@example.org",
    "cognito:groups": "oncology",
    "custom:display_name": "Dr Alice Demo",
}
BOB = {"sub": "sub-b", "email": "clinician-b@example.org", "cognito:groups": "oncology"}
CAROL = {"sub": "sub-c", "email": "clinician-c@example.org", "cognito:groups": "radiology"}


@pytest.fixture
def world(app_module, monkeypatch):
    """An empty history table and a user pool holding ALICE, BOB and CAROL in their teams (moto, in-process)."""
    import history_api
    from moto import mock_aws

    with mock_aws():
        world = HistoryWorld(monkeypatch, history_api)
        for claims in (ALICE, BOB, CAROL):
            world.enroll(claims["sub"], claims["cognito:groups"])
        yield world


@pytest.fixture
def store(world):
    return world.store


def call(app_module, lambda_context, event) -> tuple[int, dict]:
    result = app_module.lambda_handler(event, lambda_context)
    return result["statusCode"], json.loads(result["body"]) if result.get("body") else {}


def signed_in(event: dict, claims: dict | None) -> dict:
    """The event as API Gateway sends it after its Cognito authorizer accepted the token."""
    if claims is not None:
        event["requestContext"]["authorizer"] = {"claims": dict(claims)}
    return event


def predict(app_module, lambda_context, claims, patient="P-0001", image=None, **options):
    payload = {"image": base64.b64encode(image or encode(ct_like_image())).decode(), **options}
    if patient is not None:
        payload["patient"] = patient
    event = make_event(body=json.dumps(payload), content_type="application/json")
    return call(app_module, lambda_context, signed_in(event, claims))


def get(app_module, lambda_context, path, claims, query=None, method="GET"):
    return call(app_module, lambda_context, signed_in(make_event(method, path, query=query), claims))


def test_a_signed_in_prediction_is_stored_for_the_team(app_module, lambda_context, store):
    status, answer = predict(app_module, lambda_context, ALICE, explain=True)
    assert status == 200, answer
    record_id = answer["record_id"]
    assert history.check_record_id(record_id)

    status, page = get(app_module, lambda_context, "/patients/P-0001/scans", BOB)  # a colleague
    assert status == 200, page
    (record,) = page["scans"]
    assert record["record_id"] == record_id
    assert record["clinician"] == {"sub": "sub-a", "name": "Dr Alice Demo", "email": None}  # never the email
    assert record["model"] == {"name": answer["model"]["name"], "version": answer["model"]["version"]}
    assert (record["label"], record["verdict"]) == (answer["label"], answer["verdict"])
    assert record["probabilities"] == answer["probabilities"]
    assert record["input"] == {"format": "PNG", "width": 256, "height": 256}
    assert record["input_bytes"] > 1000
    preview = Image.open(io.BytesIO(base64.b64decode(record["preview"])))
    assert "heatmap" not in record and record["has_heatmap"] is True  # fetched on its own
    status, shown = get(app_module, lambda_context, f"/patients/P-0001/scans/{record_id}/heatmap", BOB)
    assert status == 200 and shown["record_id"] == record_id
    heatmap = Image.open(io.BytesIO(base64.b64decode(shown["heatmap"])))
    side = max(app_module.store.get().metadata.input.height, app_module.store.get().metadata.input.width)
    assert max(preview.size) == min(side, 256) and max(heatmap.size) <= 256
    assert page["next"] is None

    status, patients = get(app_module, lambda_context, "/patients", BOB)
    assert status == 200
    assert patients["team"] == "oncology"
    assert patients["patients"] == [
        {
            "patient": "P-0001",
            "scans": 1,
            "last_scan_at": record["created_at"],
            "last_verdict": answer["verdict"],
            "last_tier": answer["tier"],
        }
    ]
    assert patients["next"] is None


def test_another_team_sees_nothing_and_cannot_delete(app_module, lambda_context, store):
    _, answer = predict(app_module, lambda_context, ALICE)
    record_id = answer["record_id"]
    status, error = get(app_module, lambda_context, "/patients/P-0001/scans", CAROL)
    assert (status, error["error"]["code"]) == (404, "not_found")
    assert get(app_module, lambda_context, "/patients", CAROL)[1]["patients"] == []
    path = f"/patients/P-0001/scans/{record_id}"
    assert get(app_module, lambda_context, path, CAROL, method="DELETE")[0] == 404
    assert get(app_module, lambda_context, "/patients/P-0001/scans", BOB)[0] == 200  # still there

    result = app_module.lambda_handler(signed_in(make_event("DELETE", path), ALICE), lambda_context)
    assert result["statusCode"] == 204
    assert get(app_module, lambda_context, "/patients/P-0001/scans", BOB)[0] == 404  # gone for the team
    assert get(app_module, lambda_context, "/patients", ALICE)[1]["patients"] == []
    assert get(app_module, lambda_context, path, ALICE, method="DELETE")[0] == 404


def test_scans_are_newest_first_and_paginated(app_module, lambda_context, store):
    ids = []
    for seed in range(5):
        _, answer = predict(app_module, lambda_context, ALICE, image=encode(ct_like_image(seed=seed)))
        ids.append(answer["record_id"])
        time.sleep(0.002)  # record ids start with the millisecond
    seen, token = [], None
    while True:
        query = {"limit": "2", **({"next": token} if token else {})}
        status, page = get(app_module, lambda_context, "/patients/P-0001/scans", BOB, query=query)
        assert status == 200, page
        assert len(page["scans"]) <= 2
        seen += [record["record_id"] for record in page["scans"]]
        token = page["next"]
        if not token:
            break
    assert seen == ids[::-1]
    assert get(app_module, lambda_context, "/patients", ALICE)[1]["patients"][0]["scans"] == 5

    # Deleting the newest moves the summary to the next newest.
    get(app_module, lambda_context, f"/patients/P-0001/scans/{ids[-1]}", ALICE, method="DELETE")
    (summary,) = get(app_module, lambda_context, "/patients", ALICE)[1]["patients"]
    assert summary["scans"] == 4
    page = get(app_module, lambda_context, "/patients/P-0001/scans", ALICE, query={"limit": "1"})[1]
    assert page["scans"][0]["record_id"] == ids[-2]
    assert summary["last_scan_at"] == page["scans"][0]["created_at"]

    status, error = get(app_module, lambda_context, "/patients/P-0001/scans", BOB, query={"next": "bm90LWEtdG9rZW4"})
    assert status == 400, error


@pytest.mark.parametrize("claims", [None, {}, {"email": "x@example.org"}])
def test_history_routes_without_claims_are_401(app_module, lambda_context, store, claims):
    for path, method in [("/patients", "GET"), ("/patients/P-0001/scans", "GET")]:
        status, error = get(app_module, lambda_context, path, claims, method=method)
        assert (status, error["error"]["code"]) == (401, "unauthorized")


def test_a_user_in_no_team_is_403(app_module, lambda_context, store):
    status, error = get(app_module, lambda_context, "/patients", {"sub": "x", "email": "x@example.org"})
    assert (status, error["error"]["code"]) == (403, "no_team")


@pytest.mark.parametrize(
    ("groups", "team"),
    [("thoracic oncology", "thoracic oncology"), ("[oncology]", "oncology"), (" oncology ", "oncology")],
)
def test_a_team_named_with_a_space_is_one_team(app_module, lambda_context, world, groups, team):
    member = {"sub": "sub-t", "email": "t@example.org", "cognito:groups": groups}
    world.enroll("sub-t", team)
    status, answer = predict(app_module, lambda_context, member, patient="P-0001")
    assert status == 200 and answer["record_id"]
    status, listed = get(app_module, lambda_context, "/patients", member)
    assert status == 200 and [p["patient"] for p in listed["patients"]] == ["P-0001"]
    if team != "oncology":  # another team's members see nothing of it
        assert get(app_module, lambda_context, "/patients", ALICE)[1]["patients"] == []


@pytest.mark.parametrize("groups", ["oncology,radiology", "[oncology radiology]"])
def test_a_user_in_two_teams_is_403_not_given_the_first(app_module, lambda_context, store, groups):
    member = {"sub": "sub-t", "email": "t@example.org", "cognito:groups": groups}
    status, error = get(app_module, lambda_context, "/patients", member)
    assert (status, error["error"]["code"]) == (403, "no_team")


def test_anonymous_predict_stores_nothing(app_module, lambda_context, store):
    status, answer = predict(app_module, lambda_context, None, patient=None)
    assert status == 200
    assert answer["record_id"] is None
    assert store.dynamodb.scan(TableName=TABLE)["Count"] == 0
    # Signed in but no patient: nothing stored either.
    assert predict(app_module, lambda_context, ALICE, patient=None)[1]["record_id"] is None
    assert store.dynamodb.scan(TableName=TABLE)["Count"] == 0


def test_a_patient_without_a_token_is_401_before_classifying(app_module, lambda_context, store, monkeypatch):
    monkeypatch.setattr(app_module.store, "get", lambda *a, **k: pytest.fail("classified anyway"))
    status, error = predict(app_module, lambda_context, None)
    assert (status, error["error"]["code"]) == (401, "unauthorized")
    event = make_event(
        body=json.dumps({"image": "AAAA", "patient": "P-0001"}),
        content_type="application/json",
        headers={"Authorization": "not-a-token"},
    )
    monkeypatch.setenv("COGNITO_USER_POOL_ID", "us-east-1_test")
    monkeypatch.setenv("COGNITO_CLIENT_ID", "client")
    import history_api

    monkeypatch.setattr(history_api, "_verifier", None)
    status, error = call(app_module, lambda_context, event)
    assert (status, error["error"]["code"]) == (401, "unauthorized")
    assert store.dynamodb.scan(TableName=TABLE)["Count"] == 0


@pytest.mark.parametrize("ref", ["John Smith", "", "a" * 65, "P/0001", "P-0001\n", "Ünal"])
def test_a_patient_reference_that_could_be_a_name_is_400(app_module, lambda_context, store, ref):
    status, error = predict(app_module, lambda_context, ALICE, patient=ref)
    assert status == 400, error
    assert error["error"]["code"] == "invalid_patient_ref"
    assert "never the patient's name" in error["error"]["message"]
    assert ref not in error["error"]["message"] or not ref
    assert store.dynamodb.scan(TableName=TABLE)["Count"] == 0


def form_body(boundary: str, png: bytes, *patients: str) -> bytes:
    """A multipart form: a ``patient`` field per reference, then the ``file``."""
    parts = [f'Content-Disposition: form-data; name="patient"\r\n\r\n{ref}\r\n'.encode() for ref in patients]
    parts.append(b'Content-Disposition: form-data; name="file"; filename="s.png"\r\nContent-Type: image/png\r\n\r\n')
    delimiter = f"--{boundary}\r\n".encode()
    return b"".join(delimiter + part for part in parts) + png + f"\r\n--{boundary}--\r\n".encode()


def test_the_reference_is_accepted_as_query_and_form_field(app_module, lambda_context, store):
    png = encode(ct_like_image())
    event = make_event(body=png, content_type="image/png", base64_body=True, query={"patient": "MRN.42_x"})
    status, answer = call(app_module, lambda_context, signed_in(event, ALICE))
    assert status == 200 and answer["record_id"]
    boundary = "b0undary"
    body = form_body(boundary, png, "MRN.42_x")
    event = make_event(body=body, content_type=f"multipart/form-data; boundary={boundary}", base64_body=True)
    status, answer = call(app_module, lambda_context, signed_in(event, BOB))
    assert status == 200 and answer["record_id"]
    assert get(app_module, lambda_context, "/patients", ALICE)[1]["patients"][0]["scans"] == 2


def test_two_different_patients_in_one_request_are_refused_not_one_picked(app_module, lambda_context, store):
    png = encode(ct_like_image())
    as_json = json.dumps({"image": base64.b64encode(png).decode(), "patient": "P-BODY"})
    form = "multipart/form-data; boundary=b0"
    repeated = make_event(body=png, content_type="image/png", base64_body=True)
    repeated["multiValueQueryStringParameters"] = {"patient": ["P-ONE", "P-TWO"]}
    repeated["queryStringParameters"] = {"patient": "P-TWO"}  # API Gateway keeps the last
    image = base64.b64encode(png).decode()
    twice = f'{{"patient": "P-ONE", "image": "{image}", "patient": "P-TWO"}}'  # parsers keep the last
    escaped = f'{{"patient": "P-ONE", "image": "{image}", "pati\\u0065nt": "P-TWO"}}'
    events = [
        make_event(body=twice, content_type="application/json"),
        make_event(body=escaped, content_type="application/json"),
        make_event(body=as_json, content_type="application/json", query={"patient": "P-QUERY"}),
        # a body's explicit null would drop the query's patient: 200 and nothing stored
        make_event(
            body=json.dumps({"image": image, "patient": None}),
            content_type="application/json",
            query={"patient": "P-Q"},
        ),
        make_event(body=form_body("b0", png, "P-FORM"), content_type=form, base64_body=True, query={"patient": "P-Q"}),
        make_event(body=form_body("b0", png, "P-ONE", "P-TWO"), content_type=form, base64_body=True),
        repeated,
    ]
    for event in events:
        status, error = call(app_module, lambda_context, signed_in(event, ALICE))
        assert (status, error["error"]["code"]) == (422, "conflicting_patient"), error
        assert "P-" not in error["error"]["message"]
    assert store.dynamodb.scan(TableName=TABLE)["Count"] == 0
    # The same reference twice is one patient, in the body too.
    same = f'{{"patient": "P-BODY", "image": "{image}", "patient": "P-BODY"}}'
    status, answer = call(
        app_module, lambda_context, signed_in(make_event(body=same, content_type="application/json"), ALICE)
    )
    assert status == 200 and answer["record_id"]
    event = make_event(body=as_json, content_type="application/json", query={"patient": "P-BODY"})
    status, answer = call(app_module, lambda_context, signed_in(event, ALICE))
    assert status == 200 and answer["record_id"]


def test_dot_references_are_refused_since_urls_drop_them(app_module, lambda_context, store):
    """/patients/../scans is /scans to a browser: a record under ".." could never be read or deleted."""
    for ref in (".", ".."):
        status, error = predict(app_module, lambda_context, ALICE, patient=ref)
        assert (status, error["error"]["code"]) == (400, "invalid_patient_ref")
    assert store.dynamodb.scan(TableName=TABLE)["Count"] == 0
    assert history.check_patient_ref("...") == "..." and history.check_patient_ref(".x") == ".x"


def test_a_cursor_or_record_id_with_non_ascii_digits_is_refused(app_module, lambda_context, store):
    arabic = "\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0669T\u0660" + "\u0660" * 8 + "Z-aaaaaaaaaaaa"
    token = base64.urlsafe_b64encode(arabic.encode()).decode().rstrip("=")
    status, error = get(app_module, lambda_context, "/patients/P-0001/scans", ALICE, query={"next": token})
    assert (status, error["error"]["code"]) == (400, "malformed_input")
    with pytest.raises(history.RecordNotFoundError):
        history.check_record_id(arabic)


def test_a_study_with_a_patient_is_refused(app_module, lambda_context, store):
    png = base64.b64encode(encode(ct_like_image())).decode()
    event = make_event(body=json.dumps({"images": [png, png], "patient": "P-1"}), content_type="application/json")
    status, error = call(app_module, lambda_context, signed_in(event, ALICE))
    assert (status, error["error"]["code"]) == (422, "history_single_slice")


def typed_slice(**changes) -> tuple[Prediction, SliceInput, BundleMetadata]:
    """What ``build_record`` reads: one slice's prediction, what was read, and the model."""
    prediction = Prediction(
        label="benign",
        probabilities={"normal": 0.1, "benign": 0.6, "malignant": 0.3},
        confidence=0.6,
        suspicious=False,
        positive_probability=0.3,
        threshold=0.5,
    )
    model = BundleMetadata(
        name="m",
        version="v1",
        classes=["normal", "benign", "malignant"],
        positive_classes=["malignant"],
        input=InputSpec(height=96, width=96, channels=1, colour="grayscale"),
        preprocessing=PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=96, width=96)),
    )
    return replace(prediction, **changes), SliceInput("PNG", 4, 3, None, None), model


def test_records_copy_the_conformal_fields_when_the_answer_has_them():
    clinician = history.Clinician("s", "Dr S", "t")
    now = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)
    plain = history.build_record(*typed_slice(), clinician, input_bytes=10, preview=b"png", heatmap=None, now=now)
    # The stored shape, key order included (HistoryStore.add writes it as JSON).
    assert plain == {
        "record_id": plain["record_id"],
        "created_at": "2026-03-04T05:06:07.891Z",
        "clinician": {"sub": "s", "name": "Dr S"},
        "model": {"name": "m", "version": "v1"},
        "label": "benign",
        "tier": "clear",
        "verdict": "No Cancer Detected",
        "suspicious": False,
        "probabilities": {"normal": 0.1, "benign": 0.6, "malignant": 0.3},
        "input": {"format": "PNG", "width": 4, "height": 3},
        "input_bytes": 10,
        "preview": b"png",
    }
    keys = "record_id created_at clinician model label tier verdict suspicious probabilities input input_bytes preview"
    assert " ".join(plain) == keys
    assert plain["record_id"].startswith("20260304T050607891Z-")
    conformal = typed_slice(prediction_set=["benign", "malignant"], uncertain=True, unfamiliar=False)
    record = history.build_record(*conformal, clinician, input_bytes=10, preview=b"png", heatmap=b"h")
    assert list(record)[-4:] == ["prediction_set", "uncertain", "unfamiliar", "heatmap"]
    assert (record["prediction_set"], record["uncertain"], record["heatmap"]) == (["benign", "malignant"], True, b"h")
    assert record["unfamiliar"] is False


def test_a_dicom_record_holds_neither_the_file_nor_its_patient_tags(app_module, lambda_context, store):
    from helpers import ct_dataset

    dataset = ct_dataset()  # real CT pixels: the not-CT gate reads a DICOM's pixels
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = "DOE^JANE", "PID-4242", "19500101"
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=False, little_endian=True)
    event = make_event(
        body=buffer.getvalue(), content_type="application/dicom", base64_body=True, query={"patient": "P-DCM"}
    )
    status, answer = call(app_module, lambda_context, signed_in(event, ALICE))
    assert status == 200 and answer["record_id"], answer
    values = [value for item in store.dynamodb.scan(TableName=TABLE)["Items"] for value in item.values()]
    stored = b"".join(value["B"] if "B" in value else str(value).encode() for value in values)
    for tag in (b"DOE", b"JANE", b"PID-4242", b"19500101", dataset.PixelData[:64]):
        assert tag not in stored


def test_the_preview_is_small_enough_that_burned_in_text_is_unreadable():
    big = Image.new("L", (1024, 768), 0)
    png = history.thumbnail_png(big, 96)
    assert Image.open(io.BytesIO(png)).size == (96, 72)
    assert max(Image.open(io.BytesIO(history.thumbnail_png(big, 4096))).size) == 256


def test_audit_lines_carry_a_keyed_hash_never_the_reference(app_module, lambda_context, store):
    log_copy = io.StringIO()
    handler = logging.StreamHandler(log_copy)
    handler.setFormatter(app_module.logger.registered_formatter)
    app_module.logger.addHandler(handler)
    try:
        _, answer = predict(app_module, lambda_context, ALICE, patient="MRN-987654")
        get(app_module, lambda_context, "/patients/MRN-987654/scans", BOB)
        get(app_module, lambda_context, "/patients", CAROL)
        get(app_module, lambda_context, f"/patients/MRN-987654/scans/{answer['record_id']}", ALICE, method="DELETE")
    finally:
        app_module.logger.removeHandler(handler)
    logs = log_copy.getvalue()
    assert "MRN-987654" not in logs
    audits = [json.loads(line)["audit"] for line in logs.splitlines() if '"audit"' in line]
    expected_hash = history.hash_ref(b"test-hash-key", "MRN-987654")
    assert [(a["action"], a["sub"], a["team"]) for a in audits] == [
        ("scan.create", "sub-a", "oncology"),
        ("scans.list", "sub-b", "oncology"),
        ("patients.list", "sub-c", "radiology"),
        ("scan.delete", "sub-a", "oncology"),
    ]
    assert audits[0]["record_id"] == answer["record_id"] == audits[3]["record_id"]
    assert audits[0]["patient_hash"] == audits[1]["patient_hash"] == expected_hash
    assert history.hash_ref(b"another-key", "MRN-987654") != expected_hash


def test_no_write_happens_when_its_audit_line_cannot_be_written(app_module, lambda_context, store, monkeypatch):
    import history_api

    _, answer = predict(app_module, lambda_context, ALICE)
    monkeypatch.setattr(history_api, "_hash_key", None)  # the audit key's secret cannot be read
    monkeypatch.setenv("PATIENT_REF_HASH_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:gone")
    path = f"/patients/P-0001/scans/{answer['record_id']}"
    assert get(app_module, lambda_context, path, ALICE, method="DELETE")[0] == 500
    assert predict(app_module, lambda_context, ALICE, patient="P-0002")[0] == 500
    monkeypatch.setattr(history_api, "_hash_key", b"test-hash-key")
    (patient,) = get(app_module, lambda_context, "/patients", ALICE)[1]["patients"]
    assert (patient["patient"], patient["scans"]) == ("P-0001", 1)  # neither deleted nor stored unaudited


def test_openapi_documents_the_history_routes(app_module, lambda_context):
    status, document = call(app_module, lambda_context, make_event("GET", "/openapi.json"))
    assert status == 200
    paths = document["paths"]
    assert {"/patients", "/patients/{ref}/scans", "/patients/{ref}/scans/{record_id}"} <= set(paths)
    assert paths["/patients"]["get"]["security"] == [{"CognitoIdToken": []}]
    assert "delete" in paths["/patients/{ref}/scans/{record_id}"]
    scheme = document["components"]["securitySchemes"]["CognitoIdToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    predict_parameters = {parameter["name"] for parameter in paths["/predict"]["post"]["parameters"]}
    assert "patient" in predict_parameters
    assert paths["/predict"]["post"]["security"] == [{}, {"CognitoIdToken": []}]  # the token is optional there


def test_every_route_and_its_openapi_security_come_from_the_access_table(app_module, lambda_context):
    document = call(app_module, lambda_context, make_event("GET", "/openapi.json"))[1]
    operations = {(method.upper(), path): op for path, ops in document["paths"].items() for method, op in ops.items()}
    assert set(operations) == set(access.ROUTES)  # a new route must say who may call it
    for route, operation in operations.items():
        assert operation.get("security") == access.openapi_security(route), route


def test_predict_may_be_anonymous_unless_it_names_a_patient():
    predict_route, patients = ("POST", "/predict"), ("GET", "/patients")
    assert not access.needs_token(predict_route) and access.needs_token(predict_route, patient="P-1")
    assert not access.checked_by_gateway(predict_route)  # the authorizer would refuse the anonymous calls
    for route in access.AUTHORIZED_ROUTES:
        assert access.needs_token(route) and access.checked_by_gateway(route)
    assert not any(access.needs_token(route) for route in [("GET", "/health"), ("GET", "/model")])
    assert access.needs_token(("GET", "/not-in-the-table"))  # fails closed
    assert access.openapi_security(patients) == [{"CognitoIdToken": []}]


HISTORY_ERRORS = {
    "unauthorized": (401, "Sign in: send a valid Cognito ID token in the Authorization header."),
    "no_team": (403, "Your account belongs to no single care team: ask an administrator."),
    "not_found": (404, "No such patient for your team."),
    "history_unavailable": (503, "This deployment keeps no patient history."),
}


def history_error_event(code: str, monkeypatch) -> dict:
    import history_api

    if code == "history_unavailable":
        monkeypatch.setattr(history_api, "_store", None)
        monkeypatch.delenv("HISTORY_TABLE", raising=False)
    claims = {"unauthorized": None, "no_team": {"sub": "x", "email": "x@example.org"}}.get(code, CAROL)
    path = "/patients/P-0001/scans" if code == "not_found" else "/patients"
    return signed_in(make_event("GET", path), claims)


@pytest.mark.parametrize("code", HISTORY_ERRORS)
def test_history_errors_have_the_apis_one_error_body(app_module, lambda_context, store, monkeypatch, code):
    """The same body as every other error: code, message and request id (API Gateway's, as its own 401 has)."""
    status, body = call(app_module, lambda_context, history_error_event(code, monkeypatch))
    assert status == HISTORY_ERRORS[code][0]
    assert body == {"error": {"code": code, "message": HISTORY_ERRORS[code][1], "request_id": "test-request-id"}}


@pytest.mark.parametrize("code", [*HISTORY_ERRORS, "route_not_found", "predict_unauthorized"])
def test_an_error_without_api_gateways_request_id_quotes_the_invocations(
    app_module, lambda_context, store, monkeypatch, code
):
    """An event that did not come through API Gateway: the Lambda request id, never null (history errors had null)."""
    if code == "route_not_found":
        event = make_event("GET", "/nowhere")
    elif code == "predict_unauthorized":
        event = make_event(body=json.dumps({"image": "AAAA", "patient": "P-0001"}), content_type="application/json")
    else:
        event = history_error_event(code, monkeypatch)
    del event["requestContext"]["requestId"]
    status, body = call(app_module, lambda_context, event)
    assert status >= 400 and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["request_id"] == lambda_context.aws_request_id


# ---------------------------------------------------------------- the token checks (lungscan.accounts.tokens)


class FixedKeys:
    def __init__(self, public_key) -> None:
        self.public_key = public_key

    def get_signing_key_from_jwt(self, token):
        return jwt.PyJWK.from_dict(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.public_key)) | {"alg": "RS256"})


@pytest.fixture(scope="module")
def keys():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048), rsa.generate_private_key(65537, 2048)


def make_verifier(public_key) -> CognitoTokenVerifier:
    verifier = CognitoTokenVerifier("us-east-1_pool", ["client-1"], "us-east-1")
    verifier.jwks = FixedKeys(public_key)
    return verifier


def token(private_key, **changes) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_pool",
        "sub": "sub-a",
        "aud": "client-1",
        "token_use": "id",
        "iat": now,
        "exp": now + 600,
        "email": "clinician-a@example.org",
        "cognito:groups": ["oncology"],
    }
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, private_key, algorithm="RS256")


def public_pem(private_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def unsigned(valid: str, header: dict, hmac_key: bytes) -> str:
    """``valid``'s claims under another header, signed with HMAC-SHA256 by ``hmac_key`` (none when empty)."""
    import hashlib
    import hmac

    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).decode().rstrip("=")
    signing_input = f"{encoded}.{valid.split('.')[1]}"
    digest = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key else b""
    return f"{signing_input}.{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


def test_a_valid_id_token_gives_the_authorizers_claims(keys):
    good, _ = keys
    claims = make_verifier(good.public_key()).authorizer_claims(token(good))
    assert claims["sub"] == "sub-a" and claims["cognito:groups"] == "oncology"
    # The header as integrators also send it (API Gateway's Cognito authorizer takes both forms).
    for header in (f"Bearer {token(good)}", f"bearer  {token(good)} "):
        assert make_verifier(good.public_key()).authorizer_claims(header)["sub"] == "sub-a"
    for header in ("Bearer", "Bearer ", f"Basic {token(good)}", f"Bearer Bearer {token(good)}"):
        with pytest.raises(InvalidTokenError):
            make_verifier(good.public_key()).verify(header)
    assert claims["exp"].endswith(time.strftime("%Y", time.gmtime()))  # "Sat Nov 28 14:05:09 UTC 2026"
    assert as_authorizer_claims({"cognito:groups": ["a", "b"]}) == {"cognito:groups": "a,b"}


@pytest.mark.parametrize(
    "case",
    [
        *("tampered", "other_key", "expired", "wrong_audience", "access_token", "wrong_issuer", "no_exp", "garbage"),
        *("alg_none", "hs256_with_the_public_key", "iat_in_the_future", "nbf_in_the_future"),
    ],
)
def test_bad_tokens_are_refused(keys, case):
    good, other = keys
    verifier = make_verifier(good.public_key())
    valid = token(good)
    bad = {
        "tampered": lambda: valid[:-8] + ("A" * 8 if not valid.endswith("A" * 8) else "B" * 8),
        "other_key": lambda: token(other),
        "expired": lambda: token(good, exp=int(time.time()) - 5),
        "wrong_audience": lambda: token(good, aud="client-2"),
        "access_token": lambda: token(good, token_use="access"),
        "wrong_issuer": lambda: token(good, iss="https://cognito-idp.us-east-1.amazonaws.com/other"),
        "no_exp": lambda: token(good, exp=None),
        "garbage": lambda: "x.y.z",
        "alg_none": lambda: unsigned(valid, {"alg": "none"}, b""),
        "hs256_with_the_public_key": lambda: unsigned(valid, {"alg": "HS256"}, public_pem(good)),
        "iat_in_the_future": lambda: token(good, iat=int(time.time()) + 600),
        "nbf_in_the_future": lambda: token(good, nbf=int(time.time()) + 600),
    }[case]()
    with pytest.raises(InvalidTokenError):
        verifier.verify(bad)
    # A tampered payload with the original signature fails too.
    header, payload, signature = valid.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = base64.urlsafe_b64encode(json.dumps(claims | {"cognito:groups": ["radiology"]}).encode()).decode()
    with pytest.raises(InvalidTokenError):
        verifier.verify(f"{header}.{forged.rstrip('=')}.{signature}")


def test_records_expire_after_the_retention_and_expired_ones_are_hidden(app_module, lambda_context, store):
    assert predict(app_module, lambda_context, ALICE)[0] == 200
    items = store.dynamodb.scan(TableName=TABLE)["Items"]
    assert len(items) == 2  # the scan and the patient's summary
    for item in items:
        assert int(item["expires_at"]["N"]) == pytest.approx(time.time() + 30 * 86400, abs=60)
    # DynamoDB's TTL deletes within days: a record past its time is hidden at once.
    scan_key = next({"pk": i["pk"], "sk": i["sk"]} for i in items if i["sk"]["S"].startswith("SCAN#"))
    store.dynamodb.update_item(
        TableName=TABLE,
        Key=scan_key,
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )
    assert get(app_module, lambda_context, "/patients/P-0001/scans", BOB)[0] == 404


def test_a_token_older_than_the_clients_validity_is_refused_whatever_its_exp(keys):
    """moto signs hour-long ID tokens whatever the app client says: the local stack's checks hold them to 15 min."""
    private, _ = keys
    verifier = make_verifier(private.public_key())
    verifier.max_age = 15 * 60
    now = int(time.time())
    assert verifier.verify(token(private, iat=now - 14 * 60, exp=now + 3600))["sub"] == "sub-a"
    with pytest.raises(InvalidTokenError):
        verifier.verify(token(private, iat=now - 16 * 60, exp=now + 3600))
