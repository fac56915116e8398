"""One entry point from uploaded bytes to a decoded image, whatever the format."""

from __future__ import annotations

from lungscan.dicom import decode_dicom
from lungscan.imaging import DEFAULT_LIMITS, DecodedImage, ImageLimits, decode_image, is_dicom


def decode_upload(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    dicom_window: dict[str, float] | None = None,
) -> DecodedImage:
    """Decode a DICOM, PNG, JPEG, BMP or TIFF upload, sniffing the format from its bytes.

    The declared content type and file name are ignored: bytes decide, so a renamed
    file cannot route itself to the wrong decoder.
    """
    if is_dicom(data) and len(data) <= limits.max_bytes:
        return decode_dicom(data, limits, dicom_window)
    return decode_image(data, limits)
