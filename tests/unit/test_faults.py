"""Faults around the registry: the function keeps serving the last good model through each."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers import MODEL_BUCKET, Clock, build_bundle, loaded_store, served_after, tiny_cnn

from lungscan.registry import bundles as registry
from lungscan.registry import keys as registry_keys

BUCKET = MODEL_BUCKET


@pytest.fixture
def serving(s3, tmp_path):
    """A store serving v1 from the registry, refreshing every 10 s of a fake clock."""
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v1", "v1"))
    clock = Clock()
    store = loaded_store(s3, tmp_path / "cache", refresh_seconds=10, clock=clock)
    assert store.get().metadata.version == "v1"
    return store, clock


@pytest.mark.parametrize(("outputs", "input_size"), [(4, 32), (3, 48)], ids=["wrong output", "wrong input"])
def test_a_model_with_the_wrong_shape_is_not_swapped_in(s3, tmp_path, serving, outputs, input_size):
    store, clock = serving
    wrong = tiny_cnn((input_size, input_size, 1), outputs, "softmax")
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2", model=wrong))  # claims 32x32, 3 classes
    assert served_after(store, clock, 20) == "v1"


def test_a_full_tmp_keeps_the_current_model(s3, tmp_path, serving, monkeypatch):
    store, clock = serving
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s3, "download_file", disk_full)
    assert served_after(store, clock, 20) == "v1"
    assert not (tmp_path / "cache" / "tiny" / "v2").exists()
    monkeypatch.undo()  # space again: the next refresh succeeds
    assert served_after(store, clock, 40) == "v2"


def test_a_truncated_download_is_refused_for_its_checksum(s3, tmp_path, serving, caplog):
    """The bytes that arrive are cut short: the sha256 check refuses them before they reach the cache."""
    store, clock = serving
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))
    real_download = s3.download_file

    def truncating_download(bucket, key, filename, **kwargs):
        real_download(bucket, key, filename, **kwargs)
        if key.endswith("/model.h5"):
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])

    s3.download_file = truncating_download
    with caplog.at_level("WARNING", logger="lungscan.registry.model_store"):
        assert served_after(store, clock, 20) == "v1"
    refusals = [record for record in caplog.records if getattr(record, "model_version", None) == "v2"]
    assert refusals and "sha256" in refusals[0].reason  # refused for its checksum, not because Keras choked
    assert not (tmp_path / "cache" / "tiny" / "v2").exists()  # never cached, so never served later
    assert [path.name for path in (tmp_path / "cache").iterdir()] == ["tiny"]  # no staging folder left


def test_a_pointer_to_a_missing_version_is_ignored(s3, serving):
    store, clock = serving
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=json.dumps({"version": "gone"}).encode())
    assert served_after(store, clock, 20) == "v1"


def test_a_publish_is_never_half_visible(s3, tmp_path, serving, monkeypatch):
    """A reader refreshing after every object the publish writes sees v1 until the pointer moves."""
    store, clock = serving
    written = []
    real_put = s3.put_object

    def put_then_refresh(**kwargs):
        real_put(**kwargs)
        written.append(kwargs["Key"])
        expected = "v2" if kwargs["Key"] == registry_keys.pointer_key("tiny") else "v1"
        assert served_after(store, clock, clock.now + 20) == expected

    monkeypatch.setattr(s3, "put_object", put_then_refresh)
    monkeypatch.setattr(
        s3,
        "upload_file",
        lambda filename, bucket, key, **kw: put_then_refresh(Bucket=bucket, Key=key, Body=Path(filename).read_bytes()),
    )
    registry.publish_bundle(s3, BUCKET, build_bundle(tmp_path / "v2", "v2"))
    assert {"models/tiny/v2/model.h5", "models/tiny/v2/model.json"} <= set(written)
    assert written[-1] == registry_keys.pointer_key("tiny")  # the pointer moves last


class SilentS3:
    """A socket server that accepts every connection and never answers (an S3 that hangs)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.listener.accept()[0])
            except OSError:  # closed
                return

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


DEADLINE = 2.0
# Generous: it covers loading the tiny baked model on a busy machine. Without the deadline the
# production client config (10 s read timeout, 2 attempts, per name) takes about 60 s here.
COLD_START_BOUND = DEADLINE + 10.0


def test_slow_s3_cold_start_and_refresh_finish_within_the_deadline(tmp_path, app_module, monkeypatch):
    """The app's own store (its boto3 config and environment) against an S3 that accepts and never answers."""
    silent = SilentS3()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", silent.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("MODEL_BUCKET", BUCKET)
    monkeypatch.setenv("MODEL_NAME", "tiny")
    monkeypatch.setenv("MODEL_NAMES", "tiny,other")
    monkeypatch.setenv("MODEL_DIR", str(build_bundle(tmp_path / "baked", "baked")))
    monkeypatch.setenv("MODEL_REFRESH_SECONDS", "1")
    monkeypatch.setenv("MODEL_REGISTRY_DEADLINE_SECONDS", str(DEADLINE))
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))
    try:
        started = time.monotonic()
        store = app_module._create_store()
        cold_start = time.monotonic() - started
        assert silent.accepted, "the store never tried the registry"
        assert store.registry_deadline == DEADLINE
        assert cold_start < COLD_START_BOUND, f"cold start took {cold_start:.1f} s"
        assert store.get().metadata.version == "baked"

        time.sleep(1.1)  # past the refresh interval; the cold-start refresh is still hanging on S3
        started = time.monotonic()
        assert store.get().metadata.version == "baked"
        assert time.monotonic() - started < DEADLINE
        assert not store.wait_for_refresh(timeout=0)  # the registry is still being waited on, by the thread
    finally:
        silent.close()
    assert store.wait_for_refresh(timeout=60)  # the connection drops: the refresh gives up and ends
    started = time.monotonic()
    assert store.get().metadata.version == "baked"  # due again: a new refresh starts, the request does not wait
    assert time.monotonic() - started < DEADLINE
