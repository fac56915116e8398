"""Smoothing and connected regions of small masks, in numpy: what ``CropToBody`` needs to find the body.

Serving once imported ``scipy.ndimage`` for these two steps (about 0.2 s of every cold start, for a
128-pixel thumbnail). :func:`gaussian_blur` and :func:`largest_region_box` give bit for bit what
``scipy.ndimage.gaussian_filter(values, sigma)`` (mode ``reflect``, ``truncate`` 4) and
``scipy.ndimage.label`` with ``sum_labels`` give there (``tests/unit/test_fast_paths.py`` compares them),
so training and serving crop alike and the shipped models see the same pixels as before.
"""

from __future__ import annotations

from functools import cache

import numpy as np


@cache
def _gaussian_taps(sigma: float, truncate: float) -> tuple[int, tuple[float, ...]]:
    """scipy's kernel for ``gaussian_filter(sigma, truncate=truncate)``: its radius and its weights
    from the centre outwards (the kernel is symmetric)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    phi = phi / phi.sum()
    return radius, tuple(float(w) for w in phi[radius:])


def gaussian_blur(values: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """A 2D float32 array blurred by a Gaussian, edges mirrored (``d c b a | a b c d``).

    One axis after the other, each line accumulated in float64 from the outermost tap pair inwards
    and stored as float32 between the two passes: scipy's order of operations for a symmetric kernel,
    so the result is the same to the bit.
    """
    radius, weights = _gaussian_taps(float(sigma), float(truncate))
    out = np.asarray(values, dtype=np.float32)
    for _ in range(2):  # down the columns, then (transposed) along the rows
        length = out.shape[0]
        padded = np.pad(out.astype(np.float64), ((radius, radius), (0, 0)), mode="symmetric")
        total = padded[radius : radius + length] * weights[0]
        pair = np.empty_like(total)
        for j in range(radius, 0, -1):
            np.add(padded[radius - j : radius - j + length], padded[radius + j : radius + j + length], out=pair)
            pair *= weights[j]
            total += pair
        out = np.ascontiguousarray(total.astype(np.float32).T)
    return out


def largest_region_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), ends exclusive, of the largest 4-connected region of a 2D mask; None if empty.

    Of regions of equal size, the one met first in raster order (``scipy.ndimage.label``'s numbering,
    then the first ``argmax``). Regions are found on runs (row segments): a run joins the runs of the row
    above that it overlaps, and the runs' union-find is solved by hooking and pointer jumping in numpy.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    edges = np.zeros((height, width + 2), np.int8)
    edges[:, 1:-1] = mask
    steps = np.diff(edges, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)  # exclusive
    count = len(rows)
    if count == 0:
        return None
    stride = width + 1
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    # The runs of the row above that run k overlaps: a contiguous range [first, last) of run indices.
    above = (rows - 1) * stride
    first = np.searchsorted(end_keys, above + starts, side="right")
    last = np.searchsorted(start_keys, above + ends, side="left")
    links = np.maximum(last - first, 0)
    lower = np.repeat(np.arange(count), links)
    upper = np.repeat(first, links) + (np.arange(links.sum()) - np.repeat(np.cumsum(links) - links, links))
    parent = np.arange(count)
    while len(lower):
        a, b = parent[lower], parent[upper]
        if (a == b).all():
            break
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))  # hook the larger root under the smaller
        while True:  # jump until every run points at its root
            grand = parent[parent]
            if (grand == parent).all():
                break
            parent = grand
    # Roots are each region's first run in raster order; argmax takes the first of equal sizes.
    sizes = np.bincount(parent, weights=ends - starts, minlength=count)
    members = parent == int(np.argmax(sizes))
    region_rows = rows[members]
    return int(region_rows.min()), int(starts[members].min()), int(region_rows.max()) + 1, int(ends[members].max())
