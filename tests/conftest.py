"""Shared fixtures: the bundled model, a Lambda context, API Gateway events, test images."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for infrastructure/
from infrastructure.emulation import REPO_ROOT, LambdaContext, proxy_event, standin_bundle

BUNDLED_MODEL = REPO_ROOT / "models" / "iq-oth-3class"
EVENTS_DIR = REPO_ROOT / "events"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
MODEL_BUCKET = "lungscan-models-test"

# The handler reads its configuration at import: set it before any test imports app.py.
os.environ.setdefault("MODEL_DIR", str(BUNDLED_MODEL))
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "classifier")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "LungScan")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("MODEL_BUCKET", None)  # unit tests never reach a real registry
for path in (REPO_ROOT, REPO_ROOT / "functions" / "classifier"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture
def s3():
    """moto's in-process S3 holding an empty model bucket, MODEL_BUCKET."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=MODEL_BUCKET)
        yield client


@pytest.fixture(scope="session")
def app_module():
    """functions/classifier/app.py, imported once (it loads the bundled model at import)."""
    import app

    return app


def ct_like_image(size: int = 256, seed: int = 0, mode: str = "L") -> Image.Image:
    """A synthetic axial chest CT slice in a soft-tissue window: black air, the table, a body with a
    fat layer, ribs, spine and mediastinum, two dark lungs with vessels, and scanner noise.

    Realistic enough for the not-CT gate (flat ellipses with uniform noise are refused as drawings).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def ellipse(cx, cy, rx, ry):
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1

    pixels = np.full((size, size), 4.0)
    pixels[np.abs(yy - 0.9 - 0.15 * (xx - 0.5) ** 2) < 0.012] = 120  # the table
    pixels[ellipse(0.5, 0.52, 0.44, 0.33)] = 85  # subcutaneous fat
    pixels[ellipse(0.5, 0.52, 0.41, 0.3)] = 135  # muscle
    for angle in np.linspace(0.25, np.pi - 0.25, 8):  # ribs along the chest wall
        for side in (-1, 1):
            pixels[ellipse(0.5 + side * 0.37 * np.cos(angle), 0.52 - 0.27 * np.sin(angle) + 0.05, 0.02, 0.025)] = 225
    for cx in (0.3, 0.7):  # lungs, with vessels
        pixels[ellipse(cx, 0.5, 0.15, 0.22)] = 22
        for _ in range(int(rng.integers(15, 30))):
            vx, vy = cx + rng.uniform(-0.11, 0.11), 0.5 + rng.uniform(-0.17, 0.17)
            pixels[ellipse(vx, vy, rng.uniform(0.004, 0.012), rng.uniform(0.004, 0.012))] = rng.uniform(90, 150)
    pixels[ellipse(0.52, 0.47, 0.1, 0.13)] = 150  # heart and mediastinum
    pixels[ellipse(0.47, 0.4, 0.03, 0.03)] = 175  # aorta
    pixels[ellipse(0.5, 0.77, 0.045, 0.045)] = 230  # vertebra
    pixels[ellipse(0.5, 0.77, 0.025, 0.025)] = 140
    pixels += rng.normal(0, 7, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").filter(ImageFilter.GaussianBlur(0.6))
    return image.convert(mode) if mode != "L" else image


def encode(image: Image.Image, image_format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


@pytest.fixture
def ct_png() -> bytes:
    return encode(ct_like_image())


def make_event(
    method: str = "POST",
    path: str = "/predict",
    body: str | bytes | None = None,
    content_type: str | None = None,
    *,
    base64_body: bool = False,
    query: dict | None = None,
    headers: dict | None = None,
) -> dict:
    """An API Gateway REST proxy event (``infrastructure.emulation.proxy_event``) with a fixed request id.

    ``bytes`` go base64-encoded with ``base64_body``, else as latin-1 text: any byte reaches the handler.
    """
    headers = {**(headers or {}), **({"Content-Type": content_type} if content_type else {})}
    if isinstance(body, bytes) and not base64_body:
        body = body.decode("latin-1")
    return proxy_event(
        method, path, body=body, headers=headers, query=query, is_base64=base64_body, request_id="test-request-id"
    )


def load_event(name: str) -> dict:
    return json.loads((EVENTS_DIR / name).read_text())


@pytest.fixture(scope="session")
def model_bundle_dir(tmp_path_factory) -> Path:
    """The committed default bundle when it is complete, else a tiny stand-in built once per session."""
    if (BUNDLED_MODEL / "model.h5").is_file() and (BUNDLED_MODEL / "model.json").is_file():
        return BUNDLED_MODEL
    return standin_bundle(tmp_path_factory.mktemp("bundle") / "iq-oth-3class")
