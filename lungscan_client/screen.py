"""``lungscan screen s3://BUCKET/PREFIX``: screen every object under an archive prefix with the study state machine
(Step Functions, a Distributed Map), and read back its report.

This command speaks to AWS itself (Step Functions and S3 through boto3, with the caller's AWS credentials), not to
the LungScan API: an archive is screened where it lies. The machine is the stack's ``StudyStateMachineArn`` output
(``--state-machine`` or ``$LUNGSCAN_STATE_MACHINE_ARN``; else the one state machine whose name holds
``StudyStateMachine``); the report is written under ``results/<run>/`` of ``--results-bucket`` (the stack's
``UploadsBucketName`` output; locally the archive bucket itself). With ``--endpoint-url`` on this machine (``make
run``'s moto server) no AWS credentials or region are needed. docs/archive.md has the whole story.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

STATE_MACHINE_ENV = "LUNGSCAN_STATE_MACHINE_ARN"
RESULTS_BUCKET_ENV = "LUNGSCAN_RESULTS_BUCKET"
MACHINE_NAME = "StudyStateMachine"
LOCAL_REGION = "us-east-1"
TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
Progress = Callable[[str], None]


class ScreenError(Exception):
    """The screen could not be started, or did not finish (the message says why, for a person)."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix/")``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ScreenError(f"not an s3://BUCKET/PREFIX address: {url!r}")
    return parts.netloc, parts.path.lstrip("/")


def is_local(endpoint_url: str | None) -> bool:
    if not endpoint_url:
        return False
    host = urlsplit(endpoint_url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def aws_clients(endpoint_url: str | None = None, region: str | None = None) -> tuple[Any, Any]:
    """Step Functions and S3 clients; against a local endpoint, stand-in credentials and region when none are set."""
    import boto3

    session = boto3.session.Session()
    options: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": region or session.region_name}
    if is_local(endpoint_url):
        options["region_name"] = options["region_name"] or LOCAL_REGION
        if session.get_credentials() is None:
            options |= {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    if not options["region_name"]:
        raise ScreenError("no AWS region: set AWS_REGION (the stack's region) or pass --region")
    return session.client("stepfunctions", **options), session.client("s3", **options)


def find_state_machine(sfn) -> str:
    """The one state machine named like the stack's study machine (SAM names it ``StudyStateMachine-<id>``)."""
    found = [
        machine["stateMachineArn"]
        for page in sfn.get_paginator("list_state_machines").paginate()
        for machine in page["stateMachines"]
        if MACHINE_NAME in machine["name"]
    ]
    if len(found) != 1:
        raise ScreenError(
            f"{len(found)} state machines named like {MACHINE_NAME}: pass --state-machine "
            f"(or ${STATE_MACHINE_ENV}), the stack's StudyStateMachineArn output"
        )
    return found[0]


def start_screen(
    sfn, machine_arn: str, bucket: str, prefix: str, results_bucket: str, model: str | None = None
) -> dict[str, Any]:
    """Start the machine on ``bucket``/``prefix``; returns ``{"execution_arn", "run", "results"}``."""
    run = f"screen-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
    machine_input = {
        "bucket": bucket,
        "prefix": prefix,
        "study_id": run,
        "model": model,
        "results_bucket": results_bucket,
        "results_prefix": f"results/{run}/",
    }
    started = sfn.start_execution(stateMachineArn=machine_arn, name=run, input=json.dumps(machine_input))
    return {"execution_arn": started["executionArn"], "run": run, "results": f"s3://{results_bucket}/results/{run}/"}


def wait_for(sfn, execution_arn: str, progress: Progress | None = None, poll: float = 1.0) -> dict[str, Any]:
    """DescribeExecution until the execution ends; ``progress`` gets a line now and then (status, items done when
    the Map Run says, elapsed time)."""
    started = said_at = time.monotonic()
    said = ""
    while True:
        execution = sfn.describe_execution(executionArn=execution_arn)
        if execution["status"] in TERMINAL:
            if progress:
                progress(f"screening: {execution['status'].lower()} ({time.monotonic() - started:.0f} s)")
            return execution
        line = f"screening: {execution['status'].lower()}{_items(sfn, execution_arn)}"
        if progress and (line != said or time.monotonic() - said_at >= 10):
            progress(f"{line} ({time.monotonic() - started:.0f} s)")
            said, said_at = line, time.monotonic()
        time.sleep(min(10.0, poll + (time.monotonic() - started) / 60))  # an hours-long screen: a call every 10 s


def _items(sfn, execution_arn: str) -> str:
    """``, 640/2000 batches`` from the Map Run (AWS); nothing where it is not served (the local moto server)."""
    try:
        (run,) = sfn.list_map_runs(executionArn=execution_arn)["mapRuns"]
        counts = sfn.describe_map_run(mapRunArn=run["mapRunArn"])["itemCounts"]
    except Exception:  # no Map Run yet, or an endpoint without the call: progress without counts
        return ""
    return f", {counts['succeeded'] + counts['failed']}/{counts['total']} batches"


def read_report(s3, execution: dict[str, Any]) -> dict[str, Any]:
    """The report the machine's last state wrote (``{"rows", "summary"}``), named in the execution's output."""
    if execution["status"] != "SUCCEEDED":
        reason = execution.get("error") or execution["status"]
        raise ScreenError(f"the screen ended {execution['status']}: {reason} {execution.get('cause') or ''}".strip())
    output = json.loads(execution.get("output") or "{}")
    where = output.get("report")
    if not where:
        raise ScreenError("the screen ended without a report (was the prefix in the uploads bucket?)")
    body = s3.get_object(Bucket=where["bucket"], Key=where["key"])["Body"].read()
    screened = json.loads(body)
    screened["summary"]["report"] = f"s3://{where['bucket']}/{where['key']}"
    return screened


def screen(
    url: str,
    *,
    model: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    state_machine: str | None = None,
    results_bucket: str | None = None,
    wait: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Screen ``s3://BUCKET/PREFIX``: with ``wait``, the report ``{"rows", "summary"}``; else what was started."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_url(url)
    if results_bucket is None:
        if not is_local(endpoint_url):
            raise ScreenError(f"pass --results-bucket (or ${RESULTS_BUCKET_ENV}): the stack's UploadsBucketName output")
        results_bucket = bucket
    try:
        sfn, s3 = aws_clients(endpoint_url, region)
        machine = state_machine or find_state_machine(sfn)
        started = start_screen(sfn, machine, bucket, prefix, results_bucket, model)
        if progress:
            progress(f"screening {url}: started {started['run']}, results under {started['results']}")
        if not wait:
            return started
        return read_report(s3, wait_for(sfn, started["execution_arn"], progress))
    except (ClientError, BotoCoreError) as error:
        raise ScreenError(f"AWS refused: {error}") from error
