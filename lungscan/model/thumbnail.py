"""One look at a slice for the gate and the crop: its grey pixels and their 128-pixel box thumbnails.

The not-CT gate reads a 128x128 grey thumbnail of the slice and the body crop a 128-pixel thumbnail of
its foreground (pixels above the background level). Both are box means over the same blocks of the
same grey pixels, computed once per slice (:class:`SliceView`, shared by ``Classifier.classify`` with the
gate and the preprocessing chain): for a square slice whose side is a multiple of 128 (a CT slice is
512x512), in one numpy pass over the pixels, to the bit what Pillow's ``resize(size, BOX)`` gives
(``tests/unit/test_fast_paths.py`` compares them); by Pillow otherwise.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
from PIL import Image

from lungscan.inputs.imaging import to_8bit

THUMBNAIL_SIDE = 128
_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling (Resample.c)


def box_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's ``Image.resize(size, Image.Resampling.BOX)`` of 8-bit grey pixels (H, W), bit for bit.

    In numpy when a square image shrinks to a square by a whole factor f: Pillow then sums f pixels with
    one fixed-point weight, rounds to 8 bits along each row, then does the same down each column.
    """
    height, width = pixels.shape
    if height == width and size[0] == size[1] and size[0] > 0 and width % size[0] == 0 and width // size[0] <= 64:
        factor = width // size[0]
        if factor == 1:
            return pixels.copy()
        return _box_pass(_row_sums(pixels, factor), factor, axis=0).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))


def _row_sums(pixels: np.ndarray, factor: int) -> np.ndarray:
    """The first (horizontal) pass of :func:`box_resize`, rounded to 8 bits (in uint16)."""
    if factor == 4 and pixels.flags.c_contiguous:  # the 512x512 slice: four pixels are one 32-bit word
        words = pixels.view(np.uint32)
        pairs = (words & 0x00FF00FF) + ((words >> 8) & 0x00FF00FF)  # two sums of two bytes per word
        sums = ((pairs & 0xFFFF) + (pairs >> 16)).astype(np.uint16)
        return (sums + 2) >> 2
    return _box_pass(pixels.astype(np.uint16), factor, axis=1)


def _box_pass(values: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """One of Pillow's passes: sums of ``factor`` neighbours along ``axis`` times its fixed-point weight, rounded."""
    height, width = values.shape
    blocks = (
        values.reshape(height, width // factor, factor)
        if axis == 1
        else values.reshape(height // factor, factor, width)
    )
    parts = [blocks[:, :, phase] if axis == 1 else blocks[:, phase] for phase in range(factor)]
    sums = parts[0] + parts[1]  # at most 255 * factor: uint16
    for part in parts[2:]:
        sums += part
    if factor & (factor - 1) == 0:  # a power of two: the weight is exact, the rounding a shift
        return (sums + (factor >> 1)) >> (factor.bit_length() - 1)
    weight = int(0.5 + (1 << _PRECISION_BITS) / factor)  # Pillow's normalize_coeffs_8bpc
    rounded = (sums.astype(np.uint32) * weight + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS
    return rounded.astype(np.uint16)


class SliceView:
    """A decoded slice as the gate and the crop look at it, each part computed once, on first use."""

    def __init__(self, image: Image.Image) -> None:
        self.image = to_8bit(image)  # 8-bit L or RGB: what the decoder hands on
        self.size = self.image.size
        self._densities: dict[float, np.ndarray] = {}

    @cached_property
    def grey(self) -> np.ndarray:
        """The 8-bit grey pixels (H, W): the image itself, or its ITU-R 601 luma (``convert("L")``)."""
        return np.asarray(self.image if self.image.mode == "L" else self.image.convert("L"))

    @cached_property
    def gate_thumbnail(self) -> np.ndarray:
        """The grey pixels box-averaged to 128x128 (stretched when the slice is not square): the gate's view."""
        return box_resize(self.grey, (THUMBNAIL_SIDE, THUMBNAIL_SIDE))

    def body_density(self, background_level: float) -> np.ndarray:
        """The share of pixels above ``background_level`` in each cell of a thumbnail whose longer side is 128
        (aspect kept), as 8-bit levels (255: every pixel): the crop's view."""
        if background_level not in self._densities:
            height, width = self.grey.shape
            scale = THUMBNAIL_SIDE / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            # Grey levels are whole numbers: above the level is above its floor (compared as uint8, not as floats).
            floor = math.floor(background_level)
            if floor < 0:
                foreground = np.full(self.grey.shape, 255, np.uint8)
            else:
                foreground = (self.grey > min(floor, 255)).view(np.uint8)
                np.multiply(foreground, 255, out=foreground)
            self._densities[background_level] = box_resize(foreground, size)
        return self._densities[background_level]
