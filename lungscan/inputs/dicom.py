"""DICOM CT slices: Hounsfield units, lung window, 8-bit image.

Only pixel-related tags are read. Patient tags are never copied into the result, so
nothing downstream can log, return or store them.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lungscan.errors import (
    LungScanError,
    MalformedInputError,
    NotACTSliceError,
    PayloadTooLargeError,
    UnsupportedFormatError,
)
from lungscan.inputs.dicom_budget import DicomBudget, read_within_budget
from lungscan.inputs.imaging import (
    CORRUPT_FILE_ERRORS,
    DEFAULT_LIMITS,
    DecodedImage,
    ImageLimits,
    check_dimensions,
    check_jpeg_scans,
    reduce_to,
    reject_blank,
)
from lungscan.inputs.prescan import check_jpeg_segments

# The lung window radiologists read parenchyma in: -1350 .. +150 HU.
LUNG_WINDOW = {"center": -600.0, "width": 1500.0}
MAX_FRAMES = 512
DEFLATED_EXPLICIT_VR = "1.2.840.10008.1.2.1.99"
# A deflated dataset is inflated at most this far: a 4096x4096 16-bit slice is 32 MB.
MAX_INFLATED_BYTES = 32 * 1024 * 1024
WINDOW_BAND_PIXELS = 512 * 512  # pixels windowed at a time (see _window)
# What pydicom raises on damaged files, at read time or later when a tag is first converted
# (fuzzing found each of them): all mean the file is malformed, none is a server fault.
DICOM_PARSE_ERRORS = (
    AttributeError,
    ValueError,
    TypeError,
    EOFError,
    OSError,
    LookupError,
    struct.error,
    OverflowError,
    RecursionError,
    NotImplementedError,  # an unknown VR in a damaged header
)


@dataclass(frozen=True)
class DicomOptions:
    """How to turn a DICOM file into what the model sees.

    Args:
        window: ``{"center": HU, "width": HU}``; the lung window by default.
        frame: which frame of a multi-frame file; the middle one by default.
        allow_non_ct: accept modalities other than CT (the models were trained on CT only).
    """

    window: dict[str, float] | None = None
    frame: int | None = None
    allow_non_ct: bool = False


def looks_like_dicom(data: bytes) -> bool:
    """A Part 10 file (preamble + ``DICM``), or a bare dataset starting with group 0002/0008."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[2:4] < b"\x10\x00"


@contextmanager
def _malformed_on_parse_errors() -> Iterator[None]:
    """pydicom converts tags lazily, so a damaged tag can raise wherever it is first read."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        yield
    except LungScanError:
        raise
    except (InvalidDicomError, BytesLengthException, *DICOM_PARSE_ERRORS) as error:
        raise MalformedInputError("The DICOM file is corrupt or has no image.", code="corrupt_image") from error


def _inflate_if_deflated(data: bytes, budget: DicomBudget) -> bytes:
    """A deflated dataset, inflated with a bound and re-labelled Explicit VR Little Endian.

    pydicom inflates a Deflated Explicit VR file whole, with no bound (1 MB inflates to 1 GB), at
    read time: so the file meta is read alone first, as ``dcmread`` would, and the rest inflated here.

    Raises:
        PayloadTooLargeError: the dataset inflates to more than ``MAX_INFLATED_BYTES``.
        MalformedInputError: the deflate stream is corrupt.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    stream = budget.stream(data)
    read_preamble(stream, True)  # after it, the stream is where dcmread looks for the file meta
    meta = _read_file_meta_info(stream)
    if str(meta.get("TransferSyntaxUID", "") or "").strip("\0 ") != DEFLATED_EXPLICIT_VR:
        return data
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        dataset = inflater.decompress(data[stream.tell() :], MAX_INFLATED_BYTES)
    except zlib.error as error:
        raise MalformedInputError("The deflated DICOM dataset is corrupt.", code="corrupt_image") from error
    if inflater.unconsumed_tail:
        raise PayloadTooLargeError(
            f"The deflated DICOM inflates to more than {MAX_INFLATED_BYTES // 2**20} MB; at most that is read."
        )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength  # no longer true; pydicom reads the group without it
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=False)
    return header.getvalue() + dataset


def _read(data: bytes, limits: ImageLimits, options: DicomOptions, budget: DicomBudget):
    """Parse the header, within ``budget``, and check it describes a CT image we may decode."""
    import pydicom  # imported lazily: only DICOM uploads pay for it
    import pydicom.config

    # pydicom's validation warnings quote tag values, patient names included: never emit them.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    budget.spend_items(data)  # before anything reads it: the file meta comes first, deflated dataset or not
    inflated = _inflate_if_deflated(data, budget)
    if inflated is not data:
        budget.spend_items(inflated)
    dataset = read_within_budget(inflated, budget)
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, ValueError, TypeError) as error:
        raise MalformedInputError("The DICOM file is corrupt or has no image.", code="corrupt_image") from error
    if "PixelData" not in dataset:
        raise MalformedInputError("The DICOM file has no pixel data.", code="corrupt_image")
    _infer_transfer_syntax(dataset)
    modality = _modality(dataset)
    if modality and modality != "CT" and not options.allow_non_ct:
        shown = modality if re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality) else "non-CT"  # echo only a valid code
        raise NotACTSliceError(f"This DICOM is a {shown} image; the models read CT only.", code="not_ct_modality")
    check_image_kind(dataset)
    check_dimensions(columns, rows, limits)
    if not 1 <= frames <= MAX_FRAMES or rows * columns * frames > limits.max_pixels * 4:
        raise NotACTSliceError(f"The DICOM declares {frames} frames; at most {MAX_FRAMES}.", code="too_many_pixels")
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise UnsupportedFormatError("Only single-channel (grayscale) DICOM images are supported.")
    return dataset, frames


# What a DICOM says it is, beyond its modality: a scanner sends localizers (scouts), dose screens and screen
# captures as Modality CT too. Each is refused with its own code; an axial slice, original or derived
# (a reconstruction, e.g. pydicom's 693_J2KI: DERIVED\\PRIMARY\\AXIAL), goes on to the not-CT gate.
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture and its multi-frame kinds
LOCALIZER_WORDS = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM", "PILOT"}
DOSE_WORDS = {"DOSE", "DOSE_INFO", "DOSE INFO", "DOSE REPORT", "SCREEN SAVE", "DOSE_REPORT"}
RENDERED_WORDS = {"PROJECTION IMAGE", "MIP", "MINIP", "MPR", "CPR", "CURVED", "VOLUME", "VR", "VRT", "SSD", "3D"}
RENDERED_WORDS |= {"CORONAL", "SAGITTAL", "OBLIQUE", "REFORMATTED", "CAPTURE", "SCREENSHOT"}
DOSE_DESCRIPTION = re.compile(r"dose|patient protocol|exam protocol", re.IGNORECASE)

IMAGE_KIND_REFUSALS = {
    "not_ct_localizer": "This DICOM is a localizer (scout) image, not an axial slice.",
    "not_ct_dose_report": "This DICOM is a dose report or protocol screen, not an image of the patient.",
    "not_ct_secondary_capture": "This DICOM is a secondary capture (a screenshot or a picture), not a scanner's slice.",
    "not_ct_derived": "This DICOM is a derived image (a reformat, projection or rendering), not an axial slice.",
}
IMAGE_KIND_ADVICE = " Send an axial slice of the chest CT series."


def check_image_kind(dataset) -> None:
    """Refuse a DICOM that declares itself a localizer, dose screen, secondary capture or rendering.

    Read from ``ImageType``, ``SOPClassUID`` and ``SeriesDescription`` (never echoed); whatever passes
    still faces the not-CT gate on its pixels.

    Raises:
        NotACTSliceError: with ``not_ct_localizer``, ``not_ct_dose_report``, ``not_ct_secondary_capture``
            or ``not_ct_derived``.
    """
    raw = dataset.get("ImageType", None)
    values = [
        str(value).strip().upper() for value in ([raw or ""] if isinstance(raw, str | bytes) or raw is None else raw)
    ]
    sop_class = str(dataset.get("SOPClassUID", "") or "").strip("\0 ")
    description = str(dataset.get("SeriesDescription", "") or "")
    code = None
    if LOCALIZER_WORDS.intersection(values):
        code = "not_ct_localizer"
    elif DOSE_WORDS.intersection(values) or DOSE_DESCRIPTION.search(description):
        code = "not_ct_dose_report"
    elif sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        code = "not_ct_secondary_capture"
    elif RENDERED_WORDS.intersection(values) or (
        values[:1] == ["DERIVED"] and values[2:3] not in ([], [""], ["AXIAL"])
    ):
        code = "not_ct_derived"
    if code is not None:
        raise NotACTSliceError(IMAGE_KIND_REFUSALS[code] + IMAGE_KIND_ADVICE, code=code)


def _modality(dataset) -> str:
    """The declared modality (``CT``...), for the not-CT gate; never echoed to the user."""
    return str(dataset.get("Modality", "") or "").upper()


def _infer_transfer_syntax(dataset) -> None:
    """A bare dataset (no preamble, no file meta) is uncompressed: name its encoding for the decoder."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None and "TransferSyntaxUID" in file_meta:
        return
    implicit_vr, little_endian = dataset.original_encoding
    dataset.file_meta = file_meta or FileMetaDataset()
    if implicit_vr:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _check_compressed_frame(dataset, index: int, frames: int) -> None:
    """Read a JPEG or JPEG 2000 frame's own header (Pillow reads only the header on open) and
    refuse it unless it matches Rows x Columns: the decoder would allocate what the codestream
    says (13000x13000 in a file whose header says 512x512), not what the header says."""
    from pydicom.encaps import get_frame
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGTransferSyntaxes

    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax not in (*JPEGTransferSyntaxes, *JPEG2000TransferSyntaxes):
        return  # uncompressed (sized by the header), RLE (pydicom checks the length) or refused as undecodable
    try:
        frame = get_frame(dataset.PixelData, index, number_of_frames=frames)
    except DICOM_PARSE_ERRORS:
        return  # pydicom finds the same fault and names it
    if frame[:2] == b"\xff\xd8":
        check_jpeg_scans(frame)
        check_jpeg_segments(frame)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(frame), formats=("JPEG", "JPEG2000")) as codestream:
                size = codestream.size
    except Image.DecompressionBombError:
        size = None  # billions of pixels: it cannot match a header that passed check_dimensions
    except (UnidentifiedImageError, *CORRUPT_FILE_ERRORS):
        # A header Pillow cannot read (12-bit JPEG, damaged codestream): Pillow is the only decoder
        # installed, so pydicom cannot decode it either and answers 415 or 400 itself.
        return
    if size != (int(dataset.Columns), int(dataset.Rows)):
        raise MalformedInputError(
            "The DICOM's compressed pixel data does not match its declared Rows and Columns.",
            code="dimensions_mismatch",
        )


def _undecodable(dataset) -> UnsupportedFormatError:
    syntax = (getattr(dataset, "file_meta", None) or {}).get("TransferSyntaxUID")
    # Name a transfer syntax the DICOM standard registers; never echo what the file wrote there.
    known = getattr(syntax, "type", "") == "Transfer Syntax"  # pydicom's UID: registered in the standard
    name = f"the '{syntax.name}' transfer syntax" if known and syntax is not None else "a transfer syntax"
    return UnsupportedFormatError(f"This DICOM uses {name}, which this service cannot decode.")


def _pixels(dataset, index: int | None, frames: int = 1) -> np.ndarray:
    from pydicom.pixels import pixel_array
    from pydicom.uid import (
        JPEG2000TransferSyntaxes,
        JPEGTransferSyntaxes,
        RLELossless,
        UncompressedTransferSyntaxes,
    )

    syntax = (getattr(dataset, "file_meta", None) or {}).get("TransferSyntaxUID")
    # Only what the checks above size is decoded, whatever plugins pydicom finds installed (highdicom brings a
    # JPEG-LS decoder for its own use; serving keeps to uncompressed, Pillow's JPEG and JPEG 2000, and RLE).
    decoded = (*UncompressedTransferSyntaxes, *JPEGTransferSyntaxes, *JPEG2000TransferSyntaxes, RLELossless)
    if syntax is not None and syntax not in decoded:
        raise _undecodable(dataset)
    _check_compressed_frame(dataset, index or 0, frames)
    try:
        return pixel_array(dataset, index=index)
    except (NotImplementedError, RuntimeError) as error:
        raise _undecodable(dataset) from error
    except (ValueError, TypeError, AttributeError, EOFError, KeyError, IndexError) as error:
        raise MalformedInputError("The DICOM pixel data is corrupt.", code="corrupt_image") from error


def _window(pixels: np.ndarray, dataset, window: dict[str, float]) -> Image.Image:
    from pydicom.pixels import apply_modality_lut

    low = window["center"] - window["width"] / 2
    inverted = dataset.get("PhotometricInterpretation") == "MONOCHROME1"  # shows low values as white
    windowed = np.empty(pixels.shape, np.uint8)
    # A band of rows at a time: every step is per pixel, and a 4096x4000 slice's float64 copy alone is 128 MB.
    rows = max(1, WINDOW_BAND_PIXELS // max(1, pixels.shape[-1]))
    for top in range(0, pixels.shape[0], rows):
        # Without RescaleSlope/Intercept the stored values are taken as HU already.
        try:
            hounsfield = apply_modality_lut(pixels[top : top + rows], dataset).astype(np.float32)
        except (*DICOM_PARSE_ERRORS, ArithmeticError) as error:
            raise MalformedInputError(
                "The DICOM's rescale or modality LUT tags are invalid.", code="corrupt_image"
            ) from error
        if not np.isfinite(hounsfield).all():
            raise NotACTSliceError("The DICOM's pixel values are not finite numbers.", code="non_finite_pixels")
        scaled = (np.clip(hounsfield, low, low + window["width"]) - low) * (255.0 / window["width"])
        if inverted:
            scaled = 255.0 - scaled
        windowed[top : top + rows] = (scaled + 0.5).astype(np.uint8)
    image = Image.fromarray(windowed)
    reject_blank(image)
    return image


@dataclass
class DicomFile:
    """A parsed DICOM file whose header passed the checks: its frames decode from it without parsing it again."""

    dataset: Any
    frames: int


def read_dicom(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    options: DicomOptions | None = None,
    budget: DicomBudget | None = None,
) -> DicomFile:
    """Parse a DICOM file within ``budget`` (a fresh one by default) and check its header.

    Raises:
        PayloadTooLargeError, MalformedInputError, UnsupportedFormatError, NotACTSliceError: as ``decode_dicom``.
    """
    with _malformed_on_parse_errors():
        return DicomFile(*_read(data, limits, options or DicomOptions(), budget or DicomBudget()))


def decode_dicom(
    data: bytes | DicomFile,
    limits: ImageLimits = DEFAULT_LIMITS,
    options: DicomOptions | None = None,
    budget: DicomBudget | None = None,
) -> DecodedImage:
    """Decode one DICOM frame to an 8-bit grayscale image through a HU window.

    A slice over ``limits.max_decoded_pixels`` is windowed whole, then reduced (``width`` and ``height`` stay its own).

    Args:
        data: the file, or the file already read (:func:`read_dicom`) with the same limits and options.
        budget: what pydicom may parse, shared by every file of a request; a fresh one by default.

    Raises:
        MalformedInputError: not parseable as DICOM, no pixel data, or no such frame.
        UnsupportedFormatError: a compressed transfer syntax with no decoder installed, or colour.
        NotACTSliceError: not CT, too small, too many pixels or elements, or blank after windowing.
    """
    options = options or DicomOptions()
    parsed = data if isinstance(data, DicomFile) else read_dicom(data, limits, options, budget)
    dataset, frames = parsed.dataset, parsed.frames
    with _malformed_on_parse_errors():
        frame = frames // 2 if options.frame is None else options.frame
        if not 0 <= frame < frames:
            raise MalformedInputError(
                f"Frame {frame} does not exist; the file has {frames}.", code="frame_out_of_range"
            )
        window = dict(options.window or LUNG_WINDOW)
        image = _window(_pixels(dataset, frame if frames > 1 else None, frames), dataset, window)
    size = image.size
    image = reduce_to(image, limits.max_decoded_pixels)
    return DecodedImage(
        image=image,
        format="DICOM",
        window=window,
        meta={"frame": frame, "frames": frames, "modality": _modality(dataset)},
        source_size=size if image.size != size else None,
    )


def read_dicom_header(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    options: DicomOptions | None = None,
    budget: DicomBudget | None = None,
) -> tuple[int, int, int]:
    """``(width, height, frames)`` from the header alone, checked like :func:`decode_dicom`; no pixel is decoded.

    Raises:
        PayloadTooLargeError, MalformedInputError, UnsupportedFormatError, NotACTSliceError: as ``decode_dicom``.
    """
    parsed = read_dicom(data, limits, options, budget)
    return int(parsed.dataset.Columns), int(parsed.dataset.Rows), parsed.frames
