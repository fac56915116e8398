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

from lungscan.imaging import DecodedImage, to_8bit


class Transform(Protocol):
    def __call__(self, data: dict) -> dict: ...


def _record(data: dict, name: str, **params: object) -> None:
    data.setdefault("applied_operations", []).append({"name": name, **params})


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


class Resize:
    """Resize to the model's input size, ignoring aspect ratio (as the original app did)."""

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
        config: ``{"colour": "grayscale"|"rgb", "resize": {"height", "width", "method"},
            "normalisation": {"scale", "offset"}}`` (``model.json``'s ``preprocessing``).
    """
    resize = config["resize"]
    normalisation = config.get("normalisation", {})
    return Compose(
        [
            ToColour(config.get("colour", "grayscale")),
            Resize(resize["height"], resize["width"], resize.get("method", "bilinear")),
            ScaleIntensity(normalisation.get("scale", 1.0 / 255.0), normalisation.get("offset", 0.0)),
        ]
    )


def preprocess_image(decoded: DecodedImage, preprocess: Compose) -> tuple[np.ndarray, dict]:
    """Run ``preprocess`` on a decoded image; returns the HxWxC array and the trace."""
    data = preprocess({"image": decoded.image})
    return data["array"], {"applied_operations": data["applied_operations"]}
