"""One entry point from uploaded bytes to decoded images, whatever the format."""

from __future__ import annotations

from lungscan.dicom import DicomOptions, decode_dicom, decode_dicom_frames, looks_like_dicom
from lungscan.errors import PayloadTooLargeError
from lungscan.imaging import DEFAULT_LIMITS, DecodedImage, ImageLimits, decode_image

# Slices in one study: 64 CT slices fit Lambda's 6 MB request as compressed PNG/JPEG.
MAX_STUDY_SLICES = 64


def decode_upload(data: bytes, limits: ImageLimits = DEFAULT_LIMITS, dicom: DicomOptions | None = None) -> DecodedImage:
    """Decode a DICOM, PNG, JPEG, BMP or TIFF upload, sniffing the format from its bytes.

    The declared content type and file name are ignored: bytes decide, so a renamed
    file cannot route itself to the wrong decoder.
    """
    if looks_like_dicom(data) and len(data) <= limits.max_bytes:
        return decode_dicom(data, limits, dicom)
    return decode_image(data, limits)


def decode_all_frames(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    dicom: DicomOptions | None = None,
    max_frames: int = MAX_STUDY_SLICES,
) -> list[DecodedImage]:
    """Every frame of a multi-frame DICOM; any other image is a one-slice study."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(f"The file is larger than the {limits.max_bytes // 2**20} MB limit.")
    if looks_like_dicom(data):
        return decode_dicom_frames(data, limits, dicom, max_frames)
    return [decode_image(data, limits)]
