"""The S3 model registry.

Layout in the model bucket::

    models/<name>/<version>/model.h5
    models/<name>/<version>/model.onnx      (the runtime twin, when model.json declares one)
    models/<name>/<version>/model.json
    models/<name>/<version>/report/*       (evaluation figures, smoke set; not needed to serve)
    models/<name>/<version>/MODEL_CARD.md
    models/<name>/history.json             -> [{"at", "action", "version", "previous"}, ...]
    models/<name>/latest.json              -> {"version": "<version>"}

Publishing writes the whole bundle first (model.json last: a version folder with a model.json
is complete), checks what landed, and moves the pointer last, so a reader sees either the old
model or the complete new one, never half of it. Every pointer move is appended to
``history.json`` *before* the pointer is written, so a rollback can always find where the
pointer came from. Serving (:func:`download_bundle`) fetches only model.h5, model.json and
the twin model.json declares.
The S3 client is passed in, so tests hand in a moto-backed one and the local stack one
pointed at moto server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

from lungscan.bundle import (
    METADATA_FILE,
    MODEL_FILE,
    NAME_PATTERN,
    REPORT_DIR,
    VERSION_PATTERN,
    BundleMetadata,
    file_sha256,
    read_metadata,
    utc_timestamp,
)
from lungscan.errors import InvalidBundleError, LungScanError
from lungscan.runtime import TWIN_FILE, verify_twin

PREFIX = "models"
POINTER_FILE = "latest.json"
HISTORY_FILE = "history.json"
CARD_FILE = "MODEL_CARD.md"
# History actions that make a version current; "rollback" undoes the latest of them. ("set" is what an
# earlier registry wrote for a bare pointer move: kept so older history files still read right.)
FORWARD_ACTIONS = ("publish", "promote", "set")
# Conditional writes of history.json: how often to re-read and append again when someone else wrote first.
HISTORY_WRITE_ATTEMPTS = 8


class RegistryError(LungScanError):
    """A registry operation cannot be done (no such version, nothing to roll back to...)."""

    code = "registry_error"


def check_name(name: object) -> str:
    """``name`` when it is a valid model name (it becomes an S3 key and a folder)."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise RegistryError("invalid model name: use lower-case letters, digits, '.', '_', '-' (at most 64)")
    return name


def check_version(version: object) -> str:
    """``version`` when it is a valid version (the pattern of model.json's version: never "." or "..")."""
    if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
        raise RegistryError("invalid version: use letters, digits, '.', '_', '-', starting with a letter or digit")
    return version


def pointer_key(name: str) -> str:
    return f"{PREFIX}/{check_name(name)}/{POINTER_FILE}"


def version_prefix(name: str, version: str) -> str:
    return f"{PREFIX}/{check_name(name)}/{check_version(version)}"


def history_key(name: str) -> str:
    return f"{PREFIX}/{check_name(name)}/{HISTORY_FILE}"


def publish_bundle(
    s3, bucket: str, bundle_dir: Path | str, metadata: BundleMetadata | None = None, *, note: str | None = None
) -> BundleMetadata:
    """The one publish sequence: upload the bundle under its name/version, check what landed, record the
    move in history.json, then point ``latest.json`` at it. ``python -m training publish`` (and so
    ``make run`` and ``deploy.sh``) validates the bundle first, then calls this.

    Args:
        metadata: the bundle's, when the caller has already read (and validated) it.
        note: why this publish is special (a forced one), kept in history.json.

    Raises:
        InvalidBundleError: the bundle has no model.json, or what landed in S3 does not match what
            was sent (the pointer is then not moved).
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / METADATA_FILE).exists():
        raise InvalidBundleError("only a bundle with model.json can be published")
    metadata = metadata or read_metadata(bundle_dir)
    upload_bundle(s3, bucket, bundle_dir, metadata)
    try:
        verify_published(s3, bucket, metadata.name, metadata.version)
    except InvalidBundleError as error:
        raise InvalidBundleError(f"the upload did not land intact ({error}); latest.json was not moved") from error
    move_pointer(s3, bucket, metadata.name, metadata.version, action="publish", note=note)
    return metadata


# ---------------------------------------------------------------- bundle files


def bundle_files(bundle_dir: Path | str) -> list[str]:
    """Files of a local bundle that are published, relative to it: report/*, the card, model.h5, the twin
    (model.onnx, when there), model.json last."""
    bundle_dir = Path(bundle_dir)
    report = sorted(
        path.relative_to(bundle_dir).as_posix()
        for path in (bundle_dir / REPORT_DIR).rglob("*")
        if path.is_file() and not path.name.startswith(".")
    )
    card = [CARD_FILE] if (bundle_dir / CARD_FILE).is_file() else []
    twin = [TWIN_FILE] if (bundle_dir / TWIN_FILE).is_file() else []
    return [*report, *card, MODEL_FILE, *twin, METADATA_FILE]


def declared_report_files(metadata: BundleMetadata) -> dict[str, str]:
    """``model.json``'s ``report.files``: path -> sha256 of the report files evaluate wrote."""
    files = metadata.report.files if metadata.report else {}
    return {str(path): str(digest) for path, digest in files.items()}


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def upload_bundle(s3, bucket: str, bundle_dir: Path | str, metadata: BundleMetadata) -> list[str]:
    """Upload a bundle's files under ``models/<name>/<version>/``; returns the keys, in upload order.

    Each object goes up with its SHA-256 (``ChecksumSHA256``: S3 refuses a body that does not
    match) and carries it as ``x-amz-meta-sha256``. model.json goes last.
    """
    bundle_dir = Path(bundle_dir)
    prefix = version_prefix(metadata.name, metadata.version)
    keys = []
    for relative in bundle_files(bundle_dir):
        data = (bundle_dir / relative).read_bytes()
        content_type = {".json": "application/json", ".png": "image/png", ".md": "text/markdown"}.get(
            Path(relative).suffix, "application/octet-stream"
        )
        key = f"{prefix}/{relative}"
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ChecksumSHA256=_sha256_b64(data),
            Metadata={"sha256": hashlib.sha256(data).hexdigest()},
        )
        keys.append(key)
    return keys


def _object_sha256(s3, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def read_published_metadata(s3, bucket: str, name: str, version: str) -> BundleMetadata:
    """A published version's model.json (botocore's ClientError when it is missing).

    Raises:
        InvalidBundleError: model.json is not valid.
    """
    body = s3.get_object(Bucket=bucket, Key=f"{version_prefix(name, version)}/{METADATA_FILE}")["Body"].read()
    try:
        return BundleMetadata.model_validate_json(body)
    except ValueError as error:
        raise InvalidBundleError(f"{version_prefix(name, version)}/{METADATA_FILE} is not valid: {error}") from error


def verify_published(s3, bucket: str, name: str, version: str) -> BundleMetadata:
    """Check a published version end to end: model.json valid, named as its folder, and the sha256
    of model.h5, of its twin and of every report file it declares matching what S3 holds.

    Raises:
        InvalidBundleError: anything missing or mismatched.
    """
    prefix = version_prefix(name, version)
    try:
        metadata = read_published_metadata(s3, bucket, name, version)
    except InvalidBundleError:
        raise
    except Exception as error:
        raise InvalidBundleError(f"{prefix}/{METADATA_FILE} cannot be read: {error}") from error
    _check_identity(metadata, name, version)
    expected = {MODEL_FILE: metadata.sha256} | declared_report_files(metadata)
    if metadata.twin is not None:
        expected[metadata.twin.file] = metadata.twin.sha256
    for relative, digest in expected.items():
        try:
            actual = _object_sha256(s3, bucket, f"{prefix}/{relative}")
        except Exception as error:
            raise InvalidBundleError(f"{prefix}/{relative} cannot be read: {error}") from error
        if actual != digest:
            raise InvalidBundleError(f"sha256 of {prefix}/{relative} does not match its model.json")
    return metadata


def _check_identity(metadata: BundleMetadata, name: str, version: str) -> None:
    """A published model.json must describe the folder it is in and carry model.h5's sha256."""
    prefix = version_prefix(name, version)
    if (metadata.name, metadata.version) != (name, version):
        raise InvalidBundleError(f"{prefix}/{METADATA_FILE} describes {metadata.name} {metadata.version}")
    if not metadata.sha256:
        raise InvalidBundleError(f"{prefix}/{METADATA_FILE} carries no sha256")


def version_exists(s3, bucket: str, name: str, version: str) -> bool:
    """True when ``models/<name>/<version>/model.json`` exists (a complete upload)."""
    found = s3.list_objects_v2(Bucket=bucket, Prefix=f"{version_prefix(name, version)}/{METADATA_FILE}", MaxKeys=1)
    return any(item["Key"].endswith(f"/{METADATA_FILE}") for item in found.get("Contents", []))


# ---------------------------------------------------------------- pointer and history


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


def download_bundle(s3, bucket: str, name: str, version: str, destination_root: Path | str) -> Path:
    """Download a published bundle and verify it; returns the local bundle folder.

    The files land in a temporary folder first and are moved into place only once
    model.json parses and the sha256 of model.h5 (and of the twin it declares) match it.

    Raises:
        RegistryError: ``name`` or ``version`` is not valid (checked before any file is touched).
        InvalidBundleError: missing sha256, mismatch, invalid metadata, or a model.json that
            describes another name or version than the folder it was published under.
    """
    prefix = version_prefix(name, version)  # checks name and version: they become folders below
    destination_root = Path(destination_root)
    destination_root.mkdir(parents=True, exist_ok=True)
    final = destination_root / name / version
    if final.is_dir():
        try:
            cached = read_metadata(final)  # a cached copy is used only while its sha256 still matches
            if cached.twin is not None:
                verify_twin(final, cached.twin)
            # ...and only while it is what the registry holds (a cache from before a twin was added is not).
            remote = s3.get_object(Bucket=bucket, Key=f"{prefix}/{METADATA_FILE}")["Body"].read()
            if (cached.name, cached.version) == (name, version) and (final / METADATA_FILE).read_bytes() == remote:
                return final
        except InvalidBundleError:
            pass
        shutil.rmtree(final, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=destination_root))
    try:
        s3.download_file(bucket, f"{prefix}/{METADATA_FILE}", str(staging / METADATA_FILE))
        s3.download_file(bucket, f"{prefix}/{MODEL_FILE}", str(staging / MODEL_FILE))
        try:
            metadata = BundleMetadata.model_validate_json((staging / METADATA_FILE).read_text())
        except ValueError as error:
            raise InvalidBundleError(f"{prefix}/{METADATA_FILE} is not valid: {error}") from error
        _check_identity(metadata, name, version)
        if file_sha256(staging / MODEL_FILE) != metadata.sha256:
            raise InvalidBundleError(f"sha256 of {prefix}/{MODEL_FILE} does not match its model.json")
        if metadata.twin is not None:
            s3.download_file(bucket, f"{prefix}/{metadata.twin.file}", str(staging / metadata.twin.file))
            verify_twin(staging, metadata.twin)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(final)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
