"""LungScan HTTPS client: classify CT slices with a deployed LungScan API.

An adapter for hospital scripts. It speaks only the HTTP contract (``POST /predict`` with a
JSON base64 body) and depends on ``requests`` and the standard library: no TensorFlow and
no ``lungscan`` core, so it installs anywhere.

    from lungscan_client import classify_files

    results = classify_files(["a.dcm", "b.png"], "https://abc.execute-api.eu-west-1.amazonaws.com/Prod")
    for result in results:
        print(result.file, result.ok, result.answer["verdict"] if result.ok else result.error_message)

Research tool. Not a diagnosis. A clinician must review every scan.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from lungscan_client.study import StudyError, run_study

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ClassifyResult",
    "RetryPolicy",
    "StudyError",
    "classify_files",
    "predict_url",
    "run_study",
]

__version__ = "0.1.0"

# The API's upload limit (lungscan.inputs.imaging.DEFAULT_LIMITS.max_bytes); larger files fail here, unsent.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = f"lungscan-client/{__version__}"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    Attempt ``n`` (from 1) that fails with a retryable status or a connection error waits
    ``backoff_base * 2 ** (n - 1)``, capped at ``backoff_max``, scaled by a random factor in
    [0.5, 1] so that many clients do not retry in step. A ``Retry-After`` header (seconds)
    replaces the computed wait, still capped at ``backoff_max``.
    """

    attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    statuses: frozenset[int] = RETRY_STATUSES

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.backoff_max)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max) * random.uniform(0.5, 1.0)


@dataclass
class ClassifyResult:
    """The outcome for one file: the API's answer, or why there is none."""

    file: str
    ok: bool
    status: int | None = None  # HTTP status of the last attempt; None when nothing was answered
    answer: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    attempts: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"file": self.file, "ok": self.ok, "status": self.status, "attempts": self.attempts}
        if self.ok:
            data["result"] = self.answer
        else:
            data["error"] = {"code": self.error_code, "message": self.error_message, "request_id": self.request_id}
        return data


def predict_url(api_url: str) -> str:
    """``https://host/Prod`` or ``https://host/Prod/predict`` -> ``https://host/Prod/predict``."""
    base = api_url.strip().rstrip("/")
    if not urlsplit(base).scheme or not urlsplit(base).netloc:
        raise ValueError(f"not an absolute URL: {api_url!r}")
    return base if base.endswith("/predict") else base + "/predict"


def classify_files(
    paths: Iterable[str | Path],
    api_url: str,
    *,
    model: str | None = None,
    explain: bool = False,
    concurrency: int = 4,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    headers: dict[str, str] | None = None,
    on_result: Callable[[ClassifyResult], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[ClassifyResult]:
    """Classify each file with ``POST {api_url}/predict``; results come back in input order.

    At most ``concurrency`` requests (and file contents) are in flight at once. A file that
    cannot be read, is too large, or that the API refuses gets ``ok=False`` with the API's
    error code and message; nothing raises for one bad file.

    Args:
        api_url: the API's base URL (the stack's ``ApiUrl`` output), with or without ``/predict``.
        model: a model name the API serves; its default model when None.
        explain: ask for a Grad-CAM heatmap (base64 PNG in ``answer["heatmap"]``).
        retry: how often and how long to retry 429/5xx answers, timeouts and connection errors.
        timeout: seconds for one attempt (connect and read).
        max_bytes: files larger than this fail locally, unsent (the API's own limit by default).
        headers: extra headers (e.g. an API key or a gateway token).
        on_result: called with each result as soon as it is known (from a worker thread).
        sleep: the backoff's sleep, replaceable in tests.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    url = predict_url(api_url)
    policy = retry or RetryPolicy()
    if policy.attempts < 1:
        raise ValueError("retry attempts must be at least 1")
    files = [str(path) for path in paths]
    local = threading.local()  # requests.Session is not thread-safe: one per worker

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})})
        return local.session

    def work(path: str) -> ClassifyResult:
        result = _classify_one(path, url, session(), model, explain, policy, timeout, max_bytes, sleep)
        if on_result is not None:
            on_result(result)
        return result

    if not files:
        return []
    with ThreadPoolExecutor(max_workers=min(concurrency, len(files)), thread_name_prefix="lungscan") as pool:
        return list(pool.map(work, files))


def _classify_one(
    path: str,
    url: str,
    session: requests.Session,
    model: str | None,
    explain: bool,
    policy: RetryPolicy,
    timeout: float,
    max_bytes: int,
    sleep: Callable[[float], None],
) -> ClassifyResult:
    started = time.monotonic()
    result = ClassifyResult(file=path, ok=False)
    try:
        size = Path(path).stat().st_size
        if size > max_bytes:
            result.error_code, result.error_message = (
                "too_large",
                f"{size} bytes is over the {max_bytes}-byte upload limit; not sent.",
            )
            return result
        data = Path(path).read_bytes()
    except OSError as error:
        result.error_code, result.error_message = "unreadable", f"cannot read the file: {error.strerror or error}"
        return result
    if not data:
        result.error_code, result.error_message = "empty_file", "the file is empty; not sent."
        return result
    # The file name stays here: the API needs only the bytes (names can identify patients).
    body: dict[str, Any] = {"image": base64.b64encode(data).decode("ascii"), "explain": explain}
    if model:
        body["model"] = model
    del data

    for attempt in range(1, policy.attempts + 1):
        result.attempts = attempt
        retry_after = None
        try:
            response = session.post(url, json=body, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as error:
            result.status = None
            result.error_code = "timeout" if isinstance(error, requests.Timeout) else "connection_error"
            result.error_message = _short(error)
        except requests.RequestException as error:  # invalid URL, too many redirects...: retrying cannot help
            result.error_code, result.error_message = "request_error", _short(error)
            break
        else:
            result.status = response.status_code
            payload = _json(response)
            if response.ok and isinstance(payload, dict) and "label" in payload:
                result.ok, result.answer = True, payload
                result.request_id = payload.get("request_id")
                result.error_code = result.error_message = None
                break
            _record_error(result, response, payload)
            if response.status_code not in policy.statuses:
                break
            retry_after = response.headers.get("Retry-After")
        if attempt < policy.attempts:
            sleep(policy.delay(attempt, retry_after))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _record_error(result: ClassifyResult, response: requests.Response, payload: Any) -> None:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        result.error_code = str(error.get("code") or f"http_{response.status_code}")
        result.error_message = str(error.get("message") or response.reason)
        result.request_id = error.get("request_id")
    elif response.ok:
        result.error_code, result.error_message = "bad_answer", "the API answered 200 without a classification"
    else:
        # API Gateway's own answers ({"message": ...}) or a proxy's HTML page.
        message = payload.get("message") if isinstance(payload, dict) else None
        result.error_code = f"http_{response.status_code}"
        result.error_message = str(message or response.reason or "no reason given")
        result.request_id = response.headers.get("x-amzn-RequestId")


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _short(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
