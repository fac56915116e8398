"""Studies in one DynamoDB table: the study, its slices as workers answer them, its rows in reading order.

Items (all under ``pk = STUDY#<study_id>``, each with ``expires_at``, the table's TTL attribute):

- ``sk = STUDY``: who owns it (a care team, or ``anonymous``), status, number of files, the model, the summary;
- ``sk = SLICE#<name>``: one per object, written by the worker that classified it (a retried batch rewrites the
  same items: progress is counted, never added up);
- ``sk = ROW#<rank>``: the slices in reading order, written once by the summary step; the API pages through them.

Never stored: the uploaded bytes, file names, DICOM patient tags.
"""

from __future__ import annotations

import json
import time
from typing import Any

from lungscan.accounts.history_store import create_table as create_table  # the same pk/sk keys and TTL

PUBLIC_SLICE_FIELDS = (
    "index",
    "series",
    "instance_number",
    "position",
    "label",
    "probabilities",
    "positive_probability",
    "suspicious",
    "uncertain",
    "tier",
    "unfamiliar",
    "sop_instance_uid",
    "study_date",
)
ERROR_SLICE_FIELDS = ("index", "series", "instance_number", "position", "error")
MAX_PAGE = 500
BATCH_WRITE = 25  # DynamoDB's BatchWriteItem limit


def public_slice(item: dict[str, Any]) -> dict[str, Any]:
    """A slice as the API shows it (no object key, no name)."""
    fields = ERROR_SLICE_FIELDS if "error" in item else PUBLIC_SLICE_FIELDS
    return {name: item.get(name) for name in fields}


class StudyStore:
    """Studies of one DynamoDB table (``boto3.client("dynamodb")``)."""

    def __init__(self, dynamodb, table: str) -> None:
        self.dynamodb = dynamodb
        self.table = table

    @staticmethod
    def _pk(study_id: str) -> dict[str, str]:
        return {"S": f"STUDY#{study_id}"}

    # ---- the study

    def create(self, study_id: str, owner: str, files: int, fields: dict[str, Any], expires_at: int) -> None:
        """A new study, ``uploading``; ``fields`` (model, options, patient...) are kept as JSON."""
        self.dynamodb.put_item(
            TableName=self.table,
            Item={
                "pk": self._pk(study_id),
                "sk": {"S": "STUDY"},
                "owner": {"S": owner},
                "status": {"S": "uploading"},
                "files": {"N": str(files)},
                "fields": {"S": json.dumps(fields, separators=(",", ":"))},
                "expires_at": {"N": str(expires_at)},
            },
            ConditionExpression="attribute_not_exists(pk)",
        )

    def get(self, study_id: str) -> dict[str, Any] | None:
        """The study, or None when there is none or it has expired (TTL deletes within days, not at once)."""
        item = self.dynamodb.get_item(
            TableName=self.table, Key={"pk": self._pk(study_id), "sk": {"S": "STUDY"}}, ConsistentRead=True
        ).get("Item")
        if item is None or int(item["expires_at"]["N"]) <= time.time():
            return None
        study = {
            "study_id": study_id,
            "owner": item["owner"]["S"],
            "status": item["status"]["S"],
            "files": int(item["files"]["N"]),
            "expires_at": int(item["expires_at"]["N"]),
            **json.loads(item["fields"]["S"]),
        }
        for name in ("summary", "series", "outcome"):
            if name in item:
                study[name] = json.loads(item[name]["S"])
        return study

    def move(self, study_id: str, to: str, *, only_from: tuple[str, ...]) -> bool:
        """Set the status to ``to`` if it is one of ``only_from``; False (nothing changed) otherwise."""
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key={"pk": self._pk(study_id), "sk": {"S": "STUDY"}},
                UpdateExpression="SET #status = :to",
                ConditionExpression="attribute_exists(pk) AND #status IN ("
                + ", ".join(f":from{number}" for number in range(len(only_from)))
                + ")",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":to": {"S": to}}
                | {f":from{number}": {"S": status} for number, status in enumerate(only_from)},
            )
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def finish(self, study_id: str, status: str, summary: dict, series: list, outcome: dict[str, Any]) -> None:
        """The summary step's last write: status, summary, series and what else the answer reports (``outcome``)."""
        self.dynamodb.update_item(
            TableName=self.table,
            Key={"pk": self._pk(study_id), "sk": {"S": "STUDY"}},
            UpdateExpression="SET #status = :status, summary = :summary, series = :series, outcome = :outcome",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":status": {"S": status},
                ":summary": {"S": json.dumps(summary, separators=(",", ":"))},
                ":series": {"S": json.dumps(series, separators=(",", ":"))},
                ":outcome": {"S": json.dumps(outcome, separators=(",", ":"))},
            },
        )

    # ---- slices

    def put_slices(self, study_id: str, slices: list[dict[str, Any]], expires_at: int) -> None:
        """The worker's answers, one item per object (rewritten as they are if a batch is retried)."""
        self._write(
            [
                {
                    "pk": self._pk(study_id),
                    "sk": {"S": f"SLICE#{item['name']}"},
                    "slice": {"S": json.dumps(item, separators=(",", ":"))},
                    "failed": {"BOOL": "error" in item},
                    "expires_at": {"N": str(expires_at)},
                }
                for item in slices
            ]
        )

    def progress(self, study_id: str) -> tuple[int, int]:
        """``(answered or refused, refused)``: the slices written so far, counted."""
        counts = []
        for only_failed in (False, True):
            query: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :slice)",
                "ExpressionAttributeValues": {":pk": self._pk(study_id), ":slice": {"S": "SLICE#"}},
                "Select": "COUNT",
            }
            if only_failed:
                query["FilterExpression"] = "failed = :yes"
                query["ExpressionAttributeValues"][":yes"] = {"BOOL": True}
            pages = self.dynamodb.get_paginator("query").paginate(**query)
            counts.append(sum(page["Count"] for page in pages))
        return counts[0], counts[1]

    def slices(self, study_id: str) -> list[dict[str, Any]]:
        """Every slice the workers wrote (any order)."""
        pages = self.dynamodb.get_paginator("query").paginate(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :slice)",
            ExpressionAttributeValues={":pk": self._pk(study_id), ":slice": {"S": "SLICE#"}},
        )
        return [json.loads(item["slice"]["S"]) for page in pages for item in page["Items"]]

    def put_rows(self, study_id: str, ordered: list[dict[str, Any]], expires_at: int) -> None:
        """The slices in reading order, as the API shows them."""
        self._write(
            [
                {
                    "pk": self._pk(study_id),
                    "sk": {"S": f"ROW#{rank:06d}"},
                    "slice": {"S": json.dumps(public_slice(item), separators=(",", ":"))},
                    "expires_at": {"N": str(expires_at)},
                }
                for rank, item in enumerate(ordered)
            ]
        )

    def rows(self, study_id: str, start: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
        """One page of rows from rank ``start``, and the rank the next page starts at (None on the last)."""
        query: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :first AND :last",
            "ExpressionAttributeValues": {
                ":pk": self._pk(study_id),
                ":first": {"S": f"ROW#{start:06d}"},
                ":last": {"S": "ROW#999999"},
            },
            "Limit": min(limit, MAX_PAGE) + 1,  # one more tells whether a next page exists
        }
        items: list[dict[str, Any]] = []
        while len(items) <= limit:
            page = self.dynamodb.query(**query)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        rows = [json.loads(item["slice"]["S"]) for item in items[:limit]]
        return rows, (start + limit if len(items) > limit else None)

    def _write(self, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), BATCH_WRITE):
            requests = [{"PutRequest": {"Item": item}} for item in items[start : start + BATCH_WRITE]]
            for attempt in range(8):
                unprocessed = self.dynamodb.batch_write_item(RequestItems={self.table: requests}).get(
                    "UnprocessedItems", {}
                )
                requests = unprocessed.get(self.table, [])
                if not requests:
                    break
                time.sleep(min(0.05 * 2**attempt, 2.0))  # DynamoDB's advice for throttled batch writes
            else:
                raise RuntimeError("DynamoDB kept refusing the study's writes")
