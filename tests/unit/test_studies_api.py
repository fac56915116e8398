"""Whole studies through the handler: POST /studies, start, GET /studies/{id}, on moto's in-process S3 and DynamoDB,
the state machine run by the local engine (template.yaml's Definition) with the real worker and summary handlers."""

from __future__ import annotations

import json
import random

import pytest
from helpers import ct_series, localizer_dicom, make_event

from infrastructure.local_engine import StateError, local_engine
from lungscan.accounts import history
from lungscan.studies.plan import MAX_FILES
from lungscan.studies.store import create_table

BUCKET, TABLE, HISTORY = "uploads-test", "studies-test", "history-test"
ALICE = {"sub": "alice", "email": "a@example.org", "cognito:groups": "oncology"}
CAROL = {"sub": "carol", "email": "c@example.org", "cognito:groups": "radiology"}


class InlineStepFunctions:
    """Step Functions' StartExecution, running the template's machine to its end before answering."""

    def __init__(self, s3) -> None:
        self.engine = local_engine(s3)
        self.started: list[str] = []

        self.failed: set[str] = set()

    def start_execution(self, stateMachineArn: str, name: str, input: str) -> dict:  # noqa: N803 - boto3's names
        self.started.append(name)
        try:
            self.engine.run(json.loads(input), name)
        except StateError:
            self.failed.add(name)
        return {"executionArn": name}

    def describe_execution(self, executionArn: str) -> dict:  # noqa: N803
        return {"status": "FAILED" if executionArn.rpartition(":")[2] in self.failed else "SUCCEEDED"}


@pytest.fixture
def engine(app_module, monkeypatch):
    import boto3
    import history_api
    import studies_api
    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        create_table(dynamodb, TABLE)
        history.create_table(dynamodb, HISTORY)
        monkeypatch.setenv("UPLOADS_BUCKET", BUCKET)
        monkeypatch.setenv("STUDIES_TABLE", TABLE)
        monkeypatch.setenv(
            "STUDY_STATE_MACHINE", "arn:aws:states:us-east-1:123456789012:stateMachine:StudyStateMachine"
        )
        states = InlineStepFunctions(s3)
        monkeypatch.setattr(studies_api, "_clients", {"s3": s3, "dynamodb": dynamodb, "stepfunctions": states})
        monkeypatch.setattr(history_api, "_store", history.HistoryStore(dynamodb, HISTORY, retention_days=30))
        monkeypatch.setattr(history_api, "_hash_key", b"test-hash-key")
        yield s3, dynamodb, states


def call(app_module, lambda_context, method, path, body=None, claims=None, query=None):
    headers = {"Authorization": "token-checked-by-the-claims"} if claims else None
    event = make_event(
        method, path, json.dumps(body) if body is not None else None, "application/json", query=query, headers=headers
    )
    if claims:
        event["requestContext"]["authorizer"] = {"claims": dict(claims)}
    response = app_module.lambda_handler(event, lambda_context)
    return response["statusCode"], json.loads(response["body"] or "null")


def create(app_module, lambda_context, files: list[bytes], claims=None, **options):
    body = {"files": [{"size": len(data)} for data in files], **options}
    return call(app_module, lambda_context, "POST", "/studies", body, claims)


def upload(s3, answer: dict, files: list[bytes]) -> None:
    """What the presigned POSTs deliver (tests/integration posts them for real)."""
    for target, data in zip(answer["uploads"], files, strict=True):
        s3.put_object(Bucket=BUCKET, Key=target["fields"]["key"], Body=data)


def run(app_module, lambda_context, s3, files, claims=None, **options) -> tuple[str, dict]:
    status, created = create(app_module, lambda_context, files, claims, **options)
    assert status == 201, created
    upload(s3, created, files)
    status, started = call(app_module, lambda_context, "POST", f"/studies/{created['study_id']}/start", claims=claims)
    assert status == 202, started
    status, answer = call(app_module, lambda_context, "GET", f"/studies/{created['study_id']}", claims=claims)
    assert status == 200, answer
    return created["study_id"], answer


def test_a_study_is_answered_in_reading_order_with_per_slice_errors(app_module, lambda_context, engine):
    s3, _, states = engine
    series = ct_series(12)
    random.Random(1).shuffle(series)  # uploaded out of order
    files = [data for _, data in series] + [series[0][1][:3000], localizer_dicom()]  # a truncated file, a scout
    study_id, answer = run(app_module, lambda_context, s3, files)
    assert answer["status"] == "done" and states.started == [study_id]
    assert answer["progress"] == {"done": 14, "total": 14, "failed": 2}
    answered = [item for item in answer["slices"] if "error" not in item]
    assert [item["position"] for item in answered] == sorted(z for z, _ in series)  # by ImagePositionPatient z
    errors = {item["index"]: item["error"]["code"] for item in answer["slices"] if "error" in item}
    assert errors == {12: "corrupt_image", 13: "not_ct_localizer"}
    summary = answer["summary"]
    assert (summary["total"], summary["failed"]) == (12, 2)
    assert summary["flagged"] == sum(item["suspicious"] for item in answered)
    top = summary["most_suspicious_slices"]
    assert 1 <= len(top) <= 5 and top[0]["positive_probability"] == max(i["positive_probability"] for i in answered)
    assert top[0]["preview_url"].startswith("https://") and "Signature" in top[0]["heatmap_url"]
    assert [item["series"] for item in answer["series"]] == [answered[0]["series"]]
    assert answered[0]["study_date"] == "2024-03-01" and answered[0]["sop_instance_uid"]
    # The uploads are gone once answered; the rendered images stay (the bucket's 1-day rule takes them).
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert not [key for key in keys if key.startswith("studies/")]
    assert any(key.endswith("-preview.png") for key in keys)


def test_slices_are_paged(app_module, lambda_context, engine):
    s3, _, _ = engine
    study_id, first = run(app_module, lambda_context, s3, [data for _, data in ct_series(5)])
    status, page = call(app_module, lambda_context, "GET", f"/studies/{study_id}", query={"limit": "2"})
    assert status == 200 and len(page["slices"]) == 2 and page["next_cursor"] == "2"
    seen = list(page["slices"])
    while page["next_cursor"]:
        query = {"limit": "2", "cursor": page["next_cursor"]}
        page = call(app_module, lambda_context, "GET", f"/studies/{study_id}", query=query)[1]
        seen += page["slices"]
    assert seen == first["slices"] and len(seen) == 5


def test_over_the_limits_is_413_before_anything_exists(app_module, lambda_context, engine):
    _, dynamodb, _ = engine
    status, error = call(app_module, lambda_context, "POST", "/studies", {"files": [{"size": 1}] * (MAX_FILES + 1)})
    assert status == 413 and error["error"]["code"] == "too_many_slices"
    status, error = call(app_module, lambda_context, "POST", "/studies", {"files": [{"size": 65 * 2**20}]})
    assert status == 413 and error["error"]["code"] == "payload_too_large"
    status, error = call(app_module, lambda_context, "POST", "/studies", {"files": []})
    assert status == 400
    assert dynamodb.scan(TableName=TABLE)["Count"] == 0


def test_starting_before_every_file_is_uploaded_is_409_and_twice_is_one_execution(app_module, lambda_context, engine):
    s3, _, states = engine
    files = [data for _, data in ct_series(3)]
    _, created = create(app_module, lambda_context, files)
    upload(s3, created | {"uploads": created["uploads"][:2]}, files[:2])
    path = f"/studies/{created['study_id']}/start"
    status, error = call(app_module, lambda_context, "POST", path)
    assert status == 409 and error["error"]["code"] == "uploads_incomplete" and not states.started
    upload(s3, created, files)
    assert call(app_module, lambda_context, "POST", path)[0] == 202
    status, again = call(app_module, lambda_context, "POST", path)
    assert status == 202 and again["status"] == "done" and len(states.started) == 1


def test_a_study_of_only_corrupt_files_fails_with_an_error_per_slice(app_module, lambda_context, engine):
    s3, _, _ = engine
    truncated = ct_series(1)[0][1][:3000]
    _, answer = run(app_module, lambda_context, s3, [b"\x89PNG\r\n\x1a\n" + b"\0" * 50, truncated])
    assert answer["status"] == "failed" and answer["summary"]["total"] == 0
    assert [item["error"]["code"] for item in answer["slices"]] == ["unsupported_format", "corrupt_image"]


@pytest.mark.parametrize("study_id", ["A" * 32, "../../etc/passwd", "x"])
def test_unknown_or_malformed_ids_are_404(app_module, lambda_context, engine, study_id):
    for method, path in (("GET", f"/studies/{study_id}"), ("POST", f"/studies/{study_id}/start")):
        status, error = call(app_module, lambda_context, method, path)
        assert status == 404 and error["error"]["code"] == "not_found", (method, path)


def test_a_teams_study_is_404_to_another_team_and_to_anonymous_callers(app_module, lambda_context, engine):
    s3, _, _ = engine
    files = [data for _, data in ct_series(2)]
    study_id, answer = run(app_module, lambda_context, s3, files, claims=ALICE)
    assert answer["status"] == "done"
    for claims in (CAROL, None):
        status, error = call(app_module, lambda_context, "GET", f"/studies/{study_id}", claims=claims)
        assert status == 404 and error["error"]["code"] == "not_found"


def test_a_signed_in_study_with_a_patient_is_one_history_record_dated_by_acquisition(
    app_module, lambda_context, engine
):
    s3, _, _ = engine
    older = [data for _, data in ct_series(3, AcquisitionDate="20230115", StudyDate="20230115")]
    newer = [data for _, data in ct_series(3)]
    run(app_module, lambda_context, s3, newer, claims=ALICE, patient="P-0042")
    run(app_module, lambda_context, s3, older, claims=ALICE, patient="P-0042")  # uploaded last, acquired first
    status, scans = call(app_module, lambda_context, "GET", "/patients/P-0042/scans", claims=ALICE)
    assert status == 200
    records = scans["scans"]
    assert [record["study_date"] for record in records] == ["2024-03-01", "2023-01-15"]  # by acquisition, newest first
    record = records[0]
    assert record["study"]["total"] == 3 and record["tier"] in ("suspicious", "not_excluded", "clear")
    assert "uncertain" in record and record["preview"]


def test_a_patient_without_a_token_is_401_and_nothing_is_created(app_module, lambda_context, engine):
    _, dynamodb, _ = engine
    status, error = call(app_module, lambda_context, "POST", "/studies", {"files": [{"size": 10}], "patient": "P-1"})
    assert status == 401 and error["error"]["code"] == "unauthorized"
    assert dynamodb.scan(TableName=TABLE)["Count"] == 0


def test_without_an_engine_the_routes_are_503(app_module, lambda_context, monkeypatch):
    monkeypatch.delenv("UPLOADS_BUCKET", raising=False)
    status, error = call(app_module, lambda_context, "POST", "/studies", {"files": [{"size": 10}]})
    assert status == 503 and error["error"]["code"] == "studies_unavailable"


def test_a_study_whose_summary_step_fails_is_answered_failed_not_running_forever(
    app_module, lambda_context, engine, monkeypatch
):
    import study_tasks

    def broken(event, context):
        raise RuntimeError("the summary step broke")

    monkeypatch.setattr(study_tasks, "summary_handler", broken)
    s3, _, states = engine
    study_id, answer = run(app_module, lambda_context, s3, [data for _, data in ct_series(2)])
    assert states.failed == {study_id}
    assert answer["status"] == "failed" and answer["summary"] is None
    status, again = call(app_module, lambda_context, "GET", f"/studies/{study_id}")
    assert status == 200 and again["status"] == "failed"  # stored, not only answered


def test_an_expired_study_is_404_at_once(app_module, lambda_context, engine):
    from lungscan.studies.store import StudyStore

    _, dynamodb, _ = engine
    StudyStore(dynamodb, TABLE).create("E" * 32, "anonymous", 1, {"model": {"name": "m", "version": "v"}}, 1)
    assert StudyStore(dynamodb, TABLE).get("E" * 32) is None  # TTL deletes within days: reads hide it now
    status, error = call(app_module, lambda_context, "GET", f"/studies/{'E' * 32}")
    assert status == 404 and error["error"]["code"] == "not_found"
