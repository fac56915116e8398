"""``make run``'s archive screening (issue 23): a bucket ``lungscan-archive-local`` and the study state machine on the
local moto server, so ``lungscan screen s3://lungscan-archive-local/PREFIX --endpoint-url http://127.0.0.1:5002
--wait`` runs with no AWS account.

moto's server answers Step Functions' API (CreateStateMachine, StartExecution, DescribeExecution...) from its
in-process backend, but it does not run a Definition like this one (``infrastructure.local_engine`` says why). So
the machine is created in moto as deployed (template.yaml's Definition, substitutions made), and the backend's
``start_execution`` is wrapped: a new execution also runs on ``infrastructure.local_engine`` in a thread, which then
sets the execution's status, output (or error and cause) and stop date in moto's own record. DescribeExecution,
ListExecutions and StopExecution stay moto's. The hook needs moto's server in this process (``ThreadedMotoServer``,
as ``local_stack.start_s3`` runs it).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from infrastructure.emulation import ACCOUNT, REGION
from infrastructure.local_engine import MACHINE, LocalEngine, StateError

ARCHIVE_BUCKET = "lungscan-archive-local"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/lungscan-study-machine-local"


def create_archive(endpoint: str, engine: LocalEngine, region: str = REGION) -> str:
    """The archive bucket and the state machine on the moto server at ``endpoint`` (in this process), its
    executions run by ``engine``; returns the machine's ARN."""
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name=region).create_bucket(Bucket=ARCHIVE_BUCKET)
    states = boto3.client("stepfunctions", endpoint_url=endpoint, region_name=region)
    arn = states.create_state_machine(
        name=MACHINE, definition=json.dumps(engine.definition), roleArn=ROLE_ARN, type="STANDARD"
    )["stateMachineArn"]
    run_executions(engine, region)
    return arn


def run_executions(engine: LocalEngine, region: str = REGION) -> None:
    """Make moto's Step Functions backend run each new execution on ``engine``."""
    from moto.stepfunctions.models import stepfunctions_backends

    backend = stepfunctions_backends[ACCOUNT][region]
    original = backend.start_execution
    lock = threading.Lock()
    started: set[str] = set()

    def start_execution(state_machine_arn: str, name: str, execution_input: str) -> Any:
        execution = original(state_machine_arn, name, execution_input)
        with lock:  # the same name and input is the same execution (STANDARD): it runs once
            if execution.execution_arn in started:
                return execution
            started.add(execution.execution_arn)
        threading.Thread(target=_run, args=(engine, execution), daemon=True).start()
        return execution

    backend.start_execution = start_execution  # type: ignore[method-assign]


def _run(engine: LocalEngine, execution: Any) -> None:
    try:
        output = engine.run(json.loads(execution.execution_input), execution.name)
        execution.output = json.dumps(output)
        status = "SUCCEEDED"
    except StateError as error:
        execution.error, execution.cause, status = error.name, error.cause, "FAILED"
    except Exception as error:  # the engine's own failure: reported as the execution's, never a dead thread
        execution.error, execution.cause, status = type(error).__name__, str(error), "FAILED"
    if execution.status == "RUNNING":  # not stopped meanwhile (StopExecution sets ABORTED)
        execution.stop_date = datetime.now(UTC)
        execution.status = status
