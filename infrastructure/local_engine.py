"""The study state machine without AWS: template.yaml's own Definition, run in-process on the local moto S3.

moto 5.2.5 has a Step Functions interpreter, but it cannot run this Definition: its parser rejects ``ItemBatcher``
(``CreateStateMachine`` answers ``ASLParserException``, checked), and as issue 21 measured, a run with an S3
``ItemReader`` breaks ``DescribeExecution`` (a datetime it cannot serialise) and its Lambda tasks want Docker. So this module runs the Definition itself, read from template.yaml
as deployed, and implements exactly the parts it uses (docs/deploy.md "Locally"):

- ``Pass`` (``Parameters`` with ``States.StringToJson``), ``Task`` (``arn:aws:states:::lambda:invoke``) with
  ``Retry`` and ``Catch``, ``InputPath``/``ResultPath``/``OutputPath`` on plain ``$.a.b`` paths;
- ``Map`` in DISTRIBUTED mode: ``ItemReader`` (``s3:listObjectsV2`` on moto), ``ItemBatcher`` (``BatchInput``,
  ``MaxItemsPerBatch[Path]``), ``MaxConcurrency[Path]`` (capped at this machine's cores), ``ToleratedFailurePercentage``
  and ``ResultWriter`` (the results JSON and manifest written to moto S3);
- a Lambda task calls the real handler in-process: the one the function's ``ImageConfig.Command`` names.

Anything else in a Definition raises ``NotImplementedError``: a change to the template is never silently skipped.

``infrastructure.local_studies`` serves it to the function as Step Functions' API; ``python -m
infrastructure.local_engine --bucket B --prefix P`` screens any bucket/prefix of the local S3 without the API
(issue 23), as does ``run_machine``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from infrastructure.emulation import ACCOUNT, REGION, REPO_ROOT, LambdaContext

TEMPLATE = REPO_ROOT / "template.yaml"
MACHINE = "StudyStateMachine"
MACHINE_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{MACHINE}"
LOCAL_CORES = max(1, os.cpu_count() or 1)
Handler = Callable[[dict, Any], Any]


class StateError(Exception):
    """A state's failure, named as Step Functions names it (``States.TaskFailed``, an exception's type...)."""

    def __init__(self, name: str, cause: str) -> None:
        super().__init__(f"{name}: {cause}")
        self.name, self.cause = name, cause


# ---------------------------------------------------------------- the template


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags, each read as its long form (``!Ref X`` -> ``{"Ref": "X"}``)."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _tag)


def read_template(path: Path = TEMPLATE) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_TemplateLoader)


def machine_definition(template: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The state machine's Definition with its substitutions made: template parameters by their defaults (or
    ``parameters``), a function's ARN as ``local:<LogicalId>``."""
    properties = template["Resources"][MACHINE]["Properties"]
    values = {}
    for name, source in properties.get("DefinitionSubstitutions", {}).items():
        if "Ref" in source:
            values[name] = str((parameters or {}).get(source["Ref"], template["Parameters"][source["Ref"]]["Default"]))
        elif "Fn::GetAtt" in source and source["Fn::GetAtt"][1] == "Arn":
            values[name] = f"local:{source['Fn::GetAtt'][0]}"
        else:
            raise NotImplementedError(f"substitution {name}: {source}")
    return _substitute(properties["Definition"], values)


def _substitute(node: Any, values: dict[str, str]) -> Any:
    if isinstance(node, str):
        return re.sub(r"\$\{(\w+)\}", lambda match: values[match[1]], node)
    if isinstance(node, dict):
        return {key: _substitute(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, values) for value in node]
    return node


def template_handlers(template: dict[str, Any]) -> dict[str, Handler]:
    """``local:<LogicalId>`` -> the handler its image runs (``ImageConfig.Command``), imported as the image does."""
    handlers: dict[str, Handler] = {}
    for name, resource in template["Resources"].items():
        command = resource.get("Properties", {}).get("ImageConfig", {}).get("Command")
        if resource["Type"] == "AWS::Serverless::Function" and command:
            module, _, function = command[0].rpartition(".")
            handlers[f"local:{name}"] = _lazy(module, function)
    return handlers


def _lazy(module: str, function: str) -> Handler:
    def call(event: dict, context: Any) -> Any:
        return getattr(importlib.import_module(module), function)(event, context)

    return call


# ---------------------------------------------------------------- paths and parameters


def _get(data: Any, path: str) -> Any:
    if path == "$":
        return data
    if not re.fullmatch(r"\$(\.\w+)+", path):
        raise NotImplementedError(f"path {path}")
    for part in path[2:].split("."):
        if not isinstance(data, dict) or part not in data:
            raise StateError("States.Runtime", f"the path {path} is not in the input")
        data = data[part]
    return data


def _put(data: Any, path: str | None, value: Any) -> Any:
    if path is None:
        return data
    if path == "$":
        return value
    if not re.fullmatch(r"\$(\.\w+)+", path):
        raise NotImplementedError(f"result path {path}")
    result = dict(data)
    target = result
    parts = path[2:].split(".")
    for part in parts[:-1]:
        target[part] = dict(target.get(part) or {})
        target = target[part]
    target[parts[-1]] = value
    return result


def _parameters(template: Any, data: Any) -> Any:
    if isinstance(template, list):
        return [_parameters(item, data) for item in template]
    if not isinstance(template, dict):
        return template
    result = {}
    for key, value in template.items():
        if key.endswith(".$"):
            result[key[:-2]] = _evaluate(value, data)
        else:
            result[key] = _parameters(value, data)
    return result


def _evaluate(expression: str, data: Any) -> Any:
    match = re.fullmatch(r"States\.StringToJson\('([^']*)'\)", expression)
    if match:
        return json.loads(match[1])
    return _get(data, expression)


# ---------------------------------------------------------------- the interpreter


class LocalEngine:
    """Runs one Definition; a Lambda task calls ``handlers[FunctionName]`` in-process."""

    def __init__(self, definition: dict[str, Any], handlers: dict[str, Handler], s3, max_workers: int = LOCAL_CORES):
        self.definition, self.handlers, self.s3, self.max_workers = definition, handlers, s3, max_workers

    def run(self, data: Any, execution: str = "local") -> Any:
        return self._machine(self.definition, data, execution)

    def _machine(self, machine: dict[str, Any], data: Any, execution: str) -> Any:
        name = machine["StartAt"]
        while True:
            state = machine["States"][name]
            try:
                data = self._state(state, data, execution)
            except StateError as error:
                catcher = next((c for c in state.get("Catch", []) if _matches(c["ErrorEquals"], error.name)), None)
                if catcher is None:
                    raise
                data = _put(data, catcher.get("ResultPath", "$"), {"Error": error.name, "Cause": error.cause})
                name = catcher["Next"]
                continue
            if state.get("End") or state["Type"] in ("Succeed", "Fail"):
                return data
            name = state["Next"]

    def _state(self, state: dict[str, Any], data: Any, execution: str) -> Any:
        kind = state["Type"]
        given = _get(data, state.get("InputPath", "$"))
        if kind == "Pass":
            result = _parameters(state["Parameters"], given) if "Parameters" in state else state.get("Result", given)
        elif kind == "Task":
            result = self._retrying(state, lambda: self._task(state, given))
        elif kind == "Map":
            result = self._map(state, given, execution)
        elif kind == "Succeed":
            return given
        elif kind == "Fail":
            raise StateError(state.get("Error", "States.Fail"), state.get("Cause", ""))
        else:
            raise NotImplementedError(f"state type {kind}")
        data = _put(data, state.get("ResultPath", "$"), result)
        return _get(data, state.get("OutputPath", "$"))

    def _task(self, state: dict[str, Any], given: Any) -> Any:
        if state["Resource"] != "arn:aws:states:::lambda:invoke":
            raise NotImplementedError(f"task resource {state['Resource']}")
        parameters = _parameters(state["Parameters"], given)
        handler = self.handlers[parameters["FunctionName"]]
        try:
            payload = handler(parameters.get("Payload"), LambdaContext(str(uuid.uuid4()), timeout_s=900))
        except Exception as error:  # a function error, as lambda:invoke reports it: the exception's type
            raise StateError(type(error).__name__, str(error)) from error
        return {"StatusCode": 200, "Payload": json.loads(json.dumps(payload))}

    @staticmethod
    def _retrying(state: dict[str, Any], call: Callable[[], Any]) -> Any:
        attempts: dict[int, int] = {}
        while True:
            try:
                return call()
            except StateError as error:
                rule = next((r for r in state.get("Retry", []) if _matches(r["ErrorEquals"], error.name)), None)
                if rule is None:
                    raise
                number = state["Retry"].index(rule)
                attempts[number] = attempts.get(number, 0) + 1
                if attempts[number] > rule.get("MaxAttempts", 3):
                    raise
                # No wait locally: a retried error here is no throttle that time would relieve.

    def _map(self, state: dict[str, Any], given: Any, execution: str) -> Any:
        processor = state["ItemProcessor"]
        if processor.get("ProcessorConfig", {}).get("Mode") != "DISTRIBUTED" or "ItemReader" not in state:
            raise NotImplementedError("only a distributed Map with an ItemReader")
        items = self._read_items(state["ItemReader"], given)
        batcher = state.get("ItemBatcher")
        if batcher is not None:
            size = batcher.get("MaxItemsPerBatch") or _get(given, batcher["MaxItemsPerBatchPath"])
            common = _parameters(batcher.get("BatchInput", {}), given)
            items = [
                {"Items": items[start : start + size], "BatchInput": common} for start in range(0, len(items), size)
            ]
        limit = state.get("MaxConcurrency") or _get(given, state.get("MaxConcurrencyPath", "$.__none__")) or 1000
        workers = max(1, min(int(limit), self.max_workers, len(items) or 1))
        outcomes: list[Any] = []

        def child(item: Any) -> Any:
            try:
                return self._machine(processor, item, execution)
            except StateError as error:
                return error

        with ThreadPoolExecutor(workers) as pool:
            outcomes = list(pool.map(child, items))
        failures = [outcome for outcome in outcomes if isinstance(outcome, StateError)]
        tolerated = state.get("ToleratedFailurePercentage", 0)
        if items and 100 * len(failures) / len(items) > tolerated:
            causes = "; ".join(sorted({failure.name for failure in failures}))
            raise StateError("States.ExceedToleratedFailureThreshold", f"{len(failures)} of {len(items)}: {causes}")
        if "ResultWriter" in state:
            return self._write_results(state["ResultWriter"], given, outcomes, execution)
        return [None if isinstance(outcome, StateError) else outcome for outcome in outcomes]

    def _read_items(self, reader: dict[str, Any], given: Any) -> list[dict[str, Any]]:
        if reader["Resource"] != "arn:aws:states:::s3:listObjectsV2":
            raise NotImplementedError(f"item reader {reader['Resource']}")
        parameters = _parameters(reader["Parameters"], given)
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=parameters["Bucket"], Prefix=parameters.get("Prefix", "")
        )
        return [
            {
                "Key": item["Key"],
                "Size": item["Size"],
                "Etag": item.get("ETag", ""),
                "LastModified": item["LastModified"].timestamp(),
                "StorageClass": item.get("StorageClass", "STANDARD"),
            }
            for page in pages
            for item in page.get("Contents", [])
        ]

    def _write_results(self, writer: dict[str, Any], given: Any, outcomes: list[Any], execution: str) -> dict:
        parameters = _parameters(writer["Parameters"], given)
        bucket, prefix = parameters["Bucket"], parameters.get("Prefix", "")
        run = f"{prefix.rstrip('/')}/{execution}"
        succeeded = [{"Output": json.dumps(o)} for o in outcomes if not isinstance(o, StateError)]
        failed = [{"Error": o.name, "Cause": o.cause} for o in outcomes if isinstance(o, StateError)]
        keys = {}
        for status, entries in (("SUCCEEDED", succeeded), ("FAILED", failed)):
            if entries:
                keys[status] = f"{run}/{status}_0.json"
                self.s3.put_object(Bucket=bucket, Key=keys[status], Body=json.dumps(entries).encode())
        manifest = f"{run}/manifest.json"
        body = {"DestinationBucket": bucket, "MapRunArn": f"local:{execution}", "ResultFiles": keys}
        self.s3.put_object(Bucket=bucket, Key=manifest, Body=json.dumps(body).encode())
        return {"MapRunArn": f"local:{execution}", "ResultWriterDetails": {"Bucket": bucket, "Key": manifest}}


def _matches(names: list[str], error: str) -> bool:
    return error in names or "States.ALL" in names or (error != "States.Runtime" and "States.TaskFailed" in names)


def local_engine(s3, template_path: Path = TEMPLATE, parameters: dict[str, Any] | None = None) -> LocalEngine:
    """The template's machine, its Lambda tasks routed to the handlers its functions' images run."""
    template = read_template(template_path)
    return LocalEngine(machine_definition(template, parameters), template_handlers(template), s3)


def run_machine(machine_input: dict[str, Any], s3=None) -> Any:
    """Run the machine once, to the end, on ``{"bucket", "prefix", "study_id", "model", "results_bucket",
    "results_prefix"}`` (the environment names the local S3, the table and the models, as ``make run`` sets them)."""
    import boto3

    return local_engine(s3 or boto3.client("s3")).run(machine_input, machine_input["study_id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the study state machine once on a local bucket/prefix.")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--study-id", default=None, help="default: a new id")
    parser.add_argument("--model", default=None)
    parser.add_argument("--results-bucket", default=None, help="default: --bucket")
    args = parser.parse_args(argv)
    study_id = args.study_id or uuid.uuid4().hex
    machine_input = {
        "bucket": args.bucket,
        "prefix": args.prefix,
        "study_id": study_id,
        "model": args.model,
        "results_bucket": args.results_bucket or args.bucket,
        "results_prefix": f"results/{study_id}/",
    }
    print(json.dumps(run_machine(machine_input)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
