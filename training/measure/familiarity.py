"""``unfamiliar``: fit each bundle's unfamiliar-CT detector on its training split, and measure it.

The detector (``lungscan.model.familiarity``) is fitted on the pooled feature maps of the bundle's
**training split only**; its threshold lets through all but ``--target-share`` (5%) of the bundle's own
held-out slices of the same source (validation and calibration splits, never the test split). Then,
through the serving path (``Classifier.predict_with_familiarity`` and ``Classifier.interpret``, the code
that answers a request), it measures on the bundle's own test split and on every other dataset at hand
(each other bundle's split files: slices this model never saw, from another hospital):

- the share flagged unfamiliar;
- among cancer slices (a positive class of the dataset they come from), the share answered neither
  suspicious nor uncertain: a confident all-clear on cancer;
- the flag's sensitivity and specificity (normal slices), and the share of familiar slices called uncertain;
- screening coverage: a cancer slice's set holds a flagged class, a normal slice's set holds ``normal``.

The same function (:func:`screening_figures`) computes every row, own source and other sources alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lungscan.bundle.files import METADATA_FILE
from lungscan.bundle.metadata import utc_timestamp
from lungscan.bundle.store import edit_metadata, read_metadata
from lungscan.model.classifier import Classifier
from lungscan.model.familiarity import FamiliaritySpec, familiarity_scores, familiarity_vectors
from lungscan.model.gate import gate_features
from lungscan.uploads import bundle_dicom_options, decode_upload
from training.data.layouts import Sample, load_split_manifest, samples_from_manifest
from training.measure.model_card import refresh_card

COMPONENTS = 8  # principal directions kept: a few thousand numbers in model.json
TARGET_SHARE = 0.05  # of the bundle's own held-out slices flagged
BATCH = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundles", nargs="+", type=Path, help="bundles to fit a detector for")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding the datasets (e.g. ../shared/data); default: each split.json's data_dir as recorded",
    )
    parser.add_argument(
        "--sources",
        nargs="*",
        type=Path,
        default=None,
        help="bundles whose split files are the other sources measured (default: every bundle beside the first)",
    )
    parser.add_argument("--target-share", type=float, default=TARGET_SHARE)


def dataset_names(bundle: Path) -> set[str]:
    """The dataset folders a bundle's split lists: its ``data_dir``, and for a model trained on several
    datasets the first folder of each listed file (``iq-oth-nccd/...``)."""
    manifest = load_split_manifest(bundle)
    names = {Path(manifest["data_dir"]).name}
    if manifest.get("layout") == "multi":
        names |= {entry["file"].split("/")[0] for entries in manifest["splits"].values() for entry in entries}
    return names


def bundle_samples(bundle: Path, data_dir: Path | None) -> dict[str, list[Sample]]:
    manifest = load_split_manifest(bundle)
    if data_dir is None:
        root = Path(manifest["data_dir"])
    elif manifest.get("layout") == "multi":  # its files are listed under the folder that holds the datasets
        root = data_dir
    else:
        root = data_dir / Path(manifest["data_dir"]).name
    return samples_from_manifest(manifest, root)


def served_views(classifier: Classifier, samples: list[Sample], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Files read as a request is: the model's inputs and the decoded images' statistics (``gate_features``)."""
    from tqdm import tqdm

    dicom = bundle_dicom_options(classifier.metadata)
    inputs, image_features = [], []
    for sample in tqdm(samples, desc=name, unit="img", leave=False, dynamic_ncols=True):
        decoded = decode_upload(sample.path.read_bytes(), dicom=dicom)
        inputs.append(classifier.prepare(decoded)[0])
        image_features.append(gate_features(decoded.image))
    return np.stack(inputs).astype(np.float32), np.stack(image_features)


def vectors(classifier: Classifier, samples: list[Sample], name: str) -> np.ndarray:
    """The detector's vectors (image statistics, then the model's pooled features) for files read as served."""
    inputs, image_features = served_views(classifier, samples, name)
    pooled = np.concatenate(
        [classifier.runtime.forward_with_features(inputs[i : i + BATCH])[1] for i in range(0, len(inputs), BATCH)]
    )
    return familiarity_vectors(image_features, pooled)


def fit_familiarity(train: np.ndarray, held_out: np.ndarray, target_share: float = TARGET_SHARE) -> FamiliaritySpec:
    """A probabilistic PCA of the standardised training features; the threshold from the held-out slices' scores."""
    mean = train.mean(axis=0)
    scale = np.maximum(train.std(axis=0), 1e-6)
    centred = (train - mean) / scale
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    eigen = singular**2 / max(len(train) - 1, 1)
    floor = max(float(eigen.max()) * 1e-6, 1e-12)
    kept = min(COMPONENTS, len(eigen) - 1)
    residual = float(eigen[kept:].sum() / max(train.shape[1] - kept, 1))
    spec = FamiliaritySpec(
        mean=_compact(mean),
        scale=_compact(scale),
        components=[_compact(row) for row in directions[:kept]],
        variances=_compact(np.maximum(eigen[:kept], floor)),
        residual_variance=max(residual, floor),
        threshold=1.0,
        target_share=target_share,
    )
    scores = familiarity_scores(held_out, spec)
    spec.threshold = float(np.quantile(scores, 1.0 - target_share, method="higher"))
    spec.threshold = float(np.nextafter(spec.threshold, np.inf))  # the slice at the quantile stays familiar
    return spec


def _compact(values: np.ndarray) -> list[float]:
    return [float(f"{value:.6g}") for value in np.asarray(values, dtype=np.float64)]


def screening_figures(classifier: Classifier, samples: list[Sample], source_positive: list[str], name: str) -> dict:
    """One row of the card: a set of slices answered as served (detector included), on the malignancy question.

    ``source_positive``: the classes of the slices' own dataset that are cancer (their labels are that
    dataset's, which need not be this model's).
    """
    probabilities, unfamiliar = classifier.predict_with_familiarity(*served_views(classifier, samples, name))
    flags = unfamiliar if unfamiliar is not None else np.zeros(len(samples), bool)
    answers = [classifier.interpret(row, bool(flag)) for row, flag in zip(probabilities, flags, strict=True)]
    positives = set(classifier.metadata.positive_classes)
    cancer = np.array([sample.label in source_positive for sample in samples])
    normal = np.array([sample.label == "normal" for sample in samples])
    suspicious = np.array([answer.suspicious for answer in answers])
    uncertain = np.array([bool(answer.uncertain) for answer in answers])
    covered = np.array(
        [
            bool(positives.intersection(answer.prediction_set or [answer.label]))
            if is_cancer
            else "normal" in (answer.prediction_set or [answer.label])
            for answer, is_cancer in zip(answers, cancer, strict=True)
        ]
    )
    screened = cancer | normal
    familiar = ~flags

    def share(mask: np.ndarray, of: np.ndarray) -> dict:
        n = int(of.sum())
        return {"n": n, "share": round(float(mask[of].mean()), 4) if n else None}

    return {
        "n": len(samples),
        "unfamiliar": share(flags, np.ones(len(samples), bool)),
        "cancer_confident_all_clear": share(~suspicious & ~uncertain, cancer),
        "sensitivity": share(suspicious, cancer),
        "specificity": share(~suspicious, normal),
        "uncertain_familiar": share(uncertain, familiar),
        "screening_coverage": share(covered, screened),
        "screening_coverage_familiar": share(covered, screened & familiar),
    }


def measure_bundle(bundle: Path, spec: FamiliaritySpec, data_dir: Path | None, sources: list[Path], log=print) -> dict:
    """The detector's figures: own test split, then every other dataset's slices."""
    metadata = read_metadata(bundle)
    metadata.familiarity = spec
    classifier = Classifier(bundle, metadata=metadata)
    own = bundle_samples(bundle, data_dir)
    result = {"own": {"test": screening_figures(classifier, own["test"], metadata.positive_classes, "test")}}
    if load_split_manifest(bundle).get("layout") == "multi":  # trained on several datasets: each test split too
        root = (data_dir or Path(load_split_manifest(bundle)["data_dir"])).resolve()
        for name in sorted({s.path.resolve().relative_to(root).parts[0] for s in own["test"]}):
            part = [s for s in own["test"] if s.path.resolve().relative_to(root).parts[0] == name]
            result["own"][f"test: {name}"] = screening_figures(classifier, part, metadata.positive_classes, name)
    result["other_sources"] = {}
    mine = dataset_names(bundle)
    for source in sources:
        if dataset_names(source) & mine:
            continue  # a dataset this bundle trained on is not another hospital
        source_metadata = read_metadata(source)
        files = [sample for split in bundle_samples(source, data_dir).values() for sample in split]
        name = Path(load_split_manifest(source)["data_dir"]).name
        figures = screening_figures(classifier, files, source_metadata.positive_classes, name)
        figures["files"] = f"every file of {source.name}'s split.json (all splits: this model saw none of them)"
        result["other_sources"][name] = figures
    for where, rows in (("own", result["own"]), ("other", result["other_sources"])):
        for name, row in rows.items():
            log(f"unfamiliar: {bundle.name} {where} {name}: {_line(row)}")
    return result


def _line(row: dict) -> str:
    parts = []
    for key in ("unfamiliar", "cancer_confident_all_clear", "sensitivity", "specificity", "uncertain_familiar"):
        value = row[key]
        parts.append(f"{key} {value['share']} (n={value['n']})")
    parts.append(f"coverage {row['screening_coverage']['share']}")
    return ", ".join(parts)


def build_familiarity(bundle: Path, data_dir: Path | None, target_share: float = TARGET_SHARE) -> FamiliaritySpec:
    metadata = read_metadata(bundle)
    metadata.familiarity = None
    classifier = Classifier(bundle, metadata=metadata)
    samples = bundle_samples(bundle, data_dir)
    held_out = samples["validation"] + samples.get("calibration", [])
    spec = fit_familiarity(vectors(classifier, samples["train"], "train"), vectors(classifier, held_out, "held out"))
    spec.fitted_on = {
        "split": "train",
        "n": len(samples["train"]),
        "threshold": f"the {1 - target_share:.0%} quantile of the scores of the bundle's own validation and "
        f"calibration splits (n={len(held_out)}; same source, never trained on)",
        "components": len(spec.variances),
        "fitted_at": utc_timestamp(),
    }
    return spec


def run(args: argparse.Namespace, log=print) -> None:
    bundles = [Path(bundle) for bundle in args.bundles]
    for bundle in bundles:
        if not (bundle / METADATA_FILE).is_file():
            raise FileNotFoundError(f"{bundle / METADATA_FILE} is missing: the detector is stored in model.json")
    sources = args.sources
    if sources is None:
        sources = sorted(p.parent for p in bundles[0].parent.glob(f"*/{METADATA_FILE}"))
    for bundle in bundles:
        spec = build_familiarity(bundle, args.data_dir, args.target_share)
        spec.evaluation = measure_bundle(bundle, spec, args.data_dir, [Path(s) for s in sources], log)
        with edit_metadata(bundle, replacing="familiarity") as metadata:
            metadata.familiarity = spec
            refresh_card(bundle, metadata)
        log(f"unfamiliar: stored in {bundle / METADATA_FILE}")
