"""The answers' shapes, from the core's results: what ``POST /predict`` and ``GET /model`` return."""

import base64
import io
from collections import Counter
from typing import Any

from api_schemas import (
    InputInfo,
    ModelDescription,
    ModelInfo,
    PredictResponse,
    SliceResult,
    StudyResponse,
    StudySummary,
)
from PIL import Image
from pydantic import BaseModel

from lungscan.errors import PayloadTooLargeError
from lungscan.model.classifier import (
    DISCLAIMER,
    TIER_CLEAR,
    TIER_NOT_EXCLUDED,
    TIER_SUSPICIOUS,
    VERDICT_CLEAR,
    VERDICT_SUSPICIOUS,
    Classifier,
    Prediction,
)
from lungscan.uploads import ClassifiedUpload, SliceInput

# Lambda returns at most 6 MB per synchronous answer, envelope included.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 - 64 * 1024
# Heatmaps and previews are shown, not measured: a 4096x4096 overlay alone would overflow the answer.
MAX_IMAGE_SIDE = 1024


def predict_answer(
    classifier: Classifier, result: ClassifiedUpload, request_id: str
) -> PredictResponse | StudyResponse:
    """The answer to one image, or to a study: per slice, plus a summary led by its most suspicious slice.

    Raises:
        PayloadTooLargeError: the answer would not fit Lambda's 6 MB (``response_too_large``).
    """
    slices = [
        _slice_result(info, prediction, result if index == result.focus else None)
        for index, (info, prediction) in enumerate(zip(result.inputs, result.predictions, strict=True))
    ]
    common: dict[str, Any] = {  # the fields both answers share
        "threshold": classifier.metadata.threshold,
        "model": ModelInfo(
            name=classifier.metadata.name, version=classifier.metadata.version, sha256=classifier.metadata.sha256
        ),
        "disclaimer": DISCLAIMER,
        "request_id": request_id,
    }
    if result.is_study:
        predictions, focus = result.predictions, result.focus
        suspicious = any(prediction.suspicious for prediction in predictions)
        ranked = [TIER_CLEAR, TIER_NOT_EXCLUDED, TIER_SUSPICIOUS]
        summary = StudySummary(
            slices=len(predictions),
            suspicious=suspicious,
            tier=max((prediction.tier for prediction in predictions), key=ranked.index),
            verdict=VERDICT_SUSPICIOUS if suspicious else VERDICT_CLEAR,
            most_suspicious_slice=focus,
            max_positive_probability=predictions[focus].positive_probability,
            max_suspicion=predictions[focus].positive_probability,
            label_counts=dict(Counter(prediction.label for prediction in predictions)),
            uncertain=None if predictions[0].uncertain is None else any(p.uncertain for p in predictions),
            uncertain_slices=[index for index, prediction in enumerate(predictions) if prediction.uncertain],
            unfamiliar_slices=[index for index, prediction in enumerate(predictions) if prediction.unfamiliar],
        )
        answer: PredictResponse | StudyResponse = StudyResponse(study=summary, slices=slices, **common)
    else:
        (prediction,) = result.predictions
        answer = PredictResponse(**slices[0].model_dump(), prediction=prediction.verdict, **common)
    _check_answer_size(answer)
    return answer


def describe_model(classifier: Classifier, is_default: bool, source: str) -> ModelDescription:
    metadata = classifier.metadata
    return ModelDescription(
        name=metadata.name,
        version=metadata.version,
        default=is_default,
        classes=metadata.classes,
        positive_classes=metadata.positive_classes,
        threshold=metadata.threshold,
        input=metadata.input.model_dump(),
        metrics=metadata.metrics.model_dump(mode="json"),
        dataset=metadata.dataset,
        intended_use=metadata.intended_use,
        purpose=metadata.purpose,
        sha256=metadata.sha256,
        source=source,
    )


def _slice_result(info: SliceInput, prediction: Prediction, focus: ClassifiedUpload | None) -> SliceResult:
    """``focus``: given for the slice whose heatmap and (DICOM) preview the answer carries."""
    decoded = focus.focus_image if focus is not None else None
    return SliceResult(
        label=prediction.label,
        tier=prediction.tier,
        tier_text=prediction.tier_words,
        verdict=prediction.verdict,
        suspicious=prediction.suspicious,
        confidence=prediction.confidence,
        positive_probability=prediction.positive_probability,
        suspicion=prediction.positive_probability,
        probabilities=prediction.probabilities,
        prediction_set=prediction.prediction_set,
        uncertain=prediction.uncertain,
        unfamiliar=prediction.unfamiliar,
        notes=prediction.notes,
        input=InputInfo(format=info.format, width=info.width, height=info.height, window=info.window, frame=info.frame),
        heatmap=_png_base64(prediction.heatmap) if decoded is not None and prediction.heatmap is not None else None,
        explained_class=prediction.explained_class if decoded is not None else None,
        preview=_png_base64(decoded.image) if decoded is not None and decoded.format == "DICOM" else None,
    )


def _check_answer_size(answer: BaseModel) -> None:
    """Lambda turns an answer over 6 MB into a bare 502: refuse it here, with a reason, instead."""
    if len(answer.model_dump_json()) > MAX_RESPONSE_BYTES:
        raise PayloadTooLargeError(
            f"The answer would exceed the {MAX_RESPONSE_BYTES // 2**20} MB Lambda can return: "
            "ask without explain, or send fewer slices.",
            code="response_too_large",
        )


def shown_image(image: Image.Image) -> Image.Image:
    """The image as an answer shows it: at most ``MAX_IMAGE_SIDE`` on its longer edge."""
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # keeps the aspect ratio
    return image


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    shown_image(image).save(buffer, format="PNG", compress_level=1)  # fast: level 6 costs ~100 ms on 512x512
    return base64.b64encode(buffer.getvalue()).decode("ascii")
