"""The patient history table (DynamoDB): a care team's records and its patients' summaries, under the keys
``lungscan.accounts.history`` describes; ``create_table`` makes it for the local stack and the tests."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from lungscan.accounts.history import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_BYTES,
    check_patient_ref,
    check_record_id,
    public_record,
    shown_size,
)
from lungscan.errors import NotRecordAuthorError, RecordNotFoundError


class HistoryStore:
    """Records of one DynamoDB table (``boto3.client("dynamodb")``), always within one team."""

    def __init__(self, dynamodb, table: str, retention_days: int) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.retention_days = retention_days

    # ---- keys

    @staticmethod
    def _patient_pk(team: str, ref: str) -> str:
        return f"PATIENT#{team}#{ref}"

    @staticmethod
    def _team_pk(team: str) -> str:
        return f"TEAM#{team}"

    # ---- writes

    def add(self, team: str, ref: str, record: dict[str, Any]) -> str:
        """Store a record and update the patient's summary, both or neither."""
        record_id = record["record_id"]
        expires_at = int(time.time()) + self.retention_days * 86400
        images = {name: record[name] for name in ("preview", "heatmap") if record.get(name) is not None}
        body = {name: value for name, value in record.items() if name not in images}
        item = {
            "pk": {"S": self._patient_pk(team, ref)},
            "sk": {"S": f"SCAN#{record_id}"},
            "record": {"S": json.dumps(body, separators=(",", ":"))},
            "author": {"S": record["clinician"]["sub"]},  # who may delete it, readable without the record
            "expires_at": {"N": str(expires_at)},
            **{name: {"B": data} for name, data in images.items()},
        }
        summary_update = {
            "TableName": self.table,
            "Key": {"pk": {"S": self._team_pk(team)}, "sk": {"S": f"PATIENT#{ref}"}},
            "UpdateExpression": "ADD scans :one SET patient = :ref, last_record_id = :rid, last_scan_at = :at, "
            "last_verdict = :verdict, last_tier = :tier, expires_at = :exp",
            "ExpressionAttributeValues": {
                ":one": {"N": "1"},
                ":ref": {"S": ref},
                ":rid": {"S": record_id},
                ":at": {"S": record["created_at"]},
                ":verdict": {"S": record["verdict"]},
                ":tier": {"S": record.get("tier") or ""},  # records from before tiers: none
                ":exp": {"N": str(expires_at)},
            },
        }
        self.dynamodb.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {"Update": summary_update},
            ]
        )
        return record_id

    def delete(self, team: str, ref: str, record_id: str, author: str) -> None:
        """Delete one record for the whole team, if ``author`` (a ``sub``) stored it; the summary then describes
        the newest remaining one. Another team's record: RecordNotFoundError; a colleague's: NotRecordAuthorError."""
        item = self._item(team, ref, record_id, "#record, author")
        stored_by = item["author"]["S"] if "author" in item else json.loads(item["record"]["S"])["clinician"]["sub"]
        if not hmac.compare_digest(stored_by, author):
            raise NotRecordAuthorError()
        key = {"pk": {"S": self._patient_pk(team, ref)}, "sk": {"S": f"SCAN#{record_id}"}}
        try:
            self.dynamodb.delete_item(TableName=self.table, Key=key, ConditionExpression="attribute_exists(pk)")
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            raise RecordNotFoundError("No such record for your team.") from None
        self._refresh_summary(team, ref)

    def heatmap(self, team: str, ref: str, record_id: str) -> bytes | None:
        """A record's heatmap PNG (None: the request asked for none); another team's record: RecordNotFoundError."""
        item = self._item(team, ref, record_id, "heatmap")
        return item["heatmap"]["B"] if "heatmap" in item else None

    def _item(self, team: str, ref: str, record_id: str, projection: str) -> dict[str, Any]:
        """One live record's item (the attributes in ``projection``), or RecordNotFoundError."""
        check_record_id(record_id)
        query = self._live_items(self._patient_pk(team, ref), f"SCAN#{record_id}")
        query["KeyConditionExpression"] = "pk = :pk AND sk = :prefix"
        query["ProjectionExpression"] = projection + ", expires_at"
        if "#record" in projection:  # "record" is one of DynamoDB's reserved words
            query["ExpressionAttributeNames"] = {"#record": "record"}
        items = self.dynamodb.query(**query)["Items"]
        if not items:
            raise RecordNotFoundError("No such record for your team.")
        return items[0]

    def _refresh_summary(self, team: str, ref: str) -> None:
        summary_key = {"pk": {"S": self._team_pk(team)}, "sk": {"S": f"PATIENT#{ref}"}}
        newest = self.dynamodb.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :scan)",
            ExpressionAttributeValues={":pk": {"S": self._patient_pk(team, ref)}, ":scan": {"S": "SCAN#"}},
            ProjectionExpression="#record, expires_at",
            ExpressionAttributeNames={"#record": "record"},
            ScanIndexForward=False,
            Limit=1,
        )["Items"]
        if not newest:
            self.dynamodb.delete_item(TableName=self.table, Key=summary_key)
            return
        latest = json.loads(newest[0]["record"]["S"])
        count = self._count_scans(team, ref)
        self.dynamodb.update_item(
            TableName=self.table,
            Key=summary_key,
            UpdateExpression="SET scans = :n, last_record_id = :rid, last_scan_at = :at, last_verdict = :verdict, "
            "last_tier = :tier, expires_at = :exp",
            ExpressionAttributeValues={
                ":n": {"N": str(count)},
                ":rid": {"S": latest["record_id"]},
                ":at": {"S": latest["created_at"]},
                ":verdict": {"S": latest["verdict"]},
                ":tier": {"S": latest.get("tier") or ""},
                ":exp": newest[0]["expires_at"],  # the summary lives as long as the newest record
            },
        )

    def _count_scans(self, team: str, ref: str) -> int:
        paginator = self.dynamodb.get_paginator("query")
        pages = paginator.paginate(**self._live_items(self._patient_pk(team, ref), "SCAN#"), Select="COUNT")
        return sum(page["Count"] for page in pages)

    def _live_items(self, pk: str, sk_prefix: str) -> dict[str, Any]:
        """The query for the items under ``pk`` whose sort key starts with ``sk_prefix``, unexpired:
        DynamoDB's TTL deletes expired items within days, not at once, so they are never counted or shown."""
        return {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "FilterExpression": "expires_at > :now",
            "ExpressionAttributeValues": {
                ":pk": {"S": pk},
                ":prefix": {"S": sk_prefix},
                ":now": {"N": str(int(time.time()))},
            },
        }

    # ---- reads

    def patients(
        self, team: str, *, limit: int = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the team's patients, in reference order, and the reference the next page starts after."""
        pk = self._team_pk(team)
        query = self._live_items(pk, "PATIENT#")
        if after is not None:
            query["ExclusiveStartKey"] = {"pk": {"S": pk}, "sk": {"S": f"PATIENT#{check_patient_ref(after)}"}}
        patients: list[dict[str, Any]] = []
        for item in self._pages(query, limit):
            patients.append(
                {
                    "patient": item["patient"]["S"],
                    "scans": int(item["scans"]["N"]),
                    "last_scan_at": item["last_scan_at"]["S"],
                    "last_verdict": item["last_verdict"]["S"],
                    "last_tier": item.get("last_tier", {}).get("S") or None,
                }
            )
            if len(patients) == limit:
                break
        more = len(patients) == limit and self._has_more(query, f"PATIENT#{patients[-1]['patient']}")
        return patients, patients[-1]["patient"] if more else None

    def scans(
        self,
        team: str,
        ref: str,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        after: str | None = None,
        max_bytes: int = MAX_PAGE_BYTES,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a patient's records as the API shows them (``public_record``), newest first: at most
        ``limit`` records and ``max_bytes`` of JSON (always at least one), and the record id the next page starts
        after."""
        pk = self._patient_pk(team, ref)
        query = self._live_items(pk, "SCAN#") | {"ScanIndexForward": False}
        if after is not None:
            query["ExclusiveStartKey"] = {"pk": {"S": pk}, "sk": {"S": f"SCAN#{check_record_id(after)}"}}
        records: list[dict[str, Any]] = []
        size = 0
        full = False
        for item in self._pages(query, limit):
            record = json.loads(item["record"]["S"])
            for name in ("preview", "heatmap"):
                if name in item:
                    record[name] = item[name]["B"]
            shown = public_record(record)
            size += shown_size(shown) + 1
            if records and size > max_bytes:
                full = True
                break
            records.append(shown)
            if len(records) == limit:
                break
        last = records[-1]["record_id"] if records else None
        more = full or (len(records) == limit and self._has_more(query, f"SCAN#{last}"))
        return records, last if more else None

    def _pages(self, query: dict[str, Any], limit: int):
        """The query's items, read ``limit`` (and at most 1 MB) at a time."""
        query = dict(query, Limit=limit)
        while True:
            page = self.dynamodb.query(**query)
            yield from page["Items"]
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _has_more(self, query: dict[str, Any], after_sk: str) -> bool:
        """Whether a live item follows ``after_sk`` (so that a last page says so: its ``next`` is null)."""
        pk = query["ExpressionAttributeValues"][":pk"]
        rest = dict(query, ExclusiveStartKey={"pk": pk, "sk": {"S": after_sk}}, Limit=1, ProjectionExpression="pk")
        while True:
            page = self.dynamodb.query(**rest)
            if page["Items"]:
                return True
            if "LastEvaluatedKey" not in page:
                return False
            rest["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def create_table(dynamodb, table: str) -> None:
    """The table as template.yaml declares it (keys, on-demand, TTL): for the local stack and tests."""
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
