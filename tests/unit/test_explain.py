"""Grad-CAM must point at what decides the class: a bright blob the model learned to find."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from lungscan.bundle.metadata import BundleMetadata, InputSpec, PreprocessingSpec, ResizeSpec
from lungscan.bundle.store import write_metadata
from lungscan.inputs.imaging import DecodedImage
from lungscan.model.classifier import Classifier
from lungscan.model.transforms import build_preprocess

SIZE = 32
BLOB_RADIUS = 3


def blob_image(rng, centre: tuple[int, int] | None) -> np.ndarray:
    """Dim noise; with a centre, a bright disc there (the only thing that decides the class)."""
    image = rng.uniform(0.0, 0.3, (SIZE, SIZE)).astype(np.float32)
    if centre is not None:
        rows, cols = np.ogrid[:SIZE, :SIZE]
        image[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= BLOB_RADIUS**2] = 1.0
    return image


def random_centre(rng) -> tuple[int, int]:
    return tuple(int(v) for v in rng.integers(BLOB_RADIUS + 1, SIZE - BLOB_RADIUS - 1, 2))


def sequential(input_shape) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


def functional(input_shape) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


@pytest.fixture(scope="module", params=[sequential, functional], ids=["sequential", "functional"])
def blob_bundle(request, tmp_path_factory):
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    labels = np.arange(400) % 2
    images = np.stack([blob_image(rng, random_centre(rng) if label else None) for label in labels])[..., np.newaxis]
    model = request.param((SIZE, SIZE, 1))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    bundle = tmp_path_factory.mktemp(request.param.__name__)
    model.save(bundle / "model.h5")  # through .h5 and back, as bundles are served
    write_metadata(
        bundle,
        BundleMetadata(
            name="blobs",
            version="v1",
            classes=["clear", "blob"],
            positive_classes=["blob"],
            input=InputSpec(height=SIZE, width=SIZE, channels=1, colour="grayscale"),
            preprocessing=PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=SIZE, width=SIZE)),
        ),
    )
    return bundle


def test_heatmap_peaks_on_the_blob(blob_bundle):
    classifier = Classifier(blob_bundle)
    rng = np.random.default_rng(123)
    hits = 0
    for _ in range(10):
        centre = random_centre(rng)
        pixels = np.uint8(blob_image(rng, centre) * 255)
        decoded = DecodedImage(image=Image.fromarray(pixels), format="PNG")
        prediction = classifier.classify(decoded, explain=True)
        assert prediction.label == "blob"
        array, _ = classifier.prepare(decoded)
        cam = classifier.gradcam(array, classifier.metadata.classes.index("blob"))
        cam = np.asarray(Image.fromarray(np.uint8(cam * 255)).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        hits += np.hypot(peak[0] - centre[0], peak[1] - centre[1]) <= BLOB_RADIUS + 2
    assert hits >= 9, f"the heatmap peaked on the blob in only {hits}/10 images"


def test_overlay_has_the_uploaded_size_and_a_requested_class(blob_bundle):
    classifier = Classifier(blob_bundle)
    image = Image.fromarray(np.uint8(blob_image(np.random.default_rng(1), (10, 20)) * 255)).resize((300, 200))
    prediction = classifier.classify(DecodedImage(image=image, format="PNG"), explain=True, explain_class="clear")
    assert prediction.explained_class == "clear"
    assert prediction.heatmap.size == (300, 200)
    assert prediction.heatmap.mode == "RGB"
    assert classifier.classify(DecodedImage(image=image, format="PNG")).heatmap is None


def hot_rows(overlay: Image.Image) -> np.ndarray:
    """Rows of an overlay on a black image where the map is hot (red over blue)."""
    pixels = np.asarray(overlay, np.int32)
    return np.flatnonzero((pixels[..., 0] - pixels[..., 2]).max(axis=1) > 40)


def test_overlay_is_drawn_where_the_model_looked_on_a_padded_or_cropped_input():
    from lungscan.model.explain import heatmap_overlay

    upload = Image.new("L", (200, 100))  # wide: padded to a 200x200 square, 50 rows of black above and below
    cam = np.zeros((4, 4), np.float32)
    cam[1, 2] = 1.0  # square rows 50-100 = the upload's rows 0-50
    rows = hot_rows(heatmap_overlay(upload, cam, view=(0, -50, 200, 150)))
    assert rows.size and rows.min() >= 0 and rows.max() < 55 and rows.max() > 40
    cam[1, 2], cam[0, 2] = 0.0, 1.0  # hot only over the padding: nothing of the upload is hot
    assert hot_rows(heatmap_overlay(upload, cam, view=(0, -50, 200, 150))).size == 0
    cam[0, 2] = 0.0
    cam[3, 0] = 1.0  # a crop's view: the map lies inside it, the rest of the upload stays cold
    rows = hot_rows(heatmap_overlay(upload, cam, view=(100, 20, 180, 100)))
    assert rows.min() >= 20 + 50 and rows.max() < 100


def test_classify_draws_a_padded_inputs_heatmap_inside_the_picture(blob_bundle):
    """The bundle's chain pads: the overlay must follow the padding, not stretch the square over the upload."""
    classifier = Classifier(blob_bundle)
    classifier.preprocess = build_preprocess(
        classifier.metadata.preprocessing.model_copy(update={"pad_to_square": True}).model_dump()
    )
    pixels = np.zeros((16, 32), np.float32)  # a wide upload: the blob near its top right
    rows, cols = np.ogrid[:16, :32]
    pixels[(rows - 3) ** 2 + (cols - 24) ** 2 <= 9] = 1.0
    image = Image.fromarray(np.uint8(pixels * 255)).resize((320, 160), Image.Resampling.NEAREST)
    overlay = classifier.classify(DecodedImage(image=image, format="PNG"), explain=True, explain_class="blob").heatmap
    heat = np.asarray(overlay, np.int32)
    redness = heat[..., 0] - heat[..., 2]
    hottest_rows, hottest_cols = np.nonzero(redness >= 0.9 * redness.max())
    peak_row, peak_col = hottest_rows.mean(), hottest_cols.mean()
    # On the blob, at row 30: the square's map stretched over the upload would put it at row ~55.
    assert abs(peak_row - 30) <= 12 and abs(peak_col - 240) <= 30, (peak_row, peak_col)
