"""One entry point from uploaded bytes to decoded images, whatever the format."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lungscan.dicom import DicomOptions, decode_dicom, looks_like_dicom, read_dicom_header
from lungscan.errors import PayloadTooLargeError
from lungscan.imaging import DEFAULT_LIMITS, DecodedImage, ImageLimits, decode_image, open_image

# Slices in one study: 64 CT slices fit Lambda's 6 MB request as compressed PNG/JPEG.
MAX_STUDY_SLICES = 64
# Pixels in one study, summed from the headers: 64 slices of 1024x1024 (a CT series is 512x512),
# or four of the largest single image. Bounds a study's decoding time as max_pixels bounds a slice's.
MAX_STUDY_PIXELS = 64 * 1024 * 1024


def decode_upload(data: bytes, limits: ImageLimits = DEFAULT_LIMITS, dicom: DicomOptions | None = None) -> DecodedImage:
    """Decode a DICOM, PNG, JPEG, BMP or TIFF upload, sniffing the format from its bytes.

    The declared content type and file name are ignored: bytes decide, so a renamed
    file cannot route itself to the wrong decoder.
    """
    if looks_like_dicom(data) and len(data) <= limits.max_bytes:
        return decode_dicom(data, limits, dicom)
    return decode_image(data, limits)


@dataclass(frozen=True)
class StudySlice:
    """One slice of a study, known from its file's header; decoded only when asked."""

    data: bytes
    width: int
    height: int
    frame: int | None = None  # the frame of a DICOM; None for a raster image

    def decode(self, limits: ImageLimits = DEFAULT_LIMITS, dicom: DicomOptions | None = None) -> DecodedImage:
        if self.frame is None:
            return decode_image(self.data, limits)
        return decode_dicom(self.data, limits, replace(dicom or DicomOptions(), frame=self.frame))


def plan_study(
    files: list[bytes],
    limits: ImageLimits = DEFAULT_LIMITS,
    dicom: DicomOptions | None = None,
    max_slices: int = MAX_STUDY_SLICES,
    max_pixels: int = MAX_STUDY_PIXELS,
) -> list[StudySlice]:
    """The slices of a study (every frame of every DICOM, each raster image), from the headers alone.

    Nothing is decoded here: the caller decodes, classifies and drops one slice at a time,
    so a study holds one decoded slice in memory, whatever its size.

    Raises:
        PayloadTooLargeError: more than ``max_slices`` slices or ``max_pixels`` pixels in all.
        and whatever a file's header check raises (see ``decode_image`` and ``decode_dicom``).
    """
    slices: list[StudySlice] = []
    pixels = 0
    for data in files:
        if len(data) > limits.max_bytes:
            raise PayloadTooLargeError(f"The file is larger than the {limits.max_bytes // 2**20} MB limit.")
        if looks_like_dicom(data):
            width, height, frames = read_dicom_header(data, limits, dicom)
            entries = [StudySlice(data, width, height, frame) for frame in range(frames)]
        else:
            width, height = open_image(data, limits).size
            entries = [StudySlice(data, width, height)]
        if len(slices) + len(entries) > max_slices:
            raise PayloadTooLargeError(f"A study may hold at most {max_slices} slices.")
        pixels += width * height * len(entries)
        if pixels > max_pixels:
            raise PayloadTooLargeError(
                f"A study may hold at most {max_pixels // 2**20} million pixels in all "
                f"(for example {max_slices} slices of 1024x1024)."
            )
        slices.extend(entries)
    return slices
