"""Domain errors shared by training and serving.

Each error carries a stable machine-readable ``code``. The core knows nothing of HTTP:
adapters (the Lambda, the CLI) map the error *type* to their own status or exit code.
"""

from __future__ import annotations


class LungScanError(Exception):
    """Base class of every error the core raises on purpose."""

    code = "lungscan_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class MalformedInputError(LungScanError):
    """The request or file is not well formed (bad base64, truncated image...)."""

    code = "malformed_input"


class ConflictingRequestError(MalformedInputError):
    """Each part well formed, together impossible to honour: two different patients, a study stored as one record.
    No schema can say it (the parts may come from the query and the body), so it is told apart from malformed."""

    code = "conflicting_request"


class PayloadTooLargeError(LungScanError):
    """The upload exceeds the byte limit; raised before anything is decoded."""

    code = "payload_too_large"


class UnsupportedFormatError(LungScanError):
    """The bytes are not in a format LungScan decodes (GIF, text, compressed DICOM...)."""

    code = "unsupported_format"


class NotACTSliceError(LungScanError):
    """A valid image that cannot be a CT slice: too small, too many pixels, or blank."""

    code = "not_a_ct_slice"


class NotCTLikeError(NotACTSliceError):
    """A readable image that the not-CT gate says is no CT slice at all (photo, chart, X-ray, MR...)."""

    code = "not_ct_like"


class ModelUnavailableError(LungScanError):
    """No model could be loaded, or the requested model is not served."""

    code = "model_unavailable"


class InvalidBundleError(LungScanError):
    """A model bundle is incomplete, inconsistent or fails its checksum."""

    code = "invalid_bundle"


class RegistryError(LungScanError):
    """A registry operation cannot be done (no such version, nothing to roll back to...)."""

    code = "registry_error"


class UnknownModelError(LungScanError):
    """The request names a model this function does not serve."""

    code = "unknown_model"


# ---- accounts and patient history


class UnauthorizedError(LungScanError):
    """No ID token, or one that is not valid (malformed, tampered, expired, another client's, not an ID token)."""

    code = "unauthorized"

    def __init__(self, message: str = "Sign in: send a valid Cognito ID token in the Authorization header.") -> None:
        super().__init__(message)


class ForbiddenError(LungScanError):
    """A signed-in clinician who may not do this (403): the kinds below say why."""

    code = "forbidden"


class NoTeamError(ForbiddenError):
    """A signed-in user in no care team, or in several."""

    code = "no_team"

    def __init__(self, message: str = "Your account belongs to no single care team: ask an administrator.") -> None:
        super().__init__(message)


class AccessRevokedError(ForbiddenError):
    """A valid token whose clinician has since been disabled, deleted or moved out of the token's care team."""

    code = "access_revoked"

    def __init__(
        self, message: str = "Your account is disabled or no longer in this care team: ask an administrator."
    ) -> None:
        super().__init__(message)


class NotRecordAuthorError(ForbiddenError):
    """A record deleted by someone other than the clinician who stored it."""

    code = "not_author"

    def __init__(self, message: str = "Only the clinician who stored this record can delete it.") -> None:
        super().__init__(message)


class RecordNotFoundError(LungScanError):
    """No such patient or record for this team (whether it exists for another team is never said)."""

    code = "not_found"


class HistoryUnavailableError(LungScanError):
    """This deployment keeps no patient history (no table configured)."""

    code = "history_unavailable"

    def __init__(self, message: str = "This deployment keeps no patient history.") -> None:
        super().__init__(message)


# ---- whole studies


class ConflictError(LungScanError):
    """The request does not fit the resource's state (a study started before its files are all uploaded)."""

    code = "conflict"


class StudiesUnavailableError(LungScanError):
    """This deployment runs no study engine (no uploads bucket, table or state machine configured)."""

    code = "studies_unavailable"

    def __init__(self, message: str = "This deployment does not classify whole studies.") -> None:
        super().__init__(message)


# ---- DICOM results (SR and key image)


class DicomResultsUnavailableError(LungScanError):
    """A study whose results cannot be DICOM objects: not DICOM, no study UID, several studies, no key slice."""

    code = "dicom_results_unavailable"
