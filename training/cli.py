"""``python -m training``: train, evaluate and publish LungScan's models.

One entry point, one subcommand per step. Every command exits 0 on success; on failure it
prints one line (``error: ...`` or ``refused: ...``) to stderr, never a traceback, and exits
1 (failed), 2 (bad arguments) or 3 (publish refused: worse or incomparable model).
"""

from __future__ import annotations

import argparse
import sys

from lungscan.errors import LungScanError
from training.fit import options as train_config
from training.fit import train
from training.gate import fit as gate
from training.measure import evaluate
from training.measure import familiarity as unfamiliar
from training.release import publish, twin

EXIT_FAILED = 1
EXIT_REFUSED = 3

DESCRIPTION = """Train, evaluate and publish LungScan's CT-slice classifiers.

The usual sequence:
  python -m training train --preset iq-oth-nccd          # train + evaluate -> models/iq-oth-3class/
  python -m training publish models/iq-oth-3class --bucket BUCKET
  python -m training list --bucket BUCKET
  python -m training rollback iq-oth-3class --bucket BUCKET

Registry commands talk to S3 through boto3 (AWS_ENDPOINT_URL_S3 points them at a local
moto server); the bucket is --bucket or $MODEL_BUCKET."""

HELP = {
    "train": (
        "train a CNN on a dataset and write a bundle (then evaluate it)",
        "Scan a dataset (a folder of class folders; the IQ-OTH/NCCD folders; or a train/ valid/ [test/] split "
        "layout such as Kaggle's Chest CT-Scan images), deduplicate it by content hash, split it without "
        "leaks, preprocess every image with the core package (the chain model.json declares), train a small "
        "grayscale CNN with balanced class weights and fixed seeds (TensorBoard logs under training/runs/), "
        "and write the bundle: model.h5, model.json, report/split.json. Then run `evaluate` on it unless "
        "--no-evaluate. --preset reproduces a shipped model; any option given overrides the preset.",
    ),
    "evaluate": (
        "measure a bundle as served; calibrate; write report/ and MODEL_CARD.md",
        "Load the bundle with lungscan.model.classifier.Classifier and run its validation and test images (the files "
        "report/split.json lists, checked by sha256) through the serving path. Reports accuracy, macro-F1, "
        "per-class precision/recall, one-vs-rest ROC-AUC, the suspicious flag's sensitivity/specificity and "
        "the expected calibration error before/after the calibration fitted on the calibration split (a "
        "temperature, a per-class bias or vector scaling, chosen by cross-validation there; stored in "
        "model.json, applied by the server). Writes report/*.png, report/test_predictions.csv, "
        "report/smoke.npz (checked by publish) and MODEL_CARD.md.",
    ),
    "twin": (
        "derive model.onnx, the runtime twin that serves without TensorFlow",
        "Convert model.h5 with tf2onnx (opset 17) into model.onnx with three outputs: probabilities, the last "
        "feature maps and their Grad-CAM channel weights. Check it against Keras on report/smoke.npz (served "
        "probabilities within 1e-5, same labels; Grad-CAM within 1e-2), then write it and record its sha256, "
        "opset and parity in model.json's `twin`. Run it before publish: publish only reads the bundle.",
    ),
    "gate": (
        "fit the not-CT gate on training data and store it in model.json",
        "Fit the gate that refuses images that are not CT slices (422 not_ct_like): CT positives from the "
        "training split of every bundle (report/split.json; no validation or test file is read), negatives "
        "from generated non-CT images (noise, charts, text, drawings, screenshots, synthetic X-ray and MR...). "
        "Thresholds refuse at most 1% of training CT (out of fold). Prints and stores in model.json's gate the "
        "refusal rates on held-out CT (test splits, valid/ folders) and on a separate non-CT evaluation set "
        "(other seeds, scikit-image sample images, pydicom's non-CT test files). Example: python -m training "
        "gate models/iq-oth-3class models/chest-ct-4class --data-dir ../shared/data",
    ),
    "unfamiliar": (
        "fit the unfamiliar-CT detector on a bundle's training data; measure it across sources",
        "Fit each bundle's detector of slices unlike its training data (a probabilistic PCA of the model's own "
        "spatially averaged feature maps, on the training split only; threshold: at most --target-share, 5%, of "
        "the bundle's own validation and calibration slices flagged), then measure it through the serving path "
        "on the bundle's test split and on every other dataset at hand (the other bundles' split files): share "
        "flagged, cancer slices answered neither suspicious nor uncertain, flag sensitivity/specificity, "
        "uncertain share, screening coverage. Stored in model.json's `familiarity` and the card. Run it after "
        "evaluate (it measures with the calibration). Example: python -m training unfamiliar "
        "models/iq-oth-3class models/chest-ct-4class --data-dir ../shared/data",
    ),
    "publish": (
        "validate a bundle, upload it, then move latest.json",
        "Validate (sha256, loads with Classifier, shapes match model.json, reproduces report/smoke.npz), "
        "refuse a model worse than the current latest on the same test set (or evaluated on another one) "
        "unless --force, upload models/<name>/<version>/ with sha256 checksums, verify what landed, record "
        "the move in models/<name>/history.json, and move models/<name>/latest.json last.",
    ),
    "promote": (
        "point latest.json at an already published version",
        "Check that models/NAME/VERSION/ exists and that its model.h5 and report files match the sha256 in "
        "its model.json, record the move in history.json, then move latest.json.",
    ),
    "rollback": (
        "move latest.json back to the version before the current one",
        "Undo the latest publish/promote recorded in models/NAME/history.json: point latest.json at the "
        "version that was current before it (after checking it downloads intact). Repeated rollbacks walk "
        "further back.",
    ),
    "list": (
        "list published versions with created_at, metrics and which is latest",
        "List every published version of NAME (or of every model in the bucket) with its creation time, "
        "test accuracy, macro-F1, suspicious-flag sensitivity/specificity and test-set fingerprint; * marks "
        "the version latest.json points at.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adders = {
        "train": train_config.add_arguments,
        "evaluate": evaluate.add_arguments,
        "twin": twin.add_arguments,
        "gate": gate.add_arguments,
        "unfamiliar": unfamiliar.add_arguments,
        "publish": publish.add_publish_arguments,
        "promote": publish.add_promote_arguments,
        "rollback": publish.add_rollback_arguments,
        "list": publish.add_list_arguments,
    }
    for name, add in adders.items():
        summary, description = HELP[name]
        add(commands.add_parser(name, help=summary, description=description))
    return parser


def run(args: argparse.Namespace, argv: list[str], s3=None) -> int:
    if args.command == "train":
        train.run(train_config.resolve_config(args, argv))
        return 0
    if args.command == "evaluate":
        evaluate.evaluate_bundle(args.bundle, args.data_dir, smoke_size=args.smoke_size, version=args.version)
        return 0
    if args.command == "twin":
        twin.derive_twin(args.bundle)
        return 0
    if args.command == "gate":
        gate.run(args)
        return 0
    if args.command == "unfamiliar":
        unfamiliar.run(args)
        return 0
    bucket = publish.resolve_bucket(args.bucket)
    s3 = s3 or publish.s3_client()
    if args.command == "publish":
        publish.publish(s3, bucket, args.bundle, force=args.force)
    elif args.command == "promote":
        publish.promote(s3, bucket, args.name, args.version)
    elif args.command == "rollback":
        publish.rollback(s3, bucket, args.name)
    elif args.command == "list":
        publish.print_listing(publish.describe(s3, bucket, args.name), bucket, as_json=args.json)
    return 0


def main(argv: list[str] | None = None, *, s3=None) -> int:
    """Run one command; ``s3`` replaces boto3's client (tests pass a moto-backed one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return run(args, argv, s3)
    except publish.PublishRefusedError as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (LungScanError, OSError, ValueError, KeyError) as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # botocore's ClientError/BotoCoreError and the like: one line, no traceback
        if type(error).__module__.startswith(("botocore", "boto3", "s3transfer")):
            print(f"error: S3: {error}", file=sys.stderr)
            return EXIT_FAILED
        raise


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"missing key {error}"
    return str(error) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
