"""The S3 model registry.

Layout in the model bucket::

    models/<name>/<version>/model.h5
    models/<name>/<version>/model.json
    models/<name>/latest.json          -> {"version": "<version>"}

Publishing writes the whole bundle first and moves the pointer last, so a reader sees
either the old model or the complete new one, never half of it. The S3 client is passed
in, so tests hand in a moto-backed one and the local stack one pointed at moto server.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from lungscan.bundle import METADATA_FILE, MODEL_FILE, BundleMetadata, file_sha256, read_metadata
from lungscan.errors import InvalidBundleError

PREFIX = "models"


def pointer_key(name: str) -> str:
    return f"{PREFIX}/{name}/latest.json"


def version_prefix(name: str, version: str) -> str:
    return f"{PREFIX}/{name}/{version}"


def publish_bundle(s3, bucket: str, bundle_dir: Path | str) -> BundleMetadata:
    """Upload a bundle under its name/version, then point ``latest.json`` at it.

    Raises:
        InvalidBundleError: the bundle is incomplete or its sha256 does not match.
    """
    bundle_dir = Path(bundle_dir)
    metadata = read_metadata(bundle_dir)
    if not (bundle_dir / METADATA_FILE).exists():
        raise InvalidBundleError("only a bundle with model.json can be published")
    prefix = version_prefix(metadata.name, metadata.version)
    s3.upload_file(str(bundle_dir / MODEL_FILE), bucket, f"{prefix}/{MODEL_FILE}")
    s3.upload_file(str(bundle_dir / METADATA_FILE), bucket, f"{prefix}/{METADATA_FILE}")
    set_latest(s3, bucket, metadata.name, metadata.version)
    return metadata


def set_latest(s3, bucket: str, name: str, version: str) -> None:
    body = json.dumps({"version": version}).encode()
    s3.put_object(Bucket=bucket, Key=pointer_key(name), Body=body, ContentType="application/json")


def latest_version(s3, bucket: str, name: str) -> str:
    """The version ``latest.json`` points at. Raises botocore errors when S3 fails."""
    body = s3.get_object(Bucket=bucket, Key=pointer_key(name))["Body"].read()
    try:
        version = json.loads(body)["version"]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidBundleError(f"{pointer_key(name)} is not a valid pointer") from error
    if not isinstance(version, str) or "/" in version or not version:
        raise InvalidBundleError(f"{pointer_key(name)} names an invalid version")
    return version


def download_bundle(s3, bucket: str, name: str, version: str, destination_root: Path | str) -> Path:
    """Download a published bundle and verify it; returns the local bundle folder.

    The files land in a temporary folder first and are moved into place only once
    model.json parses and the sha256 of model.h5 matches it.

    Raises:
        InvalidBundleError: missing sha256, mismatch, or invalid metadata.
    """
    destination_root = Path(destination_root)
    destination_root.mkdir(parents=True, exist_ok=True)
    final = destination_root / name / version
    if final.is_dir():
        try:
            read_metadata(final)  # a cached copy is used only while its sha256 still matches
            return final
        except InvalidBundleError:
            shutil.rmtree(final, ignore_errors=True)
    prefix = version_prefix(name, version)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=destination_root))
    try:
        s3.download_file(bucket, f"{prefix}/{METADATA_FILE}", str(staging / METADATA_FILE))
        s3.download_file(bucket, f"{prefix}/{MODEL_FILE}", str(staging / MODEL_FILE))
        metadata = BundleMetadata.model_validate_json((staging / METADATA_FILE).read_text())
        if not metadata.sha256:
            raise InvalidBundleError(f"{prefix}/{METADATA_FILE} carries no sha256")
        if file_sha256(staging / MODEL_FILE) != metadata.sha256:
            raise InvalidBundleError(f"sha256 of {prefix}/{MODEL_FILE} does not match its model.json")
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(final)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
