"""Decode uploaded bytes into a validated image, before any model sees it.

Every check that protects memory happens on the header, before pixels are allocated
(the byte limit before that, in ``lungscan.uploads.classify_upload``): the declared
dimensions (a 30000x30000 PNG is a few KB on the wire and 900 MB in memory).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from lungscan.errors import (
    MalformedInputError,
    NotACTSliceError,
    UnsupportedFormatError,
)
from lungscan.inputs.prescan import PNG_SIGNATURE, check_bmp_compression, check_jpeg_segments, check_png_chunks

# What Pillow's decoders raise on damaged files (fuzzing found them).
CORRUPT_FILE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    ZeroDivisionError,
)

# Pillow formats we accept; anything else (GIF, WebP, PDF...) is refused with a 415. Their plugins are imported
# with this module (the function's init): Image.open would otherwise import every Pillow plugin (~60 modules)
# on the first upload that is not a PNG, JPEG or BMP.
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
RASTER_PLUGINS = (PngImagePlugin, JpegImagePlugin, BmpImagePlugin, TiffImagePlugin)
Image.preinit()  # and the few Image.open loads on its first call anyway (GIF, PPM)
# A progressive JPEG has about 10 scans; libjpeg walks every pixel once per scan, so thousands
# of empty scans in a few KB cost seconds each. Counted from the bytes, before decoding.
MAX_JPEG_SCANS = 100
# 16-bit and float images are stretched between these percentiles, so one hot pixel cannot set the scale.
ROBUST_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what a single upload may be.

    A CT slice is typically 512x512; the bounds leave room for screenshots and
    high-resolution exports while refusing thumbnails and decompression bombs.
    """

    # Checked once, by lungscan.uploads.classify_upload; base64-encoded (x4/3) it still fits Lambda's 6 MB request.
    max_bytes: int = 4 * 1024 * 1024
    min_side: int = 32
    max_pixels: int = 4096 * 4096
    # Longer side over shorter side. Slices and their exports are at most ~2.6:1 in the datasets; a strip
    # such as 32x524288 passes max_pixels yet padding or cropping it to a square would allocate ~275 GB.
    max_aspect: float = 4.0
    # An image over this is decoded at reduced size (see reduce_to): the models read 96-128 px and an answer
    # shows at most 1024 px, so decoding 4096x4096 whole only costs seconds and hundreds of MB.
    max_decoded_pixels: int = 2048 * 2048


DEFAULT_LIMITS = ImageLimits()


class DecodedMeta(TypedDict, total=False):
    """What a decoder learnt about its input besides the pixels."""

    source_mode: str  # a raster image's Pillow mode before conversion to 8-bit
    frame: int  # DICOM: the frame decoded
    frames: int  # DICOM: the frames in the file
    modality: str  # DICOM: the Modality tag ("CT", "MR"...; "" when absent)


@dataclass
class DecodedImage:
    """A decoded, loaded image plus what the answer reports about the input."""

    image: Image.Image
    format: str
    window: dict[str, float] | None = None
    meta: DecodedMeta = field(default_factory=lambda: DecodedMeta())
    source_size: tuple[int, int] | None = None  # the upload's (width, height) when ``image`` is a reduced copy

    @property
    def width(self) -> int:
        """The upload's width (``image`` may be a reduced copy)."""
        return (self.source_size or self.image.size)[0]

    @property
    def height(self) -> int:
        """The upload's height (``image`` may be a reduced copy)."""
        return (self.source_size or self.image.size)[1]


_DATA_URL_PREFIX = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def decode_base64(text: str) -> bytes:
    """Decode base64 (standard alphabet, ``data:...;base64,`` prefix tolerated); the request's size
    bounds the text, ``lungscan.uploads.classify_upload`` the image's.

    Raises:
        MalformedInputError: not valid base64.
    """
    if not isinstance(text, str):
        raise MalformedInputError("The image must be a base64 string.", code="invalid_base64")
    text = _DATA_URL_PREFIX.sub("", text.strip(), count=1)
    text = "".join(text.split())  # line-wrapped base64 (MIME style) is common in scripts
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise MalformedInputError("The image is not valid base64.", code="invalid_base64") from error
    if not data:
        raise MalformedInputError("The image is empty.", code="empty_body")
    return data


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode PNG, JPEG, BMP or TIFF bytes (8/16-bit, float, grey, RGB, RGBA, palette) to 8-bit.

    An image over ``limits.max_decoded_pixels`` is decoded at reduced size: a JPEG by its decoder's DCT
    scaling (1/2, 1/4, 1/8: draft mode, which also skips most of the work), anything else reduced (a box
    filter) as soon as it is decoded, before any conversion. ``width`` and ``height`` stay the upload's.

    Raises:
        MalformedInputError: empty or corrupt (e.g. truncated) image data.
        UnsupportedFormatError: any other format, DICOM included (decoded by ``decode_upload``), or RLE BMP.
        NotACTSliceError: too small, too many pixels, scans, chunks or segments, non-finite or blank.
    """
    image = open_image(data, limits)
    image_format, source_size = image.format or "unknown", image.size
    factor = reduction_factor(*source_size, limits.max_decoded_pixels)
    if factor > 1 and image_format == "JPEG":
        image.draft(image.mode, (-(-source_size[0] // factor), -(-source_size[1] // factor)))
    try:
        image.load()
    except CORRUPT_FILE_ERRORS as error:
        raise MalformedInputError(f"The {image.format} file is corrupt or truncated.", code="corrupt_image") from error
    source_mode = image.mode
    reject_non_finite(image)
    if (reduced := reduce_to(image, limits.max_decoded_pixels)) is not image:
        image = reduced
        reject_non_finite(image)  # Pillow sums a float box in single precision: values near 3e38 overflow
    # The 8-bit image is what every later step sees; the blank check runs on it, since a
    # 16-bit or float image can be non-constant yet convert to a single grey.
    decoded = DecodedImage(
        image=to_8bit(image), format=image_format, source_size=source_size if image.size != source_size else None
    )
    decoded.meta["source_mode"] = source_mode
    reject_blank(decoded.image)
    return decoded


def open_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Open an image and check everything its header tells, before any pixel is decoded.

    Raises:
        as :func:`decode_image`, except the checks that need the pixels.
    """
    if not data:
        raise MalformedInputError("The image is empty.", code="empty_body")
    if data.startswith(PNG_SIGNATURE):
        check_png_chunks(data)  # Pillow reads the chunks before the image data as it opens the file
    elif data.startswith(b"\xff\xd8\xff"):
        check_jpeg_segments(data)  # likewise the marker segments before the first scan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise NotACTSliceError(
            "The image declares too many pixels to be a CT slice.", code="too_many_pixels"
        ) from error
    except UnidentifiedImageError as error:
        raise UnsupportedFormatError("Unsupported file type: send a PNG, JPEG, BMP, TIFF or DICOM CT slice.") from error
    except CORRUPT_FILE_ERRORS as error:  # a recognised format whose header is damaged
        raise MalformedInputError("The image header is corrupt or truncated.", code="corrupt_image") from error
    check_dimensions(image.width, image.height, limits)
    if image.format == "JPEG":
        check_jpeg_scans(data)
    if image.format == "BMP":
        check_bmp_compression(image.info)
    return image


def reduction_factor(width: int, height: int, max_pixels: int) -> int:
    """The smallest integer factor that brings ``width`` x ``height`` (each rounded up) within ``max_pixels``."""
    factor = 1
    while -(-width // factor) * -(-height // factor) > max_pixels:
        factor += 1
    return factor


def reduce_to(image: Image.Image, max_pixels: int) -> Image.Image:
    """``image`` reduced (each output pixel the mean of a factor x factor block) to at most ``max_pixels``;
    ``image`` itself when it is within. 16-bit and float images stay 16-bit and float (reduced, then stretched)."""
    factor = reduction_factor(image.width, image.height, max_pixels)
    if factor == 1:
        return image
    if image.mode.startswith("I;16"):
        image = image.convert("I")  # Pillow reduces 32-bit integers, not 16-bit
    elif image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        image = to_8bit(image)  # palette, 1-bit, CMYK...: reduced as the 8-bit image every later step sees
    return image.reduce(factor)


def check_jpeg_scans(data: bytes, max_scans: int = MAX_JPEG_SCANS) -> None:
    """Refuse a JPEG with more start-of-scan markers than any real encoder writes.

    Entropy-coded data stuffs every 0xFF with 0x00, so ``FF DA`` only appears as a marker
    (or inside an embedded thumbnail, which at worst over-counts a few).
    """
    scans = data.count(b"\xff\xda")
    if scans > max_scans:
        raise NotACTSliceError(
            f"The JPEG holds {scans} scans; at most {max_scans} are accepted.", code="too_many_scans"
        )


def reject_non_finite(image: Image.Image) -> None:
    """A float image with NaN or infinity has no meaningful grey scale: refuse it, never guess."""
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
        raise NotACTSliceError("The image holds non-finite pixel values (NaN or infinity).", code="non_finite_pixels")


def check_dimensions(width: int, height: int, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Refuse images that cannot be a CT slice, from the header alone."""
    if width * height > limits.max_pixels:
        raise NotACTSliceError(
            f"The image has {width}x{height} pixels; at most {limits.max_pixels} are accepted.",
            code="too_many_pixels",
        )
    if min(width, height) < limits.min_side:
        raise NotACTSliceError(
            f"The image is {width}x{height}; a CT slice is at least {limits.min_side}x{limits.min_side} pixels.",
            code="image_too_small",
        )
    if max(width, height) > limits.max_aspect * min(width, height):
        raise NotACTSliceError(
            f"The image is {width}x{height}; a CT slice is at most {limits.max_aspect:g} times as long as it is wide.",
            code="implausible_shape",
        )


def reject_blank(image: Image.Image) -> None:
    """A single-valued image carries no anatomy: refuse it rather than guess."""
    low, high = _extrema(image)
    if low == high:
        raise NotACTSliceError("The image is blank (every pixel has the same value).", code="empty_image")


def _extrema(image: Image.Image) -> tuple[float, float]:
    extrema = image.getextrema()
    if isinstance(extrema[0], tuple):  # one (min, max) per band
        return min(band[0] for band in extrema), max(band[1] for band in extrema)
    return extrema


def to_8bit(image: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit ``L`` or ``RGB``.

    16-bit and float images are stretched from their 0.5th to 99.5th percentile to 0..255
    (clipped): their absolute scale varies by exporter, an 8-bit copy is what the models
    train on, and percentiles keep a single hot pixel from setting the scale. An image
    whose percentiles coincide (nearly constant) falls back to its min..max.
    """
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        low, high = (float(value) for value in np.percentile(pixels, ROBUST_PERCENTILES))
        if not high > low:
            low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / max(high - low, 1e-6))
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    return image.convert("RGB")  # P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV
