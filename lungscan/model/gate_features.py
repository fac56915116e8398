"""The not-CT gate's features: cheap statistics of a slice that separate CT slices from other pictures.

Colour (CT has none), the intensity histogram (a large dark mode of air), the dark border around the
body, the body's layout on an 8x8 grid and by ring from the centre, gradient orientations (charts and
screenshots are axis-aligned), flat areas (drawings), fine texture and noise in the middle of the
picture (CT has quantum noise; drawings have none) and left-right symmetry.

Everything but colour and the count of grey levels is read from one 128x128 grey thumbnail (version 2:
the box mean the crop shares, :class:`lungscan.model.thumbnail.SliceView`; version 1: a bilinear
resize, what gates fitted before carry); what only depends on its grey levels (histograms, dark and
bright fractions) from the thumbnail's 256-level histogram. :func:`gate_feature_rows` computes many
slices at once (the studies and archive workers' batches): each row is what :func:`gate_features` gives
that slice alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lungscan.model.thumbnail import THUMBNAIL_SIDE, SliceView

GATE_SIZE = THUMBNAIL_SIDE  # every image is looked at as a 128x128 grayscale copy (plus its colours)
THUMBNAIL = 8  # body layout: mean intensity over an 8x8 grid
DARK_GRID = 4  # where the dark (air) pixels are: the lungs inside the body, the air around it
RINGS = 6
ORIENTATIONS = 8
# 2: the grey thumbnail is a box mean (lungscan.model.thumbnail, shared with the crop); 1: Pillow's bilinear
# resize. A gate is scored on the features of its own version: bundles fitted before still load and answer alike.
FEATURES_VERSION = 2
FEATURES_VERSIONS = (1, 2)


def _feature_names() -> list[str]:
    names = ["chroma_mean", "chroma_fraction"]
    names += [f"histogram_{i}" for i in range(16)]
    names += ["entropy", "grey_levels", "dark_fraction", "bright_fraction"]
    names += ["border_mean", "border_dark_fraction", "centre_mean"]
    names += [f"ring_{i}" for i in range(RINGS)]
    names += [f"layout_{row}_{col}" for row in range(THUMBNAIL) for col in range(THUMBNAIL)]
    names += [f"dark_{row}_{col}" for row in range(DARK_GRID) for col in range(DARK_GRID)]
    names += [f"orientation_{i}" for i in range(ORIENTATIONS)]
    names += ["gradient_mean", "flat_fraction", "edge_fraction", "fine_texture", "centre_noise", "symmetry"]
    return names


FEATURE_NAMES = _feature_names()


def _level_table(values: np.ndarray, bins: int) -> np.ndarray:
    """For each 8-bit level, the bin ``np.histogram(values, bins, range=(0, 1))`` counts it in: on numpy's own edges,
    half-open bins and the last one closed (``tests/unit/test_fast_paths.py`` checks it against ``np.histogram``)."""
    edges = np.histogram_bin_edges(values, bins=bins, range=(0.0, 1.0))
    return np.minimum(np.searchsorted(edges, values, side="right") - 1, bins - 1)


# The thumbnail's grey levels as the features see them (float32 level / 255), and what each level counts towards:
# the histograms and fractions are sums over the thumbnail's 256-level histogram, the same numbers as over its pixels.
_GREY = np.arange(256, dtype=np.float32) / 255.0
_BIN_16 = _level_table(_GREY, 16)
_BIN_64 = _level_table(_GREY, 64)
_HISTOGRAMS = np.concatenate([np.eye(16)[_BIN_16], np.eye(64)[_BIN_64]], axis=1)  # level -> its two bins
_DARK = _GREY < 0.12
_DARK_LEVELS = int(np.argmin(_DARK))  # the dark levels are those below this one
_BRIGHT = _GREY > 0.88
_CENTRE = (GATE_SIZE - 1) / 2.0
_RADIUS = np.hypot(*(np.mgrid[0:GATE_SIZE, 0:GATE_SIZE] - _CENTRE)) / (GATE_SIZE / 2.0)
_RING_INDEX = np.minimum((_RADIUS * RINGS / 1.42).astype(int), RINGS - 1).ravel()
_RING_COUNTS = np.maximum(np.bincount(_RING_INDEX, minlength=RINGS), 1)


def gate_features(image: Image.Image | SliceView, version: int = FEATURES_VERSION) -> np.ndarray:
    """The features (F,) of one decoded image (8-bit or wider, grey or colour) or of its :class:`SliceView`."""
    return gate_feature_rows([image if isinstance(image, SliceView) else SliceView(image)], version)[0]


# Slices computed together: four thumbnails' float arrays stay in a core's cache; sixteen at once were slower per
# slice than one at a time (measured: ~0.9 ms a slice by four, ~1.5 ms by sixteen).
GROUP = 4


def gate_feature_rows(views: Sequence[SliceView], version: int = FEATURES_VERSION) -> np.ndarray:
    """The features (N, F) of N slices; row i is :func:`gate_features` of slice i alone."""
    if version not in FEATURES_VERSIONS:
        raise ValueError(f"gate features version {version} is not one of {FEATURES_VERSIONS}")
    if len(views) > GROUP:
        return np.concatenate([_rows(views[i : i + GROUP], version) for i in range(0, len(views), GROUP)])
    return _rows(views, version)


def _rows(views: Sequence[SliceView], version: int) -> np.ndarray:
    count = len(views)
    colour = np.array([_colour(view.image) for view in views], dtype=np.float64).reshape(count, 2)
    levels = np.array([_grey_levels(view.grey) for view in views], dtype=np.float64)
    if version == 1:
        resized = [
            Image.fromarray(view.grey).resize((GATE_SIZE, GATE_SIZE), Image.Resampling.BILINEAR) for view in views
        ]
        thumbnails = np.stack([np.asarray(image) for image in resized])
    else:
        thumbnails = np.stack([view.gate_thumbnail for view in views])
    grey = _GREY[thumbnails]  # (N, 128, 128) float32
    size = GATE_SIZE * GATE_SIZE
    offsets = np.arange(count)[:, None]

    counts = np.bincount((thumbnails.reshape(count, -1) + 256 * offsets).ravel(), minlength=256 * count)
    counts = counts.reshape(count, 256)
    histograms = (counts @ _HISTOGRAMS) / size  # whole counts: exact in float64
    histogram, fine_histogram = histograms[:, :16], histograms[:, 16:]
    entropy = np.array([-(row[row > 0] * np.log(row[row > 0])).sum() / np.log(64) for row in fine_histogram])
    dark_fraction = counts[:, _DARK].sum(axis=1) / size
    bright_fraction = counts[:, _BRIGHT].sum(axis=1) / size

    ring = GATE_SIZE // 10
    border = np.concatenate(
        [
            grey[:, :ring].reshape(count, -1),
            grey[:, -ring:].reshape(count, -1),
            grey[:, :, :ring].reshape(count, -1),
            grey[:, :, -ring:].reshape(count, -1),
        ],
        axis=1,
    )
    quarter = GATE_SIZE // 4
    centre_mean = grey[:, quarter:-quarter, quarter:-quarter].mean(axis=(1, 2))

    flat = grey.reshape(count, -1)
    ring_sums = np.bincount((_RING_INDEX + RINGS * offsets).ravel(), weights=flat.ravel(), minlength=RINGS * count)
    rings = ring_sums.reshape(count, RINGS) / _RING_COUNTS

    block = GATE_SIZE // THUMBNAIL
    layout = grey.reshape(count, THUMBNAIL, block, THUMBNAIL, block).mean(axis=(2, 4)).reshape(count, -1)
    block = GATE_SIZE // DARK_GRID
    dark = (thumbnails < _DARK_LEVELS).reshape(count, DARK_GRID, block, DARK_GRID, block).sum(axis=(2, 4))
    dark = dark / (block * block)

    gy, gx = _gradient(grey)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / np.pi * ORIENTATIONS).astype(np.intp), ORIENTATIONS - 1)
    orientation = np.bincount(
        (bins.reshape(count, -1) + ORIENTATIONS * offsets).ravel(),
        weights=magnitude.ravel(),
        minlength=ORIENTATIONS * count,
    ).reshape(count, ORIENTATIONS)
    orientation = orientation / np.maximum(orientation.sum(axis=1, keepdims=True), 1e-9)

    padded = np.empty((count, GATE_SIZE + 2, GATE_SIZE + 2), np.float32)  # the edge repeated
    padded[:, 1:-1, 1:-1] = grey
    padded[:, 0, 1:-1], padded[:, -1, 1:-1] = grey[:, 0], grey[:, -1]
    padded[:, :, 0], padded[:, :, -1] = padded[:, :, 1], padded[:, :, -2]
    blurred = padded[:, :GATE_SIZE, :GATE_SIZE].copy()  # the 3x3 mean
    for i, j in [(i, j) for i in range(3) for j in range(3)][1:]:
        blurred += padded[:, i : i + GATE_SIZE, j : j + GATE_SIZE]
    blurred /= 9.0
    residual = grey - blurred
    spread = grey.std(axis=(1, 2)).astype(np.float64)
    mirrored = grey[:, :, ::-1]
    centred = grey - grey.mean(axis=(1, 2))[:, None, None]
    covariance = (centred * (mirrored - mirrored.mean(axis=(1, 2))[:, None, None])).mean(axis=(1, 2))  # float32
    safe = np.where(spread > 0, spread, 1.0)
    symmetry = np.where(spread > 0, covariance / (safe**2).astype(np.float32), 1.0)  # in float32, as version 1 did
    noise = np.abs(residual[:, quarter:-quarter, quarter:-quarter]).reshape(count, -1)
    half = noise.shape[1] // 2  # an even count: np.median's mean of the two middle values, in float32
    centre_noise = np.partition(noise, [half - 1, half], axis=1)[:, [half - 1, half]].mean(axis=1)

    columns = [
        colour,
        histogram,
        entropy[:, None],
        levels[:, None],
        dark_fraction[:, None],
        bright_fraction[:, None],
        border.mean(axis=1)[:, None],
        (border < 0.12).mean(axis=1)[:, None],
        centre_mean[:, None],
        rings,
        layout,
        dark.reshape(count, -1),
        orientation,
        magnitude.mean(axis=(1, 2))[:, None],
        (magnitude < 0.002).mean(axis=(1, 2))[:, None],
        (magnitude > 0.15).mean(axis=(1, 2))[:, None],
        residual.std(axis=(1, 2))[:, None],
        # robust to edges: scanner noise inside the picture (drawings and cartoons have none)
        centre_noise[:, None],
        symmetry[:, None],
    ]
    rows = np.empty((count, len(FEATURE_NAMES)))
    start = 0
    for column in columns:
        rows[:, start : start + column.shape[1]] = column
        start += column.shape[1]
    return rows


def _gradient(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.gradient(grey, axis=(1, 2))`` of stacked thumbnails: central differences inside, one-sided at the edges."""
    gy, gx = np.empty_like(grey), np.empty_like(grey)
    np.subtract(grey[:, 2:], grey[:, :-2], out=gy[:, 1:-1])
    gy[:, 1:-1] /= 2.0
    np.subtract(grey[:, 1], grey[:, 0], out=gy[:, 0])
    np.subtract(grey[:, -1], grey[:, -2], out=gy[:, -1])
    np.subtract(grey[:, :, 2:], grey[:, :, :-2], out=gx[:, :, 1:-1])
    gx[:, :, 1:-1] /= 2.0
    np.subtract(grey[:, :, 1], grey[:, :, 0], out=gx[:, :, 0])
    np.subtract(grey[:, :, -1], grey[:, :, -2], out=gx[:, :, -1])
    return gy, gx


def _colour(image: Image.Image) -> tuple[float, float]:
    """Mean chroma and the share of clearly coloured pixels, on a 64x64 copy; (0, 0) for a grey image."""
    if image.mode != "RGB":
        return 0.0, 0.0
    small = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
    chroma = small.max(axis=2) - small.min(axis=2)
    return float(chroma.mean()) / 255.0, float((chroma > 24).mean())


def _grey_levels(grey: np.ndarray) -> float:
    """The share of the 256 grey levels used, in a sample of at most ~65,000 pixels (drawings use few)."""
    step = max(1, int(np.sqrt(grey.size / 65536)))
    sample = Image.fromarray(np.ascontiguousarray(grey[::step, ::step]))
    return (256 - sample.histogram().count(0)) / 256.0
