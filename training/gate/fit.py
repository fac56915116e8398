"""Fit the not-CT gate (``python -m training gate BUNDLE...``) and measure it on data it never saw.

Positives are CT slices from the training split of EVERY bundle at hand (each bundle's
``report/split.json``; their validation and test files are never read for fitting), plus
augmented copies (crop, rotation, display window, gamma, contrast, noise, annotations, frames,
JPEG) so that CT from other scanners and exporters is not mistaken for something else. Negatives come from
``training.gate.non_ct.training_negatives``. Thresholds are set on out-of-fold scores of the training
CT (grouped so augmented copies stay with their original): at most ``REFUSE_TRAINING_CT`` of it
is refused. The evaluation reports refusal rates on held-out CT of every bundle (test split, and
a dataset's own ``valid/`` folder where it has one, minus files that are also in a training
split) and on ``training.gate.non_ct.evaluation_set`` per kind.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lungscan.bundle.files import METADATA_FILE, file_sha256
from lungscan.bundle.metadata import utc_timestamp
from lungscan.bundle.store import edit_metadata
from lungscan.inputs.imaging import decode_image
from lungscan.model.gate import FEATURE_NAMES, GateSpec, gate_features, gate_scores, is_ct_like
from training.data.layouts import load_split_manifest
from training.gate import non_ct
from training.measure.model_card import refresh_card

REFUSE_TRAINING_CT = 0.01  # at most 1% of training CT (out of fold) refused, split between the two tests
AUGMENTED_COPIES = 2
NEGATIVES_PER_KIND = 60
FOLDS = 5
SEED = 0
HIDDEN = 64  # a linear classifier let grey photos and MR through; 64 ReLU units refuse the most (measured)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folder(s) to store the fitted gate in")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding the datasets (e.g. ../shared/data); default: each split.json's data_dir as recorded",
    )
    parser.add_argument(
        "--negatives-per-kind", type=int, default=NEGATIVES_PER_KIND, help="generated non-CT images per kind"
    )
    parser.add_argument(
        "--augmented-copies", type=int, default=AUGMENTED_COPIES, help="augmented copies of each training CT slice"
    )
    parser.add_argument(
        "--ct-bundles",
        nargs="+",
        type=Path,
        help="bundles whose training splits give the CT positives (default: every bundle beside the first BUNDLE)",
    )


# ---------------------------------------------------------------- CT sources


def dataset_dir(split: dict, data_dir: Path | None) -> Path:
    recorded = Path(split["data_dir"])
    return data_dir / recorded.name if data_dir is not None else recorded


def _load(path: Path) -> Image.Image:
    return decode_image(path.read_bytes()).image


def ct_files(bundle_dir: Path, data_dir: Path | None, split_name: str) -> list[tuple[Path, str]]:
    """(path, sha256) of the files of one split a bundle lists."""
    split = load_split_manifest(bundle_dir)
    root = dataset_dir(split, data_dir)
    return [(root / entry["file"], entry["sha256"]) for entry in split["splits"][split_name]]


def held_out_ct(bundle_dirs: list[Path], data_dir: Path | None) -> dict[str, list[Path]]:
    """Held-out CT per source: each bundle's test split and, where the dataset has one, its valid/ folder.

    Files that are byte-identical to a training file of any bundle are left out.
    """
    training_hashes = {digest for bundle in bundle_dirs for _, digest in ct_files(bundle, data_dir, "train")}
    sources: dict[str, list[Path]] = {}
    for bundle in bundle_dirs:
        split = load_split_manifest(bundle)
        name = dataset_dir(split, data_dir).name
        sources[f"{name}/test"] = [
            p for p, digest in ct_files(bundle, data_dir, "test") if digest not in training_hashes
        ]
        valid = dataset_dir(split, data_dir) / "valid"
        tested = {entry["file"].split("/")[0] for entry in split["splits"]["test"]}
        if valid.is_dir() and "valid" not in tested:  # valid/ is not already the test split
            files = sorted(p for p in valid.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            sources[f"{name}/valid"] = [p for p in files if file_sha256(p) not in training_hashes]
    return sources


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A CT slice as another scanner or exporter might give it: cropped, rotated, re-windowed, noisier."""
    image = image.convert("L") if image.mode not in ("L", "RGB") else image
    width, height = image.size
    keep = rng.uniform(0.8, 1.0)
    left, top = rng.uniform(0, 1 - keep) * width, rng.uniform(0, 1 - keep) * height
    image = image.crop((int(left), int(top), int(left + keep * width), int(top + keep * height)))
    if rng.random() < 0.3:  # a wide export of a zoomed reconstruction: the body cut off above and below
        width, height = image.size
        kept = min(height, int(width / rng.uniform(1.2, 1.7)))
        top = int(rng.uniform(0, height - kept))
        image = image.crop((0, top, width, top + kept))
    image = image.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if rng.random() < 0.5:  # another display window: exports range from dark bone-like to a saturated lung window
        low, high = rng.uniform(0.0, 0.1), float(np.quantile(pixels, rng.uniform(0.4, 0.99)))
        pixels = np.clip((pixels - low) / max(high - low, 0.05), 0, 1)
    pixels = np.clip(pixels ** rng.uniform(0.7, 1.4) * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0, 1)
    if rng.random() < 0.3:  # a DICOM through a window whose floor is below air: air (-1000 HU) shows grey, not black
        lift = rng.uniform(0.12, 0.3)  # the lung window (-600/1500) shows air as grey 60 (0.24)
        pixels = lift + pixels * (1.0 - lift)
    pixels = np.clip(pixels + rng.normal(0, rng.uniform(0, 0.02), pixels.shape), 0, 1)
    image = Image.fromarray((pixels * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.3:  # viewers' annotations: a coloured contour, a marker, a label
        image = image.convert("RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0.2, 0.8) * image.width, rng.uniform(0.2, 0.8) * image.height
            radius = rng.uniform(0.01, 0.06) * image.width
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.7:
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=2)
            else:
                draw.text((x, y), "L" if rng.random() < 0.5 else "12.4 mm", fill=colour)
    if rng.random() < 0.2:  # an export with a frame or a zoomed-out view
        border = int(rng.uniform(0.02, 0.2) * max(image.size))
        fill = int(rng.choice([0, 0, 255, int(rng.integers(0, 256))]))
        framed = Image.new(
            image.mode,
            (image.width + 2 * border, image.height + 2 * border),
            fill if image.mode == "L" else (fill,) * 3,
        )
        framed.paste(image, (border, border))
        image = framed
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(40, 95)))
        image = Image.open(io.BytesIO(buffer.getvalue()))
        image.load()
    return image


def features_of(images) -> np.ndarray:
    return np.stack([gate_features(image) for image in images])


# ---------------------------------------------------------------- fitting


def _compact(values: np.ndarray) -> list:
    """Rounded to float32 as model.json stores them (``lungscan.model.gate``): the gate measured is the one served."""
    return np.asarray(values, dtype=np.float32).astype(np.float64).tolist()


def _fit_parameters(ct: np.ndarray, negatives: np.ndarray) -> dict:
    from sklearn.covariance import LedoitWolf
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.concatenate([ct, negatives]))
    scaler.scale_ = np.where(scaler.scale_ > 1e-9, scaler.scale_, 1.0)
    features = scaler.transform(np.concatenate([ct, negatives]))
    labels = np.concatenate([np.ones(len(ct)), np.zeros(len(negatives))])
    classifier = MLPClassifier((HIDDEN,), alpha=1e-2, max_iter=2000, random_state=SEED).fit(features, labels)
    covariance = LedoitWolf().fit(scaler.transform(ct))
    return {
        "feature_names": FEATURE_NAMES,
        "mean": _compact(scaler.mean_),
        "scale": _compact(scaler.scale_),
        "hidden_weights": _compact(classifier.coefs_[0]),
        "hidden_bias": _compact(classifier.intercepts_[0]),
        "output_weights": _compact(classifier.coefs_[1][:, 0]),
        "output_bias": float(classifier.intercepts_[1][0]),
        "ct_location": _compact(covariance.location_),
        "ct_precision": _compact(covariance.precision_),
    }


def _provisional(parameters: dict) -> GateSpec:
    return GateSpec(**parameters, probability_threshold=0.5, distance_threshold=1.0)


def fit_gate(
    ct: np.ndarray, ct_groups: np.ndarray, negatives: np.ndarray, negative_groups: np.ndarray
) -> tuple[GateSpec, dict]:
    """Fit the gate on feature arrays; thresholds from out-of-fold scores of the training CT.

    Args:
        ct, negatives: (N, F) gate features of CT slices and of non-CT images.
        ct_groups, negative_groups: group ids (an original and its augmented copies share one;
            a negative's kind), so no fold scores an image whose twin it was fitted on.

    Returns:
        The gate, and what the thresholds were chosen from (out-of-fold figures).
    """
    from sklearn.model_selection import GroupKFold

    probabilities = np.zeros(len(ct))
    distances = np.zeros(len(ct))
    negative_probabilities = np.zeros(len(negatives))
    negative_distances = np.zeros(len(negatives))
    folds = GroupKFold(n_splits=FOLDS)
    negative_folds = list(folds.split(negatives, groups=np.arange(len(negatives)) % FOLDS))
    for index, (train, held) in enumerate(folds.split(ct, groups=ct_groups)):
        negative_train, negative_held = negative_folds[index]
        spec = _provisional(_fit_parameters(ct[train], negatives[negative_train]))
        probabilities[held], distances[held] = gate_scores(ct[held], spec)
        negative_probabilities[negative_held], negative_distances[negative_held] = gate_scores(
            negatives[negative_held], spec
        )
    probability_threshold = float(min(0.5, np.quantile(probabilities, REFUSE_TRAINING_CT / 2)))
    distance_threshold = float(np.quantile(distances, 1 - REFUSE_TRAINING_CT / 2))
    parameters = _fit_parameters(ct, negatives)
    spec = GateSpec(**parameters, probability_threshold=probability_threshold, distance_threshold=distance_threshold)
    out_of_fold = {
        "training_ct_refused": round(
            float(((probabilities < probability_threshold) | (distances > distance_threshold)).mean()), 4
        ),
        "training_non_ct_refused": round(
            float(
                ((negative_probabilities < probability_threshold) | (negative_distances > distance_threshold)).mean()
            ),
            4,
        ),
    }
    return spec, out_of_fold


def refusal_rate(features: np.ndarray, spec: GateSpec) -> float:
    return round(float(1.0 - is_ct_like(features, spec).mean()), 4) if len(features) else 0.0


def evaluate_gate(spec: GateSpec, held_out: dict[str, list[Path]], per_kind: int = 10) -> dict:
    """Refusal rates on held-out CT per source and on the non-CT evaluation set per kind."""
    ct_rates = {}
    for source, paths in held_out.items():
        features = features_of(_load(path) for path in paths)
        ct_rates[source] = {"n": len(paths), "refused": refusal_rate(features, spec)}
    by_kind: dict[str, list[np.ndarray]] = {}
    missed: list[str] = []
    for kind, name, image in non_ct.evaluation_set(per_kind):
        features = gate_features(image)
        by_kind.setdefault(kind, []).append(features)
        if is_ct_like(features, spec)[0]:
            missed.append(name)
    kinds = {kind: {"n": len(rows), "refused": refusal_rate(np.stack(rows), spec)} for kind, rows in by_kind.items()}
    total_ct = sum(rate["n"] for rate in ct_rates.values())
    total_non_ct = sum(rate["n"] for rate in kinds.values())
    return {
        "held_out_ct": ct_rates,
        "held_out_ct_refused": round(sum(r["n"] * r["refused"] for r in ct_rates.values()) / max(total_ct, 1), 4),
        "non_ct": kinds,
        "non_ct_refused": round(sum(r["n"] * r["refused"] for r in kinds.values()) / max(total_non_ct, 1), 4),
        "non_ct_let_through": missed,
        "non_ct_set": (
            f"{total_non_ct} images: training.gate.non_ct generators on seeds from {non_ct.EVALUATION_SEED} "
            "(fitting used seeds below it), scikit-image's shipped sample images, pydicom's bundled "
            "non-CT test files (MR, ultrasound, nuclear medicine, secondary capture, segmentation)"
        ),
    }


def build_gate(
    ct_bundles: list[Path],
    data_dir: Path | None,
    *,
    negatives_per_kind: int = NEGATIVES_PER_KIND,
    augmented_copies: int = AUGMENTED_COPIES,
    log=print,
) -> GateSpec:
    """Load the training CT of every bundle and the generated negatives, fit, and evaluate."""
    rng = np.random.default_rng(SEED)
    ct_images, sources = [], {}
    ct_groups: list[int] = []  # one per image: the file it comes from, augmented copies included
    for bundle in ct_bundles:
        files = ct_files(bundle, data_dir, "train")
        sources[str(bundle.name)] = len(files)
        for path, _ in files:
            image = _load(path)
            group = len(sources) * 100_000 + len(ct_groups)
            ct_images.append(image)
            ct_groups.append(group)
            for _ in range(augmented_copies):
                ct_images.append(augment(image, rng))
                ct_groups.append(group)
    log(f"gate: {len(ct_images)} training CT images ({sources} originals, {augmented_copies} augmented copies each)")
    ct = features_of(ct_images)
    negatives_list = non_ct.training_negatives(negatives_per_kind, seed=SEED)
    negatives = features_of(image for _, image in negatives_list)
    kinds = sorted({kind for kind, _ in negatives_list})
    log(f"gate: {len(negatives)} generated non-CT images of {len(kinds)} kinds")
    spec, out_of_fold = fit_gate(
        ct, np.asarray(ct_groups), negatives, np.asarray([kinds.index(k) for k, _ in negatives_list])
    )
    spec.fitted_on = {
        "ct": {"bundles": sources, "split": "train", "augmented_copies": augmented_copies},
        "non_ct": {"kinds": kinds, "per_kind": negatives_per_kind, "seed": SEED},
        "thresholds": f"out-of-fold ({FOLDS} folds) training CT scores: at most {REFUSE_TRAINING_CT:.0%} refused",
        "out_of_fold": out_of_fold,
        "fitted_at": utc_timestamp(),
    }
    spec.evaluation = evaluate_gate(spec, held_out_ct(ct_bundles, data_dir))
    return spec


def store_gate(bundle_dir: Path, spec: GateSpec) -> None:
    """Write the gate into ``model.json``; an evaluated bundle's card reports the gate's figures too."""
    # A gate of an older feature version no longer validates: it is replaced, not read.
    with edit_metadata(bundle_dir, replacing="gate") as metadata:
        metadata.gate = spec
        refresh_card(bundle_dir, metadata)


def print_evaluation(spec: GateSpec, log=print) -> None:
    evaluation = spec.evaluation
    log(f"gate: out of fold on training data: {spec.fitted_on.get('out_of_fold')}")
    for source, rate in evaluation["held_out_ct"].items():
        log(f"  held-out CT {source:<28} n={rate['n']:<4} refused {rate['refused']:.1%}")
    for kind, rate in sorted(evaluation["non_ct"].items()):
        log(f"  non-CT {kind:<33} n={rate['n']:<4} refused {rate['refused']:.1%}")
    log(
        f"gate: held-out CT refused {evaluation['held_out_ct_refused']:.1%}; "
        f"non-CT refused {evaluation['non_ct_refused']:.1%}"
    )
    if evaluation["non_ct_let_through"]:
        log(f"gate: non-CT let through: {', '.join(evaluation['non_ct_let_through'])}")


def run(args: argparse.Namespace) -> None:
    bundles = [Path(bundle) for bundle in args.bundles]
    for bundle in bundles:
        if not (bundle / METADATA_FILE).is_file():
            raise FileNotFoundError(f"{bundle / METADATA_FILE} is missing: the gate is stored in a bundle's model.json")
    ct_bundles = args.ct_bundles or sorted(p.parent for p in bundles[0].parent.glob(f"*/{METADATA_FILE}"))
    spec = build_gate(
        [Path(b) for b in ct_bundles],
        args.data_dir,
        negatives_per_kind=args.negatives_per_kind,
        augmented_copies=args.augmented_copies,
    )
    print_evaluation(spec)
    for bundle in bundles:
        store_gate(bundle, spec)
        print(f"gate: stored in {bundle / METADATA_FILE}")
