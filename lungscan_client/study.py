"""Whole studies with a LungScan API: ``run_study`` uploads a folder's files straight to S3, starts the study, waits,
and returns its answer (every page of slices). ``requests`` and the standard library only.

    from lungscan_client import run_study

    answer = run_study(sorted(Path("series").iterdir()), "https://abc.execute-api.eu-west-1.amazonaws.com/Prod")
    print(answer["status"], answer["summary"]["tier"], answer["summary"]["flagged"], "of", answer["summary"]["total"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

Progress = Callable[[str, int, int], None]  # (stage: "upload" or "classify", done, total)
FINISHED = ("done", "failed")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
PAGE = 500


class StudyError(Exception):
    """The API refused the study, or it could not be reached: ``code`` is the API's error code."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


def run_study(
    paths: Sequence[Path],
    api: str,
    *,
    model: str | None = None,
    patient: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
    api_key: str | None = None,
    uploads: int = 8,
    poll_seconds: float = 1.0,
    timeout: float = 1800.0,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """Upload ``paths`` as one study, classify it, and return the answer (``GET /studies/{id}`` with every page of
    slices in ``slices``). A study that finished as failed is returned (``status == "failed"``), not raised.

    Args:
        api: the API's base URL (the stack's ``ApiUrl`` output).
        patient: a pseudonymous patient reference; needs ``token`` (the study becomes one history record).
        token: a clinician's Cognito ID token (the study is then the care team's).
        progress: called with ``("upload", files uploaded, files)`` then ``("classify", slices done, slices)``.
        uploads: files uploaded at once.

    Raises:
        StudyError: the API refused (413 too many or too large files, 401, 404...), or an upload failed.
    """
    http = session or requests.Session()
    base = api.strip().rstrip("/")
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = token
    if api_key:
        headers["x-api-key"] = api_key
    files = [Path(path) for path in paths]
    body: dict[str, Any] = {"files": [{"size": path.stat().st_size} for path in files]}  # never the file names
    if model:
        body["model"] = model
    if patient:
        body["patient"] = patient
    study = _call(http, "POST", f"{base}/studies", headers, json=body)
    study_id = study["study_id"]
    done = 0

    def upload(target: dict[str, Any]) -> None:
        nonlocal done
        path = files[target["index"]]
        for attempt in range(4):
            with path.open("rb") as handle:
                try:
                    answer = http.post(
                        target["url"], data=target["fields"], files={"file": ("slice", handle)}, timeout=120
                    )
                except requests.RequestException as error:
                    answer, failure = None, str(error)
            if answer is not None and answer.status_code in (200, 201, 204):
                done += 1
                if progress:
                    progress("upload", done, len(files))
                return
            if answer is not None and answer.status_code not in RETRY_STATUSES:
                failure = f"S3 answered {answer.status_code}"
                break
            time.sleep(0.5 * 2**attempt)
        raise StudyError("upload_failed", f"file {target['index']} could not be uploaded ({failure})")

    with ThreadPoolExecutor(max(1, uploads)) as pool:
        list(pool.map(upload, study["uploads"]))
    _call(http, "POST", f"{base}/studies/{study_id}/start", headers)
    deadline = time.monotonic() + timeout
    while True:
        answer = _call(http, "GET", f"{base}/studies/{study_id}", headers, params={"limit": PAGE})
        if progress:
            progress("classify", answer["progress"]["done"], answer["progress"]["total"])
        if answer["status"] in FINISHED:
            break
        if time.monotonic() > deadline:
            raise StudyError("timeout", f"the study was not answered within {timeout:.0f} s")
        time.sleep(poll_seconds)
    slices = list(answer["slices"])
    cursor = answer.get("next_cursor")
    while cursor:
        page = _call(http, "GET", f"{base}/studies/{study_id}", headers, params={"limit": PAGE, "cursor": cursor})
        slices.extend(page["slices"])
        cursor = page.get("next_cursor")
    return {**answer, "slices": slices, "next_cursor": None}


def _call(http: requests.Session, method: str, url: str, headers: dict[str, str], **options: Any) -> dict[str, Any]:
    """One API call, retried on 429/5xx and connection errors; its JSON, or a StudyError with the API's code."""
    for attempt in range(4):
        try:
            answer = http.request(method, url, headers=headers, timeout=60, **options)
        except requests.RequestException as error:
            if attempt == 3:
                raise StudyError("unreachable", f"the API could not be reached ({type(error).__name__})") from None
        else:
            if answer.status_code < 400:
                return answer.json()
            if answer.status_code not in RETRY_STATUSES or attempt == 3:
                try:
                    body = answer.json()["error"]
                    code, message = body["code"], body["message"]
                except (ValueError, KeyError, TypeError):
                    code, message = "http_error", f"the API answered {answer.status_code}"
                raise StudyError(code, message, answer.status_code)
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")
