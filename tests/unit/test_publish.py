"""The registry commands (``python -m training publish|promote|rollback|list``) against moto's S3.

Bundles here are tiny untrained CNNs with hand-written evaluation metrics and a real smoke set,
so no dataset and no training are needed.
"""

from __future__ import annotations

import json

import boto3
import pytest
from helpers import MODEL_BUCKET, build_bundle, cli, evaluated_bundle, keys, tiny_cnn
from moto import mock_aws

from lungscan.bundle.store import read_metadata, write_metadata
from lungscan.errors import InvalidBundleError
from lungscan.model.classifier import Classifier
from lungscan.registry import bundles as registry
from lungscan.registry import pointer as registry_pointer
from training.cli import EXIT_FAILED, EXIT_REFUSED, main

BUCKET = MODEL_BUCKET


class RecordingS3:
    """Delegates to a real (moto) client and records every put_object key, in order."""

    def __init__(self, client, corrupt_suffix: str | None = None) -> None:
        self._client = client
        self.puts: list[str] = []
        self.corrupt_suffix = corrupt_suffix

    def put_object(self, **kwargs):
        self.puts.append(kwargs["Key"])
        if self.corrupt_suffix and kwargs["Key"].endswith(self.corrupt_suffix):
            kwargs = {**kwargs, "Body": kwargs["Body"][: len(kwargs["Body"]) // 2]}  # bytes lost on the way
            kwargs.pop("ChecksumSHA256", None)  # (real S3 would refuse a body that fails its checksum)
        return self._client.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def history(s3) -> list[dict]:
    return json.loads(s3.get_object(Bucket=BUCKET, Key="models/tiny/history.json")["Body"].read())


def test_publish_uploads_the_bundle_then_history_then_moves_the_pointer(s3, tmp_path, capsys):
    recording = RecordingS3(s3)
    code, out, _ = cli(recording, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1")))
    assert code == 0, out
    prefix = "models/tiny/v1/"
    assert keys(s3) >= {
        f"{prefix}model.h5",
        f"{prefix}model.json",
        f"{prefix}report/smoke.npz",
        f"{prefix}MODEL_CARD.md",
        "models/tiny/history.json",
        "models/tiny/latest.json",
    }
    order = recording.puts
    assert order[-1] == "models/tiny/latest.json" and order[-2] == "models/tiny/history.json"
    assert order[-3] == f"{prefix}model.json"  # model.json last of the bundle: a version with one is complete
    assert order.index(f"{prefix}model.h5") < order.index(f"{prefix}model.json")
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1"
    assert history(s3)[-1] | {"at": None} == {"at": None, "action": "publish", "version": "v1", "previous": None}
    head = s3.head_object(Bucket=BUCKET, Key=f"{prefix}model.h5")
    assert head["Metadata"]["sha256"] == registry.read_published_metadata(s3, BUCKET, "tiny", "v1").sha256


def test_publish_reads_the_bundle_and_never_rewrites_it(s3, tmp_path, capsys):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    before = {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    code, out, _ = cli(s3, capsys, "publish", str(bundle))
    assert code == 0 and "no runtime twin" in out and "training twin" in out
    assert {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before


def test_a_bundle_whose_twin_is_stale_is_refused(s3, tmp_path, capsys):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    assert main(["twin", str(bundle)]) == 0
    (bundle / "model.onnx").unlink()
    code, _, err = cli(s3, capsys, "publish", str(bundle))
    assert code == EXIT_FAILED and "twin" in err
    assert keys(s3) == set()


def test_serving_downloads_only_model_twin_and_metadata(s3, tmp_path, capsys):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    assert main(["twin", str(bundle)]) == 0
    assert cli(s3, capsys, "publish", str(bundle))[0] == 0
    local = registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "cache")
    assert sorted(p.name for p in local.iterdir()) == ["model.h5", "model.json", "model.onnx"]
    classifier = Classifier(local)
    assert classifier.metadata.version == "v1"
    assert classifier.runtime.name == "onnxruntime"


def test_a_better_model_moves_the_pointer(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    code, out, _ = cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.65)))
    assert code == 0
    assert "tiny -> v2 (was v1)" in out
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v2"


def test_a_worse_model_is_refused_without_force_and_accepted_with_it(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    worse = evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.5)
    code, _, err = cli(s3, capsys, "publish", str(worse))
    assert code == EXIT_REFUSED
    assert err.startswith("refused:") and "0.500 < 0.600" in err and "--force" in err
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1"
    assert not any(key.startswith("models/tiny/v2/") for key in keys(s3))  # nothing uploaded

    code, _, _ = cli(s3, capsys, "publish", str(worse), "--force")
    assert code == 0
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v2"
    assert history(s3)[-1]["note"].startswith("forced: it is worse")


def test_a_model_evaluated_on_another_test_set_is_refused_without_force(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    other = evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.9, fingerprint="b" * 64)
    code, _, err = cli(s3, capsys, "publish", str(other))
    assert code == EXIT_REFUSED and "different test sets" in err
    assert cli(s3, capsys, "publish", str(other), "--force")[0] == 0
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v2"


def test_publishing_the_same_version_again_is_a_no_op_and_other_content_is_refused(s3, tmp_path, capsys):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    cli(s3, capsys, "publish", str(bundle))
    code, out, _ = cli(s3, capsys, "publish", str(bundle))
    assert code == 0 and "already published and latest" in out
    assert [entry["version"] for entry in history(s3)] == ["v1"]
    code, _, err = cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "again", "v1")))
    assert code == EXIT_REFUSED and "immutable" in err


def test_a_re_evaluation_that_answers_differently_needs_a_new_version(s3, tmp_path, capsys):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    cli(s3, capsys, "publish", str(bundle))
    meta = read_metadata(bundle)
    meta.conformal.thresholds["benign"] = 0.95  # what a re-evaluation's new sets would do, same model.h5
    write_metadata(bundle, meta)
    code, _, err = cli(s3, capsys, "publish", str(bundle))
    assert code == EXIT_REFUSED and "answers differently (conformal)" in err and "--version NEW" in err
    assert read_metadata(registry.download_bundle(s3, BUCKET, "tiny", "v1", tmp_path / "got")).conformal.thresholds[
        "benign"
    ] == pytest.approx(0.8)  # the published version is untouched

    meta.version = "v1-recalibrated"  # as `training evaluate --version v1-recalibrated` writes it
    write_metadata(bundle, meta)
    assert cli(s3, capsys, "publish", str(bundle))[0] == 0
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1-recalibrated"


def test_a_corrupt_upload_is_detected_and_the_pointer_stays(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    corrupting = RecordingS3(s3, corrupt_suffix="v2/model.h5")
    code, _, err = cli(corrupting, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.7)))
    assert code == EXIT_FAILED
    assert "did not land intact" in err and "latest.json was not moved" in err
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1"
    assert [entry["version"] for entry in history(s3)] == ["v1"]


def test_a_bundle_whose_model_changed_after_evaluation_is_refused(s3, tmp_path, capsys):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    (bundle / "model.h5").write_bytes((bundle / "model.h5").read_bytes()[:-10])
    code, _, err = cli(s3, capsys, "publish", str(bundle))
    assert code == EXIT_FAILED and "sha256" in err
    assert keys(s3) == set()


def test_a_bundle_that_does_not_reproduce_its_smoke_set_is_refused(s3, tmp_path, capsys):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    tiny_cnn((32, 32, 1), 3, "softmax").save(bundle / "model.h5")  # other weights, same shapes
    meta = json.loads((bundle / "model.json").read_text())
    meta["sha256"] = None  # re-signed by write_metadata below: only the smoke set can tell
    from lungscan.bundle.metadata import BundleMetadata

    write_metadata(bundle, BundleMetadata.model_validate(meta))
    code, _, err = cli(s3, capsys, "publish", str(bundle))
    assert code == EXIT_FAILED and "smoke set" in err
    assert keys(s3) == set()


def test_an_unevaluated_bundle_is_refused(s3, tmp_path, capsys):
    bundle = build_bundle(tmp_path / "raw", "raw")
    code, _, err = cli(s3, capsys, "publish", str(bundle))
    assert code == EXIT_FAILED and "evaluate" in err


def test_a_bundle_without_conformal_calibration_is_refused(s3, tmp_path, capsys):
    bundle = evaluated_bundle(tmp_path / "noconformal", "v1")
    meta = json.loads((bundle / "model.json").read_text())
    meta.pop("conformal")
    from lungscan.bundle.metadata import BundleMetadata

    write_metadata(bundle, BundleMetadata.model_validate(meta))
    code, _, err = cli(s3, capsys, "publish", str(bundle))
    assert code == EXIT_FAILED and "conformal" in err
    assert keys(s3) == set()


def test_promote_checks_the_version_and_its_sha256(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.7)))
    code, out, _ = cli(s3, capsys, "promote", "tiny", "v1")
    assert code == 0 and "tiny -> v1 (was v2)" in out
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1"

    code, _, err = cli(s3, capsys, "promote", "tiny", "v9")
    assert code == EXIT_FAILED and "not published" in err and "v1, v2" in err

    s3.put_object(Bucket=BUCKET, Key="models/tiny/v2/model.h5", Body=b"tampered")
    code, _, err = cli(s3, capsys, "promote", "tiny", "v2")
    assert code == EXIT_FAILED and "sha256" in err
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1"


def test_a_tampered_report_file_fails_promote(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1")))
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.7)))
    s3.put_object(Bucket=BUCKET, Key="models/tiny/v1/report/smoke.npz", Body=b"x")
    code, _, err = cli(s3, capsys, "promote", "tiny", "v1")
    assert code == EXIT_FAILED and "report/smoke.npz" in err


def test_rollback_walks_back_through_history(s3, tmp_path, capsys):
    for index, version in enumerate(("v1", "v2", "v3")):
        cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / version, version, macro_f1=0.5 + index / 10)))
    assert cli(s3, capsys, "rollback", "tiny")[0] == 0
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v2"
    code, out, _ = cli(s3, capsys, "rollback", "tiny")
    assert code == 0 and "tiny -> v1 (rolled back from v2)" in out
    code, _, err = cli(s3, capsys, "rollback", "tiny")
    assert code == EXIT_FAILED and "nothing to roll back to" in err
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1"
    assert [(e["action"], e["version"], e["previous"]) for e in history(s3)] == [
        ("publish", "v1", None),
        ("publish", "v2", "v1"),
        ("publish", "v3", "v2"),
        ("rollback", "v2", "v3"),
        ("rollback", "v1", "v2"),
    ]


def test_rollback_after_promote_returns_to_the_version_before_it(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.7)))
    cli(s3, capsys, "promote", "tiny", "v1")
    cli(s3, capsys, "rollback", "tiny")
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v2"


def test_missing_pointer(s3, tmp_path, capsys):
    code, _, err = cli(s3, capsys, "rollback", "tiny")
    assert code == EXIT_FAILED and "no latest.json pointer" in err
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1")))
    s3.delete_object(Bucket=BUCKET, Key="models/tiny/latest.json")
    code, out, _ = cli(s3, capsys, "list", "tiny")
    assert code == 0 and "v1" in out and "* v1" not in out
    # With no pointer, the next publish is a first publish again.
    assert cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.1)))[0] == 0


def test_a_pointer_moved_outside_the_tools_blocks_rollback(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.7)))
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=json.dumps({"version": "v1"}).encode())
    code, _, err = cli(s3, capsys, "rollback", "tiny")
    assert code == EXIT_FAILED and "outside the registry tools" in err


def test_list_shows_versions_metrics_and_latest(s3, tmp_path, capsys):
    code, out, _ = cli(s3, capsys, "list")
    assert code == 0 and "no published models" in out
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.65)))
    code, out, _ = cli(s3, capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("tiny")
    assert [line.split()[:2] for line in lines[1:3]] == [["v1", "created"], ["*", "v2"]]
    assert "macro-F1 0.600" in lines[1] and "macro-F1 0.650" in lines[2]
    code, out, _ = cli(s3, capsys, "list", "tiny", "--json")
    rows = json.loads(out)
    assert [(r["version"], r["latest"], r["macro_f1"]) for r in rows] == [("v1", False, 0.6), ("v2", True, 0.65)]


def test_bucket_comes_from_the_environment(s3, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MODEL_BUCKET", raising=False)
    assert main(["list"], s3=s3) == EXIT_FAILED
    assert "no bucket" in capsys.readouterr().err
    monkeypatch.setenv("MODEL_BUCKET", BUCKET)
    assert main(["list"], s3=s3) == 0
    assert "no published models" in capsys.readouterr().out


def test_s3_errors_are_one_line(tmp_path, capsys):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")  # no bucket created
        assert main(["list", "--bucket", "missing-bucket"], s3=client) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("error: S3:") and "NoSuchBucket" in err and "Traceback" not in err


def test_publish_gets_past_a_pointer_to_a_missing_version_and_records_it(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=json.dumps({"version": "gone"}).encode())
    worse = evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.1)  # nothing to compare with: not a refusal
    code, out, err = cli(s3, capsys, "publish", str(worse))
    assert code == 0, err
    assert "gone" in out and "missing" in out
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v2"
    last = history(s3)[-1]
    assert (last["action"], last["version"], last["previous"]) == ("publish", "v2", "gone")
    assert "gone" in last["note"] and "missing" in last["note"]
    v3 = evaluated_bundle(tmp_path / "v3", "v3", macro_f1=0.2)
    s3.put_object(Bucket=BUCKET, Key="models/tiny/latest.json", Body=json.dumps({"version": "gone"}).encode())
    assert cli(s3, capsys, "publish", str(v3), "--force")[0] == 0  # and so does --force
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v3"


@pytest.mark.parametrize(
    "window", [{"center": -600, "width": 0}, {"width": 1500}, {"center": -600, "width": -5}], ids=str
)
def test_a_bundle_with_an_unusable_dicom_window_is_refused_at_publish_and_at_load(s3, tmp_path, capsys, window):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    meta = json.loads((bundle / "model.json").read_text())
    meta["preprocessing"]["dicom_window"] = window
    (bundle / "model.json").write_text(json.dumps(meta))
    code, _, err = cli(s3, capsys, "publish", str(bundle))
    assert code == EXIT_FAILED and "dicom_window" in err
    assert keys(s3) == set()
    with pytest.raises(InvalidBundleError, match="dicom_window"):
        Classifier(bundle)


def test_the_dicom_window_keeps_its_json_shape(tmp_path):
    bundle = evaluated_bundle(tmp_path / "v1", "v1")
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["preprocessing"]["dicom_window"] == {"center": -600.0, "width": 1500.0}
    assert Classifier(bundle).metadata.preprocessing.dicom_window.width == 1500.0


@pytest.mark.parametrize("version", ["..", ".", "a/b"])
def test_promote_refuses_an_invalid_version_before_reading_s3(s3, tmp_path, capsys, version):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1")))
    code, _, err = cli(s3, capsys, "promote", "tiny", version)
    assert code == EXIT_FAILED and "invalid version" in err
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v1"


def test_rollback_refuses_a_history_entry_with_an_invalid_version(s3, tmp_path, capsys):
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v1", "v1", macro_f1=0.6)))
    cli(s3, capsys, "publish", str(evaluated_bundle(tmp_path / "v2", "v2", macro_f1=0.7)))
    entries = history(s3)
    entries[0]["version"] = ".."  # history.json edited by hand (or by someone hostile)
    s3.put_object(Bucket=BUCKET, Key="models/tiny/history.json", Body=json.dumps(entries).encode())
    code, _, err = cli(s3, capsys, "rollback", "tiny")
    assert code == EXIT_FAILED and "invalid version" in err
    assert registry_pointer.latest_version(s3, BUCKET, "tiny") == "v2"
