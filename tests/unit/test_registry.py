"""The S3 registry and the model store, against moto's in-process S3."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import boto3
import botocore.config
import pytest
from helpers import MODEL_BUCKET, Clock, build_bundle, loaded_store, served_after

from lungscan.errors import InvalidBundleError, RegistryError
from lungscan.registry import bundles as registry
from lungscan.registry import keys as registry_keys
from lungscan.registry import model_store as serving
from lungscan.registry import pointer as registry_pointer

BUCKET = MODEL_BUCKET


def test_publish_writes_bundle_then_moves_pointer(s3, tmp_path):
    published = registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {
        "models/tiny/v1/model.h5",
        "models/tiny/v1/model.json",
        "models/tiny/history.json",
        "models/tiny/latest.json",
    }
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1" == published.version
    local = registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache")
    assert (local / "model.h5").read_bytes() == (tmp_path / "v1" / "model.h5").read_bytes()


INVALID_PUBLISHED = re.escape("models/tiny/v1/model.json is not a valid model.json")


@pytest.mark.parametrize("body", [b"{not json", b"[]", json.dumps({"name": "tiny", "version": "v1"}).encode()])
def test_a_published_model_json_that_does_not_parse_is_refused_as_an_invalid_bundle(s3, tmp_path, body):
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    s3.put_object(Bucket=BUCKET, Key="models/tiny/v1/model.json", Body=body)
    with pytest.raises(InvalidBundleError, match=INVALID_PUBLISHED):
        registry.read_published_metadata(s3, BUCKET, "tiny", "v1")
    with pytest.raises(InvalidBundleError, match=INVALID_PUBLISHED):
        registry.verify_published(s3, BUCKET, "tiny", "v1")
    with pytest.raises(InvalidBundleError, match=INVALID_PUBLISHED):
        registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupt_upload_is_rejected_and_leaves_nothing_behind(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    s3.put_object(Bucket=BUCKET, Key="models/tiny/v1/model.h5", Body=b"truncated")
    with pytest.raises(InvalidBundleError, match="sha256"):
        registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny" / "v1").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_store_swaps_in_a_new_version_after_the_refresh_interval(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    clock = Clock()
    store = loaded_store(s3, tmp_path / "cache", refresh_seconds=60, clock=clock)
    assert store.get().metadata.version == "v1"
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))
    assert served_after(store, clock, 59) == "v1"  # not yet due
    assert served_after(store, clock, 61) == "v2"
    assert store.sources == {"tiny": "registry"}
    registry_pointer.move_pointer(s3, BUCKET, "tiny", "v1", action="promote")  # rollback
    assert served_after(store, clock, 200) == "v1"


def test_store_keeps_serving_the_last_good_model(s3, tmp_path):
    baked = build_bundle(tmp_path / "baked", "baked")
    clock = Clock()
    store = loaded_store(s3, tmp_path / "cache", baked, refresh_seconds=1, clock=clock)  # no pointer: baked serves
    assert store.get().metadata.version == "baked"
    assert store.sources == {"tiny": "baked"}
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))
    s3.put_object(Bucket=BUCKET, Key="models/tiny/v2/model.h5", Body=b"corrupt")  # sha mismatch
    assert served_after(store, clock, 5) == "baked"
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=json.dumps({"version": "missing"}).encode())
    assert served_after(store, clock, 10) == "baked"
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=b"{not json")
    assert served_after(store, clock, 15) == "baked"


def test_unreachable_s3_at_cold_start_falls_back_to_the_baked_model(tmp_path):
    baked = build_bundle(tmp_path / "baked", "baked")
    config = botocore.config.Config(connect_timeout=0.5, read_timeout=0.5, retries={"max_attempts": 1})
    unreachable = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=config,
    )
    store = loaded_store(unreachable, tmp_path / "cache", baked)
    assert store.get().metadata.version == "baked"


def test_a_tampered_cached_copy_is_downloaded_again(s3, tmp_path):
    original = build_bundle(tmp_path / "v1", "v1")
    registry.publish_bundle(s3, BUCKET, original)
    local = registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache")
    (local / "model.h5").write_bytes(b"tampered")
    assert registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache") == local
    assert (local / "model.h5").read_bytes() == (original / "model.h5").read_bytes()


def test_every_pointer_move_is_recorded_before_the_pointer(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))
    registry_pointer.move_pointer(s3, BUCKET, "tiny", "v1", action="promote")
    moves = [(e["action"], e["version"], e["previous"]) for e in registry_pointer.read_history(s3, BUCKET, "tiny")]
    assert moves == [("publish", "v1", None), ("publish", "v2", "v1"), ("promote", "v1", "v2")]
    assert registry_pointer.list_versions(s3, BUCKET, "tiny") == ["v1", "v2"]
    assert registry_pointer.list_names(s3, BUCKET) == ["tiny"]


def test_history_is_written_before_the_pointer(s3, tmp_path):
    order = []

    class Recording:
        def put_object(self, **kwargs):
            order.append(kwargs["Key"])
            return s3.put_object(**kwargs)

        def __getattr__(self, name):
            return getattr(s3, name)

    registry_pointer.move_pointer(Recording(), BUCKET, "tiny", "v1", action="promote")
    assert order == ["models/tiny/history.json", "models/tiny/latest.json"]


def test_rollback_target_follows_the_stack_of_moves():
    history = [
        {"action": "publish", "version": "v1"},
        {"action": "publish", "version": "v2"},
        {"action": "promote", "version": "v1"},
        {"action": "publish", "version": "v3"},
        {"action": "rollback", "version": "v1"},
    ]
    assert registry_pointer.version_stack(history) == ["v1", "v2", "v1"]
    assert registry_pointer.rollback_target(history, "v1") == "v2"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry_pointer.rollback_target(history[:1], "v1")
    with pytest.raises(RegistryError, match=r"no latest\.json"):
        registry_pointer.rollback_target(history, None)
    with pytest.raises(RegistryError, match="outside the registry tools"):
        registry_pointer.rollback_target(history, "v3")


def test_a_missing_pointer_reads_as_none_and_an_empty_history(s3):
    assert registry_pointer.current_version(s3, BUCKET, "tiny") is None
    assert registry_pointer.read_history(s3, BUCKET, "tiny") == []
    with pytest.raises(s3.exceptions.NoSuchKey):
        registry_pointer.latest_version(s3, BUCKET, "tiny")


# ---------------------------------------------------------------- refresh in the background


class BlockingS3:
    """A moto client whose get_object waits until ``release`` is set (a slow S3 on demand)."""

    def __init__(self, client) -> None:
        self._client = client
        self.block = False
        self.release = threading.Event()
        self.gets = 0

    def get_object(self, **kwargs):
        self.gets += 1
        if self.block:
            self.release.wait(timeout=60)
        return self._client.get_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_request_never_waits_for_a_refresh(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    slow = BlockingS3(s3)
    clock = Clock()
    store = loaded_store(slow, tmp_path / "cache", refresh_seconds=60, clock=clock)
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))
    slow.block = True
    clock.now = 61
    answered = []
    request = threading.Thread(target=lambda: answered.append(store.get().metadata.version), daemon=True)
    request.start()
    request.join(timeout=30)  # S3 stays blocked all that time: only a request that does not wait answers
    assert answered == ["v1"]
    assert not store.wait_for_refresh(timeout=0)  # the refresh is still waiting on S3
    assert store.get().metadata.version == "v1"  # later requests do not start a second one either
    slow.release.set()
    assert store.wait_for_refresh(timeout=60)
    assert store.get().metadata.version == "v2"


def test_zero_refresh_seconds_reads_the_registry_at_cold_start_only(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    counting = BlockingS3(s3)
    clock = Clock()
    store = loaded_store(counting, tmp_path / "cache", refresh_seconds=0, clock=clock)
    assert store.get().metadata.version == "v1"
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))
    reads = counting.gets
    for now in (1, 1000, 10**6):
        assert served_after(store, clock, now) == "v1"
    assert counting.gets == reads  # no request touched S3


def test_a_bundle_published_under_another_version_is_refused_once(s3, tmp_path, monkeypatch):
    """latest.json says v9 but its model.json says v1: refused, and not loaded again at every refresh."""
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    for file in ("model.h5", "model.json"):
        s3.copy_object(Bucket=BUCKET, Key=f"models/tiny/v9/{file}", CopySource=f"{BUCKET}/models/tiny/v1/{file}")
    s3.put_object(Bucket=BUCKET, Key=registry_keys.pointer_key("tiny"), Body=json.dumps({"version": "v9"}).encode())
    baked = build_bundle(tmp_path / "baked", "baked")
    loads = []
    real_classifier = serving.Classifier
    monkeypatch.setattr(serving, "Classifier", lambda path: loads.append(Path(path).name) or real_classifier(path))
    clock = Clock()
    store = loaded_store(s3, tmp_path / "c", baked, refresh_seconds=1, clock=clock)
    assert store.wait_for_refresh(timeout=60)
    downloads = []
    real_download = s3.download_file
    monkeypatch.setattr(
        s3, "download_file", lambda *args, **kw: downloads.append(args[1]) or real_download(*args, **kw)
    )
    for now in (5, 10, 15):
        assert served_after(store, clock, now) == "baked"
    assert loads == ["baked"]  # v9 was never loaded as a model, let alone once per refresh
    assert downloads == []  # nor downloaded again: the pointer has not moved since it was refused
    monkeypatch.setattr(s3, "download_file", real_download)
    with pytest.raises(InvalidBundleError, match="describes tiny v1"):
        registry.download_bundle(s3, BUCKET, "tiny", "v9", tmp_path / "other")
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))  # the pointer moves: tried again
    assert served_after(store, clock, 20) == "v2"


# ---------------------------------------------------------------- names and versions


@pytest.mark.parametrize("version", ["..", ".", "a/b", "", "-v1", "v1\n"])
def test_a_pointer_with_an_invalid_version_touches_nothing(s3, tmp_path, version):
    cache = tmp_path / "parent" / "cache"
    (cache / "tiny").mkdir(parents=True)
    sentinels = [tmp_path / "parent" / "keep", cache / "keep", cache / "tiny" / "keep"]
    for sentinel in sentinels:
        sentinel.write_text("x")
    s3.put_object(Bucket=BUCKET, Key=registry_keys.pointer_key("tiny"), Body=json.dumps({"version": version}).encode())
    with pytest.raises(InvalidBundleError, match="invalid version"):
        registry_pointer.latest_version(s3, BUCKET, "tiny")
    with pytest.raises(RegistryError, match="invalid version"):
        registry.download_bundle(s3, BUCKET, "tiny", version, cache)
    store = loaded_store(s3, cache, build_bundle(tmp_path / "baked", "baked"))
    assert store.wait_for_refresh(timeout=60)
    assert store.get().metadata.version == "baked"
    assert all(sentinel.read_text() == "x" for sentinel in sentinels)


@pytest.mark.parametrize(("name", "version"), [("tiny", ".."), ("..", "v1"), ("Tiny", "v1"), ("tiny", "v/1")])
def test_keys_are_built_only_from_valid_names_and_versions(name, version):
    with pytest.raises(RegistryError):
        registry_keys.version_prefix(name, version)
    with pytest.raises(RegistryError):
        registry_pointer.move_pointer(None, BUCKET, name, version, action="set")


# ---------------------------------------------------------------- concurrent publishers


def test_concurrent_pointer_moves_never_lose_a_history_entry(s3, tmp_path):
    """Another publisher writes history.json between our read and our write: S3 refuses ours, we append again."""
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))

    class RacingS3:
        raced = False

        def put_object(self, **kwargs):
            if kwargs["Key"] == registry_keys.history_key("tiny") and not self.raced:
                self.raced = True
                registry_pointer.move_pointer(s3, BUCKET, "tiny", "v1", action="promote", note="the other publisher")
            return s3.put_object(**kwargs)

        def __getattr__(self, name):
            return getattr(s3, name)

    racing = RacingS3()
    registry_pointer.move_pointer(racing, BUCKET, "tiny", "v1", action="set", note="us")
    assert racing.raced
    notes = [entry.get("note") for entry in registry_pointer.read_history(s3, BUCKET, "tiny")]
    assert notes == [None, "the other publisher", "us"]


def test_history_is_written_only_if_unchanged(s3):
    calls = []

    class Recording:
        def put_object(self, **kwargs):
            calls.append({key: value for key, value in kwargs.items() if key.startswith("If")})
            return s3.put_object(**kwargs)

        def __getattr__(self, name):
            return getattr(s3, name)

    registry_pointer.move_pointer(Recording(), BUCKET, "tiny", "v1", action="set")
    first = s3.head_object(Bucket=BUCKET, Key=registry_keys.history_key("tiny"))["ETag"]
    registry_pointer.move_pointer(Recording(), BUCKET, "tiny", "v2", action="set")
    history, pointer = calls[0::2], calls[1::2]
    assert history == [{"IfNoneMatch": "*"}, {"IfMatch": first}]  # created once, then only over what was read
    assert pointer == [{}, {}]


def test_listing_skips_folders_that_are_not_valid_names_or_versions(s3, tmp_path):
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    for key in ("models/Not A Name/v1/model.json", "models/tiny/-stray/model.json"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    assert registry_pointer.list_names(s3, BUCKET) == ["tiny"]
    assert registry_pointer.list_versions(s3, BUCKET, "tiny") == ["v1"]
