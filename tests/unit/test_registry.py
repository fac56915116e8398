"""The S3 registry and the model store, against moto's in-process S3."""

from __future__ import annotations

import json

import boto3
import botocore.config
import pytest
from conftest import MODEL_BUCKET
from test_core import metadata, tiny_cnn

from lungscan import registry
from lungscan.bundle import write_metadata
from lungscan.errors import InvalidBundleError
from lungscan.serving import ModelStore

BUCKET = MODEL_BUCKET


def make_bundle(path, version: str):
    path.mkdir(parents=True, exist_ok=True)
    tiny_cnn((32, 32, 1), 3, "softmax").save(path / "model.h5")
    write_metadata(path, metadata(version=version))
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_publish_writes_bundle_then_moves_pointer(s3, tmp_path):
    published = registry.publish_bundle(s3, BUCKET, make_bundle(tmp_path / "v1", "v1"))
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {
        "models/tiny/v1/model.h5",
        "models/tiny/v1/model.json",
        "models/tiny/history.json",
        "models/tiny/latest.json",
    }
    assert registry.latest_version(s3, BUCKET, "tiny") == "v1" == published.version
    local = registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache")
    assert (local / "model.h5").read_bytes() == (tmp_path / "v1" / "model.h5").read_bytes()


def test_corrupt_upload_is_rejected_and_leaves_nothing_behind(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, make_bundle(tmp_path / "v1", "v1"))
    s3.put_object(Bucket=BUCKET, Key="models/tiny/v1/model.h5", Body=b"truncated")
    with pytest.raises(InvalidBundleError, match="sha256"):
        registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny" / "v1").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_store_swaps_in_a_new_version_after_the_refresh_interval(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, make_bundle(tmp_path / "v1", "v1"))
    clock = Clock()
    store = ModelStore("tiny", s3=s3, bucket=BUCKET, refresh_seconds=60, cache_dir=tmp_path / "cache", clock=clock)
    store.load()
    assert store.get().metadata.version == "v1"
    registry.publish_bundle(s3, BUCKET, make_bundle(tmp_path / "v2", "v2"))
    clock.now = 59
    assert store.get().metadata.version == "v1"  # not yet due
    clock.now = 61
    assert store.get().metadata.version == "v2"
    registry.set_latest(s3, BUCKET, "tiny", "v1")  # rollback
    clock.now = 200
    assert store.get().metadata.version == "v1"


def test_store_keeps_serving_the_last_good_model(s3, tmp_path):
    baked = make_bundle(tmp_path / "baked", "baked")
    clock = Clock()
    store = ModelStore(
        "tiny", baked, s3=s3, bucket=BUCKET, refresh_seconds=1, cache_dir=tmp_path / "cache", clock=clock
    )
    store.load()  # no pointer yet: the baked model serves
    assert store.get().metadata.version == "baked"
    registry.publish_bundle(s3, BUCKET, make_bundle(tmp_path / "v2", "v2"))
    s3.put_object(Bucket=BUCKET, Key="models/tiny/v2/model.h5", Body=b"corrupt")  # sha mismatch
    clock.now = 5
    assert store.get().metadata.version == "baked"
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=json.dumps({"version": "missing"}).encode())
    clock.now = 10
    assert store.get().metadata.version == "baked"
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=b"{not json")
    clock.now = 15
    assert store.get().metadata.version == "baked"


def test_unreachable_s3_at_cold_start_falls_back_to_the_baked_model(tmp_path):
    baked = make_bundle(tmp_path / "baked", "baked")
    config = botocore.config.Config(connect_timeout=0.5, read_timeout=0.5, retries={"max_attempts": 1})
    unreachable = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=config,
    )
    store = ModelStore("tiny", baked, s3=unreachable, bucket=BUCKET, cache_dir=tmp_path / "cache")
    store.load()
    assert store.get().metadata.version == "baked"


def test_a_tampered_cached_copy_is_downloaded_again(s3, tmp_path):
    original = make_bundle(tmp_path / "v1", "v1")
    registry.publish_bundle(s3, BUCKET, original)
    local = registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache")
    (local / "model.h5").write_bytes(b"tampered")
    assert registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache") == local
    assert (local / "model.h5").read_bytes() == (original / "model.h5").read_bytes()


def test_every_pointer_move_is_recorded_before_the_pointer(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, make_bundle(tmp_path / "v1", "v1"))
    registry.publish_bundle(s3, BUCKET, make_bundle(tmp_path / "v2", "v2"))
    registry.set_latest(s3, BUCKET, "tiny", "v1")
    moves = [(e["action"], e["version"], e["previous"]) for e in registry.read_history(s3, BUCKET, "tiny")]
    assert moves == [("publish", "v1", None), ("publish", "v2", "v1"), ("set", "v1", "v2")]
    assert registry.list_versions(s3, BUCKET, "tiny") == ["v1", "v2"]
    assert registry.list_names(s3, BUCKET) == ["tiny"]


def test_history_is_written_before_the_pointer(s3, tmp_path):
    order = []

    class Recording:
        def put_object(self, **kwargs):
            order.append(kwargs["Key"])
            return s3.put_object(**kwargs)

        def __getattr__(self, name):
            return getattr(s3, name)

    registry.move_pointer(Recording(), BUCKET, "tiny", "v1", action="promote")
    assert order == ["models/tiny/history.json", "models/tiny/latest.json"]


def test_rollback_target_follows_the_stack_of_moves():
    history = [
        {"action": "publish", "version": "v1"},
        {"action": "publish", "version": "v2"},
        {"action": "promote", "version": "v1"},
        {"action": "publish", "version": "v3"},
        {"action": "rollback", "version": "v1"},
    ]
    assert registry.version_stack(history) == ["v1", "v2", "v1"]
    assert registry.rollback_target(history, "v1") == "v2"
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback_target(history[:1], "v1")
    with pytest.raises(registry.RegistryError, match=r"no latest\.json"):
        registry.rollback_target(history, None)
    with pytest.raises(registry.RegistryError, match="outside the registry tools"):
        registry.rollback_target(history, "v3")


def test_a_missing_pointer_reads_as_none_and_an_empty_history(s3):
    assert registry.current_version(s3, BUCKET, "tiny") is None
    assert registry.read_history(s3, BUCKET, "tiny") == []
    with pytest.raises(s3.exceptions.NoSuchKey):
        registry.latest_version(s3, BUCKET, "tiny")
