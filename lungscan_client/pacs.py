"""The DICOMweb round trip: a study from the PACS, classified through the studies path, results filed back.

WADO-RS retrieves the study's CT series, ``run_study`` classifies them (``POST /studies``), ``GET
/studies/{id}/dicom`` hands back the Structured Report and the key image the API built in memory, and one STOW-RS
request files both into the same study. QIDO-RS finds new CT studies for a scheduled run. All of it through
``dicomweb-client``; the PACS's Authorization header comes from the environment, never the command line.

No patient data is logged: dicomweb-client's own logger is held at WARNING (its INFO lines name study UIDs).
"""

from __future__ import annotations

import base64
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:  # pydicom and dicomweb-client (and numpy) load only when a PACS command runs
    import pydicom
    from dicomweb_client.api import DICOMwebClient

PACS_AUTH_ENV = "LUNGSCAN_PACS_AUTHORIZATION"
RESULT_KINDS = {"sr": "the Structured Report", "key_image": "the key image"}
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
MODALITY = "00080060"
SOP_UID = "00080018"

logging.getLogger("dicomweb_client").setLevel(logging.WARNING)


class PacsError(Exception):
    """Why a study could not go round: a stable ``code`` and a message that says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RoundTrip:
    """One study's outcome: what LungScan found and which results the PACS holds now."""

    study_instance_uid: str
    ok: bool = False
    instances: int = 0
    status: str | None = None
    summary: dict[str, Any] | None = None
    stored: list[dict[str, str]] = field(default_factory=list)
    error: PacsError | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "study_instance_uid": self.study_instance_uid,
            "ok": self.ok,
            "instances": self.instances,
            "status": self.status,
            "summary": self.summary,
            "stored": self.stored,
        }
        if self.error is not None:
            data["error"] = {"code": self.error.code, "message": self.error.message}
        return data


def pacs_client(url: str, *, authorization: str | None = None, timeout: float = 30.0) -> DICOMwebClient:
    """A DICOMweb client with a bounded wait per request and few retries (a scheduled run must not hang)."""
    from dicomweb_client.api import DICOMwebClient

    headers = {"Authorization": authorization} if authorization else None
    client = DICOMwebClient(url, headers=headers, timeout=timeout)
    client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=500)
    return client


def _explained(error: Exception, doing: str) -> PacsError:
    """An HTTP or network failure of the PACS in words (never the URL's query or the headers)."""
    if isinstance(error, requests.Timeout):
        return PacsError("pacs_timeout", f"the PACS did not answer in time while {doing}: is it overloaded?")
    if isinstance(error, requests.ConnectionError):
        return PacsError("pacs_unreachable", f"cannot reach the PACS while {doing}: is it running, is the URL right?")
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return PacsError(
                "pacs_unauthorized", f"the PACS refused the credentials ({status}) while {doing}: set ${PACS_AUTH_ENV}"
            )
        return PacsError(f"pacs_http_{status}", f"the PACS answered {status} while {doing}")
    return PacsError("pacs_error", f"the PACS failed while {doing}: {type(error).__name__}")


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def find_ct_series(client: DICOMwebClient, study_uid: str) -> list[str]:
    """The study's CT series (QIDO-RS); a study the PACS does not hold, or one without CT, is refused."""
    try:
        series = client.search_for_series(study_uid, fields=["Modality"])
    except requests.HTTPError as error:
        if error.response is not None and error.response.status_code == 404:  # some PACSs say 404, Orthanc []
            series = []
        else:
            raise _explained(error, "looking the study up") from None
    except (requests.RequestException, OSError) as error:
        raise _explained(error, "looking the study up") from None
    if not series:
        raise PacsError("study_not_found", "the PACS holds no study with that StudyInstanceUID")
    modalities = sorted({_value(item, MODALITY) or "unknown" for item in series})
    found = [uid for item in series if _value(item, MODALITY) == "CT" and (uid := _value(item, SERIES_UID))]
    if not found:
        raise PacsError("not_ct", f"the study holds no CT series (modalities: {', '.join(modalities)}): not screened")
    return found


def retrieve(client: DICOMwebClient, study_uid: str, series: Iterable[str], folder: Path) -> list[Path]:
    """WADO-RS: each CT series' instances, one at a time, written to ``folder`` as Part 10 files."""
    paths: list[Path] = []
    try:
        for series_uid in series:
            for dataset in client.iter_series(study_uid, series_uid):
                if getattr(dataset, "Modality", "CT") != "CT" or "PixelData" not in dataset:
                    continue  # a dose report or a presentation state filed in a CT series
                path = folder / f"{len(paths):05d}.dcm"  # numbered: the API sees no name
                dataset.save_as(path, enforce_file_format=True)
                paths.append(path)
    except (requests.RequestException, OSError) as error:
        raise _explained(error, "retrieving the study") from None
    if not paths:
        raise PacsError("not_ct", "the study's CT series hold no image: not screened")
    return paths


def fetch_results(
    api: str, study_id: str, *, token: str | None = None, api_key: str | None = None, timeout: float = 60.0
) -> list[pydicom.Dataset]:
    """``GET /studies/{id}/dicom``: the SR and the key image, built by the API in memory for this study."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = token
    if api_key:
        headers["x-api-key"] = api_key
    url = f"{api.rstrip('/')}/studies/{study_id}/dicom"
    try:
        response = requests.get(url, headers=headers, timeout=timeout)
    except requests.RequestException as error:
        raise PacsError(
            "api_unreachable", f"cannot reach the LungScan API for the results: {type(error).__name__}"
        ) from None
    payload = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
    if not response.ok:
        refusal = payload.get("error") or {}
        raise PacsError(
            str(refusal.get("code") or f"api_http_{response.status_code}"),
            f"the API built no DICOM results ({response.status_code}): {refusal.get('message') or response.reason}",
        )
    objects = {item.get("kind"): item for item in payload.get("objects", [])}
    missing = [RESULT_KINDS[kind] for kind in RESULT_KINDS if kind not in objects]
    if missing:
        raise PacsError("results_incomplete", f"the API's results lack {' and '.join(missing)}: nothing stored")
    from pydicom import dcmread

    return [dcmread(BytesIO(base64.b64decode(objects[kind]["dicom"]))) for kind in RESULT_KINDS]


def store(client: DICOMwebClient, study_uid: str, results: list[pydicom.Dataset]) -> list[dict[str, str]]:
    """One STOW-RS request with both objects; a refusal says which of them the PACS does not hold."""
    wanted = {dataset.SOPInstanceUID: kind for dataset, kind in zip(results, RESULT_KINDS, strict=True)}
    answer: pydicom.Dataset | None
    try:
        answer = client.store_instances(results, study_instance_uid=study_uid)
    except requests.HTTPError as error:
        answer = _stow_answer(error.response)
        if answer is None:
            failure = _explained(error, "storing the results")
            raise PacsError("stow_refused", f"{failure.message}: neither result was stored") from None
    except (requests.RequestException, OSError) as error:
        failure = _explained(error, "storing the results")
        raise PacsError(failure.code, f"{failure.message}; whether it stored them is unknown") from None
    stored = {item.ReferencedSOPInstanceUID for item in answer.get("ReferencedSOPSequence", [])}
    if not stored and not answer.get("FailedSOPSequence"):  # a PACS that answers 200 with no body: ask it
        stored = {uid for uid in wanted if _holds(client, study_uid, uid)}
    missing = [RESULT_KINDS[kind] for uid, kind in wanted.items() if uid not in stored]
    if missing:
        reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in answer.get("FailedSOPSequence", [])})
        raise PacsError(
            "stow_refused",
            f"the PACS did not store {' and '.join(missing)}"
            + (f" (failure reason {', '.join(reasons)})" if reasons else ""),
        )
    return [{"kind": kind, "sop_instance_uid": uid} for uid, kind in wanted.items()]


def _holds(client: DICOMwebClient, study_uid: str, sop_uid: str) -> bool:
    try:
        return bool(client.search_for_instances(study_uid, search_filters={"SOPInstanceUID": sop_uid}))
    except (requests.RequestException, OSError) as error:
        raise _explained(error, "checking the stored results") from None


def _stow_answer(response: requests.Response | None) -> pydicom.Dataset | None:
    """The STOW-RS answer of a refused request, where the PACS sent one (DICOM JSON)."""
    from pydicom import Dataset

    try:
        return Dataset.from_json(response.json()) if response is not None and response.content else None
    except ValueError:
        return None


def new_ct_studies(client: DICOMwebClient, since: str) -> list[str]:
    """QIDO-RS: studies from ``since`` (YYYYMMDD) on that hold CT, oldest first as the PACS lists them."""
    try:
        studies = client.search_for_studies(
            search_filters={"StudyDate": f"{since}-", "ModalitiesInStudy": "CT"}, fields=["ModalitiesInStudy"]
        )
    except (requests.RequestException, OSError) as error:
        raise _explained(error, "searching for new studies") from None
    return [uid for item in studies if (uid := _value(item, STUDY_UID))]


def has_lungscan_results(client: DICOMwebClient, study_uid: str) -> bool:
    """Whether the study already holds a LungScan report (a scheduled run does each study once)."""
    try:
        reports = client.search_for_series(study_uid, search_filters={"Modality": "SR"}, fields=["SeriesDescription"])
    except (requests.RequestException, OSError) as error:
        raise _explained(error, "looking for earlier results") from None
    return any((_value(item, "0008103E") or "").startswith("LungScan") for item in reports)


Classify = Callable[[list[Path]], dict[str, Any]]


def round_trip(
    client: DICOMwebClient, study_uid: str, classify: Classify, results: Callable[[dict[str, Any]], list]
) -> RoundTrip:
    """One study: QIDO (CT?), WADO (into a temporary folder, gone afterwards), classify, results, one STOW."""
    outcome = RoundTrip(study_instance_uid=study_uid)
    try:
        series = find_ct_series(client, study_uid)
        with tempfile.TemporaryDirectory(prefix="lungscan-pacs-") as folder:
            paths = retrieve(client, study_uid, series, Path(folder))
            outcome.instances = len(paths)
            answer = classify(paths)
        outcome.status, outcome.summary = answer.get("status"), answer.get("summary")
        if outcome.status != "done":
            raise PacsError("study_failed", f"the study was not classified (status {outcome.status}): nothing stored")
        outcome.stored = store(client, study_uid, results(answer))
        outcome.ok = True
    except PacsError as error:
        outcome.error = error
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # an answer of a shape no one expected
        # Its type only: the text of such an error can hold a URL with the study's UID, or a DICOM value.
        outcome.error = PacsError("unexpected_answer", f"an answer could not be read ({type(error).__name__})")
    return outcome


def each_new_study(client: DICOMwebClient, since: str) -> Iterator[tuple[str, bool]]:
    """(study UID, already done) for each new CT study since ``since``."""
    for study_uid in new_ct_studies(client, since):
        yield study_uid, has_lungscan_results(client, study_uid)
