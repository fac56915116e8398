"""Shared fixtures: the bundled model, a Lambda context, moto's S3, a test image.

Plain helpers (images, events, tiny bundles...) live in ``helpers.py``. The repository root and
``functions/classifier`` (the function's flat modules: ``import app``) are on the path through
pyproject.toml's ``pythonpath``, not through this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import BUNDLED_MODEL, MODEL_BUCKET, ct_like_image, encode

from infrastructure.emulation import LambdaContext, standin_bundle

# The handler reads its configuration at import: set it before any test imports app.py.
os.environ.setdefault("MODEL_DIR", str(BUNDLED_MODEL))
# The handler's unit tests serve the 3-class bundle (its three classes exercise every tier); a deployed
# function's default is the screening model (app.py, template.yaml).
os.environ.setdefault("MODEL_NAME", BUNDLED_MODEL.name)
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "classifier")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "LungScan")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("MODEL_BUCKET", None)  # unit tests never reach a real registry


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


@pytest.fixture
def ct_png() -> bytes:
    return encode(ct_like_image())


@pytest.fixture(scope="session")
def model_bundle_dir(tmp_path_factory) -> Path:
    """The committed default bundle when it is complete, else a tiny stand-in built once per session."""
    if (BUNDLED_MODEL / "model.h5").is_file() and (BUNDLED_MODEL / "model.json").is_file():
        return BUNDLED_MODEL
    return standin_bundle(tmp_path_factory.mktemp("bundle") / "iq-oth-3class")
