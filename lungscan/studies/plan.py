"""What a study may hold, decided from the declared sizes before any byte is uploaded, and where its files go.

Standard library only: the function's API route and the tests import it without the model.
"""

from __future__ import annotations

import re
import secrets

from lungscan.errors import PayloadTooLargeError

MAX_FILES = 2000  # a chest CT is 100-600 slices; thin-slice series reach ~1,500
MAX_FILE_BYTES = 64 * 1024 * 1024  # one DICOM slice is ~0.5 MB; a multi-frame file can be tens of MB
MAX_STUDY_BYTES = 2 * 1024**3
STUDY_TTL_SECONDS = 86400  # a study, its uploads and its previews are gone after a day (the bucket's rule too)
UPLOAD_PREFIX = "studies"  # studies/<study_id>/<index:05d>
RESULTS_PREFIX = "results"  # results/<study_id>/...: previews, heatmaps, the Map's ResultWriter output
STUDY_ID_PATTERN = r"^[A-Za-z0-9_-]{32}$"


def new_study_id() -> str:
    """Unguessable (192 random bits): for an anonymous study the id is the only key to it."""
    return secrets.token_urlsafe(24)


def is_study_id(value: str) -> bool:
    return isinstance(value, str) and re.fullmatch(STUDY_ID_PATTERN, value) is not None


def upload_prefix(study_id: str) -> str:
    return f"{UPLOAD_PREFIX}/{study_id}/"


def upload_key(study_id: str, index: int) -> str:
    return f"{upload_prefix(study_id)}{index:05d}"


def results_prefix(study_id: str) -> str:
    return f"{RESULTS_PREFIX}/{study_id}/"


def check_sizes(sizes: list[int]) -> None:
    """Refuse a study over its limits before anything is uploaded.

    Raises:
        PayloadTooLargeError: ``too_many_slices`` past ``MAX_FILES`` files; ``payload_too_large`` for a file over
            ``MAX_FILE_BYTES`` or a study over ``MAX_STUDY_BYTES``.
    """
    if len(sizes) > MAX_FILES:
        raise PayloadTooLargeError(f"A study may hold at most {MAX_FILES} files.", code="too_many_slices")
    if any(size > MAX_FILE_BYTES for size in sizes):
        raise PayloadTooLargeError(f"Each file of a study may be at most {MAX_FILE_BYTES // 2**20} MB.")
    if sum(sizes) > MAX_STUDY_BYTES:
        raise PayloadTooLargeError(f"A study may hold at most {MAX_STUDY_BYTES // 2**30} GB in all.")
