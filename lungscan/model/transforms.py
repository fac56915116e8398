"""Preprocessing as small transforms, built from a bundle's ``model.json``.

Training and serving both call :func:`build_preprocess` on the same configuration, so
there is exactly one implementation of what the model sees (train/serve skew is the
classic bug of this field). Each step records its name and parameters in the trace
``preprocess_image`` returns (``applied_operations``), so a test can check what was done to the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from lungscan.inputs.imaging import DecodedImage, to_8bit
from lungscan.model.regions import gaussian_blur, largest_region_box
from lungscan.model.thumbnail import THUMBNAIL_SIDE, SliceView


class Transform(Protocol):
    def __call__(self, data: dict) -> dict: ...


def _record(data: dict, name: str, **params: object) -> None:
    data.setdefault("applied_operations", []).append({"name": name, **params})


def _view(data: dict, box: tuple[int, int, int, int]) -> None:
    """Note that the image is now ``box`` of the previous one (before any resize, so in the upload's pixels).

    ``data["view"]`` is the region of the upload the model sees, (left, top, right, bottom); it may reach
    past the upload's edges (padding). The heatmap is drawn back onto the upload through it.
    """
    left, top, _, _ = data.get("view") or (0, 0, 0, 0)
    data["view"] = (left + box[0], top + box[1], left + box[2], top + box[3])


class ToColour:
    """Convert to 8-bit ``grayscale`` (1 channel) or ``rgb`` (3 channels).

    Grayscale by default: CT is single-channel, and colour is a shortcut (screenshot
    tints, JPEG vs PNG) that models learn instead of anatomy.
    """

    def __init__(self, colour: str) -> None:
        if colour not in ("grayscale", "rgb"):
            raise ValueError(f"colour must be 'grayscale' or 'rgb', not {colour!r}")
        self.colour = colour

    def __call__(self, data: dict) -> dict:
        image = to_8bit(data["image"])
        data["image"] = image.convert("L" if self.colour == "grayscale" else "RGB")
        _record(data, "ToColour", colour=self.colour)
        return data


class CropToBody:
    """Crop to a square around the patient's body, so the lungs fill more of the model's input.

    Exports such as IQ-OTH/NCCD's show the body small in a black field with the couch below it; at
    96x96 a nodule is then a few pixels. The body is the largest region of non-black pixels once they
    are smoothed into one blob (the couch and specks are separate regions), found on a thumbnail so
    the cost and the result do not depend on the upload's size. An image with no such region is left
    whole. The square may reach past the image's edges: PIL fills that with black, as padding does.
    """

    THUMBNAIL_SIDE = THUMBNAIL_SIDE  # the longer side of the thumbnail the body is found on (shared with the gate)
    BACKGROUND_LEVEL = 10  # 8-bit grey levels at or below this are background (air outside the body)
    # A DICOM's window may show air grey (the lung window maps -1000 HU to 60): there the background is
    # what the window makes of this, between air (-1000) and fat (-100); an export's air is black.
    BODY_HU = -500.0
    SMOOTHING_SIGMA = 2.0  # thumbnail pixels: joins a windowed slice's speckle into one body blob
    MIN_DENSITY = 0.05  # smoothed share of non-background pixels that counts as body

    def __call__(self, data: dict) -> dict:
        view = data.get("slice")  # the slice as the gate saw it: its thumbnails are computed once
        if view is None or view.size != data["image"].size:
            view = SliceView(data["image"])
        box = self.body_box(view, self.background_level(data.get("window")))
        if box is not None:
            data["image"] = data["image"].crop(box)
            _view(data, box)
        _record(data, "CropToBody", box=list(box) if box is not None else None)
        return data

    def background_level(self, window: dict[str, float] | None) -> float:
        """The 8-bit level at or below which a pixel is background, for an image shown through ``window``."""
        if window is None:
            return self.BACKGROUND_LEVEL
        low = window["center"] - window["width"] / 2
        return max(self.BACKGROUND_LEVEL, (self.BODY_HU - low) * 255.0 / window["width"])

    def body_box(self, image: Image.Image | SliceView, background_level: float) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom) of a square around the largest body-like region, or None."""
        view = image if isinstance(image, SliceView) else SliceView(image)
        width, height = view.size
        scale = self.THUMBNAIL_SIDE / max(width, height)
        density = view.body_density(background_level).astype(np.float32) / 255.0
        region = largest_region_box(gaussian_blur(density, self.SMOOTHING_SIGMA) > self.MIN_DENSITY)
        if region is None:
            return None
        top, left, bottom, right = (value / scale for value in region)
        side = max(right - left, bottom - top, 1.0)
        x0, y0 = round((left + right - side) / 2), round((top + bottom - side) / 2)
        return x0, y0, x0 + round(side), y0 + round(side)


class PadToSquare:
    """Pad the shorter side with black (centred) so that resizing keeps the aspect ratio.

    Stretching makes elongated screenshots and square exports look different to the model, a
    shortcut that does not carry to new sources; CT backgrounds are black, so black padding is
    what a wider field of view would show.
    """

    def __call__(self, data: dict) -> dict:
        image = data["image"]
        width, height = image.size
        side = max(width, height)
        if width != height:
            fill = 0 if image.mode == "L" else (0, 0, 0)
            canvas = Image.new(image.mode, (side, side), fill)
            x0, y0 = (side - width) // 2, (side - height) // 2
            canvas.paste(image, (x0, y0))
            data["image"] = canvas
            _view(data, (-x0, -y0, side - x0, side - y0))
        _record(data, "PadToSquare", side=side)
        return data


class Resize:
    """Resize to the model's input size (ignoring aspect ratio unless :class:`PadToSquare` ran first)."""

    def __init__(self, height: int, width: int, method: str = "bilinear") -> None:
        self.size = (int(width), int(height))
        self.method = method
        self.resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}[method]

    def __call__(self, data: dict) -> dict:
        data["image"] = data["image"].resize(self.size, self.resample)
        _record(data, "Resize", height=self.size[1], width=self.size[0], method=self.method)
        return data


class ScaleIntensity:
    """Turn the image into a float32 HxWxC array: ``pixels * scale + offset``."""

    def __init__(self, scale: float = 1.0 / 255.0, offset: float = 0.0) -> None:
        self.scale = float(scale)
        self.offset = float(offset)

    def __call__(self, data: dict) -> dict:
        pixels = np.asarray(data["image"], dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[..., np.newaxis]
        data["array"] = pixels * self.scale + self.offset
        _record(data, "ScaleIntensity", scale=self.scale, offset=self.offset)
        return data


class PercentileScale:
    """Float32 HxWxC array with the ``low``/``high`` percentiles of the image mapped to 0 and 1, clipped.

    Robust to the window/level and brightness of the export (another scanner, another viewer),
    where a fixed ``x/255`` passes those differences straight to the model.
    """

    def __init__(self, low: float = 1.0, high: float = 99.0) -> None:
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, not {low}, {high}")
        self.low, self.high = float(low), float(high)

    def __call__(self, data: dict) -> dict:
        pixels = np.asarray(data["image"], dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[..., np.newaxis]
        low, high = np.percentile(pixels, [self.low, self.high])
        span = max(float(high - low), 1.0)  # a flat image stays flat instead of dividing by ~0
        data["array"] = np.clip((pixels - low) / span, 0.0, 1.0).astype(np.float32)
        _record(data, "PercentileScale", low=self.low, high=self.high)
        return data


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, data: dict) -> dict:
        for transform in self.transforms:
            data = transform(data)
        return data


def build_preprocess(config: dict) -> Compose:
    """Build the preprocessing chain a bundle declares.

    Args:
        config: ``{"colour": "grayscale"|"rgb", "crop_to_body": bool, "pad_to_square": bool,
            "resize": {"height", "width", "method"}, "intensity": {"method": "fixed"|"percentile", "low", "high"},
            "normalisation": {"scale", "offset"}}`` (``model.json``'s ``preprocessing``). The defaults
            (no padding, fixed ``x * scale + offset``) are what bundles meant before those keys existed.
    """
    resize = config["resize"]
    normalisation = config.get("normalisation") or {}
    intensity = config.get("intensity") or {}
    steps: list[Transform] = [ToColour(config.get("colour", "grayscale"))]
    if config.get("crop_to_body", False):
        steps.append(CropToBody())
    if config.get("pad_to_square", False):
        steps.append(PadToSquare())
    steps.append(Resize(resize["height"], resize["width"], resize.get("method", "bilinear")))
    if intensity.get("method", "fixed") == "percentile":
        steps.append(PercentileScale(intensity.get("low", 1.0), intensity.get("high", 99.0)))
    else:
        steps.append(ScaleIntensity(normalisation.get("scale", 1.0 / 255.0), normalisation.get("offset", 0.0)))
    return Compose(steps)


def preprocess_image(
    decoded: DecodedImage, preprocess: Compose, view: SliceView | None = None
) -> tuple[np.ndarray, dict]:
    """Run ``preprocess`` on a decoded image; returns the HxWxC array and the trace: the operations and the
    ``view``, the region of the upload (left, top, right, bottom) the array shows.

    ``view``: the slice's :class:`SliceView` when the gate has looked at it already (its thumbnails are reused).
    """
    data: dict = {"image": decoded.image, "view": (0, 0, *decoded.image.size), "window": decoded.window, "slice": view}
    data = preprocess(data)
    return data["array"], {"applied_operations": data["applied_operations"], "view": data["view"]}
