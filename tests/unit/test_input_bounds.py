"""Resource exhaustion (issue 24): every input is bounded before the expensive step.

Each hostile file is built here (``tests/hostile_inputs.py``), a few times past its limit, and each test asserts
the refusal's code or the work done (what pydicom parsed, what Pillow decoded, at what size), never a time:
``benchmarks/bench_hostile_inputs.py`` measures the same files at the sizes the issue found.
"""

from __future__ import annotations

import base64
import io
import json

import pydicom
import pydicom.filereader
import pytest
from helpers import ct_like_image, encode, make_event
from hostile_inputs import (
    ct_dicom,
    deflated_dicom,
    dicom_bytes,
    dicom_with_empty_elements,
    dicom_with_empty_items,
    dicom_with_items_in_a_defined_length_sequence,
    float_tiff,
    jpeg_slice,
    jpeg_with_filler,
    png_16_bit,
    png_chunk,
    png_parts,
    png_with_empty_chunks,
    png_with_split_data,
    rle_bmp,
)
from PIL import Image

from lungscan.inputs import imaging
from lungscan.inputs.dicom import WINDOW_BAND_PIXELS, decode_dicom
from lungscan.inputs.dicom_budget import MAX_DICOM_ELEMENTS, MAX_DICOM_ITEMS
from lungscan.inputs.imaging import ImageLimits, decode_image
from lungscan.inputs.prescan import MAX_JPEG_SEGMENTS, MAX_PNG_CHUNKS
from lungscan.uploads import MAX_STUDY_DECODED_PIXELS


def call(app_module, lambda_context, payload: dict) -> tuple[int, dict]:
    event = make_event(body=json.dumps(payload), content_type="application/json")
    result = app_module.lambda_handler(event, lambda_context)
    return result["statusCode"], json.loads(result["body"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def framed(data: bytes, framing: str) -> dict:
    return {"image": b64(data)} if framing == "single" else {"images": [b64(data)]}


def assert_refused(status: int, answer: dict, expected_status: int, expected_code: str) -> None:
    assert (status, answer.get("error", {}).get("code")) == (expected_status, expected_code), answer
    assert "Traceback" not in answer["error"]["message"]


@pytest.fixture
def pydicom_work(monkeypatch) -> dict[str, int]:
    """Counts what pydicom parses: sequence items (a Dataset each), data elements, whole files."""
    work = {"items": 0, "elements": 0, "files": 0}
    read_item, generate, dcmread = (
        pydicom.filereader.read_sequence_item,
        pydicom.filereader.data_element_generator,
        pydicom.dcmread,
    )

    def counted_items(*args, **kwargs):
        item = read_item(*args, **kwargs)
        work["items"] += item is not None  # None: the sequence's end
        return item

    def counted_elements(*args, **kwargs):
        for element in generate(*args, **kwargs):
            work["elements"] += 1
            yield element

    def counted_files(*args, **kwargs):
        work["files"] += 1
        return dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom.filereader, "read_sequence_item", counted_items)
    monkeypatch.setattr(pydicom.filereader, "data_element_generator", counted_elements)
    monkeypatch.setattr(pydicom, "dcmread", counted_files)
    return work


# ---------------------------------------------------------------- 1. a DICOM of 520,000 empty sequence items


@pytest.mark.parametrize("framing", ["single", "study"])
def test_a_dicom_with_too_many_sequence_items_is_refused_before_pydicom_parses_one(
    app_module, lambda_context, pydicom_work, framing
):
    # 520,000 items took 41.7 s (the study's header read as long); 3x the limit here, 240 KB.
    status, answer = call(app_module, lambda_context, framed(dicom_with_empty_items(3 * MAX_DICOM_ITEMS), framing))
    assert_refused(status, answer, 422, "too_many_elements")
    assert "sequence items" in answer["error"]["message"]
    assert pydicom_work["items"] == 0


def test_items_of_a_sequence_pydicom_would_parse_later_are_counted_too(app_module, lambda_context, pydicom_work):
    # A defined-length sequence is parsed when its tag is first read, after dcmread: counted from the bytes alike.
    data = dicom_with_items_in_a_defined_length_sequence(2 * MAX_DICOM_ITEMS)
    status, answer = call(app_module, lambda_context, {"image": b64(data)})
    assert_refused(status, answer, 422, "too_many_elements")
    assert pydicom_work["items"] == 0


def test_a_dicom_with_ordinary_sequences_is_read_whole(app_module, lambda_context, pydicom_work):
    status, answer = call(app_module, lambda_context, {"image": b64(dicom_with_empty_items(500))})
    assert status == 200, answer
    assert pydicom_work["items"] == 500


# ---------------------------------------------------------------- 3. ... and one of 400,000 empty elements


@pytest.mark.parametrize("framing", ["single", "study"])
def test_pydicom_stops_at_the_element_budget(app_module, lambda_context, pydicom_work, framing):
    # A valid CT slice followed by 400,000 empty elements got a verdict after 2.4 s of parsing.
    data = dicom_with_empty_elements(2 * MAX_DICOM_ELEMENTS)
    status, answer = call(app_module, lambda_context, framed(data, framing))
    assert_refused(status, answer, 422, "too_many_elements")
    assert "data elements" in answer["error"]["message"]
    assert pydicom_work["elements"] <= MAX_DICOM_ELEMENTS


def test_the_element_budget_is_the_whole_requests(app_module, lambda_context, pydicom_work):
    # Each file alone is within the budget; a study reads each twice (header, then pixels), all from one budget.
    data = dicom_with_empty_elements(MAX_DICOM_ELEMENTS // 5)
    status, answer = call(app_module, lambda_context, {"image": b64(data)})
    assert status == 200, answer
    pydicom_work["elements"] = 0
    status, answer = call(app_module, lambda_context, {"images": [b64(data)] * 4})
    assert_refused(status, answer, 422, "too_many_elements")
    assert pydicom_work["elements"] <= MAX_DICOM_ELEMENTS


def test_the_frames_of_a_dicom_are_read_from_one_parse(app_module, lambda_context, pydicom_work):
    dataset = ct_dicom(32)
    dataset.NumberOfFrames = 6
    dataset.PixelData = dataset.PixelData * 6
    status, answer = call(app_module, lambda_context, {"image": b64(dicom_bytes(dataset)), "all_frames": True})
    assert (status, answer.get("study", {}).get("slices")) == (200, 6), answer
    assert pydicom_work["files"] == 2  # its header, then its pixels: not once more per frame


# ---------------------------------------------------------------- 2. RLE-compressed BMP


@pytest.mark.parametrize("rle4", [False, True], ids=["RLE8", "RLE4"])
def test_rle_bmp_is_refused_from_its_header(app_module, lambda_context, monkeypatch, rle4):
    # 4096 rows of one pixel each: 17 KB, and 8.1 s in Pillow's pure-Python RLE decoder.
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(self.format) or None)
    status, answer = call(app_module, lambda_context, {"image": b64(rle_bmp(4096, rle4=rle4))})
    assert_refused(status, answer, 415, "compressed_bmp")
    assert loaded == []


def test_an_uncompressed_bmp_is_still_read(app_module, lambda_context):
    status, answer = call(app_module, lambda_context, {"image": b64(encode(ct_like_image(128), "BMP"))})
    assert (status, answer["input"]["format"]) == (200, "BMP"), answer


# ---------------------------------------------------------------- 3. bloated PNG and JPEG


@pytest.fixture
def pillow_opens(monkeypatch) -> list[int]:
    opened: list[int] = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(1) or real(fp, *a, **k))
    return opened


@pytest.mark.parametrize("kind", ["empty chunks", "split data"])
@pytest.mark.parametrize("framing", ["single", "study"])
def test_a_png_of_thousands_of_chunks_is_refused_before_pillow_reads_it(
    app_module, lambda_context, pillow_opens, kind, framing
):
    # 340,000 chunks (4 MB) got a verdict after 1.5-4.3 s of Pillow walking them.
    build = png_with_empty_chunks if kind == "empty chunks" else png_with_split_data
    data = build(ct_like_image(256), 5 * MAX_PNG_CHUNKS)
    status, answer = call(app_module, lambda_context, framed(data, framing))
    assert_refused(status, answer, 422, "too_many_chunks")
    assert pillow_opens == []


def test_a_png_split_as_encoders_split_it_is_read(app_module, lambda_context):
    head, stream, end = png_parts(ct_like_image(256))
    size = -(-len(stream) // (MAX_PNG_CHUNKS - 2))  # IHDR, IEND and as many data chunks as allowed
    data = head + b"".join(png_chunk(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size)) + end
    status, answer = call(app_module, lambda_context, {"image": b64(data)})
    assert status == 200, answer


@pytest.mark.parametrize("filler", [b"\xff\xfe\x00\x02", b"\xff"], ids=["comment segments", "fill bytes"])
def test_a_jpeg_of_thousands_of_segments_is_refused_before_pillow_reads_it(
    app_module, lambda_context, pillow_opens, filler
):
    # 4 MB of fill bytes before the first scan cost Pillow's header reader 1.9 s, a byte at a time.
    data = jpeg_with_filler(encode(ct_like_image(256), "JPEG"), filler, 5 * MAX_JPEG_SEGMENTS)
    status, answer = call(app_module, lambda_context, {"image": b64(data)})
    assert_refused(status, answer, 422, "too_many_segments")
    assert pillow_opens == []


def test_a_dicom_jpeg_frame_of_thousands_of_segments_is_refused_before_pillow_reads_it(
    app_module, lambda_context, pillow_opens
):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    jpeg = encode(ct_like_image(64), "JPEG")
    dataset = ct_dicom(64)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelData = encapsulate([jpeg_with_filler(jpeg, b"\xff", 5 * MAX_JPEG_SEGMENTS)])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    status, answer = call(app_module, lambda_context, {"image": b64(dicom_bytes(dataset))})
    assert_refused(status, answer, 422, "too_many_segments")
    assert pillow_opens == []


# ---------------------------------------------------------------- 4. the largest legitimate inputs


@pytest.fixture
def classified_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image the classifier is handed (what the gate, the model and explain work on)."""
    from lungscan.model.classifier import Classifier

    sizes: list[tuple[int, int]] = []
    real = Classifier.classify
    monkeypatch.setattr(
        Classifier,
        "classify",
        lambda self, decoded, *a, **k: sizes.append(decoded.image.size) or real(self, decoded, *a, **k),
    )
    return sizes


def test_a_4096_jpeg_is_decoded_at_half_size_by_the_jpeg_decoder(
    app_module, lambda_context, classified_sizes, monkeypatch
):
    reduced = []
    real_reduce = Image.Image.reduce
    monkeypatch.setattr(
        Image.Image, "reduce", lambda self, *a, **k: reduced.append(self.size) or real_reduce(self, *a, **k)
    )
    data = jpeg_slice(ct_like_image(512), 4096, quality=50)
    status, answer = call(app_module, lambda_context, {"image": b64(data), "explain": True})
    assert status == 200, answer
    assert (answer["input"]["width"], answer["input"]["height"]) == (4096, 4096)  # the answer describes the upload
    assert classified_sizes == [(2048, 2048)]
    assert (4096, 4096) not in reduced  # DCT scaling (draft mode): never decoded at 4096, then reduced
    assert Image.open(io.BytesIO(base64.b64decode(answer["heatmap"]))).size == (1024, 1024)


@pytest.mark.parametrize("kind", ["16-bit PNG", "float TIFF"])
def test_a_large_16_bit_or_float_image_is_reduced_before_it_is_converted(monkeypatch, kind):
    converted = []
    real = imaging.to_8bit
    monkeypatch.setattr(imaging, "to_8bit", lambda image: converted.append((image.mode, image.size)) or real(image))
    data = (png_16_bit if kind == "16-bit PNG" else float_tiff)(ct_like_image(256), 1024)
    decoded = decode_image(data, ImageLimits(max_decoded_pixels=512 * 512))
    assert decoded.image.size == (512, 512)
    assert (decoded.width, decoded.height) == (1024, 1024)
    assert converted == [("I" if kind == "16-bit PNG" else "F", (512, 512))]  # stretched at the reduced size


def test_images_within_the_decoding_size_are_decoded_whole():
    data = encode(ct_like_image(300))
    decoded = decode_image(data, ImageLimits(max_decoded_pixels=300 * 300))
    assert decoded.image.tobytes() == Image.open(io.BytesIO(data)).tobytes()
    assert decoded.source_size is None


def test_a_large_dicom_is_windowed_a_band_at_a_time_then_reduced(monkeypatch):
    import pydicom.pixels

    seen = []
    real = pydicom.pixels.apply_modality_lut
    monkeypatch.setattr(pydicom.pixels, "apply_modality_lut", lambda arr, ds: seen.append(arr.size) or real(arr, ds))
    data = deflated_dicom(1000, 1024)
    decoded = decode_dicom(data, ImageLimits(max_decoded_pixels=512 * 512))
    assert decoded.image.size == (512, 500)
    assert (decoded.width, decoded.height) == (1024, 1000)
    assert sum(seen) == 1024 * 1000 and max(seen) <= WINDOW_BAND_PIXELS  # never a float copy of the whole slice


def test_windowing_by_bands_gives_the_same_image_as_whole(monkeypatch):
    from lungscan.inputs import dicom

    data = dicom_bytes(ct_dicom(96))
    whole = decode_dicom(data).image.tobytes()  # 96x96: one band
    monkeypatch.setattr(dicom, "WINDOW_BAND_PIXELS", 96 * 7)  # 7 rows a band, the last one short
    assert decode_dicom(data).image.tobytes() == whole


def test_a_study_over_its_decoding_budget_decodes_each_slice_at_reduced_size(
    app_module, lambda_context, classified_sizes
):
    # 64 slices of 1024x1024 took 3.45 s; 20 here are 21 million pixels, over the 16 million decoded whole.
    slices = [b64(jpeg_slice(ct_like_image(256, seed=seed), 1024, quality=50)) for seed in range(20)]
    status, answer = call(app_module, lambda_context, {"images": slices})
    assert (status, answer.get("study", {}).get("slices")) == (200, 20), answer
    assert {tuple(size) for size in classified_sizes} == {(512, 512)}  # each within its share of the budget
    assert all(result["input"]["width"] == 1024 for result in answer["slices"])
    assert MAX_STUDY_DECODED_PIXELS < 20 * 1024 * 1024


def test_a_study_of_ordinary_slices_is_decoded_whole(app_module, lambda_context, classified_sizes):
    slices = [b64(encode(ct_like_image(512, seed=seed), "JPEG")) for seed in range(4)]
    status, answer = call(app_module, lambda_context, {"images": slices})
    assert status == 200, answer
    assert set(classified_sizes) == {(512, 512)}
    assert MAX_STUDY_DECODED_PIXELS >= 64 * 512 * 512  # a whole 64-slice 512x512 series is never reduced
