"""Faults around the registry: the function keeps serving the last good model through each."""

from __future__ import annotations

import errno
import json
import socket
import threading
from pathlib import Path

import boto3
import pytest
from conftest import MODEL_BUCKET
from test_core import metadata, tiny_cnn

from lungscan import registry
from lungscan.bundle import write_metadata
from lungscan.serving import ModelStore

BUCKET = MODEL_BUCKET


def bundle(path, version: str, outputs: int = 3, input_size: int = 32):
    path.mkdir(parents=True, exist_ok=True)
    tiny_cnn((input_size, input_size, 1), outputs, "softmax").save(path / "model.h5")
    write_metadata(path, metadata(version=version))  # claims 32x32 input, 3 classes
    return path


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def serving(s3, tmp_path):
    """A store serving v1 from the registry, refreshing every 10 s of a fake clock."""
    registry.publish_bundle(s3, BUCKET, bundle(tmp_path / "v1", "v1"))
    clock = Clock()
    store = ModelStore("tiny", s3=s3, bucket=BUCKET, refresh_seconds=10, cache_dir=tmp_path / "cache", clock=clock)
    store.load()
    assert store.get().metadata.version == "v1"
    return store, clock


@pytest.mark.parametrize(("outputs", "input_size"), [(4, 32), (3, 48)], ids=["wrong output", "wrong input"])
def test_a_model_with_the_wrong_shape_is_not_swapped_in(s3, tmp_path, serving, outputs, input_size):
    store, clock = serving
    registry.publish_bundle(s3, BUCKET, bundle(tmp_path / "v2", "v2", outputs=outputs, input_size=input_size))
    clock.now = 20
    assert store.get().metadata.version == "v1"


def test_a_full_tmp_keeps_the_current_model(s3, tmp_path, serving, monkeypatch):
    store, clock = serving
    registry.publish_bundle(s3, BUCKET, bundle(tmp_path / "v2", "v2"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s3, "download_file", disk_full)
    clock.now = 20
    assert store.get().metadata.version == "v1"
    assert not (tmp_path / "cache" / "tiny" / "v2").exists()
    monkeypatch.undo()  # space again: the next refresh succeeds
    clock.now = 40
    assert store.get().metadata.version == "v2"


def test_a_truncated_download_is_refused(s3, tmp_path, serving):
    store, clock = serving
    registry.publish_bundle(s3, BUCKET, bundle(tmp_path / "v2", "v2"))
    data = (tmp_path / "v2" / "model.h5").read_bytes()
    s3.put_object(Bucket=BUCKET, Key="models/tiny/v2/model.h5", Body=data[: len(data) // 2])
    clock.now = 20
    assert store.get().metadata.version == "v1"


def test_a_pointer_to_a_missing_version_is_ignored(s3, serving):
    store, clock = serving
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=json.dumps({"version": "gone"}).encode())
    clock.now = 20
    assert store.get().metadata.version == "v1"


def test_a_publish_is_never_half_visible(s3, tmp_path, serving, monkeypatch):
    """A reader refreshing after every object the publish writes sees v1 until the pointer moves."""
    store, clock = serving
    written = []
    real_put = s3.put_object

    def put_then_refresh(**kwargs):
        real_put(**kwargs)
        written.append(kwargs["Key"])
        clock.now += 20
        expected = "v2" if kwargs["Key"] == registry.pointer_key("tiny") else "v1"
        assert store.get().metadata.version == expected

    monkeypatch.setattr(s3, "put_object", put_then_refresh)
    monkeypatch.setattr(
        s3,
        "upload_file",
        lambda filename, bucket, key, **kw: put_then_refresh(Bucket=bucket, Key=key, Body=Path(filename).read_bytes()),
    )
    registry.publish_bundle(s3, BUCKET, bundle(tmp_path / "v2", "v2"))
    assert {"models/tiny/v2/model.h5", "models/tiny/v2/model.json"} <= set(written)
    assert written[-1] == registry.pointer_key("tiny")  # the pointer moves last


def test_slow_s3_at_cold_start_falls_back_within_the_timeouts(tmp_path, app_module):
    """An S3 that accepts connections and never answers: the app's client config gives up fast."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(listener.accept()) for _ in range(8)], daemon=True).start()
    config = app_module.REGISTRY_CLIENT_CONFIG.merge(boto3.session.Config(read_timeout=1))
    slow = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=config,
    )
    store = ModelStore("tiny", bundle(tmp_path / "baked", "baked"), s3=slow, bucket=BUCKET, cache_dir=tmp_path / "c")
    store.load()  # returns once the read timeout and retries are spent
    assert store.get().metadata.version == "baked"
    assert accepted, "the store never tried the registry"
    listener.close()
    production = app_module.REGISTRY_CLIENT_CONFIG
    assert (production.connect_timeout, production.read_timeout) == (2, 10)
    assert production.retries.get("max_attempts", production.retries.get("total_max_attempts", 99) - 1) == 2
