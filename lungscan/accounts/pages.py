"""The opaque ``next`` token of a page of history: what the next page starts after (a record id in a patient's
scans, a reference in the team's patients), always within the caller's team. Standard library only."""

from __future__ import annotations

import base64
import binascii
import re

from lungscan.accounts.history import PATIENT_REF_PATTERN, RECORD_ID_PATTERN
from lungscan.errors import MalformedInputError


def encode_page_token(after: str | None) -> str | None:
    return base64.urlsafe_b64encode(after.encode()).decode().rstrip("=") if after else None


def decode_page_token(token: str, pattern: str = RECORD_ID_PATTERN) -> str:
    """What ``token`` says the page starts after; a record id, or a patient reference with PATIENT_REF_PATTERN."""
    try:
        after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not re.fullmatch(pattern, after) or after in (".", ".."):
        raise MalformedInputError("The page token is not valid: use the 'next' value of the previous page.")
    return after


def decode_patients_token(token: str) -> str:
    return decode_page_token(token, PATIENT_REF_PATTERN)
