"""Whole studies for ``make run``: the uploads bucket (with the site's CORS) and the studies table on the local moto
server, and Step Functions' API for the study state machine, served on the local stack's own origin.

- ``create_studies``: the bucket and table as template.yaml declares them (CORS for the page's origin only, so the
  browser's presigned POST to moto passes the same check it passes on S3; TTL on ``expires_at``);
- ``LocalStepFunctions``: ``StartExecution`` and ``DescribeExecution`` (the Step Functions JSON protocol) on
  ``STATES_PATH``; the function's boto3 client reaches it through ``AWS_ENDPOINT_URL_SFN``, and each execution runs
  template.yaml's Definition on ``infrastructure.local_engine`` in a thread.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from infrastructure.emulation import ACCOUNT, REGION
from infrastructure.local_engine import MACHINE, MACHINE_ARN, LocalEngine, StateError
from lungscan.studies.store import create_table

UPLOADS_BUCKET = "lungscan-uploads-local"
STUDIES_TABLE = "lungscan-studies-local"
STATES_PATH = "/local/states"  # where the function's Step Functions client posts (AWS_ENDPOINT_URL_SFN)


def create_studies(endpoint: str, origin: str, region: str = REGION) -> dict[str, str]:
    """The uploads bucket and the studies table in the moto server at ``endpoint``; returns the function's
    environment for them."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region)
    s3.create_bucket(Bucket=UPLOADS_BUCKET)
    s3.put_bucket_cors(
        Bucket=UPLOADS_BUCKET,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": [origin],
                    "AllowedMethods": ["POST", "GET"],
                    "AllowedHeaders": ["*"],
                    "MaxAgeSeconds": 600,
                }
            ]
        },
    )
    create_table(boto3.client("dynamodb", endpoint_url=endpoint, region_name=region), STUDIES_TABLE)
    return {"UPLOADS_BUCKET": UPLOADS_BUCKET, "STUDIES_TABLE": STUDIES_TABLE, "STUDY_STATE_MACHINE": MACHINE_ARN}


class LocalStepFunctions:
    """``StartExecution`` and ``DescribeExecution`` of the local machine: each execution runs in a thread."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.executions: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def start(self, machine_arn: str, name: str | None, data: str) -> dict[str, Any]:
        if machine_arn != MACHINE_ARN:
            raise StateError("StateMachineDoesNotExist", "no such state machine")
        name = name or str(uuid.uuid4())
        arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{MACHINE}:{name}"
        with self.lock:
            known = self.executions.get(arn)
            if known is not None:  # as a STANDARD machine: the same name and input is the same execution
                if known["input"] != data:
                    raise StateError("ExecutionAlreadyExists", "an execution of this name exists")
                return {"executionArn": arn, "startDate": known["startDate"]}
            started = datetime.now(UTC).timestamp()
            self.executions[arn] = {"input": data, "status": "RUNNING", "startDate": started}
        threading.Thread(target=self._run, args=(arn, name, data), daemon=True).start()
        return {"executionArn": arn, "startDate": started}

    def _run(self, arn: str, name: str, data: str) -> None:
        record = self.executions[arn]
        try:
            record["output"] = json.dumps(self.engine.run(json.loads(data), name))
            record["status"] = "SUCCEEDED"
        except StateError as error:
            record.update(status="FAILED", error=error.name, cause=error.cause)
        except Exception as error:
            record.update(status="FAILED", error=type(error).__name__, cause=str(error))
        record["stopDate"] = datetime.now(UTC).timestamp()

    def describe(self, arn: str) -> dict[str, Any]:
        record = self.executions.get(arn)
        if record is None:
            raise StateError("ExecutionDoesNotExist", "no such execution")
        shown = {"executionArn": arn, "stateMachineArn": MACHINE_ARN, **record}
        return {key: value for key, value in shown.items() if value is not None}

    def handle(self, target: str, body: bytes) -> tuple[int, bytes]:
        """One call of the Step Functions JSON API (``X-Amz-Target: AWSStepFunctions.StartExecution``...)."""
        try:
            request = json.loads(body or b"{}")
            call = target.rpartition(".")[2]
            if call == "StartExecution":
                answer = self.start(request["stateMachineArn"], request.get("name"), request.get("input", "{}"))
            elif call == "DescribeExecution":
                answer = self.describe(request["executionArn"])
            else:
                raise StateError("UnknownOperationException", f"{call} is not served locally")
        except StateError as error:
            return 400, json.dumps({"__type": error.name, "message": error.cause}).encode()
        except (ValueError, KeyError, TypeError):
            return 400, b'{"__type": "InvalidRequest", "message": "malformed request"}'
        return 200, json.dumps(answer).encode()
