"""The S3 model registry: publishing a bundle and downloading it to serve.

The layout of the model bucket is in :mod:`lungscan.registry.keys`; the pointer and its history
in :mod:`lungscan.registry.pointer`.

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
import shutil
import tempfile
from pathlib import Path

from lungscan.bundle.files import CARD_FILE, METADATA_FILE, MODEL_FILE, REPORT_DIR, TWIN_FILE, file_sha256
from lungscan.bundle.metadata import BundleMetadata
from lungscan.bundle.store import parse_metadata, read_metadata
from lungscan.errors import InvalidBundleError
from lungscan.model.runtime import verify_twin
from lungscan.registry.keys import version_prefix
from lungscan.registry.pointer import move_pointer


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
    key = f"{version_prefix(name, version)}/{METADATA_FILE}"
    return parse_metadata(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), key)


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
        metadata = parse_metadata((staging / METADATA_FILE).read_bytes(), f"{prefix}/{METADATA_FILE}")
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
