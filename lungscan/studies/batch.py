"""One batch of a study's objects, classified in one pass: read from S3, decode, gate, model, placed.

What the worker Lambda runs for each batch the Distributed Map hands it. A file that cannot be answered (corrupt,
a localizer, not CT, too large) becomes a slice with an ``error``; it never fails the batch or the study.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from lungscan.errors import LungScanError, NotACTSliceError, PayloadTooLargeError
from lungscan.inputs.dicom import looks_like_dicom
from lungscan.inputs.imaging import DEFAULT_LIMITS, ImageLimits
from lungscan.model.classifier import Classifier, Prediction
from lungscan.studies.ordering import SliceTags, read_slice_tags
from lungscan.studies.plan import MAX_FILE_BYTES
from lungscan.uploads import UploadOptions, classify_upload

# A study's file may be larger than a request's (a multi-frame DICOM); pixels stay bounded by the same limits.
STUDY_LIMITS = replace(DEFAULT_LIMITS, max_bytes=MAX_FILE_BYTES)
# Held at once: at most this many files and bytes (downloaded together, then classified together).
CHUNK_FILES = 16
CHUNK_BYTES = 64 * 1024 * 1024
DOWNLOAD_THREADS = 4


def classify_files(
    classifier: Classifier, files: list[bytes], options: UploadOptions, limits: ImageLimits = STUDY_LIMITS
) -> list[Prediction | LungScanError]:
    """Each file's prediction, or the error that refused it, in order: the one place a batch meets the model.

    One file at a time through ``classify_upload`` (decode -> gate -> model), as ``POST /predict`` answers it.
    """
    results: list[Prediction | LungScanError] = []
    for data in files:
        try:
            results.append(classify_upload(classifier, [data], options, limits=limits).predictions[0])
        except LungScanError as error:
            results.append(error)
    return results


def slice_name(key: str, prefix: str) -> str:
    """The object's name under the study's prefix (``00012`` for ``studies/<id>/00012``)."""
    return key[len(prefix) :] if key.startswith(prefix) else key


def classify_batch_objects(
    classifier: Classifier,
    s3,
    bucket: str,
    items: list[dict[str, Any]],
    prefix: str,
    options: UploadOptions | None = None,
) -> list[dict[str, Any]]:
    """The slices of ``items`` (``{"Key", "Size"}``, as S3's ListObjectsV2 lists them), one dict per object.

    Each slice carries ``name``, ``key``, ``index`` (the name as a number, else None), its placing tags, and either
    its answer or an ``error`` ``{"code", "message"}``.
    """
    options = options or UploadOptions()
    slices: list[dict[str, Any]] = []
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        for chunk in _chunks(items):
            fetched = list(pool.map(lambda item: _fetch(s3, bucket, item), chunk))
            readable = [data for data in fetched if isinstance(data, bytes)]
            answers = iter(classify_files(classifier, readable, options))
            for item, data in zip(chunk, fetched, strict=True):
                answer = next(answers) if isinstance(data, bytes) else data
                slices.append(_slice(item, prefix, data if isinstance(data, bytes) else None, answer))
    return slices


def _chunks(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    held = 0
    for item in items:
        size = min(int(item.get("Size") or 0), MAX_FILE_BYTES)
        if chunk and (len(chunk) >= CHUNK_FILES or held + size > CHUNK_BYTES):
            yield chunk
            chunk, held = [], 0
        chunk.append(item)
        held += size
    if chunk:
        yield chunk


def _fetch(s3, bucket: str, item: dict[str, Any]) -> bytes | LungScanError:
    """The object's bytes, or why it is not read: too large (from the listing) or empty."""
    size = int(item.get("Size") or 0)
    if size > MAX_FILE_BYTES:
        return PayloadTooLargeError(f"Each file of a study may be at most {MAX_FILE_BYTES // 2**20} MB.")
    if size == 0:
        return LungScanError("The file is empty.", code="empty_file")
    try:
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"]
    except s3.exceptions.NoSuchKey:  # deleted since the listing (an expired upload)
        return LungScanError("The file is gone.", code="missing_file")
    try:
        return body.read(MAX_FILE_BYTES + 1)  # an object replaced since the listing stays bounded
    finally:
        body.close()


def _slice(item: dict[str, Any], prefix: str, data: bytes | None, answer: Prediction | LungScanError) -> dict[str, Any]:
    name = slice_name(item["Key"], prefix)
    tags = SliceTags()
    # Tags only from a file the decoder read or refused from its header (a localizer): never from a corrupt one.
    if data is not None and isinstance(answer, Prediction | NotACTSliceError):
        tags = read_slice_tags(data, looks_like_dicom(data))
    entry: dict[str, Any] = {"name": name, "key": item["Key"], "index": int(name) if name.isdigit() else None}
    entry |= tags.as_dict()
    if isinstance(answer, LungScanError):
        return entry | {"error": {"code": answer.code, "message": answer.message}}
    return entry | {
        "label": answer.label,
        "probabilities": answer.probabilities,
        "positive_probability": answer.positive_probability,
        "suspicious": answer.suspicious,
        "uncertain": answer.uncertain,
        "tier": answer.tier,
        "unfamiliar": answer.unfamiliar,
    }
