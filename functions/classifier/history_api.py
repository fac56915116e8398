"""Patient history routes (``GET /patients``, ``GET /patients/{ref}/scans``,
``DELETE /patients/{ref}/scans/{record_id}``) and the signed-in part of ``POST /predict``.

Which route needs a token is ``lungscan.accounts.access``'s to say. Deployed, API Gateway's Cognito
authorizer checks the ID token on the history routes and passes its claims in
``requestContext.authorizer.claims``; this module reads the caller from those claims only. ``POST /predict``
works without a token, so it cannot sit behind that authorizer: when it names a patient, the function
checks the token itself, the same way (``lungscan.accounts.tokens``). Errors are the core's
(``lungscan.errors``), answered by ``app.py``'s one error handler.
"""

from __future__ import annotations

import os
import secrets
from typing import Annotated, Any

import boto3
from api_answers import shown_image
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn, SecurityScheme
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from pydantic import BaseModel, Field

from lungscan.accounts.access import TOKEN_SCHEME, checked_by_gateway, needs_token
from lungscan.accounts.history import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Clinician,
    HistoryStore,
    build_record,
    check_patient_ref,
    decode_page_token,
    encode_page_token,
    hash_ref,
    public_record,
    thumbnail_png,
)
from lungscan.accounts.tokens import CognitoTokenVerifier, InvalidTokenError
from lungscan.bundle.metadata import BundleMetadata
from lungscan.errors import (
    HistoryUnavailableError,
    MalformedInputError,
    NoTeamError,
    RecordNotFoundError,
    UnauthorizedError,
)
from lungscan.uploads import ClassifiedUpload

logger = Logger(child=True)
router = APIGatewayRouter()  # a Router whose current_event is typed as the REST API's proxy event

SECURITY_SCHEMES: dict[str, SecurityScheme] = {
    # What API Gateway's Cognito authorizer reads: the ID token in the Authorization header (raw or 'Bearer ').
    TOKEN_SCHEME: APIKey(
        name="Authorization",
        in_=APIKeyIn.header,
        description="The Cognito ID token from InitiateAuth's IdToken, raw or after 'Bearer '.",
    )
}


# ---------------------------------------------------------------- configuration, read on first use

_store: HistoryStore | None = None
_verifier: CognitoTokenVerifier | None = None
_hash_key: bytes | None = None


def get_store() -> HistoryStore:
    global _store
    if _store is None:
        table = os.environ.get("HISTORY_TABLE")
        if not table:
            raise HistoryUnavailableError()
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
        _verifier = CognitoTokenVerifier(pool, client.split(","), region, endpoint)
    return _verifier


def get_hash_key() -> bytes:
    """The HMAC key of patient references in logs: a Secrets Manager secret deployed, an env value locally."""
    global _hash_key
    if _hash_key is None:
        secret_arn = os.environ.get("PATIENT_REF_HASH_SECRET_ARN")
        if secret_arn:
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
    return Clinician(sub=str(claims["sub"]), email=str(claims.get("email") or ""), team=groups[0])


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


def _current_caller() -> Clinician:
    caller = caller_for(router.current_event)
    if caller is None:  # a route open to anyone has no caller to keep history for
        raise UnauthorizedError()
    get_hash_key()  # before any read or write: none may happen without its audit line
    return caller


def caller_for_prediction(event: APIGatewayProxyEvent, patient: str | None, is_study: bool) -> Clinician | None:
    """Before classifying: who will store the result, if anyone (nobody when no token is needed: no patient)."""
    if patient is not None:
        check_patient_ref(patient)
        if is_study:
            raise MalformedInputError(
                "A history record holds one slice: send one slice with 'patient'.", code="history_single_slice"
            )
    caller = caller_for(event, patient)
    if caller is not None:
        get_store()  # 503 before classifying when this deployment keeps no history
        get_hash_key()  # and before storing: no record without its audit line
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
    record_id = get_store().add(caller.team, patient, record)
    _audit("scan.create", caller, patient, record_id)
    return record_id


def _audit(action: str, caller: Clinician, patient: str | None, record_id: str | None = None) -> None:
    """One structured line per history read or write: who, team, what; the reference only as a keyed hash."""
    logger.info(
        "audit",
        extra={
            "audit": {
                "action": action,
                "sub": caller.sub,
                "team": caller.team,
                "record_id": record_id,
                "patient_hash": hash_ref(get_hash_key(), patient) if patient else None,
            }
        },
    )


# ---------------------------------------------------------------- models


class PatientSummary(BaseModel):
    patient: str = Field(description="The pseudonymous reference")
    scans: int
    last_scan_at: str
    last_verdict: str


class PatientsResponse(BaseModel):
    team: str
    patients: list[PatientSummary]


class StoredModel(BaseModel):
    name: str
    version: str


class StoredClinician(BaseModel):
    sub: str
    email: str


class StoredInput(BaseModel):
    format: str | None
    width: int | None
    height: int | None


class ScanRecord(BaseModel):
    record_id: str
    created_at: str = Field(description="UTC, ISO 8601")
    clinician: StoredClinician
    model: StoredModel
    label: str
    tier: str | None = Field(default=None, description="suspicious, not_excluded or clear (records since tiers)")
    verdict: str = Field(description="Deprecated: the original app's text, derived from suspicious")
    suspicious: bool | None = None
    probabilities: dict[str, float]
    prediction_set: list[str] | None = None
    uncertain: bool | None = None
    unfamiliar: bool | None = None
    input: StoredInput
    input_bytes: int
    study_date: str | None = Field(
        default=None, description="A whole study's acquisition day (DICOM), else its upload day: the timeline's order"
    )
    study: dict[str, Any] | None = Field(
        default=None,
        description="A whole study's record: study_id, flagged of total, failed, its most suspicious slice",
    )
    preview: str = Field(description="PNG (base64), at most 256 px, of what the model saw")
    heatmap: str | None = Field(default=None, description="Heatmap thumbnail (PNG, base64), when one was asked for")


class ScansResponse(BaseModel):
    patient: str
    scans: list[ScanRecord] = Field(description="Newest first (a whole study by its acquisition day)")
    next: str | None = Field(description="Opaque token of the next page (query 'next'); null on the last page")


# ---------------------------------------------------------------- routes


@router.get("/patients", tags=["history"])
def list_patients() -> PatientsResponse:
    """The caller's team's patients: reference, number of scans, last scan time and verdict."""
    caller = _current_caller()
    patients = get_store().patients(caller.team)
    _audit("patients.list", caller, None)
    return PatientsResponse(team=caller.team, patients=[PatientSummary(**patient) for patient in patients])


@router.get("/patients/<ref>/scans", tags=["history"])
def list_scans(
    ref: str,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Records per page")] = DEFAULT_PAGE_SIZE,
    next: Annotated[str | None, Query(max_length=128, description="The previous page's 'next'")] = None,
) -> ScansResponse:
    """The patient's records for the caller's team, newest first. Another team's patient: 404."""
    caller = _current_caller()
    check_patient_ref(ref)
    after = decode_page_token(next) if next else None
    records, last = get_store().scans(caller.team, ref, limit=limit, after=after)
    _audit("scans.list", caller, ref)
    if not records and after is None:
        raise RecordNotFoundError("No such patient for your team.")
    return ScansResponse(
        patient=ref, scans=[ScanRecord(**public_record(record)) for record in records], next=encode_page_token(last)
    )


@router.delete("/patients/<ref>/scans/<record_id>", tags=["history"])
def delete_scan(ref: str, record_id: str):  # no return annotation: a 204 Response is not a pydantic type
    """Delete one record for the whole team: 204. Another team's record: 404."""
    caller = _current_caller()
    check_patient_ref(ref)
    get_store().delete(caller.team, ref, record_id)
    _audit("scan.delete", caller, ref, record_id)
    return Response(204, content_types.APPLICATION_JSON, "")
