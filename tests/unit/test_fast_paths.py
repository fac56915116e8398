"""What the faster serving path (issue 25) must keep: the same crop without scipy, the gate's features of
before (version 1) and close to them on the shared thumbnail (version 2), its parameters stored compactly.
The batch entry, one run for explain and the imports at init: ``test_batch.py``.

No wall-clock time is asserted here: the figures live in ``benchmarks/bench_predict.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import BUNDLED_MODEL, FIXTURES_DIR, ct_like_image, hand_made_spec
from PIL import Image, ImageDraw

from lungscan.bundle.store import read_metadata
from lungscan.model import gate, gate_features
from lungscan.model.regions import gaussian_blur, largest_region_box
from lungscan.model.transforms import CropToBody
from lungscan.uploads import decode_upload
from training.gate import generators as non_ct_generators

ndimage = pytest.importorskip("scipy.ndimage")  # the reference: what serving used before (training still has it)


def fixture_images() -> dict[str, Image.Image]:
    """The CT fixtures as served decodes them (the DICOM through the lung window)."""
    return {path.name: decode_upload(path.read_bytes()).image for path in sorted(FIXTURES_DIR.glob("ct_*"))}


# ---------------------------------------------------------------- the crop: numpy instead of scipy, same boxes


def test_the_gaussian_blur_is_scipys_to_the_bit():
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (2, 7), (5, 3), (9, 17), (40, 128), (128, 128), (128, 96)]  # smaller than the kernel too
    for height, width in shapes:
        for values in (
            rng.random((height, width), dtype=np.float32),
            (rng.random((height, width)) < 0.4).astype(np.float32),  # a thresholded density
            (np.round(rng.random((height, width)) * 16) / 16).astype(np.float32),
        ):
            np.testing.assert_array_equal(gaussian_blur(values, 2.0), ndimage.gaussian_filter(values, 2.0))


def scipy_largest_region_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """What CropToBody computed with scipy: the first largest 4-connected region's bounding box."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum_labels(mask, labels, range(1, count + 1))))
    rows, cols = np.nonzero(labels == largest)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def test_the_largest_region_is_scipys():
    rng = np.random.default_rng(1)
    masks = [np.zeros((5, 5), bool), np.ones((3, 4), bool), np.eye(6, dtype=bool)]  # empty, one region, diagonal
    twins = np.zeros((8, 12), bool)
    twins[1:4, 1:4] = twins[4:7, 7:10] = True  # two regions of equal size: the first in raster order wins
    masks.append(twins)
    snake = np.zeros((9, 9), bool)
    snake[::2, :] = True
    snake[1::4, -1] = snake[3::4, 0] = True  # one region winding over every row
    masks.append(snake)
    for _ in range(400):
        height, width = rng.integers(1, 80, 2)
        masks.append(rng.random((height, width)) < rng.choice([0.3, 0.5, 0.6, 0.8]))
    for mask in masks:
        assert largest_region_box(mask) == scipy_largest_region_box(mask)


def test_the_body_crop_finds_the_boxes_it_found_with_scipy():
    """Measured on every image of the shipped datasets too (at both background levels): all boxes equal."""
    images = [ct_like_image(size, seed=seed) for seed, size in ((0, 256), (1, 512), (2, 300), (3, 128))]
    images += [image.convert("L") for image in fixture_images().values()]
    crop = CropToBody()
    for image in images:
        for level in (10.0, 19.0):  # an export's black background; the lung window shows air at level 19
            width, height = image.size
            scale = crop.THUMBNAIL_SIDE / max(width, height)
            foreground = image.point(lambda value, level=level: 255 if value > level else 0)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            density = np.asarray(foreground.resize(size, Image.Resampling.BOX), np.float32) / 255.0
            region = scipy_largest_region_box(ndimage.gaussian_filter(density, 2.0) > crop.MIN_DENSITY)
            top, left, bottom, right = (value / scale for value in region)
            side = max(right - left, bottom - top, 1.0)
            x0, y0 = round((left + right - side) / 2), round((top + bottom - side) / 2)
            assert crop.body_box(image, level) == (x0, y0, x0 + round(side), y0 + round(side))


# ---------------------------------------------------------------- the gate: same features, compact parameters


def reference_gate_features(image: Image.Image) -> np.ndarray:
    """``lungscan.model.gate.gate_features`` as it was before issue 25 (one np.histogram per histogram,
    np.unique for the grey levels, the rings recomputed per image), kept to pin the faster version to it."""
    from lungscan.inputs.imaging import to_8bit

    size, rings, orientations = gate_features.GATE_SIZE, gate_features.RINGS, gate_features.ORIENTATIONS
    image = to_8bit(image)
    features: list[float] = []
    if image.mode == "RGB":
        small = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
        chroma = small.max(axis=2) - small.min(axis=2)
        features += [float(chroma.mean()) / 255.0, float((chroma > 24).mean())]
        grey_image = image.convert("L")
    else:
        features += [0.0, 0.0]
        grey_image = image
    original = np.asarray(grey_image)
    step = max(1, int(np.sqrt(original.size / 65536)))
    levels = np.unique(original[::step, ::step]).size / 256.0
    grey = np.asarray(grey_image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    histogram = np.histogram(grey, bins=16, range=(0.0, 1.0))[0] / grey.size
    fine_histogram = np.histogram(grey, bins=64, range=(0.0, 1.0))[0] / grey.size
    nonzero = fine_histogram[fine_histogram > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(64))
    features += histogram.tolist()
    features += [entropy, levels, float((grey < 0.12).mean()), float((grey > 0.88).mean())]
    ring = size // 10
    border = np.concatenate(
        [grey[:ring].ravel(), grey[-ring:].ravel(), grey[:, :ring].ravel(), grey[:, -ring:].ravel()]
    )
    quarter = size // 4
    features += [
        float(border.mean()),
        float((border < 0.12).mean()),
        float(grey[quarter:-quarter, quarter:-quarter].mean()),
    ]
    centre = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - centre, xx - centre) / (size / 2.0)
    ring_index = np.minimum((radius * rings / 1.42).astype(int), rings - 1)
    sums = np.bincount(ring_index.ravel(), weights=grey.ravel(), minlength=rings)
    counts = np.bincount(ring_index.ravel(), minlength=rings)
    features += (sums / np.maximum(counts, 1)).tolist()
    block = size // gate_features.THUMBNAIL
    features += (
        grey.reshape(gate_features.THUMBNAIL, block, gate_features.THUMBNAIL, block).mean(axis=(1, 3)).ravel().tolist()
    )
    block = size // gate_features.DARK_GRID
    dark = (grey < 0.12).astype(np.float32)
    features += (
        dark.reshape(gate_features.DARK_GRID, block, gate_features.DARK_GRID, block).mean(axis=(1, 3)).ravel().tolist()
    )
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / np.pi * orientations).astype(int), orientations - 1)
    orientation = np.bincount(bins.ravel(), weights=magnitude.ravel(), minlength=orientations)
    features += (orientation / max(float(orientation.sum()), 1e-9)).tolist()
    padded = np.pad(grey, 1, mode="edge")
    blurred = sum(padded[i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9.0
    mirrored = grey[:, ::-1]
    spread = float(grey.std())
    symmetry = float(((grey - grey.mean()) * (mirrored - mirrored.mean())).mean() / (spread**2)) if spread > 0 else 1.0
    features += [
        float(magnitude.mean()),
        float((magnitude < 0.002).mean()),
        float((magnitude > 0.15).mean()),
        float((grey - blurred).std()),
        float(np.median(np.abs(grey - blurred)[quarter:-quarter, quarter:-quarter])),
        symmetry,
    ]
    return np.asarray(features, dtype=np.float64)


def gate_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng
    images = {f"ct_like_{size}": ct_like_image(size, seed=size) for size in (128, 256, 300, 512, 1024)}
    images["ct_like_rgb"] = ct_like_image(320, seed=4, mode="RGB")
    images |= fixture_images()
    images["sixteen_bit"] = Image.fromarray(np.asarray(ct_like_image(256)).astype(np.uint16) * 257)
    images["flat"] = Image.new("L", (200, 100), 40)
    for kind in ("screenshot", "lung_cartoon", "radiograph", "noise_gaussian", "stripes", "gradient", "chart"):
        images[kind] = getattr(non_ct_generators, kind)(rng(7))
    drawing = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(drawing).ellipse((40, 30, 360, 270), fill=(0, 90, 180))
    images["drawing"] = drawing
    return images


@pytest.mark.parametrize("name", sorted(gate_images()))
def test_gate_features_are_those_of_before(name):
    """Version 1 (the bilinear thumbnail, what bundles fitted before still carry): within 1e-12 of the code it
    replaced (bit-identical here, and on every image of the shipped datasets when measured)."""
    image = gate_images()[name]
    np.testing.assert_allclose(gate.gate_features(image, 1), reference_gate_features(image), rtol=0, atol=1e-12)


def test_the_shared_thumbnail_moves_the_gate_features_little():
    """Version 2 reads the box thumbnail the crop shares: on CT slices every feature within 0.15 of version 1's and
    within 0.01 on average (the flat fraction moves most: a box mean smooths more; on 517 dataset and non-CT images
    the mean is 0.0036, and sharp synthetic stripes move their entropy by up to 0.45). The gate refit on them refuses
    0.0% of held-out CT as before, and 96.4% of the non-CT evaluation set (186 of 193; 96.9%, 187, on version 1)."""
    names = [name for name in gate_images() if name.startswith(("ct_", "sixteen"))]
    for name in names:
        image = gate_images()[name]
        moved = np.abs(gate.gate_features(image, 2) - gate.gate_features(image, 1))
        assert moved.max() < 0.15 and moved.mean() < 0.01, (name, gate.FEATURE_NAMES[int(moved.argmax())], moved.max())
    for bundle in sorted(BUNDLED_MODEL.parent.glob("*/model.json")):  # refit on version 2, gate and detector
        shipped = read_metadata(bundle.parent)
        assert shipped.gate.features_version == shipped.familiarity.image_features_version == gate.FEATURES_VERSION == 2


def test_the_box_thumbnails_are_pillows():
    from lungscan.model.thumbnail import SliceView, box_resize

    rng = np.random.default_rng(2)
    for factor in range(1, 10):
        for side in (128, 40, 7):
            grey = (rng.random((side * factor, side * factor)) * 256).astype(np.uint8)
            binary = ((rng.random(grey.shape) < 0.5) * 255).astype(np.uint8)
            for pixels in (grey, binary):
                expected = np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BOX))
                np.testing.assert_array_equal(box_resize(pixels, (side, side)), expected)
    for size in ((512, 512), (623, 512), (300, 300), (512, 801)):  # Pillow itself where the sides do not divide
        image = Image.fromarray((rng.random(size[::-1]) * 256).astype(np.uint8))
        view = SliceView(image)
        np.testing.assert_array_equal(view.gate_thumbnail, np.asarray(image.resize((128, 128), Image.Resampling.BOX)))
        for level in (10.0, 18.7):
            scale = 128 / max(size)
            thumb = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            mask = image.point(lambda value, level=level: 255 if value > level else 0)
            expected = np.asarray(mask.resize(thumb, Image.Resampling.BOX))
            np.testing.assert_array_equal(view.body_density(level), expected)


@pytest.mark.parametrize("version", gate_features.FEATURES_VERSIONS)
def test_a_batch_of_slices_gets_the_features_each_gets_alone(version):
    from lungscan.model.thumbnail import SliceView

    images = list(gate_images().values())
    rows = gate.gate_feature_rows([SliceView(image) for image in images], version)
    alone = np.stack([gate.gate_features(image, version) for image in images])
    np.testing.assert_array_equal(rows, alone)


def test_the_level_tables_are_numpys_histogram_bins():
    for bins, table in ((16, gate_features._BIN_16), (64, gate_features._BIN_64)):
        expected = [
            np.histogram(gate_features._GREY[level : level + 1], bins, range=(0.0, 1.0))[0].argmax()
            for level in range(256)
        ]
        assert table.tolist() == expected


def test_the_gate_is_stored_as_float32_and_read_in_either_form():
    spec = hand_made_spec()
    stored = json.loads(spec.model_dump_json())
    assert (
        set(stored["ct_precision"]) == {"shape", "float32"} and stored["ct_precision"]["shape"] == [len(spec.mean)] * 2
    )
    assert gate.GateSpec.model_validate(stored) == spec  # round trip
    assert gate.GateSpec.model_validate(spec.model_dump()) == spec  # lists of numbers, as older bundles wrote them
    shipped = json.loads((BUNDLED_MODEL / "model.json").read_text())["gate"]
    assert isinstance(shipped["hidden_weights"], dict) and len(json.dumps(shipped)) < 200_000  # was 478 KB
    for bad in ({"shape": [3], "float32": "AAAA"}, {"shape": [1], "float32": "not base64!"}, {"shape": [1]}):
        with pytest.raises(ValueError, match="packed array"):
            gate.GateSpec.model_validate({**stored, "mean": bad})


def test_the_gates_arrays_follow_its_fields():
    spec = hand_made_spec()
    features = np.zeros((1, len(gate.FEATURE_NAMES)))
    features[0, 0] = 2.0
    before = gate.gate_scores(features, spec)
    moved = spec.model_copy(update={"mean": [1.0] * len(spec.mean)})  # a replaced field is converted again
    assert not np.allclose(gate.gate_scores(features, moved)[1], before[1])
    np.testing.assert_allclose(gate.gate_scores(features, spec), before)  # the original keeps its own
    np.testing.assert_allclose(gate.gate_scores(features, moved)[1], gate.gate_scores(features, moved)[1])
    assert moved.arrays().mean.tolist() == [1.0] * len(spec.mean) and spec.arrays().mean.tolist() == spec.mean
