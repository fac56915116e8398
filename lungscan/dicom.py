"""DICOM CT slices: Hounsfield units, lung window, 8-bit image.

Only pixel-related tags are read. Patient tags are never copied into the result, so
nothing downstream can log or return them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lungscan.errors import MalformedInputError, UnsupportedFormatError
from lungscan.imaging import DEFAULT_LIMITS, DecodedImage, ImageLimits, check_dimensions, reject_blank

# The lung window radiologists read parenchyma in: -1350 .. +150 HU.
LUNG_WINDOW = {"center": -600.0, "width": 1500.0}


def decode_dicom(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    window: dict[str, float] | None = None,
) -> DecodedImage:
    """Decode one DICOM slice to an 8-bit grayscale image through a HU window.

    Args:
        data: the file's bytes.
        limits: size bounds, checked on the header before pixels are decoded.
        window: ``{"center": HU, "width": HU}``; the lung window by default.

    Raises:
        MalformedInputError: not parseable as DICOM, or no pixel data.
        UnsupportedFormatError: a compressed transfer syntax with no decoder installed.
        NotACTSliceError: too small, too many pixels, or blank after windowing.
    """
    import pydicom  # imported lazily: only DICOM uploads pay for it
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    window = window or LUNG_WINDOW
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (InvalidDicomError, AttributeError, ValueError, TypeError, EOFError, OSError) as error:
        raise MalformedInputError("The DICOM file is corrupt or has no image.", code="corrupt_image") from error
    if "PixelData" not in dataset:
        raise MalformedInputError("The DICOM file has no pixel data.", code="corrupt_image")
    check_dimensions(columns, rows, limits)
    try:
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as error:
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedFormatError(
            f"This DICOM uses the '{name}' transfer syntax, which this service cannot decode."
        ) from error
    except (ValueError, TypeError, AttributeError, EOFError) as error:
        raise MalformedInputError("The DICOM pixel data is corrupt.", code="corrupt_image") from error
    if pixels.ndim == 3 and dataset.get("SamplesPerPixel", 1) == 1:
        pixels = pixels[pixels.shape[0] // 2]  # multi-frame: the middle frame
    if pixels.ndim != 2:
        raise UnsupportedFormatError("Only single-channel (grayscale) DICOM images are supported.")
    hounsfield = apply_modality_lut(pixels, dataset).astype(np.float32)
    low = window["center"] - window["width"] / 2
    scaled = (np.clip(hounsfield, low, low + window["width"]) - low) * (255.0 / window["width"])
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 255.0 - scaled  # MONOCHROME1 shows low values as white
    image = Image.fromarray((scaled + 0.5).astype(np.uint8))
    reject_blank(image)
    return DecodedImage(image=image, format="DICOM", window=dict(window), meta={"source_mode": "DICOM"})
