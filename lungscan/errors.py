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
