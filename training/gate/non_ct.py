"""Images that are not CT slices: negatives to fit the not-CT gate, and a separate set to measure it.

``training_negatives`` draws from procedural generators (noise, stripes, gradients, text,
drawings, logos, a lung cartoon, charts, UI screenshots, synthetic X-ray radiographs and MR
slices, photo-like textures). ``evaluation_set`` is disjoint from it: the same generators on
another seed range, plus real images nothing was fitted on: scikit-image's sample photos and
drawings shipped in its wheel, and pydicom's bundled test files of other modalities (MR,
ultrasound, nuclear medicine, secondary capture), converted to 8-bit images so that they test
the gate and not the DICOM modality check.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from training.gate.generators import (
    chart,
    drawing,
    gradient,
    logo,
    lung_cartoon,
    mask,
    mr_slice,
    noise_gaussian,
    noise_uniform,
    photo_like,
    radiograph,
    screenshot,
    sparse_points,
    stripes,
    text_page,
    to_image,
    ultrasound,
)

Generator = Callable[[np.random.Generator], Image.Image]
EVALUATION_SEED = 1_000_000  # evaluation images are drawn from seeds no fitting seed reaches


def _package_images() -> dict[str, list[Image.Image]]:
    """Real pictures shipped in scikit-learn's and matplotlib's wheels (never in the evaluation set)."""
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(pixels) for pixels in load_sample_images().images]
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        with Image.open(matplotlib.cbook.get_sample_data(name, asfileobj=False)) as image:
            photos.append(image.convert("RGB"))
    mr_slice = matplotlib.cbook.get_sample_data("s1045.ima.gz", asfileobj=False)  # a 256x256 16-bit MR head slice
    with gzip.open(mr_slice) as stream:
        pixels = np.frombuffer(stream.read(), dtype="<u2").reshape(256, 256).astype(np.float32)
    return {"photo": photos, "mr": [to_image(pixels / pixels.max())]}


_PACKAGE_IMAGES: dict[str, list[Image.Image]] = {}


def _vary(image: Image.Image, rng: np.random.Generator, grey_chance: float) -> Image.Image:
    """A random crop, flip, rotation, gamma and blur of a real picture."""
    width, height = image.size
    keep = rng.uniform(0.5, 1.0)
    left, top = rng.uniform(0, 1 - keep) * width, rng.uniform(0, 1 - keep) * height
    image = image.crop((int(left), int(top), int(left + keep * width), int(top + keep * height)))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
    if rng.random() < grey_chance:
        image = image.convert("L")
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    image = to_image(pixels ** rng.uniform(0.6, 1.6))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def package_photo(rng):
    _PACKAGE_IMAGES.update(_PACKAGE_IMAGES or _package_images())
    photos = _PACKAGE_IMAGES["photo"]
    return _vary(photos[int(rng.integers(0, len(photos)))], rng, grey_chance=0.5)


def package_mr(rng):
    _PACKAGE_IMAGES.update(_PACKAGE_IMAGES or _package_images())
    image = _vary(_PACKAGE_IMAGES["mr"][0], rng, grey_chance=1.0)
    side = int(rng.integers(64, 512))
    return image.resize((side, side), Image.Resampling.BILINEAR)


GENERATORS: dict[str, Generator] = {
    "noise_uniform": noise_uniform,
    "noise_gaussian": noise_gaussian,
    "stripes": stripes,
    "gradient": gradient,
    "text": text_page,
    "drawing": drawing,
    "logo": logo,
    "lung_cartoon": lung_cartoon,
    "chart": chart,
    "screenshot": screenshot,
    "radiograph": radiograph,
    "mr": mr_slice,
    "photo_like": photo_like,
    "mask": mask,
    "ultrasound": ultrasound,
    "sparse_points": sparse_points,
    "package_photo": package_photo,
    "package_mr": package_mr,
}

# Kinds drawn only to fit on: they vary the same few real pictures, so a held-out copy would test nothing.
FITTING_ONLY = ("package_photo", "package_mr")


def generate(kind: str, count: int, seed: int) -> list[Image.Image]:
    """``count`` images of one kind, reproducibly from ``seed``."""
    rng = np.random.default_rng([seed, sorted(GENERATORS).index(kind)])
    return [GENERATORS[kind](rng) for _ in range(count)]


def training_negatives(per_kind: int = 40, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Non-CT images to fit on; ``seed`` must stay below ``EVALUATION_SEED``."""
    if seed >= EVALUATION_SEED:
        raise ValueError("training seeds must stay below the evaluation seed range")
    return [(kind, image) for kind in GENERATORS for image in generate(kind, per_kind, seed)]


# skimage.data images shipped inside the wheel (the others are downloaded on demand).
SKIMAGE_SAMPLES = {
    "astronaut": "photo",
    "coffee": "photo",
    "chelsea": "photo",
    "camera": "photo",
    "rocket": "photo",
    "motorcycle_left": "photo",
    "hubble_deep_field": "photo",
    "moon": "photo",
    "coins": "photo",
    "gravel": "photo",
    "grass": "photo",
    "brick": "photo",
    "clock_motion": "photo",
    "retina": "medical_photo",
    "cell": "microscopy",
    "ihc": "microscopy",
    "text": "text",
    "page": "text",
    "horse": "drawing",
    "logo": "logo",
    "chessboard_GRAY": "drawing",
    "chessboard_RGB": "drawing",
    "color": "drawing",
    "phantom": "drawing",
}

# pydicom's bundled test files that are images of other modalities (decodable without plugins).
PYDICOM_SAMPLES = {
    "MR_small.dcm": "mr",
    "examples_overlay.dcm": "mr",
    "JPEG2000.dcm": "nuclear_medicine",
    "examples_palette.dcm": "ultrasound",
    "examples_rgb_color.dcm": "ultrasound",
    "examples_jpeg2k.dcm": "ultrasound",
    "ExplVR_BigEnd.dcm": "ultrasound",
    "SC_rgb_jpeg_dcmd.dcm": "secondary_capture",
    "liver_1frame.dcm": "segmentation",
}


def skimage_samples() -> list[tuple[str, str, Image.Image]]:
    """(kind, name, image) for scikit-image's sample images that ship in its wheel."""
    import skimage.data

    folder = os.path.dirname(skimage.data.__file__)
    samples = []
    for name, kind in SKIMAGE_SAMPLES.items():
        matches = [file for file in os.listdir(folder) if os.path.splitext(file)[0] == name]
        if matches:
            with Image.open(os.path.join(folder, matches[0])) as image:
                samples.append((kind, name, image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()))
    return samples


def pydicom_samples() -> list[tuple[str, str, Image.Image]]:
    """(kind, name, image) for pydicom's bundled non-CT images, min..max scaled to 8 bits."""
    import pydicom
    import pydicom.data

    folder = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
    samples = []
    for name, kind in PYDICOM_SAMPLES.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path)
            pixels = dataset.pixel_array  # pydicom 3 converts YBR colour to RGB itself
            if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":
                from pydicom.pixels import apply_color_lut

                pixels = apply_color_lut(pixels, dataset)
        pixels = pixels.astype(np.float32)
        if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
            pixels = pixels[pixels.shape[0] // 2]
        scaled = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1e-6)
        samples.append((kind, name, to_image(scaled)))
    return samples


def evaluation_set(per_kind: int = 10) -> list[tuple[str, str, Image.Image]]:
    """(kind, name, image): generated kinds on evaluation seeds, then real package images."""
    generated = [
        (kind, f"{kind}_{index}", image)
        for kind in GENERATORS
        if kind not in FITTING_ONLY
        for index, image in enumerate(generate(kind, per_kind, EVALUATION_SEED))
    ]
    return generated + skimage_samples() + pydicom_samples()
