"""The serving path from uploaded bytes to predictions, whatever the format: ``classify_upload`` for a request,
``classify_batch`` for the studies and archive workers' many uploads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from pydantic import BaseModel, Field

from lungscan.bundle.metadata import BundleMetadata
from lungscan.errors import LungScanError, PayloadTooLargeError
from lungscan.inputs.dicom import DicomFile, DicomOptions, decode_dicom, looks_like_dicom, read_dicom, read_dicom_header
from lungscan.inputs.dicom_budget import DicomBudget
from lungscan.inputs.imaging import DEFAULT_LIMITS, DecodedImage, ImageLimits, decode_image, open_image
from lungscan.model.classifier import BATCH_GROUP, Classifier, Prediction

# Slices in one study: 64 CT slices fit Lambda's 6 MB request as compressed PNG/JPEG.
MAX_STUDY_SLICES = 64
# Pixels in one study, summed from the headers: 64 slices of 1024x1024 (a CT series is 512x512),
# or four of the largest single image. Bounds a study's decoding time as max_pixels bounds a slice's.
MAX_STUDY_PIXELS = 64 * 1024 * 1024
# Pixels a study decodes at full size, in all: 64 slices of 512x512 (a CT series). Past it, each slice is decoded
# at reduced size (ImageLimits.max_decoded_pixels), to at most its share: 64 slices of 1024x1024 decode at 512x512.
MAX_STUDY_DECODED_PIXELS = 64 * 512 * 512


class Window(BaseModel):
    """A CT display window in Hounsfield units."""

    center: float = Field(ge=-2000, le=4000)
    width: float = Field(gt=0, le=10000)


class UploadOptions(BaseModel):
    """What a request may choose about reading and explaining its images."""

    model_config = {"extra": "ignore"}

    explain: bool = Field(default=False, description="Add a Grad-CAM heatmap overlay (PNG, base64)")
    explain_class: str | None = Field(default=None, max_length=64, description="Class to explain; the label if absent")
    window: Window | None = Field(default=None, description="DICOM window; the bundle's (lung window) if absent")
    frame: int | None = Field(default=None, ge=0, description="Frame of a multi-frame DICOM; the middle one if absent")
    all_frames: bool = Field(default=False, description="Classify every frame of a multi-frame DICOM as a study")
    allow_non_ct: bool = Field(default=False, description="Accept DICOM modalities other than CT")


@dataclass(frozen=True)
class SliceInput:
    """What an answer reports about one decoded slice; kept once its pixels are dropped."""

    format: str
    width: int
    height: int
    window: dict[str, float] | None
    frame: int | None

    @classmethod
    def of(cls, decoded: DecodedImage) -> SliceInput:
        return cls(decoded.format, decoded.width, decoded.height, decoded.window, decoded.meta.get("frame"))


@dataclass
class ClassifiedUpload:
    """One prediction per slice (one for a single image), and the slice the answer shows images of."""

    predictions: list[Prediction]
    inputs: list[SliceInput]
    is_study: bool
    focus: int  # the single image, or the study's slice with the highest positive_probability
    focus_image: DecodedImage  # its heatmap (when explained) and its preview go in the answer


def bundle_dicom_options(metadata: BundleMetadata, options: UploadOptions | None = None) -> DicomOptions:
    """The request's window, else the one the bundle declares it was trained with."""
    options = options or UploadOptions()
    window = options.window or metadata.preprocessing.dicom_window
    return DicomOptions(window=window.model_dump(), frame=options.frame, allow_non_ct=options.allow_non_ct)


def classify_upload(
    classifier: Classifier,
    files: list[bytes],
    options: UploadOptions,
    *,
    study: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> ClassifiedUpload:
    """Classify one uploaded image (``files[0]``), or the slices of one study (``study`` or ``all_frames``).

    Every limit is checked from the bytes and headers before any pixel is decoded.

    Raises:
        PayloadTooLargeError: a file over ``limits.max_bytes``; a study over its slices or pixels.
        and whatever decoding (``decode_image``, ``decode_dicom``) and ``Classifier.classify`` raise.
    """
    for data in files:
        if len(data) > limits.max_bytes:
            raise PayloadTooLargeError(f"The image is larger than the {limits.max_bytes // 2**20} MB limit.")
    dicom = bundle_dicom_options(classifier.metadata, options)
    if not (study or options.all_frames):
        decoded = decode_upload(files[0], limits, dicom)
        prediction = classifier.classify(decoded, explain=options.explain, explain_class=options.explain_class)
        return ClassifiedUpload([prediction], [SliceInput.of(decoded)], is_study=False, focus=0, focus_image=decoded)
    predictions: list[Prediction] = []
    inputs: list[SliceInput] = []
    focus, focus_image = 0, None
    budget = DicomBudget()  # every DICOM parse of the request, headers and pixels, spends from it
    slices = plan_study(files, limits, dicom, budget=budget)
    for index, decoded in enumerate(decode_study(slices, study_limits(slices, limits), dicom, budget)):
        # Decode, classify, drop: at most this slice and the most suspicious so far are held.
        predictions.append(classifier.classify(decoded))
        inputs.append(SliceInput.of(decoded))
        if focus_image is None or predictions[index].positive_probability > predictions[focus].positive_probability:
            focus, focus_image = index, decoded
        del decoded
    assert focus_image is not None  # a study has a slice: a request without an image is refused before the core
    if options.explain:  # explain the slice that matters; all heatmaps would overflow the response
        predictions[focus] = classifier.classify(focus_image, explain=True, explain_class=options.explain_class)
    return ClassifiedUpload(predictions, inputs, is_study=True, focus=focus, focus_image=focus_image)


# Uploads a batch decodes and holds at once before one pass of the gate and the model: the classifier's group, so
# that a group's pixels are still in the cache when they are classified.
BATCH_CHUNK = BATCH_GROUP


@dataclass
class SliceResult:
    """One upload of a batch: its prediction, or the error a single request for it would have got."""

    input: SliceInput | None  # what was decoded; None when the upload could not be read
    prediction: Prediction | None = None
    error: LungScanError | None = None  # its ``code`` is the API's (``not_ct_like``, ``payload_too_large``...)


def classify_batch(
    classifier: Classifier,
    files: Sequence[bytes],
    options: UploadOptions | None = None,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    chunk: int = BATCH_CHUNK,
) -> list[SliceResult]:
    """Classify many uploads, one slice each: the studies and archive workers' entry.

    One result per upload, in order: the prediction a single ``POST /predict`` of it would have got
    (:func:`classify_upload`, same checks, same answer), or the error it would have got (too large,
    unreadable, not a CT slice...) in ``error``: a bad upload never stops the others, and nothing is raised
    for one. A multi-frame DICOM is read as a single request reads it (``options.frame``, else its middle
    frame); ``explain`` and ``all_frames`` are not read (a worker explains the slice it reports through
    :func:`classify_upload`). Uploads are decoded ``chunk`` at a time, the gate scores the chunk at once
    and the model runs once on what it let through; decoded pixels are dropped after their chunk.
    """
    options = options or UploadOptions()
    dicom = bundle_dicom_options(classifier.metadata, options)
    results: list[SliceResult] = []
    pending: list[tuple[SliceResult, DecodedImage]] = []

    def flush() -> None:
        answers = classifier.classify_batch([decoded for _, decoded in pending])
        for (result, _), answer in zip(pending, answers, strict=True):
            if isinstance(answer, Prediction):
                result.prediction = answer
            else:
                result.error = answer
        pending.clear()

    for data in files:
        try:
            if len(data) > limits.max_bytes:
                raise PayloadTooLargeError(f"The image is larger than the {limits.max_bytes // 2**20} MB limit.")
            decoded = decode_upload(data, limits, dicom)
        except LungScanError as error:
            results.append(SliceResult(None, error=error))
            continue
        results.append(SliceResult(SliceInput.of(decoded)))
        pending.append((results[-1], decoded))
        del decoded
        if len(pending) >= chunk:
            flush()
    if pending:
        flush()
    return results


def decode_upload(data: bytes, limits: ImageLimits = DEFAULT_LIMITS, dicom: DicomOptions | None = None) -> DecodedImage:
    """Decode a DICOM, PNG, JPEG, BMP or TIFF upload, sniffing the format from its bytes.

    The declared content type and file name are ignored: bytes decide, so a renamed
    file cannot route itself to the wrong decoder.
    """
    if looks_like_dicom(data):
        return decode_dicom(data, limits, dicom)
    return decode_image(data, limits)


@dataclass(frozen=True)
class StudySlice:
    """One slice of a study, known from its file's header; decoded only when asked."""

    data: bytes
    width: int
    height: int
    frame: int | None = None  # the frame of a DICOM; None for a raster image

    def decode(
        self,
        limits: ImageLimits = DEFAULT_LIMITS,
        dicom: DicomOptions | None = None,
        parsed: DicomFile | None = None,
    ) -> DecodedImage:
        """``parsed``: this slice's DICOM file already read (:func:`read_dicom`), else it is read here."""
        if self.frame is None:
            return decode_image(self.data, limits)
        return decode_dicom(parsed or self.data, limits, replace(dicom or DicomOptions(), frame=self.frame))


def decode_study(
    slices: list[StudySlice],
    limits: ImageLimits = DEFAULT_LIMITS,
    dicom: DicomOptions | None = None,
    budget: DicomBudget | None = None,
) -> Iterator[DecodedImage]:
    """The slices decoded in order, one at a time; a DICOM file is parsed once for all its frames."""
    parsed: tuple[bytes, DicomFile] | None = None
    for item in slices:
        if item.frame is not None and (parsed is None or parsed[0] is not item.data):
            parsed = None  # the previous file goes before the next is read
            parsed = (item.data, read_dicom(item.data, limits, dicom, budget))
        yield item.decode(limits, dicom, parsed[1] if parsed is not None and item.frame is not None else None)


def study_limits(slices: list[StudySlice], limits: ImageLimits = DEFAULT_LIMITS) -> ImageLimits:
    """``limits``, with each slice's share of ``MAX_STUDY_DECODED_PIXELS`` when the study holds more in all."""
    pixels = sum(item.width * item.height for item in slices)
    if pixels <= MAX_STUDY_DECODED_PIXELS:
        return limits
    share = max(1, MAX_STUDY_DECODED_PIXELS // len(slices))
    return replace(limits, max_decoded_pixels=min(limits.max_decoded_pixels, share))


def plan_study(
    files: list[bytes],
    limits: ImageLimits = DEFAULT_LIMITS,
    dicom: DicomOptions | None = None,
    max_slices: int = MAX_STUDY_SLICES,
    max_pixels: int = MAX_STUDY_PIXELS,
    budget: DicomBudget | None = None,
) -> list[StudySlice]:
    """The slices of a study (every frame of every DICOM, each raster image), from the headers alone.

    Nothing is decoded here: the caller decodes, classifies and drops one slice at a time,
    so a study holds one decoded slice in memory, whatever its size.

    Args:
        budget: what pydicom may parse for the whole request (the DICOM headers read here, then the pixels).

    Raises:
        PayloadTooLargeError: more than ``max_slices`` slices or ``max_pixels`` pixels in all.
        and whatever a file's header check raises (see ``decode_image`` and ``decode_dicom``).
    """
    slices: list[StudySlice] = []
    pixels = 0
    budget = budget or DicomBudget()
    for data in files:
        if looks_like_dicom(data):
            width, height, frames = read_dicom_header(data, limits, dicom, budget)
            entries = [StudySlice(data, width, height, frame) for frame in range(frames)]
        else:
            width, height = open_image(data, limits).size
            entries = [StudySlice(data, width, height)]
        if len(slices) + len(entries) > max_slices:
            raise PayloadTooLargeError(f"A study may hold at most {max_slices} slices.")
        pixels += width * height * len(entries)
        if pixels > max_pixels:
            raise PayloadTooLargeError(
                f"A study may hold at most {max_pixels // 2**20} million pixels in all "
                f"(for example {max_slices} slices of 1024x1024)."
            )
        slices.extend(entries)
    return slices
