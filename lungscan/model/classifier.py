"""Load a bundle and classify images with it.

The model runs on the bundle's runtime twin (onnxruntime) when it has one, else on
``model.h5`` through Keras (``lungscan.model.runtime``); this module does not know which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from lungscan.bundle.metadata import BundleMetadata
from lungscan.bundle.store import read_metadata
from lungscan.errors import InvalidBundleError, MalformedInputError, NotCTLikeError
from lungscan.inputs.imaging import DecodedImage, to_8bit
from lungscan.model.calibration import apply_calibration, apply_temperature
from lungscan.model.conformal import prediction_set
from lungscan.model.explain import heatmap_overlay
from lungscan.model.familiarity import familiarity_vectors, is_unfamiliar
from lungscan.model.gate import NOT_CT_MESSAGE, gate_feature_rows, is_ct_like
from lungscan.model.runtime import ModelRuntime, load_runtime
from lungscan.model.thumbnail import SliceView
from lungscan.model.transforms import build_preprocess, preprocess_image

# The original app's two strings: deprecated fields (``verdict``, ``prediction``) derived from ``suspicious``,
# kept for its page and scripts only; never shown by LungScan's page (diagnostic words).
VERDICT_SUSPICIOUS = "Cancer Detected"
VERDICT_CLEAR = "No Cancer Detected"
# The three tiers a clinician reads, consistent with the prediction set: their codes and their words.
Tier = Literal["suspicious", "not_excluded", "clear"]
TIER_SUSPICIOUS: Tier = "suspicious"
TIER_NOT_EXCLUDED: Tier = "not_excluded"
TIER_CLEAR: Tier = "clear"
TIER_WORDS: dict[Tier, str] = {
    TIER_SUSPICIOUS: "Suspicious — review first",
    TIER_NOT_EXCLUDED: "Malignancy not excluded — review",
    TIER_CLEAR: "No suspicious finding",
}
UNFAMILIAR_NOTE = "This scan looks unlike the scans this model learned from; its answer is unreliable."
DISCLAIMER = "Research tool. Not a diagnosis. A clinician must review every scan."
# A calibrated probability is never certainty: shown confidences stop short of 100%.
MAX_SHOWN_PROBABILITY = 0.999
# Slices classify_batch runs through the gate and the model together: four keep their arrays in a core's cache
# (measured per slice: the twin 3.3 ms by four, 3.9 ms by sixteen; the gate's features 0.9 ms by four, 1.5 by sixteen).
BATCH_GROUP = 4


@dataclass
class Prediction:
    """One slice's answer.

    ``positive_probability`` is the summed probability of the bundle's ``positive_classes`` (P(cancer)
    for the shipped models), shown to 4 places and capped like every probability. ``tier`` is what a
    clinician reads (``suspicious``: a flagged class is the label; ``not_excluded``: one is in the set but
    is not the label; ``clear``: none in the set) and ``suspicious`` is true for the first two. The API
    answers both (and ``suspicion``, the deprecated name of ``positive_probability``).
    """

    label: str
    probabilities: dict[str, float]
    confidence: float
    suspicious: bool  # the screening flag: tier suspicious or not_excluded
    positive_probability: float  # summed probability of the positive classes
    threshold: float
    heatmap: Image.Image | None = None  # Grad-CAM overlay at the input's size, when asked for
    explained_class: str | None = None
    # The conformal prediction set (classes, most probable first) and whether it holds more than one
    # class; None for a bundle without conformal calibration.
    prediction_set: list[str] | None = None
    # True when the set holds both a flagged and an unflagged class, or the slice is unfamiliar;
    # None for a bundle without conformal calibration (unless the slice is unfamiliar).
    uncertain: bool | None = None
    tier: Tier = TIER_CLEAR
    # The slice looks unlike the model's training data (its bundle's detector); None without one.
    unfamiliar: bool | None = None
    notes: list[str] = field(default_factory=list)  # plain words on what the tier and the set mean

    @property
    def verdict(self) -> str:
        """Deprecated: the original app's text, derived from ``suspicious``."""
        return VERDICT_SUSPICIOUS if self.suspicious else VERDICT_CLEAR

    @property
    def tier_words(self) -> str:
        return TIER_WORDS[self.tier]


class Classifier:
    """A loaded model with its metadata and preprocessing, ready to answer."""

    def __init__(
        self,
        bundle_dir: Path | str,
        *,
        runtime: Literal["twin", "keras"] = "twin",
        metadata: BundleMetadata | None = None,
    ) -> None:
        """
        Args:
            runtime: "twin" serves the bundle's runtime twin when it has a current one (else
                model.h5 with Keras); "keras" always serves model.h5 (parity checks).
            metadata: the bundle's metadata held in memory instead of its model.json (``evaluate``
                measures before its one write); its sha256 must be the model.h5's.
        """
        self.bundle_dir = Path(bundle_dir)
        self.metadata: BundleMetadata = read_metadata(self.bundle_dir) if metadata is None else metadata
        self.runtime: ModelRuntime = load_runtime(self.bundle_dir, self.metadata, prefer=runtime)
        spec = self.metadata.input
        self.input_shape = (spec.height, spec.width, spec.channels)
        self._check_shapes()
        self.preprocess = build_preprocess(self.metadata.preprocessing.model_dump())
        self._warm_up()

    def _warm_up(self) -> None:
        """Run every step of a classification once at load (the function's init), not on its first request:
        the gate's arrays, Pillow's resampling, numpy's first calls, the runtime's first run."""
        pixels = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
        warm = DecodedImage(image=Image.fromarray(pixels), format="PNG")
        to_8bit(Image.fromarray(pixels.astype(np.uint16) * 257))  # 16-bit uploads: np.percentile's first call
        features = self.image_features([SliceView(warm.image)] * 2)
        self.gate_passes(features, 2)
        self.predict_with_familiarity(np.stack([self.prepare(warm)[0]] * 2), self.familiarity_rows(features))

    def _check_shapes(self) -> None:
        model_input = self.runtime.input_shape
        if model_input != self.input_shape:
            raise InvalidBundleError(f"model input {model_input} does not match model.json {self.input_shape}")
        outputs = self.runtime.output_width
        expected = 1 if self.metadata.output == "sigmoid" else len(self.metadata.classes)
        if outputs != expected:
            raise InvalidBundleError(f"model has {outputs} outputs; model.json implies {expected}")

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, len(classes)), for preprocessed inputs."""
        return self.probabilities_from(self.runtime.forward(np.asarray(batch, dtype=np.float32)))

    def predict_with_familiarity(
        self, batch: np.ndarray, image_features: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and, per input, whether the bundle's detector finds it unfamiliar (None
        for a bundle without one): one pass of the model.

        Args:
            image_features: (N, F) ``gate_features`` of the decoded images (the detector's first view).
        """
        batch = np.asarray(batch, dtype=np.float32)
        spec = self.metadata.familiarity
        if spec is None or image_features is None:
            return self.predict_batch(batch), None
        raw, pooled = self.runtime.forward_with_features(batch)
        return self.probabilities_from(raw), self.unfamiliar_from(image_features, pooled)

    def unfamiliar_from(self, image_features: np.ndarray, pooled: np.ndarray) -> np.ndarray:
        """Per input, whether the bundle's detector (it has one) finds it unfamiliar, from its two views."""
        assert self.metadata.familiarity is not None
        return is_unfamiliar(familiarity_vectors(image_features, pooled), self.metadata.familiarity)

    def probabilities_from(self, raw: np.ndarray) -> np.ndarray:
        """The served class probabilities from the model's raw outputs (sigmoid expanded, calibration applied)."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.metadata.output == "sigmoid":
            positive = raw[:, :1]  # P(classes[1]); the original app's P(no cancer)
            return np.concatenate([1.0 - positive, positive], axis=1)
        if self.metadata.calibration is not None:
            return apply_calibration(raw, self.metadata.calibration)
        if self.metadata.temperature != 1.0:  # a bundle evaluated before per-class calibration
            raw = apply_temperature(raw, self.metadata.temperature)
        return raw

    def prepare(self, decoded: DecodedImage) -> tuple[np.ndarray, list[dict]]:
        array, trace = preprocess_image(decoded, self.preprocess)
        return array, trace["applied_operations"]

    def classify(self, decoded: DecodedImage, explain: bool = False, explain_class: str | None = None) -> Prediction:
        """Classify one decoded image; with ``explain``, add a Grad-CAM overlay.

        Args:
            explain_class: the class to explain; the predicted label by default.

        Raises:
            MalformedInputError: ``explain_class`` is not one of the model's classes.
            NotCTLikeError: the bundle's gate says the image is not a CT slice (no verdict).
        """
        if explain_class is not None and explain_class not in self.metadata.classes:
            raise MalformedInputError(
                f"explain_class is not one of this model's classes: {', '.join(self.metadata.classes)}.",
                code="invalid_request",
            )
        view = SliceView(decoded.image)  # the gate, the detector and the crop share its thumbnails
        features = self.image_features([view])
        if not self.gate_passes(features, 1)[0]:
            raise NotCTLikeError(NOT_CT_MESSAGE)
        array, trace = preprocess_image(decoded, self.preprocess, view)
        rows = self.familiarity_rows(features)
        if not explain:
            probabilities, unfamiliar = self.predict_with_familiarity(array[np.newaxis], rows)
            return self.interpret(probabilities[0], None if unfamiliar is None else bool(unfamiliar[0]))
        raw, pooled, gradcam = self.runtime.explained_forward(array)  # the twin: one run for all three
        flag = None if rows is None else bool(self.unfamiliar_from(rows, pooled)[0])
        prediction = self.interpret(self.probabilities_from(raw)[0], flag)
        prediction.explained_class = explain_class or prediction.label
        cam = gradcam(self.metadata.classes.index(prediction.explained_class))
        prediction.heatmap = heatmap_overlay(decoded.image, cam, trace["view"])
        return prediction

    def classify_batch(self, images: Sequence[DecodedImage]) -> list[Prediction | NotCTLikeError]:
        """Classify many decoded slices in one pass, without explanations: per slice, the same answer as
        :meth:`classify` (or the gate's refusal, returned rather than raised).

        By groups of :data:`BATCH_GROUP` slices: the gate's features of the group in one numpy pass, its scores in
        one matrix product, then one run of the model (and the detector) on the slices it let through.
        """
        answers: list[Prediction | NotCTLikeError] = []
        for start in range(0, len(images), BATCH_GROUP):
            answers += self._classify_group(images[start : start + BATCH_GROUP])
        return answers

    def _classify_group(self, images: Sequence[DecodedImage]) -> list[Prediction | NotCTLikeError]:
        views = [SliceView(decoded.image) for decoded in images]
        features = self.image_features(views)
        kept: list[int] = np.flatnonzero(self.gate_passes(features, len(images))).tolist()
        answers: list[Prediction | NotCTLikeError] = [NotCTLikeError(NOT_CT_MESSAGE) for _ in images]
        if kept:
            batch = np.stack([preprocess_image(images[index], self.preprocess, views[index])[0] for index in kept])
            rows = self.familiarity_rows(features)
            probabilities, unfamiliar = self.predict_with_familiarity(batch, None if rows is None else rows[kept])
            for position, index in enumerate(kept):
                flag = None if unfamiliar is None else bool(unfamiliar[position])
                answers[index] = self.interpret(probabilities[position], flag)
        return answers

    def image_features(self, views: Sequence[SliceView]) -> dict[int, np.ndarray]:
        """(N, F) ``gate_features`` of the slices, for each features version the bundle's gate and detector read
        (computed once when both read the same one)."""
        versions = {spec.features_version for spec in [self.metadata.gate] if spec is not None}
        versions |= {spec.image_features_version for spec in [self.metadata.familiarity] if spec is not None}
        return {version: gate_feature_rows(views, version) for version in versions}

    def gate_passes(self, features: dict[int, np.ndarray], count: int) -> np.ndarray:
        """Per slice (of ``count``), whether the bundle's gate lets it through (a bare legacy model.h5 has none)."""
        gate = self.metadata.gate
        return np.ones(count, dtype=bool) if gate is None else is_ct_like(features[gate.features_version], gate)

    def familiarity_rows(self, features: dict[int, np.ndarray]) -> np.ndarray | None:
        """The image statistics the bundle's detector reads, of its own features version (None without one)."""
        spec = self.metadata.familiarity
        return None if spec is None else features[spec.image_features_version]

    def gradcam(self, array: np.ndarray, class_index: int) -> np.ndarray:
        """Grad-CAM map (values in [0, 1], feature-map resolution) for one preprocessed image."""
        return self.runtime.gradcam(array, class_index)

    def interpret(self, probabilities: np.ndarray, unfamiliar: bool | None = None) -> Prediction:
        """The answer for one slice's served probabilities.

        Args:
            unfamiliar: the bundle's detector says the slice is unlike its training data (None: no detector).
        """
        metadata = self.metadata
        classes = metadata.classes
        by_class = {
            name: min(round(float(p), 4), MAX_SHOWN_PROBABILITY) for name, p in zip(classes, probabilities, strict=True)
        }
        best = int(np.argmax(probabilities))
        positive_probability = float(sum(probabilities[classes.index(name)] for name in metadata.positive_classes))
        conformal_set = prediction_set(probabilities, classes, metadata.conformal) if metadata.conformal else None
        if conformal_set is not None:
            conformal_set = widened_set(conformal_set, probabilities, positive_probability, metadata, unfamiliar)
        tier = answer_tier(
            classes[best], conformal_set, metadata.positive_classes, positive_probability >= metadata.threshold
        )
        positives = set(metadata.positive_classes)
        if conformal_set is None:
            uncertain = True if unfamiliar else None
        else:
            mixed = bool(positives.intersection(conformal_set)) and bool(set(conformal_set) - positives)
            uncertain = bool(unfamiliar) or mixed
        prediction = Prediction(
            label=classes[best],
            probabilities=by_class,
            confidence=min(round(float(probabilities[best]), 4), MAX_SHOWN_PROBABILITY),
            suspicious=tier != TIER_CLEAR,
            positive_probability=min(round(positive_probability, 4), MAX_SHOWN_PROBABILITY),
            threshold=metadata.threshold,
            prediction_set=conformal_set,
            uncertain=uncertain,
            tier=tier,
            unfamiliar=unfamiliar,
        )
        coverage = metadata.conformal.coverage if metadata.conformal else None
        prediction.notes = answer_notes(prediction, metadata.positive_classes, coverage)
        return prediction


def widened_set(
    conformal_set: list[str],
    probabilities: np.ndarray,
    positive_probability: float,
    metadata: BundleMetadata,
    unfamiliar: bool | None,
) -> list[str]:
    """The conformal set, widened so that it agrees with the flag; classes most probable first, the label first.

    Screening may only ask for review more often: when the summed positive probability reaches the
    threshold, the most probable positive class joins the set (it was not ruled out); when the slice
    is unfamiliar, every positive class does (the model's probabilities cannot be trusted to exclude one).
    """
    classes = metadata.classes
    members = set(conformal_set)
    positives = [name for name in classes if name in metadata.positive_classes]
    if positives and positive_probability >= metadata.threshold and not members.intersection(positives):
        members.add(max(positives, key=lambda name: probabilities[classes.index(name)]))
    if unfamiliar:
        members.update(positives)
    label = classes[int(np.argmax(probabilities))]
    rest = sorted(members - {label}, key=lambda name: -probabilities[classes.index(name)])
    return [label, *rest]


def answer_tier(label: str, conformal_set: list[str] | None, positive_classes: list[str], threshold_met: bool) -> Tier:
    """``suspicious``: a flagged class is the label; ``not_excluded``: one is in the set (or, without a set,
    the positive probability reaches the threshold) but is not the label; ``clear`` otherwise."""
    if label in positive_classes:
        return TIER_SUSPICIOUS
    if conformal_set is not None:
        return TIER_NOT_EXCLUDED if set(positive_classes).intersection(conformal_set) else TIER_CLEAR
    return TIER_NOT_EXCLUDED if threshold_met else TIER_CLEAR


def answer_notes(prediction: Prediction, positive_classes: list[str], coverage: float | None) -> list[str]:
    """Plain words on what this answer's tier and set mean (the page and scripts show them as they are)."""
    notes = []
    if prediction.unfamiliar:
        notes.append(UNFAMILIAR_NOTE)
    answer_set = prediction.prediction_set
    if answer_set is not None and len(answer_set) > 1 and not set(positive_classes).intersection(answer_set):
        notes.append(
            f"The model cannot tell {' from '.join(answer_set)} here, but {' and '.join(positive_classes)} "
            f"is outside the set that holds the true class for about {round((coverage or 0.9) * 100)} cases in 100: "
            "no doubt about malignancy."
        )
    return notes
