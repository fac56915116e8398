"""What the patient history routes answer: the models ``/openapi.json`` publishes for ``/patients...``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PatientSummary(BaseModel):
    patient: str = Field(description="The pseudonymous reference")
    scans: int
    last_scan_at: str
    last_verdict: str = Field(description="Deprecated: the original app's words; read last_tier")
    last_tier: str | None = Field(default=None, description="suspicious, not_excluded or clear (null: stored before)")


class PatientsResponse(BaseModel):
    team: str
    patients: list[PatientSummary] = Field(description="In reference order")
    next: str | None = Field(default=None, description="Opaque token of the next page (query 'next'); null on the last")


class StoredModel(BaseModel):
    name: str
    version: str


class StoredClinician(BaseModel):
    sub: str
    name: str | None = Field(default=None, description="The display name an administrator set (custom:display_name)")
    email: str | None = Field(default=None, description="Records stored before display names only: not verified")


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
    has_heatmap: bool = Field(description="Whether a heatmap was stored: GET .../scans/{record_id}/heatmap reads it")


class HeatmapResponse(BaseModel):
    record_id: str
    heatmap: str = Field(description="Heatmap thumbnail (PNG, base64), at the model's input size")


class ScansResponse(BaseModel):
    patient: str
    scans: list[ScanRecord] = Field(
        description="Newest first (a whole study by its acquisition day); at most 'limit' records and about 3 MB"
    )
    next: str | None = Field(description="Opaque token of the next page (query 'next'); null on the last page")
