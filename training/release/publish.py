"""Registry commands: ``publish``, ``promote``, ``rollback``, ``list`` (``python -m training ...``).

``publish BUNDLE`` reads the bundle and never rewrites it. A bundle without a runtime twin
(``python -m training twin``) is published with a note: the function serves it with Keras; one whose
declared twin is missing or stale is refused. It validates the bundle before anything is uploaded:

1. ``model.json`` is valid, the sha256 of ``model.h5`` matches it, and it carries the not-CT gate;
2. :class:`lungscan.model.classifier.Classifier` loads it and the model's input/output shapes match
   ``model.json`` (the function would refuse it otherwise);
3. the report files ``model.json`` declares are there, with their sha256, and it carries
   evaluation metrics and conformal calibration (``conformal``: answers need prediction sets);
4. it reproduces its smoke set: ``report/smoke.npz`` holds preprocessed held-out inputs and
   the probabilities evaluate measured; the reloaded bundle must give the same probabilities
   (within ``1e-4``) and so the same smoke accuracy ``model.json`` records;
5. it is not worse than the version ``latest.json`` points at: both ``model.json`` files record
   the test macro-F1 and a fingerprint of their test set (sha256 over the sorted test image
   hashes). On equal fingerprints a lower macro-F1 is refused; on different (or missing)
   fingerprints the figures are not comparable, and the bundle is refused too. ``--force``
   overrides this check only, and the override is written to history.json. When ``latest.json``
   points at a version whose model.json is missing there is nothing to compare with: the publish
   goes ahead and history.json records why.

Then :func:`lungscan.registry.bundles.publish_bundle`, the one publish sequence, uploads
``models/<name>/<version>/`` (report/*, card, model.h5, model.json last; each object with its
SHA-256), checks every sha256 of what landed, appends the move to ``models/<name>/history.json``
and finally moves ``latest.json``. ``make run`` publishes its bundles into the local S3 through here too.

The S3 client is boto3's (it honours ``AWS_ENDPOINT_URL_S3``, so the local stack's moto server
works as the registry); the bucket comes from ``--bucket`` or ``MODEL_BUCKET``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lungscan.bundle.files import SMOKE_FILE, file_sha256
from lungscan.bundle.metadata import BundleMetadata, served_differences
from lungscan.bundle.smoke import SMOKE_TOLERANCE, smoke_inputs
from lungscan.bundle.store import has_metadata, read_metadata
from lungscan.errors import InvalidBundleError, LungScanError, RegistryError
from lungscan.registry import bundles, keys, pointer
from training.release import twin

Printer = Callable[[str], None]


class PublishRefusedError(LungScanError):
    """Publishing would replace the current model with a worse or incomparable one (``--force`` overrides)."""

    code = "publish_refused"


def add_bucket_argument(parser) -> None:
    parser.add_argument("--bucket", help="model bucket (default: $MODEL_BUCKET)")


def add_publish_arguments(parser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder (model.h5, model.json, report/)")
    add_bucket_argument(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="publish even if worse than the current version, or evaluated on another test set",
    )


def add_promote_arguments(parser) -> None:
    parser.add_argument("name", help="model name, e.g. iq-oth-3class")
    parser.add_argument("version", help="a published version of it")
    add_bucket_argument(parser)


def add_rollback_arguments(parser) -> None:
    parser.add_argument("name", help="model name, e.g. iq-oth-3class")
    add_bucket_argument(parser)


def add_list_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", help="one model name (default: every model in the bucket)")
    add_bucket_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def resolve_bucket(bucket: str | None) -> str:
    bucket = bucket or os.environ.get("MODEL_BUCKET")
    if not bucket:
        raise ValueError("no bucket: pass --bucket or set MODEL_BUCKET")
    return bucket


def s3_client():
    import boto3

    return boto3.client("s3")


# ---------------------------------------------------------------- validation


def validate_bundle(bundle_dir: Path | str) -> BundleMetadata:
    """Checks 1-4 above; returns the bundle's metadata.

    Raises:
        InvalidBundleError: what failed, in words.
    """
    from lungscan.model.classifier import Classifier

    bundle_dir = Path(bundle_dir)
    if not has_metadata(bundle_dir):
        raise InvalidBundleError(f"{bundle_dir} has no model.json: only a full bundle can be published")
    metadata = read_metadata(bundle_dir)
    if metadata.gate is None:
        raise InvalidBundleError(
            f"{bundle_dir} has no not-CT gate: run `python -m training gate {bundle_dir}` first "
            "(a bundle without one would give verdicts on photos and charts)"
        )
    classifier = Classifier(bundle_dir)  # loads, checks shapes against model.json, warms up
    for relative, digest in bundles.declared_report_files(metadata).items():
        path = bundle_dir / relative
        if not path.is_file():
            raise InvalidBundleError(f"{path} is declared in model.json but missing")
        if file_sha256(path) != digest:
            raise InvalidBundleError(f"sha256 of {path} does not match model.json (edited after evaluate?)")
    metrics = metadata.metrics
    if metrics.get("macro_f1") is None or "smoke" not in metrics:
        raise InvalidBundleError(f"{bundle_dir} has no evaluation metrics: run `python -m training evaluate` first")
    if metadata.conformal is None:
        raise InvalidBundleError(
            f"{bundle_dir} has no conformal calibration (model.json `conformal`): answers would carry no prediction "
            "set; run `python -m training evaluate` on a bundle trained with a calibration split"
        )
    smoke_path = bundle_dir / SMOKE_FILE
    if not smoke_path.is_file():
        raise InvalidBundleError(f"{smoke_path} is missing: run `python -m training evaluate` first")
    with np.load(smoke_path, allow_pickle=False) as smoke:
        inputs = smoke_inputs(smoke)
        expected = smoke["probabilities"]
        labels = smoke["labels"]
    if tuple(inputs.shape[1:]) != classifier.input_shape:
        raise InvalidBundleError(f"smoke inputs are {inputs.shape[1:]}, the model takes {classifier.input_shape}")
    probabilities = classifier.predict_batch(inputs)
    if probabilities.shape != expected.shape:
        raise InvalidBundleError(f"the model gives {probabilities.shape} probabilities, the smoke set {expected.shape}")
    drift = float(np.abs(probabilities - expected).max())
    if drift > SMOKE_TOLERANCE:
        raise InvalidBundleError(
            f"the bundle does not reproduce its smoke set: probabilities differ by up to {drift:.2e} "
            f"(tolerance {SMOKE_TOLERANCE:g}); model.h5 or model.json changed after evaluate"
        )
    accuracy = round(float((probabilities.argmax(axis=1) == labels).mean()), 4)
    if accuracy != metrics["smoke"].get("accuracy"):
        raise InvalidBundleError(
            f"smoke accuracy {accuracy} differs from the {metrics['smoke'].get('accuracy')} recorded in model.json"
        )
    return metadata


def _test_figures(metadata: BundleMetadata) -> tuple[float | None, str | None]:
    metrics = metadata.metrics
    fingerprint = (metrics.get("evaluation_set") or {}).get("fingerprint")
    return metrics.get("macro_f1"), fingerprint


def compare_with_current(new: BundleMetadata, current: BundleMetadata) -> str | None:
    """Why ``new`` must not replace ``current`` without ``--force`` (None: it may)."""
    new_f1, new_print = _test_figures(new)
    current_f1, current_print = _test_figures(current)
    label = f"the current {current.name} {current.version}"
    if current_f1 is None or current_print is None:
        return (
            f"{label} records no test macro-F1 with an evaluation-set fingerprint, so the new model cannot be "
            "compared with it"
        )
    if new_f1 is None or new_print is None:
        return "the new bundle records no test macro-F1 with an evaluation-set fingerprint"
    if new_print != current_print:
        return (
            f"the two models were evaluated on different test sets (fingerprints {new_print[:12]} vs "
            f"{current_print[:12]}): macro-F1 {new_f1:.3f} vs {current_f1:.3f} says nothing about which is better"
        )
    if new_f1 < current_f1:
        return f"it is worse than {label} on the same test set: macro-F1 {new_f1:.3f} < {current_f1:.3f}"
    return None


# ---------------------------------------------------------------- commands


def publish(s3, bucket: str, bundle_dir: Path | str, *, force: bool = False, out: Printer = print) -> BundleMetadata:
    """Validate, compare, then ``bundles.publish_bundle`` (upload, verify, pointer). The bundle is only read.

    Raises:
        InvalidBundleError: the bundle fails validation, declares a twin it does not hold, or did not land
            intact (pointer not moved).
        PublishRefusedError: worse/incomparable without ``force``, or the version exists with other content.
    """
    bundle_dir = Path(bundle_dir)
    if has_metadata(bundle_dir) and not twin.has_current_twin(bundle_dir):
        if read_metadata(bundle_dir).twin is not None:
            raise InvalidBundleError(
                f"{bundle_dir}'s runtime twin is missing or was derived from another model.h5: "
                f"run `python -m training twin {bundle_dir}` again"
            )
        out(
            f"no runtime twin: the function will serve model.h5 with Keras (slower to start); "
            f"`python -m training twin {bundle_dir}` derives one"
        )
    metadata = validate_bundle(bundle_dir)
    name, version = metadata.name, metadata.version
    out(f"validated {bundle_dir}: {name} {version} (test macro-F1 {metadata.metrics.get('macro_f1')})")
    current = pointer.current_version(s3, bucket, name)
    if pointer.version_exists(s3, bucket, name, version):
        published = bundles.read_published_metadata(s3, bucket, name, version)
        if published.sha256 != metadata.sha256:
            raise PublishRefusedError(
                f"{name} {version} is already published with another model.h5 (sha256 {published.sha256}); "
                "versions are immutable: train again or choose a new --version"
            )
        differences = served_differences(published, metadata)
        if differences:  # a re-evaluation: the function would keep serving the published model.json
            raise PublishRefusedError(
                f"{name} {version} is already published with a model.json that answers differently "
                f"({', '.join(differences)}); versions are immutable: re-evaluate with "
                f"`python -m training evaluate {bundle_dir} --version NEW`, then publish"
            )
        if current == version:
            out(f"{name} {version} is already published and latest; nothing to do")
            return metadata
        out(f"{name} {version} is already published (latest is {current}); use `promote {name} {version}`")
        return metadata
    note = None
    if current is not None:
        try:
            reason = compare_with_current(metadata, bundles.read_published_metadata(s3, bucket, name, current))
        except InvalidBundleError as error:
            reason = f"the current version's model.json is not valid, so the new model cannot be compared ({error})"
        except Exception as error:
            if not pointer.is_missing(error):
                raise
            # Nothing is served from a pointer to a missing version: any valid bundle is better.
            reason = None
            note = f"latest.json pointed at {current}, whose model.json is missing"
            out(f"warning: {note}; publishing without comparison")
        if reason and not force:
            raise PublishRefusedError(f"{reason}. Nothing was uploaded; pass --force to publish anyway.")
        if reason:
            note = f"forced: {reason}"
            out(f"--force: publishing although {reason}")
    bundles.publish_bundle(s3, bucket, bundle_dir, metadata, note=note)
    out(f"uploaded s3://{bucket}/{keys.version_prefix(name, version)}/ and checked what landed")
    out(f"latest.json: {name} -> {version} (was {current or 'none'})")
    return metadata


def promote(s3, bucket: str, name: str, version: str, *, out: Printer = print) -> dict:
    """Point ``latest.json`` at an already published version, after checking it downloads intact."""
    if not pointer.version_exists(s3, bucket, name, version):
        published = pointer.list_versions(s3, bucket, name)
        raise RegistryError(f"{name} {version} is not published; published versions: {', '.join(published) or 'none'}")
    _check_downloadable(s3, bucket, name, version)
    entry = pointer.move_pointer(s3, bucket, name, version, action="promote")
    out(f"latest.json: {name} -> {version} (was {entry['previous'] or 'none'})")
    return entry


def rollback(s3, bucket: str, name: str, *, out: Printer = print) -> dict:
    """Move ``latest.json`` back to the version before the current one (history.json's stack)."""
    current = pointer.current_version(s3, bucket, name)
    target = pointer.rollback_target(pointer.read_history(s3, bucket, name), current)
    _check_downloadable(s3, bucket, name, target)
    entry = pointer.move_pointer(s3, bucket, name, target, action="rollback")
    out(f"latest.json: {name} -> {target} (rolled back from {current})")
    return entry


def _check_downloadable(s3, bucket: str, name: str, version: str) -> None:
    """Download model.h5 + model.json as the function would, and check the sha256 (raises InvalidBundleError)."""
    with tempfile.TemporaryDirectory(prefix="lungscan-check-") as scratch:
        bundles.download_bundle(s3, bucket, name, version, scratch)
        bundles.verify_published(s3, bucket, name, version)


def describe(s3, bucket: str, name: str | None = None) -> list[dict]:
    """Every published version (of ``name``, or of every model) with its metrics and whether it is latest."""
    names = [name] if name else pointer.list_names(s3, bucket)
    rows = []
    for model_name in names:
        latest = pointer.current_version(s3, bucket, model_name)
        for version in pointer.list_versions(s3, bucket, model_name):
            try:
                metadata = bundles.read_published_metadata(s3, bucket, model_name, version)
            except InvalidBundleError as error:
                rows.append({"name": model_name, "version": version, "latest": version == latest, "error": str(error)})
                continue
            metrics = metadata.metrics
            rows.append(
                {
                    "name": model_name,
                    "version": version,
                    "latest": version == latest,
                    "created_at": metadata.created_at,
                    "accuracy": metrics.get("accuracy"),
                    "macro_f1": metrics.get("macro_f1"),
                    "suspicious_sensitivity": metrics.get("suspicious_sensitivity"),
                    "suspicious_specificity": metrics.get("suspicious_specificity"),
                    "evaluation_set": (metrics.get("evaluation_set") or {}).get("fingerprint"),
                    "sha256": metadata.sha256,
                }
            )
        if latest is not None and not any(r["name"] == model_name and r["latest"] for r in rows):
            rows.append(
                {"name": model_name, "version": latest, "latest": True, "error": "pointer to a missing version"}
            )
    rows.sort(key=lambda r: (r["name"], r.get("created_at") or "", r["version"]))
    return rows


def print_listing(rows: list[dict], bucket: str, out: Printer = print, as_json: bool = False) -> None:
    if as_json:
        out(json.dumps(rows, indent=1))
        return
    if not rows:
        out(f"no published models in s3://{bucket}/{keys.PREFIX}/")
        return

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    current_name = None
    for row in rows:
        if row["name"] != current_name:
            current_name = row["name"]
            out(f"{current_name}  (s3://{bucket}/{keys.PREFIX}/{current_name}/)")
        marker = "*" if row["latest"] else " "
        if "error" in row:
            out(f"  {marker} {row['version']:<22} ERROR: {row['error']}")
            continue
        out(
            f"  {marker} {row['version']:<22} created {row.get('created_at') or '-':<20} "
            f"accuracy {fmt(row['accuracy'])}  macro-F1 {fmt(row['macro_f1'])}  "
            f"sensitivity {fmt(row['suspicious_sensitivity'])}  specificity {fmt(row['suspicious_specificity'])}  "
            f"test set {str(row['evaluation_set'])[:12]}"
        )
    out("(* = latest.json)")
