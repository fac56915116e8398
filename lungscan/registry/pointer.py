"""The registry's pointer and history: ``models/<name>/latest.json`` (the version served),
``models/<name>/history.json`` (every move of it, written first: see :func:`move_pointer`) and
what is published (names, complete versions).
"""

from __future__ import annotations

import json
import random
import re
import time

from lungscan.bundle.files import METADATA_FILE, NAME_PATTERN, VERSION_PATTERN
from lungscan.bundle.metadata import utc_timestamp
from lungscan.errors import InvalidBundleError, RegistryError
from lungscan.registry.keys import PREFIX, check_name, check_version, history_key, pointer_key, version_prefix

# History actions that make a version current; "rollback" undoes the latest of them. ("set" is what an
# earlier registry wrote for a bare pointer move: kept so older history files still read right.)
FORWARD_ACTIONS = ("publish", "promote", "set")
# Conditional writes of history.json: how often to re-read and append again when someone else wrote first.
HISTORY_WRITE_ATTEMPTS = 8


def is_missing(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def current_version(s3, bucket: str, name: str) -> str | None:
    """The version ``latest.json`` points at, or None when there is no pointer yet."""
    try:
        return latest_version(s3, bucket, name)
    except Exception as error:
        if is_missing(error):
            return None
        raise


def read_history(s3, bucket: str, name: str) -> list[dict]:
    """The pointer moves of ``name``, oldest first ([] when there are none yet)."""
    return _read_history(s3, bucket, name)[0]


def _read_history(s3, bucket: str, name: str) -> tuple[list[dict], str | None]:
    """history.json and its ETag (None when it does not exist yet)."""
    try:
        response = s3.get_object(Bucket=bucket, Key=history_key(name))
    except Exception as error:
        if is_missing(error):
            return [], None
        raise
    try:
        history = json.loads(response["Body"].read())
    except ValueError as error:
        raise RegistryError(f"{history_key(name)} is not valid JSON") from error
    if not isinstance(history, list):
        raise RegistryError(f"{history_key(name)} is not a list")
    return history, response.get("ETag")


def _is_write_conflict(error: Exception) -> bool:
    """S3 refused a conditional write: the object changed (412) or another write raced ours (409)."""
    response = getattr(error, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")


def move_pointer(s3, bucket: str, name: str, version: str, *, action: str, note: str | None = None) -> dict:
    """Append the move to history.json, then point latest.json at ``version``; returns the entry.

    History first: if the pointer write fails, the history names a move that may not have
    happened, which a reader detects (its last version differs from the pointer); the other
    order could leave a pointer that no history explains.

    history.json is written only if it is still the one read (``IfMatch`` its ETag, or
    ``IfNoneMatch: *`` when there was none), so two people publishing at once never drop
    each other's entry: the one who loses re-reads and appends again.

    Raises:
        RegistryError: history.json kept changing under us (``HISTORY_WRITE_ATTEMPTS`` times).
    """
    check_name(name), check_version(version)
    for attempt in range(HISTORY_WRITE_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0, 0.1 * attempt))  # let the other writer finish its pointer too
        previous = current_version(s3, bucket, name)
        history, etag = _read_history(s3, bucket, name)
        entry = {
            "at": utc_timestamp(),
            "action": action,
            "version": version,
            "previous": previous,
        }
        if note:
            entry["note"] = note
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            s3.put_object(
                Bucket=bucket,
                Key=history_key(name),
                Body=(json.dumps([*history, entry], indent=1) + "\n").encode(),
                ContentType="application/json",
                **condition,
            )
        except Exception as error:
            if _is_write_conflict(error):
                continue  # someone else moved the pointer meanwhile: read again
            raise
        body = json.dumps({"version": version}).encode()
        s3.put_object(Bucket=bucket, Key=pointer_key(name), Body=body, ContentType="application/json")
        return entry
    raise RegistryError(f"{history_key(name)} kept changing while this move was recorded; try again")


def version_stack(history: list[dict]) -> list[str]:
    """Which version each earlier move made current, as a stack: publish/promote/set push, rollback pops.

    Rolling back twice after publishing v1, v2, v3 goes to v2, then v1.
    """
    stack: list[str] = []
    for entry in history:
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
        elif entry.get("action") in FORWARD_ACTIONS and entry.get("version"):
            stack.append(entry["version"])
    return stack


def rollback_target(history: list[dict], current: str | None) -> str:
    """The version a rollback moves to.

    Raises:
        RegistryError: no pointer, a pointer the history does not explain, or nothing earlier.
    """
    if current is None:
        raise RegistryError("there is no latest.json pointer: nothing to roll back")
    stack = version_stack(history)
    if not stack or stack[-1] != current:
        raise RegistryError(
            f"latest.json points at {current}, but history.json "
            + (f"ends at {stack[-1]}" if stack else "is empty")
            + ": the pointer was moved outside the registry tools; use promote to choose a version"
        )
    earlier = [version for version in stack[:-1] if version != current]
    if not earlier:
        raise RegistryError(f"{current} is the first version in history.json: there is nothing to roll back to")
    return earlier[-1]


def version_exists(s3, bucket: str, name: str, version: str) -> bool:
    """True when ``models/<name>/<version>/model.json`` exists (a complete upload)."""
    found = s3.list_objects_v2(Bucket=bucket, Prefix=f"{version_prefix(name, version)}/{METADATA_FILE}", MaxKeys=1)
    return any(item["Key"].endswith(f"/{METADATA_FILE}") for item in found.get("Contents", []))


def list_names(s3, bucket: str) -> list[str]:
    """Model names that have a folder under ``models/``."""
    names = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{PREFIX}/", Delimiter="/"):
        names += [item["Prefix"][len(PREFIX) + 1 : -1] for item in page.get("CommonPrefixes", [])]
    return sorted(name for name in names if re.fullmatch(NAME_PATTERN, name))  # others were not published here


def list_versions(s3, bucket: str, name: str) -> list[str]:
    """Versions of ``name`` with a complete upload (a model.json), oldest version string first."""
    versions = []
    prefix = f"{PREFIX}/{name}/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        versions += [item["Prefix"][len(prefix) : -1] for item in page.get("CommonPrefixes", [])]
    valid = [v for v in versions if re.fullmatch(VERSION_PATTERN, v)]  # a stray folder is not a version
    return sorted(v for v in valid if version_exists(s3, bucket, name, v))


def latest_version(s3, bucket: str, name: str) -> str:
    """The version ``latest.json`` points at. Raises botocore errors when S3 fails."""
    body = s3.get_object(Bucket=bucket, Key=pointer_key(name))["Body"].read()
    try:
        version = json.loads(body)["version"]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidBundleError(f"{pointer_key(name)} is not a valid pointer") from error
    try:
        return check_version(version)
    except RegistryError as error:
        raise InvalidBundleError(f"{pointer_key(name)} names an invalid version") from error
