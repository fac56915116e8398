"""Patient history: what a care team keeps of each classified scan or study (the table: ``history_store``).

Items (one table, two kinds, both under ``pk``/``sk``):

- a scan: ``pk = PATIENT#<team>#<ref>``, ``sk = SCAN#<record_id>``. A record id starts with its UTC time,
  so a descending query on the patient's partition reads the patient's scans newest first;
- a patient summary: ``pk = TEAM#<team>``, ``sk = PATIENT#<ref>`` with the number of scans and the last
  scan's time and verdict, so "the team's patients" is one query too.

The team is part of every key: another team's patient or record simply is not found.
Never stored: the uploaded file, DICOM tags, names. The preview is a small PNG at the model's input
size (at most 256 px), where text burned into a slice's corners cannot be read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from PIL import Image

from lungscan.errors import MalformedInputError, RecordNotFoundError

if TYPE_CHECKING:  # read, never built here: keeps this module free of the model's imports
    from lungscan.bundle.metadata import BundleMetadata
    from lungscan.model.classifier import Prediction
    from lungscan.uploads import SliceInput

PATIENT_REF_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
RECORD_ID_PATTERN = r"^[0-9]{8}T[0-9]{9}Z-[0-9a-f]{12}$"  # ASCII digits: \d also takes "٢"
MAX_PREVIEW_SIDE = 256
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# A page of records stops before its JSON passes this (Lambda answers at most 6 MB, base64 and headers included).
MAX_PAGE_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True)
class Clinician:
    """Who asks: the Cognito user (``sub``, and ``username`` for the pool's admin calls), the name records show,
    and their care team (a Cognito group).

    ``name`` is the pool's ``custom:display_name``, which only an administrator sets (the page's app client may
    not write it), never the email a clinician can change with their own access token.
    """

    sub: str
    name: str
    team: str
    username: str = ""


def check_patient_ref(ref: str) -> str:
    """A pseudonymous reference such as a local record number; never a name."""
    # "." and ".." match the pattern but are path segments that URLs drop (/patients/../scans is /scans):
    # a record stored under them could never be read or deleted.
    if not isinstance(ref, str) or not re.fullmatch(PATIENT_REF_PATTERN, ref) or ref in (".", ".."):
        raise MalformedInputError(
            "The patient reference must be 1-64 letters, digits, '.', '_' or '-' (no spaces, not '.' or '..'): "
            "use a pseudonymous reference such as a local record number, never the patient's name.",
            code="invalid_patient_ref",
        )
    return ref


def check_record_id(record_id: str) -> str:
    if not re.fullmatch(RECORD_ID_PATTERN, record_id or ""):
        raise RecordNotFoundError("No such record for your team.")
    return record_id


def hash_ref(key: bytes, ref: str) -> str:
    """What logs carry instead of the reference: a keyed hash (HMAC-SHA256), unlinkable without the key."""
    return hmac.new(key, ref.encode(), hashlib.sha256).hexdigest()[:32]


def new_record_id(now: datetime) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z-{secrets.token_hex(6)}"


def thumbnail_png(image: Image.Image, side: int) -> bytes:
    """A PNG no larger than ``side`` (capped at 256 px) on its longer edge."""
    side = max(16, min(side, MAX_PREVIEW_SIDE))
    small = image.copy()
    small.thumbnail((side, side))
    if small.mode not in ("L", "RGB", "RGBA"):
        small = small.convert("RGB")
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def build_record(
    prediction: Prediction,
    source: SliceInput,
    model: BundleMetadata,
    clinician: Clinician,
    *,
    input_bytes: int,
    preview: bytes,
    heatmap: bytes | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The stored record of one classified slice: its prediction, what was read (``source``) and the model."""
    now = now or datetime.now(UTC)
    record: dict[str, Any] = {
        "record_id": new_record_id(now),
        "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "clinician": {"sub": clinician.sub, "name": clinician.name},
        "model": {"name": model.name, "version": model.version},
        "label": prediction.label,
        "tier": prediction.tier,
        "verdict": prediction.verdict,
        "suspicious": prediction.suspicious,
        "probabilities": prediction.probabilities,
        "input": {"format": source.format, "width": source.width, "height": source.height},
        "input_bytes": input_bytes,
        "preview": preview,
    }
    # When the model gives them (a conformal set, whether it mixes flagged and unflagged classes, and
    # whether the slice looked unfamiliar to the model's detector).
    if prediction.prediction_set is not None:
        record["prediction_set"] = prediction.prediction_set
    if prediction.uncertain is not None:
        record["uncertain"] = prediction.uncertain
    if prediction.unfamiliar is not None:
        record["unfamiliar"] = prediction.unfamiliar
    if heatmap is not None:
        record["heatmap"] = heatmap
    return record


def build_study_record(
    summary: dict[str, Any],
    focus: dict[str, Any],
    model: dict[str, str],
    clinician: Clinician,
    *,
    study_id: str,
    verdict: str,
    study_date: str | None,
    preview: bytes,
    heatmap: bytes | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The one record of a whole study: its summary, tier and uncertainty, led by its most suspicious slice
    (``focus``: label, probabilities, previews), dated by the DICOM acquisition day (else the upload day).

    The record id starts with that day (and the upload's time of day), so the timeline, read newest first by
    record id, orders studies by when they were acquired, not when they were uploaded.
    """
    now = now or datetime.now(UTC)
    try:
        day = datetime.strptime(study_date or "", "%Y-%m-%d").date()
    except ValueError:
        day = now.date()
    record = {
        "record_id": new_record_id(now.replace(year=day.year, month=day.month, day=day.day)),
        "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "study_date": day.isoformat(),
        "clinician": {"sub": clinician.sub, "name": clinician.name},
        "model": model,
        "label": focus["label"],
        "tier": summary["tier"],
        "verdict": verdict,
        "suspicious": summary["suspicious"],
        "probabilities": focus["probabilities"],
        "uncertain": summary["uncertain"],
        "unfamiliar": focus.get("unfamiliar"),
        "input": {"format": "study", "width": None, "height": None},
        "input_bytes": 0,
        "study": {
            "study_id": study_id,
            "flagged": summary["flagged"],
            "total": summary["total"],
            "failed": summary["failed"],
            "most_suspicious_index": focus["index"],
            "positive_probability": focus["positive_probability"],
        },
        "preview": preview,
    }
    if heatmap is not None:
        record["heatmap"] = heatmap
    return record


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a page of history shows it: the preview as base64 PNG; the heatmap only said to exist
    (``has_heatmap``: fetched one at a time, so that a page stays small)."""
    shown = {name: value for name, value in record.items() if name != "heatmap"}
    shown["has_heatmap"] = record.get("heatmap") is not None
    if shown.get("preview") is not None:
        shown["preview"] = base64.b64encode(shown["preview"]).decode("ascii")
    return shown


def shown_size(record: dict[str, Any]) -> int:
    """Bytes of one public record in the answer's JSON."""
    return len(json.dumps(record, separators=(",", ":")))
