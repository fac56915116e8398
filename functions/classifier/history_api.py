"""Patient history routes (``GET /patients``, ``GET /patients/{ref}/scans``,
``GET /patients/{ref}/scans/{record_id}/heatmap``, ``DELETE /patients/{ref}/scans/{record_id}``) and the
signed-in part of ``POST /predict``.

Which route needs a token is ``lungscan.accounts.access``'s to say. Deployed, API Gateway's Cognito
authorizer checks the ID token on the history routes and passes its claims in
``requestContext.authorizer.claims``; this module reads the caller from those claims only. ``POST /predict``
works without a token, so it cannot sit behind that authorizer: when it names a patient, the function
checks the token itself, the same way (``lungscan.accounts.tokens``). A token outlives a revocation, so the
caller's account is also asked of the pool (``lungscan.accounts.directory``): fresh before a write or delete,
from a short cache before a read. Every history action, done or refused, is one audit line. Errors are the
core's (``lungscan.errors``), answered by ``app.py``'s one error handler.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from api_answers import shown_image
from api_schemas import answers
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from history_schemas import HeatmapResponse, PatientsResponse, PatientSummary, ScanRecord, ScansResponse

from lungscan.accounts.access import TOKEN_SCHEME, checked_by_gateway, needs_token
from lungscan.accounts.directory import DEFAULT_CACHE_SECONDS, ClinicianDirectory
from lungscan.accounts.history import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    RECORD_ID_PATTERN,
    Clinician,
    build_record,
    check_patient_ref,
    hash_ref,
    thumbnail_png,
)
from lungscan.accounts.history_store import HistoryStore
from lungscan.accounts.pages import decode_page_token, decode_patients_token, encode_page_token
from lungscan.accounts.tokens import CognitoTokenVerifier, InvalidTokenError
from lungscan.bundle.metadata import BundleMetadata
from lungscan.errors import (
    ConflictingRequestError,
    HistoryUnavailableError,
    LungScanError,
    NoTeamError,
    RecordNotFoundError,
    UnauthorizedError,
)
from lungscan.uploads import ClassifiedUpload

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.openapi.models import SecurityScheme

logger = Logger(child=True)
router = APIGatewayRouter()  # a Router whose current_event is typed as the REST API's proxy event

# The pool's custom attribute that names a clinician on records; the page's app client cannot write it.
DISPLAY_NAME_CLAIM = "custom:display_name"


def security_schemes() -> dict[str, SecurityScheme]:
    """What API Gateway's Cognito authorizer reads: the ID token in the Authorization header (raw or 'Bearer ').

    Built for ``/openapi.json`` only: Powertools' OpenAPI models take ~0.2 s to import, which no other
    request needs.
    """
    from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

    return {
        TOKEN_SCHEME: APIKey(
            name="Authorization",
            in_=APIKeyIn.header,
            description="The Cognito ID token from InitiateAuth's IdToken, raw or after 'Bearer '.",
        )
    }


# ---------------------------------------------------------------- configuration, read on first use
# boto3 is imported by what needs it: with a model bucket the function's init has loaded it already;
# without one (a local run, the benchmark) an anonymous request never does.

_store: HistoryStore | None = None
_verifier: CognitoTokenVerifier | None = None
_directory: ClinicianDirectory | None = None
_hash_key: bytes | None = None


def get_store() -> HistoryStore:
    global _store
    if _store is None:
        table = os.environ.get("HISTORY_TABLE")
        if not table:
            raise HistoryUnavailableError()
        import boto3

        _store = HistoryStore(boto3.client("dynamodb"), table, int(os.environ.get("HISTORY_RETENTION_DAYS", "365")))
    return _store


def get_verifier() -> CognitoTokenVerifier:
    global _verifier
    if _verifier is None:
        pool, client = os.environ.get("COGNITO_USER_POOL_ID"), os.environ.get("COGNITO_CLIENT_ID")
        if not pool or not client:
            raise UnauthorizedError()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_COGNITO_IDP")  # the local stack's moto server
        max_age = os.environ.get("ID_TOKEN_MAX_AGE_SECONDS")  # the pool's ID token validity, where moto ignores it
        _verifier = CognitoTokenVerifier(
            pool, client.split(","), region, endpoint, max_age=int(max_age) if max_age else None
        )
    return _verifier


def get_directory() -> ClinicianDirectory:
    """The pool's current view of a clinician (enabled? in which teams?): no history action without it."""
    global _directory
    if _directory is None:
        pool = os.environ.get("COGNITO_USER_POOL_ID")
        if not pool:
            raise HistoryUnavailableError()
        cache = float(os.environ.get("ACCOUNT_CHECK_CACHE_SECONDS", str(DEFAULT_CACHE_SECONDS)))
        endpoint = os.environ.get("AWS_ENDPOINT_URL_COGNITO_IDP") or None  # the local stack's moto server
        import boto3

        _directory = ClinicianDirectory(boto3.client("cognito-idp", endpoint_url=endpoint), pool, cache_seconds=cache)
    return _directory


def get_hash_key() -> bytes:
    """The HMAC key of patient references in logs: a Secrets Manager secret deployed, an env value locally."""
    global _hash_key
    if _hash_key is None:
        secret_arn = os.environ.get("PATIENT_REF_HASH_SECRET_ARN")
        if secret_arn:
            import boto3

            secret = boto3.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
            _hash_key = secret.encode()
        elif os.environ.get("PATIENT_REF_HASH_KEY"):
            _hash_key = os.environ["PATIENT_REF_HASH_KEY"].encode()
        else:  # still never the reference, but hashes differ between containers
            logger.warning("no PATIENT_REF_HASH_KEY: patient hashes are per-container")
            _hash_key = secrets.token_bytes(32)
    return _hash_key


# ---------------------------------------------------------------- who is asking


def caller_from_claims(claims: dict[str, Any] | None) -> Clinician:
    """The caller from API Gateway's authorizer claims (strings; groups comma-separated)."""
    if not claims or not claims.get("sub"):
        raise UnauthorizedError()
    groups = _groups(str(claims.get("cognito:groups") or ""))
    if len(groups) != 1:
        raise NoTeamError()
    sub = str(claims["sub"])
    username = str(claims.get("cognito:username") or sub)
    # What records show: the administrator's display name, never the email (its owner can change it).
    name = str(claims.get(DISPLAY_NAME_CLAIM) or username)
    return Clinician(sub=sub, name=name, team=groups[0], username=username)


def _groups(claim: str) -> list[str]:
    """The care teams in a ``cognito:groups`` claim: comma-separated as the REST authorizer passes them
    (a team name may hold spaces: "thoracic oncology"), or ``[a b]`` as a JWT authorizer prints a list."""
    claim = claim.strip()
    if claim.startswith("[") and claim.endswith("]"):
        return claim[1:-1].split()
    return [group.strip() for group in claim.split(",") if group.strip()]


def _authorizer_claims(event: APIGatewayProxyEvent) -> dict[str, Any] | None:
    authorizer = (event.raw_event.get("requestContext") or {}).get("authorizer") or {}
    return authorizer.get("claims")


def caller_for(event: APIGatewayProxyEvent, patient: str | None = None) -> Clinician | None:
    """Who asks, where the request's route needs a token (``lungscan.accounts.access``); None where it needs
    none. Behind the authorizer the claims are in the event already; elsewhere the function checks the token."""
    route = (event.http_method, event.get("resource") or event.path)  # API Gateway's resource: the table's key
    token = event.get_header_value("authorization", default_value="", case_sensitive=False) or ""
    if not needs_token(route, patient=patient, token_sent=bool(token)):
        return None
    claims = _authorizer_claims(event)
    if not claims and not checked_by_gateway(route):
        if not token:
            raise UnauthorizedError()
        try:
            claims = get_verifier().authorizer_claims(token)
        except InvalidTokenError:
            raise UnauthorizedError() from None
    return caller_from_claims(claims)


def _current_caller(audit: _Audit, *, fresh: bool) -> Clinician:
    """The caller of a history route, still enabled and in the token's team (``fresh``: asked now, for writes)."""
    audit.sub = str((_authorizer_claims(router.current_event) or {}).get("sub") or "") or None
    caller = caller_for(router.current_event)
    if caller is None:  # a route open to anyone has no caller to keep history for
        raise UnauthorizedError()
    audit.caller = caller
    get_hash_key()  # before any read or write: none may happen without its audit line
    get_directory().check(caller.username, caller.team, fresh=fresh)
    return caller


def caller_for_prediction(event: APIGatewayProxyEvent, patient: str | None, is_study: bool) -> Clinician | None:
    """Before classifying: who will store the result, if anyone (nobody when no token is needed: no patient)."""
    if patient is None:
        return caller_for(event, patient)  # None: anonymous, nothing stored
    with audited("scan.create", refusals_only=True) as audit:  # the store logs the outcome
        check_patient_ref(patient)
        audit.patient = patient
        if is_study:
            raise ConflictingRequestError(
                "A history record holds one slice: send one slice with 'patient'.", code="history_single_slice"
            )
        audit.caller = caller = caller_for(event, patient)
        if caller is not None:
            get_store()  # 503 before classifying when this deployment keeps no history
            get_hash_key()  # and before storing: no record without its audit line
            get_directory().check(caller.username, caller.team, fresh=True)  # a write: asked now
        return caller


def store_prediction(
    caller: Clinician, patient: str, model: BundleMetadata, result: ClassifiedUpload, input_bytes: int
) -> str:
    """Store one classified slice for the caller's team, previews at the model's input size; returns its record id."""
    (prediction,), (source,) = result.predictions, result.inputs  # one slice: a study with a patient is refused
    side = max(model.input.height, model.input.width)
    heatmap = None
    if prediction.heatmap is not None:  # from the overlay as the answer shows it
        heatmap = thumbnail_png(shown_image(prediction.heatmap), side)
    record = build_record(
        prediction,
        source,
        model,
        caller,
        input_bytes=input_bytes,
        preview=thumbnail_png(result.focus_image.image, side),
        heatmap=heatmap,
    )
    with audited("scan.create") as audit:
        audit.caller, audit.patient = caller, patient
        audit.record_id = get_store().add(caller.team, patient, record)
    return audit.record_id


@dataclass
class _Audit:
    action: str
    caller: Clinician | None = None
    sub: str | None = None  # from the claims, before they are known to name a caller
    patient: str | None = None
    record_id: str | None = None


@contextmanager
def audited(action: str, *, refusals_only: bool = False) -> Iterator[_Audit]:
    """One structured line per history action, done or refused: who (``sub``, team), what, the outcome (``ok`` or
    the error's code), the record; the patient only as a keyed hash. Fill in the yielded ``_Audit`` as it is known.
    ``refusals_only``: a step before the action itself, which logs its own outcome."""
    audit = _Audit(action)
    try:
        yield audit
    except LungScanError as error:
        _audit(audit, error.code)
        raise
    except Exception:
        _audit(audit, "internal_error")
        raise
    if not refusals_only:
        _audit(audit, "ok")


def _audit(audit: _Audit, outcome: str) -> None:
    caller = audit.caller
    try:
        patient_hash = hash_ref(get_hash_key(), audit.patient) if audit.patient else None
    except Exception:  # the key itself is unreadable (this line says so): still log who tried what
        patient_hash = None
    line = {
        "action": audit.action,
        "outcome": outcome,
        "sub": caller.sub if caller else audit.sub,
        "team": caller.team if caller else None,
        # A typed path segment that is no record id may hold anything (a name): only real ids are logged.
        "record_id": audit.record_id if audit.record_id and re.fullmatch(RECORD_ID_PATTERN, audit.record_id) else None,
        "patient_hash": patient_hash,
    }
    if outcome == "ok":
        logger.info("audit", extra={"audit": line})
    else:
        logger.warning("audit", extra={"audit": line})


# ---------------------------------------------------------------- routes


@router.get("/patients", tags=["history"], responses=answers(400, 401, 403, 503))
def list_patients(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Patients per page")] = DEFAULT_PAGE_SIZE,
    next: Annotated[str | None, Query(max_length=128, description="The previous page's 'next'")] = None,
) -> PatientsResponse:
    """The caller's team's patients, in reference order: reference, number of scans, last scan time and verdict."""
    with audited("patients.list") as audit:
        caller = _current_caller(audit, fresh=False)
        after = decode_patients_token(next) if next else None
        patients, last = get_store().patients(caller.team, limit=limit, after=after)
    return PatientsResponse(
        team=caller.team, patients=[PatientSummary(**patient) for patient in patients], next=encode_page_token(last)
    )


@router.get("/patients/<ref>/scans", tags=["history"], responses=answers(400, 401, 403, 404, 503))
def list_scans(
    ref: str,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Records per page")] = DEFAULT_PAGE_SIZE,
    next: Annotated[str | None, Query(max_length=128, description="The previous page's 'next'")] = None,
) -> ScansResponse:
    """The patient's records for the caller's team, newest first, without their heatmaps. Another team's
    patient: 404."""
    with audited("scans.list") as audit:
        caller = _current_caller(audit, fresh=False)
        audit.patient = check_patient_ref(ref)
        after = decode_page_token(next) if next else None
        records, last = get_store().scans(caller.team, ref, limit=limit, after=after)
        if not records and after is None:
            raise RecordNotFoundError("No such patient for your team.")
    return ScansResponse(patient=ref, scans=[ScanRecord(**record) for record in records], next=encode_page_token(last))


@router.get("/patients/<ref>/scans/<record_id>/heatmap", tags=["history"], responses=answers(400, 401, 403, 404, 503))
def get_heatmap(ref: str, record_id: str) -> HeatmapResponse:
    """One record's heatmap. Another team's record, or one stored without a heatmap: 404."""
    with audited("heatmap.read") as audit:
        caller = _current_caller(audit, fresh=False)
        audit.patient, audit.record_id = check_patient_ref(ref), record_id
        heatmap = get_store().heatmap(caller.team, ref, record_id)
        if heatmap is None:
            raise RecordNotFoundError("This record has no heatmap: the request that stored it asked for none.")
    return HeatmapResponse(record_id=record_id, heatmap=base64.b64encode(heatmap).decode("ascii"))


@router.delete(
    "/patients/<ref>/scans/<record_id>", tags=["history"], responses=answers(400, 401, 403, 404, 503, ok=204)
)
def delete_scan(ref: str, record_id: str):  # no return annotation: a 204 Response is not a pydantic type
    """Delete one record for the whole team: 204, only by the clinician who stored it (anyone else in the team:
    403 ``not_author``). Another team's record: 404."""
    with audited("scan.delete") as audit:
        caller = _current_caller(audit, fresh=True)  # a write: the account is asked now
        audit.patient, audit.record_id = check_patient_ref(ref), record_id
        get_store().delete(caller.team, ref, record_id, author=caller.sub)
    return Response(204)  # no body, so no Content-Type
