"""Screening an archive prefix (issue 23): answers kept per object version and model version, and the report.

- ``ScreenedRecords``: one DynamoDB item per (bucket, key, ETag, model name, model version), holding the object's
  answer, so a re-run over the same prefix with the same model answers finished objects from the record instead of
  classifying them again (an object rewritten since has a new ETag; a new model version, a new record);
- ``screen_batch``: one batch of the Distributed Map: records first, the rest through
  ``lungscan.studies.batch.classify_batch_objects`` (the one path a batch meets the model), new answers recorded;
- ``report``: the rows, flagged first, and the summary the ``lungscan screen`` command prints.

The record's key is a hash: object keys (often patient names or accession numbers) are never a key of their own.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from lungscan.model.classifier import Classifier
from lungscan.studies.batch import classify_batch_objects
from lungscan.studies.summary import TIER_RANK

RECORD_TTL_SECONDS = 400 * 86400  # a yearly re-screen of the same archive still finds last year's answers
# Errors that say nothing about the object's content (permissions, deleted since the listing): asked again next run.
TRANSIENT_CODES = frozenset({"object_unreadable", "missing_file"})
# What is not a CT image at all (a report, a spreadsheet): skipped and counted, not an error of the screen.
SKIPPED_CODES = frozenset({"unsupported_format", "empty_file"})
PLACING = ("name", "key", "index")
BATCH_GET = 100  # DynamoDB's BatchGetItem limit
BATCH_WRITE = 25
ROW_FIELDS = ("label", "tier", "positive_probability", "suspicious", "uncertain", "unfamiliar")


def record_id(bucket: str, item: dict[str, Any], model: tuple[str, str]) -> str:
    """The record's partition key: a hash of the object's bucket, key and ETag and the model's name and version."""
    parts = [bucket, item["Key"], str(item.get("Etag") or item.get("ETag") or ""), *model]
    return "SCREENED#" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


class ScreenedRecords:
    """The records, in the studies table (``boto3.client("dynamodb")``; ``sk = SCREENED``, with a TTL)."""

    def __init__(self, dynamodb, table: str) -> None:
        self.dynamodb, self.table = dynamodb, table

    def get_many(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), BATCH_GET):
            keys = [
                {"pk": {"S": key}, "sk": {"S": "SCREENED"}} for key in dict.fromkeys(ids[start : start + BATCH_GET])
            ]
            request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(8):
                answer = self.dynamodb.batch_get_item(RequestItems=request)
                for item in answer.get("Responses", {}).get(self.table, []):
                    if int(item["expires_at"]["N"]) > time.time():
                        found[item["pk"]["S"]] = json.loads(item["answer"]["S"])
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(0.05 * 2**attempt, 2.0))
        return found

    def put_many(self, answers: dict[str, dict[str, Any]]) -> None:
        expires_at = str(int(time.time()) + RECORD_TTL_SECONDS)
        items = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": {"S": key},
                        "sk": {"S": "SCREENED"},
                        "answer": {"S": json.dumps(answer, separators=(",", ":"))},
                        "expires_at": {"N": expires_at},
                    }
                }
            }
            for key, answer in answers.items()
        ]
        for start in range(0, len(items), BATCH_WRITE):
            pending = items[start : start + BATCH_WRITE]
            for attempt in range(8):
                unprocessed = self.dynamodb.batch_write_item(RequestItems={self.table: pending})
                pending = unprocessed.get("UnprocessedItems", {}).get(self.table, [])
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 2.0))


def screen_batch(
    classifier: Classifier, s3, records: ScreenedRecords, bucket: str, items: list[dict[str, Any]], prefix: str
) -> list[dict[str, Any]]:
    """The batch's slices (as ``classify_batch_objects`` makes them), each marked ``reused`` True when its answer
    came from an earlier run's record, False when it was classified now."""
    model = (classifier.metadata.name, classifier.metadata.version)
    ids = [record_id(bucket, item, model) for item in items]
    known = records.get_many(ids)
    fresh = [item for item, key in zip(items, ids, strict=True) if key not in known]
    answered = iter(classify_batch_objects(classifier, s3, bucket, fresh, prefix) if fresh else [])
    slices, new = [], {}
    for item, key in zip(items, ids, strict=True):
        if key in known:
            entry = classify_placing(item, prefix) | known[key] | {"reused": True}
        else:
            entry = next(answered) | {"reused": False}
            if entry.get("error", {}).get("code") not in TRANSIENT_CODES:
                new[key] = {name: value for name, value in entry.items() if name not in (*PLACING, "reused")}
        slices.append(entry)
    records.put_many(new)
    return slices


def classify_placing(item: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The fields a slice takes from where it lies (its name under the prefix), not from its content."""
    name = item["Key"][len(prefix) :] if item["Key"].startswith(prefix) else item["Key"]
    return {"name": name, "key": item["Key"], "index": int(name) if name.isdigit() else None}


def row(entry: dict[str, Any]) -> dict[str, Any]:
    """One object's report row: its answer, or its error code (``status`` says which: answered, error, skipped)."""
    if "error" in entry:
        code = entry["error"]["code"]
        return {"key": entry["key"], "status": "skipped" if code in SKIPPED_CODES else "error", "error": code}
    return {"key": entry["key"], "status": "answered"} | {name: entry.get(name) for name in ROW_FIELDS}


def report(slices: list[dict[str, Any]], model: dict[str, str]) -> dict[str, Any]:
    """``{"rows", "summary"}``: flagged rows first (most probable first), then the other answers, then errors, then
    skipped objects, each group by key."""
    rows = [row(entry) for entry in slices]
    group = {"error": 2, "skipped": 3}

    def rank(item: dict[str, Any]) -> tuple:
        if item["status"] != "answered":
            return (group[item["status"]], 0.0, item["key"])
        if item["suspicious"]:
            return (0, -item["positive_probability"], item["key"])
        return (1, 0.0, item["key"])

    rows.sort(key=rank)
    answered = [item for item in rows if item["status"] == "answered"]
    summary = {
        "objects": len(rows),
        "answered": len(answered),
        "flagged": sum(1 for item in answered if item["suspicious"]),
        "uncertain": sum(1 for item in answered if item["uncertain"]),
        "unfamiliar": sum(1 for item in answered if item["unfamiliar"]),
        "errors": sum(1 for item in rows if item["status"] == "error"),
        "skipped": sum(1 for item in rows if item["status"] == "skipped"),
        "tier": max((item["tier"] for item in answered), key=TIER_RANK.index) if answered else None,
        "classified": sum(1 for entry in slices if entry.get("reused") is False),
        "reused": sum(1 for entry in slices if entry.get("reused") is True),
        "model": model,
    }
    return {"rows": rows, "summary": summary}
