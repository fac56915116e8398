"""Screening an archive prefix (issue 23): records keyed by object version and model version, objects S3 will not
hand over reported one by one, the report's order, and the ``lungscan screen`` client's argument checks."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from lungscan.studies import archive
from lungscan.studies.archive import ScreenedRecords, report, screen_batch
from lungscan.studies.batch import classify_batch_objects
from lungscan.studies.store import create_table
from lungscan_client.screen import ScreenError, is_local, parse_s3_url, screen

FIXTURES = Path(__file__).parent.parent / "fixtures"
BUCKET = "archive"


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        create_table(dynamodb, "studies")
        yield s3, ScreenedRecords(dynamodb, "studies")


def _listing(s3, prefix: str) -> list[dict]:
    """The items as the Distributed Map's ItemReader hands them (``Etag``, as Step Functions spells it)."""
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [{"Key": item["Key"], "Size": item["Size"], "Etag": item["ETag"]} for item in page["Contents"]]


def _fill(s3) -> None:
    for name in ("ct_normal_256.png", "ct_malignant_256.jpg", "ct_normal_256.dcm"):
        s3.put_object(Bucket=BUCKET, Key=f"scans/{name}", Body=(FIXTURES / name).read_bytes())
    s3.put_object(Bucket=BUCKET, Key="scans/readme.txt", Body=b"not an image")


def test_a_rerun_answers_finished_objects_from_their_records(app_module, aws, monkeypatch):
    s3, records = aws
    _fill(s3)
    classifier = app_module.store.get(None)
    classified: list[str] = []

    def counting(classifier, s3, bucket, items, prefix):
        classified.extend(item["Key"] for item in items)
        return classify_batch_objects(classifier, s3, bucket, items, prefix)

    monkeypatch.setattr(archive, "classify_batch_objects", counting)
    first = screen_batch(classifier, s3, records, BUCKET, _listing(s3, "scans/"), "scans/")
    assert len(classified) == 4 and not any(entry["reused"] for entry in first)
    second = screen_batch(classifier, s3, records, BUCKET, _listing(s3, "scans/"), "scans/")
    assert len(classified) == 4  # nothing classified again
    assert all(entry["reused"] for entry in second)
    drop = ("reused",)
    assert [{k: v for k, v in e.items() if k not in drop} for e in second] == [
        {k: v for k, v in e.items() if k not in drop} for e in first
    ]
    # An object rewritten since (a new ETag) is classified again; the others are not.
    s3.put_object(Bucket=BUCKET, Key="scans/ct_normal_256.png", Body=(FIXTURES / "ct_malignant_256.jpg").read_bytes())
    third = screen_batch(classifier, s3, records, BUCKET, _listing(s3, "scans/"), "scans/")
    assert classified[4:] == ["scans/ct_normal_256.png"]
    assert sum(not entry["reused"] for entry in third) == 1
    # Another model version: everything again.
    monkeypatch.setattr(classifier.metadata, "version", "another-version", raising=False)
    screen_batch(classifier, s3, records, BUCKET, _listing(s3, "scans/"), "scans/")
    assert len(classified) == 5 + 4


def test_the_record_key_names_no_object_and_changes_with_etag_and_model():
    item = {"Key": "Smith^John/IM0001.dcm", "Etag": '"abc"'}
    key = archive.record_id(BUCKET, item, ("m", "1"))
    assert "Smith" not in key and key.startswith("SCREENED#")
    assert key != archive.record_id(BUCKET, item | {"Etag": '"abd"'}, ("m", "1"))
    assert key != archive.record_id(BUCKET, item, ("m", "2"))


@pytest.mark.parametrize(
    ("code", "status"), [("AccessDenied", 403), ("KMS.DisabledException", 400), ("InvalidObjectState", 403)]
)
def test_an_object_s3_refuses_is_one_error_row_not_a_failed_batch(app_module, code, status):
    s3 = boto3.client("s3", region_name="us-east-1")
    items = [{"Key": "scans/a.dcm", "Size": 1000, "Etag": '"1"'}]
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
        (entry,) = classify_batch_objects(app_module.store.get(None), s3, BUCKET, items, "scans/")
    assert entry["error"]["code"] == "object_unreadable" and code in entry["error"]["message"]
    assert "scans" not in entry["error"]["message"]  # the object's name is not repeated in the message


def test_s3_failing_itself_fails_the_batch_for_the_tasks_retry(app_module):
    s3 = boto3.client("s3", region_name="us-east-1")
    classifier = app_module.store.get(None)
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", service_error_code="InternalError", http_status_code=500)
        with pytest.raises(ClientError, match="InternalError"):
            classify_batch_objects(classifier, s3, BUCKET, [{"Key": "k", "Size": 10}], "")


def _entry(key: str, probability: float | None, suspicious: bool = False, error: str | None = None) -> dict:
    if error:
        return {"key": key, "name": key, "error": {"code": error, "message": "..."}, "reused": False}
    return {
        "key": key,
        "label": "malignant" if suspicious else "normal",
        "tier": "suspicious" if suspicious else "clear",
        "positive_probability": probability,
        "suspicious": suspicious,
        "uncertain": False,
        "unfamiliar": False,
        "reused": True,
    }


def test_the_report_puts_flagged_rows_first_most_probable_first_then_answers_errors_and_skipped():
    slices = [
        _entry("a", 0.1),
        _entry("b", 0.7, suspicious=True),
        _entry("c", None, error="corrupt_image"),
        _entry("d", 0.9, suspicious=True),
        _entry("e", None, error="unsupported_format"),
        _entry("f", None, error="object_unreadable"),
    ]
    screened = report(slices, {"name": "m", "version": "1"})
    assert [row["key"] for row in screened["rows"]] == ["d", "b", "a", "c", "f", "e"]
    assert [row["status"] for row in screened["rows"]][-3:] == ["error", "error", "skipped"]
    assert screened["rows"][3] == {"key": "c", "status": "error", "error": "corrupt_image"}
    summary = screened["summary"]
    assert (summary["objects"], summary["answered"], summary["flagged"]) == (6, 3, 2)
    assert (summary["errors"], summary["skipped"], summary["classified"], summary["reused"]) == (2, 1, 3, 3)
    assert summary["tier"] == "suspicious"


def test_the_client_refuses_bad_addresses_and_an_unknown_results_bucket_before_any_call():
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("https://bucket/a", "bucket/a", "s3:///a"):
        with pytest.raises(ScreenError):
            parse_s3_url(bad)
    assert is_local("http://127.0.0.1:5002") and is_local("http://localhost:5002")
    assert not is_local("https://states.us-east-1.amazonaws.com") and not is_local(None)
    with pytest.raises(ScreenError, match="results-bucket"):
        screen("s3://archive/scans/")  # deployed, the report's bucket is the stack's output, never guessed


def test_moto_runs_each_new_execution_on_the_engine_and_reports_its_outcome():
    """``make run``'s hook (infrastructure/local_archive.py): StartExecution on moto's API runs the engine once per
    execution; DescribeExecution then answers SUCCEEDED with the output, or FAILED with the error and cause."""
    import json
    import threading

    from infrastructure.local_archive import create_archive
    from infrastructure.local_engine import StateError

    runs: list[dict] = []
    done = threading.Event()

    class Engine:
        definition: ClassVar[dict] = {"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}

        def run(self, data: dict, execution: str) -> dict:
            runs.append(data)
            done.set()
            if data.get("fail"):
                raise StateError("States.ExceedToleratedFailureThreshold", "3 of 10")
            return {"report": {"bucket": "b", "key": "k"}}

    with mock_aws():
        arn = create_archive(None, Engine())  # type: ignore[arg-type]
        states = boto3.client("stepfunctions", region_name="us-east-1")

        def finished(execution_arn: str) -> dict:
            for _ in range(200):
                answer = states.describe_execution(executionArn=execution_arn)
                if answer["status"] != "RUNNING":
                    return answer
                done.wait(0.05)
            raise AssertionError("the execution never ended")

        started = states.start_execution(stateMachineArn=arn, name="one", input=json.dumps({"prefix": "p/"}))
        answer = finished(started["executionArn"])
        assert answer["status"] == "SUCCEEDED" and json.loads(answer["output"]) == {
            "report": {"bucket": "b", "key": "k"}
        }
        with pytest.raises(states.exceptions.ExecutionAlreadyExists):  # a finished name is taken, as on AWS
            states.start_execution(stateMachineArn=arn, name="one", input=json.dumps({"prefix": "p/"}))
        assert len(runs) == 1
        failing = states.start_execution(stateMachineArn=arn, name="two", input=json.dumps({"fail": True}))
        answer = finished(failing["executionArn"])
        assert answer["status"] == "FAILED" and answer["error"] == "States.ExceedToleratedFailureThreshold"
        assert answer["cause"] == "3 of 10"
        assert "lungscan-archive-local" in {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
