"""DICOM CT slices: Hounsfield units, lung window, 8-bit image.

Only pixel-related tags are read. Patient tags are never copied into the result, so
nothing downstream can log, return or store them.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lungscan.errors import MalformedInputError, NotACTSliceError, PayloadTooLargeError, UnsupportedFormatError
from lungscan.imaging import DEFAULT_LIMITS, DecodedImage, ImageLimits, check_dimensions, reject_blank

# The lung window radiologists read parenchyma in: -1350 .. +150 HU.
LUNG_WINDOW = {"center": -600.0, "width": 1500.0}
MAX_FRAMES = 512


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


def _read(data: bytes, limits: ImageLimits, options: DicomOptions):
    """Parse the header and check it describes a CT image we may decode."""
    import pydicom  # imported lazily: only DICOM uploads pay for it
    import pydicom.config
    from pydicom.errors import InvalidDicomError

    # pydicom's validation warnings quote tag values, patient names included: never emit them.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (InvalidDicomError, AttributeError, ValueError, TypeError, EOFError, OSError, KeyError) as error:
        raise MalformedInputError("The DICOM file is corrupt or has no image.", code="corrupt_image") from error
    if "PixelData" not in dataset:
        raise MalformedInputError("The DICOM file has no pixel data.", code="corrupt_image")
    _infer_transfer_syntax(dataset)
    modality = _modality(dataset)
    if modality and modality != "CT" and not options.allow_non_ct:
        shown = modality if re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality) else "non-CT"  # echo only a valid code
        raise NotACTSliceError(f"This DICOM is a {shown} image; the models read CT only.", code="not_ct_modality")
    check_dimensions(columns, rows, limits)
    if not 1 <= frames <= MAX_FRAMES or rows * columns * frames > limits.max_pixels * 4:
        raise NotACTSliceError(f"The DICOM declares {frames} frames; at most {MAX_FRAMES}.", code="too_many_pixels")
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise UnsupportedFormatError("Only single-channel (grayscale) DICOM images are supported.")
    return dataset, frames


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


def _pixels(dataset, index: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(dataset, index=index)
    except (NotImplementedError, RuntimeError) as error:
        syntax = (getattr(dataset, "file_meta", None) or {}).get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedFormatError(
            f"This DICOM uses the '{name}' transfer syntax, which this service cannot decode."
        ) from error
    except (ValueError, TypeError, AttributeError, EOFError, KeyError, IndexError) as error:
        raise MalformedInputError("The DICOM pixel data is corrupt.", code="corrupt_image") from error


def _window(pixels: np.ndarray, dataset, window: dict[str, float]) -> Image.Image:
    from pydicom.pixels import apply_modality_lut

    # Without RescaleSlope/Intercept the stored values are taken as HU already.
    hounsfield = apply_modality_lut(pixels, dataset).astype(np.float32)
    low = window["center"] - window["width"] / 2
    scaled = (np.clip(hounsfield, low, low + window["width"]) - low) * (255.0 / window["width"])
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 255.0 - scaled  # MONOCHROME1 shows low values as white
    image = Image.fromarray((scaled + 0.5).astype(np.uint8))
    reject_blank(image)
    return image


def decode_dicom(
    data: bytes, limits: ImageLimits = DEFAULT_LIMITS, options: DicomOptions | None = None
) -> DecodedImage:
    """Decode one DICOM frame to an 8-bit grayscale image through a HU window.

    Raises:
        MalformedInputError: not parseable as DICOM, no pixel data, or no such frame.
        UnsupportedFormatError: a compressed transfer syntax with no decoder installed, or colour.
        NotACTSliceError: not CT, too small, too many pixels, or blank after windowing.
    """
    options = options or DicomOptions()
    dataset, frames = _read(data, limits, options)
    frame = frames // 2 if options.frame is None else options.frame
    if not 0 <= frame < frames:
        raise MalformedInputError(f"Frame {frame} does not exist; the file has {frames}.", code="frame_out_of_range")
    window = dict(options.window or LUNG_WINDOW)
    image = _window(_pixels(dataset, frame if frames > 1 else None), dataset, window)
    meta = {"frame": frame, "frames": frames, "modality": _modality(dataset)}
    return DecodedImage(image=image, format="DICOM", window=window, meta=meta)


def decode_dicom_frames(
    data: bytes, limits: ImageLimits = DEFAULT_LIMITS, options: DicomOptions | None = None, max_frames: int = MAX_FRAMES
) -> list[DecodedImage]:
    """Every frame of a (multi-frame) DICOM, each windowed like :func:`decode_dicom`.

    Raises:
        PayloadTooLargeError: more than ``max_frames`` frames (decided from the header).
    """
    options = options or DicomOptions()
    dataset, frames = _read(data, limits, options)
    if frames > max_frames:
        raise PayloadTooLargeError(f"The DICOM holds {frames} frames; a study may hold at most {max_frames}.")
    window = dict(options.window or LUNG_WINDOW)
    return [
        DecodedImage(
            image=_window(_pixels(dataset, frame if frames > 1 else None), dataset, window),
            format="DICOM",
            window=window,
            meta={"frame": frame, "frames": frames, "modality": _modality(dataset)},
        )
        for frame in range(frames)
    ]
