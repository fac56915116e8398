"""Attacks on the decoders and the request path (issue 10): each gets a clear 4xx, decided before
the expensive step, or the right 200. The files are built here, small, with the attack's shape."""

from __future__ import annotations

import base64
import email.parser
import io
import json
import struct
import weakref
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import FIXTURES_DIR, ct_dataset, ct_like_image, encode, make_event
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from lungscan.inputs.imaging import to_8bit

CT_SMALL = get_testdata_file("CT_small.dcm")


def call(app_module, lambda_context, event) -> tuple[int, dict]:
    result = app_module.lambda_handler(event, lambda_context)
    return result["statusCode"], json.loads(result["body"])


def json_event(payload: dict, **kwargs) -> dict:
    return make_event(body=json.dumps(payload), content_type="application/json", **kwargs)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_refused(status: int, answer: dict, expected_status: int, expected_code: str) -> None:
    assert (status, answer.get("error", {}).get("code")) == (expected_status, expected_code), answer
    assert "Traceback" not in answer["error"]["message"]


def dicom_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------- 1. deflated DICOM bomb


def explicit_element(group: int, element: int, vr: bytes, length: int) -> bytes:
    """An Explicit VR Little Endian element header (the value follows)."""
    if vr in (b"OB", b"OW", b"UN"):
        return struct.pack("<HH", group, element) + vr + b"\0\0" + struct.pack("<I", length)
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", length)


def deflated_dicom_bomb(inflated_bytes: int) -> bytes:
    """A CT DICOM with the Deflated Explicit VR transfer syntax whose dataset inflates to ``inflated_bytes``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta)
    dataset = (
        explicit_element(0x0008, 0x0060, b"CS", 2)
        + b"CT"
        + explicit_element(0x0028, 0x0010, b"US", 2)
        + struct.pack("<H", 512)
        + explicit_element(0x0028, 0x0011, b"US", 2)
        + struct.pack("<H", 512)
        + explicit_element(0x7FE0, 0x0010, b"OB", inflated_bytes)
    )
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflate.compress(dataset)]
    zeros = b"\0" * 2**20
    for _ in range(inflated_bytes // len(zeros)):
        chunks.append(deflate.compress(zeros))
    chunks.append(deflate.flush())
    return header.getvalue() + b"".join(chunks)


@pytest.fixture
def pydicom_inflations(monkeypatch) -> list[int]:
    """Records every time pydicom itself inflates a dataset (unbounded): it never should."""
    import pydicom.filereader

    inflated: list[int] = []
    real_decompress = zlib.decompress
    monkeypatch.setattr(
        pydicom.filereader.zlib,
        "decompress",
        lambda *args, **kwargs: inflated.append(1) or real_decompress(*args, **kwargs),
    )
    return inflated


def test_deflated_dicom_bomb_is_inflated_only_up_to_the_cap(app_module, lambda_context, pydicom_inflations):
    bomb = deflated_dicom_bomb(64 * 2**20)  # 64 KB on the wire, 64 MB inflated; the cap is 32 MB
    assert len(bomb) < 100_000
    for event in (
        json_event({"image": b64(bomb)}),
        make_event(body=bomb, content_type="application/dicom", base64_body=True),
        json_event({"images": [b64(bomb)]}),
    ):
        status, answer = call(app_module, lambda_context, event)
        assert_refused(status, answer, 413, "payload_too_large")
        assert "deflated" in answer["error"]["message"]
        assert DeflatedExplicitVRLittleEndian not in answer["error"]["message"]  # named, not echoed
    assert pydicom_inflations == []


def test_an_honest_deflated_dicom_reads_like_its_uncompressed_twin(app_module, lambda_context, pydicom_inflations):
    dataset = ct_dataset()  # real CT pixels: the not-CT gate reads a DICOM's pixels
    plain = dicom_bytes(dataset)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = dicom_bytes(dataset)
    assert len(deflated) < len(plain)
    answers = [call(app_module, lambda_context, json_event({"image": b64(data)})) for data in (plain, deflated)]
    assert [status for status, _ in answers] == [200, 200], answers
    assert answers[0][1]["probabilities"] == answers[1][1]["probabilities"]
    assert answers[0][1]["preview"] == answers[1][1]["preview"]
    assert pydicom_inflations == []


def test_unknown_transfer_syntax_uid_is_not_echoed(app_module, lambda_context):
    dataset = pydicom.dcmread(CT_SMALL)
    dataset.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7.8.9"
    status, answer = call(app_module, lambda_context, json_event({"image": b64(dicom_bytes(dataset))}))
    assert status == 415, answer
    assert "1.2.3.4.5.6.7.8.9" not in answer["error"]["message"]


# ---------------------------------------------------------------- 2. progressive JPEG scan bomb


def jpeg_scan_bomb(size: int, extra_scans: int) -> bytes:
    """A progressive JPEG with ``extra_scans`` copies of its last scan header, each an empty scan."""
    data = encode(ct_like_image(size), "JPEG", progressive=True, quality=50)
    last = data.rfind(b"\xff\xda")
    (length,) = struct.unpack(">H", data[last + 2 : last + 4])
    return data[:-2] + data[last : last + 2 + length] * extra_scans + b"\xff\xd9"


def test_progressive_jpeg_with_too_many_scans_is_refused(app_module, lambda_context, monkeypatch):
    bomb = jpeg_scan_bomb(256, 1000)
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(self.format) or None)  # never decode
    status, answer = call(app_module, lambda_context, json_event({"image": b64(bomb)}))
    assert_refused(status, answer, 422, "too_many_scans")
    assert loaded == []


def test_an_ordinary_progressive_jpeg_is_classified(app_module, lambda_context):
    jpeg = encode(ct_like_image(256), "JPEG", progressive=True)
    assert 1 < jpeg.count(b"\xff\xda") <= 100  # the documented limit
    status, answer = call(app_module, lambda_context, json_event({"image": b64(jpeg)}))
    assert status == 200, answer


# ---------------------------------------------------------------- 3. compressed DICOM larger than its header


def jpeg2000_dicom(codestream_side: int, declared_side: int) -> bytes:
    """A JPEG 2000 CT DICOM whose codestream is ``codestream_side`` square, its header ``declared_side``.

    Its 8-bit values are a CT slice's lung-window grey levels, stored so that HU = -1350 + 1500/255 x value."""
    slice_ = Image.open(FIXTURES_DIR / "ct_normal_256.png").convert("L").resize((codestream_side, codestream_side))
    codestream = encode(slice_, "JPEG2000", no_jp2=True, irreversible=False)
    dataset = pydicom.dcmread(CT_SMALL)
    dataset.Rows = dataset.Columns = declared_side
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.RescaleIntercept, dataset.RescaleSlope = -1350, 1500 / 255
    dataset.PixelData = encapsulate([codestream])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return dicom_bytes(dataset)


def test_codestream_larger_than_the_header_is_refused_before_decoding(app_module, lambda_context, monkeypatch):
    import pydicom.pixels

    decoded = []
    real = pydicom.pixels.pixel_array
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: decoded.append(1) or real(*a, **k))
    status, answer = call(app_module, lambda_context, json_event({"image": b64(jpeg2000_dicom(640, 64))}))
    assert_refused(status, answer, 400, "dimensions_mismatch")
    assert decoded == []
    status, answer = call(app_module, lambda_context, json_event({"image": b64(jpeg2000_dicom(64, 64))}))
    assert status == 200, answer  # the same file, honest about its size, is read
    assert decoded == [1]


# ---------------------------------------------------------------- 4. multipart


def multipart_event(parts: list[tuple[str, bytes]], boundary: str = "xyz", header_extra: str = "") -> dict:
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{header_extra}\r\n\r\n'.encode()
            + value
            + b"\r\n"
            for name, value in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    return make_event(body=body, content_type=f"multipart/form-data; boundary={boundary}", base64_body=True)


def test_a_form_with_thousands_of_parts_is_refused_before_parsing(app_module, lambda_context, ct_png, monkeypatch):
    parsed = []
    real = email.parser.BytesParser.parsebytes
    monkeypatch.setattr(
        email.parser.BytesParser,
        "parsebytes",
        lambda self, text, headersonly=False: parsed.append(len(text)) or real(self, text, headersonly),
    )
    parts = [("file", ct_png)] + [("x", b"y")] * 5000
    status, answer = call(app_module, lambda_context, multipart_event(parts))
    assert_refused(status, answer, 413, "too_many_parts")
    assert max(parsed, default=0) < 1000  # only the Content-Type header was parsed, never the body


def test_a_form_with_a_study_and_its_options_is_within_the_part_limit(app_module, lambda_context):
    slices = [("file", encode(ct_like_image(96, seed=seed))) for seed in range(8)]
    status, answer = call(app_module, lambda_context, multipart_event([*slices, ("explain", b"false")]))
    assert (status, answer.get("study", {}).get("slices")) == (200, 8), answer


@pytest.mark.parametrize("where", ["part header", "content type"])
def test_nested_comments_in_a_header_are_a_400(app_module, lambda_context, ct_png, where):
    if where == "part header":
        event = multipart_event([("file", ct_png)], header_extra="; x=" + "(" * 1000)
    else:
        event = multipart_event([("file", ct_png)])
        event["headers"]["Content-Type"] += " " + "(" * 1000
        event["multiValueHeaders"]["Content-Type"] = [event["headers"]["Content-Type"]]
    status, answer = call(app_module, lambda_context, event)
    assert status == 400, answer
    assert answer["error"]["code"] in ("invalid_multipart", "missing_file")


@pytest.mark.parametrize(
    "header_extra",
    ["; x=" + "()" * 10_000, "; a=b" * 4_000, "\r\nX-Padding: y" * 3_000],
    ids=["flat comments", "many parameters", "many header lines"],
)
def test_part_headers_longer_than_8_kb_are_refused_unparsed(app_module, lambda_context, ct_png, header_extra):
    # 1 MB of "()" took the email parser 68 s, 100,000 parameters 17 s: refused by size, before parsing.
    status, answer = call(app_module, lambda_context, multipart_event([("file", ct_png)], header_extra=header_extra))
    assert_refused(status, answer, 400, "invalid_multipart")
    assert "8 KB" in answer["error"]["message"]


# ---------------------------------------------------------------- 5. studies


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height``; its pixel data is never there."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_study_over_its_pixel_budget_is_refused_from_the_headers(app_module, lambda_context):
    # Five 4096x4096 RGBA slices: each is allowed alone; together they are 80 million pixels.
    slices = [b64(header_only_png(4096, 4096))] * 5
    status, answer = call(app_module, lambda_context, json_event({"images": slices}))
    assert_refused(status, answer, 413, "payload_too_large")
    assert "pixels" in answer["error"]["message"]


def multi_frame_dicom(frames: int, side: int = 32) -> bytes:
    dataset = pydicom.dcmread(CT_SMALL)
    pixels = np.add.outer(np.arange(side), np.arange(side)).astype(np.int16) * 4 - 800
    dataset.Rows = dataset.Columns = side
    dataset.NumberOfFrames = frames
    dataset.PixelData = np.stack([pixels + index for index in range(frames)]).tobytes()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return dicom_bytes(dataset)


def test_frames_of_several_dicoms_are_counted_from_the_headers(app_module, lambda_context, monkeypatch):
    import pydicom.pixels

    decoded = []
    real = pydicom.pixels.pixel_array
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: decoded.append(1) or real(*a, **k))
    study = [b64(multi_frame_dicom(40)), b64(multi_frame_dicom(40))]  # 80 slices in two files of 40
    status, answer = call(app_module, lambda_context, json_event({"images": study}))
    assert_refused(status, answer, 413, "payload_too_large")
    assert decoded == []


def test_a_study_holds_one_decoded_slice_at_a_time(app_module, lambda_context, monkeypatch):
    from lungscan.model.classifier import Classifier

    alive_at_each_call = []
    seen: list[weakref.ref] = []
    real = Classifier.classify

    def classify(self, decoded, *args, **kwargs):
        seen.append(weakref.ref(decoded))
        alive_at_each_call.append(sum(ref() is not None for ref in seen))
        return real(self, decoded, *args, **kwargs)

    monkeypatch.setattr(Classifier, "classify", classify)
    slices = [b64(encode(ct_like_image(96, seed=seed))) for seed in range(10)]
    status, answer = call(app_module, lambda_context, json_event({"images": slices}))
    assert (status, answer.get("study", {}).get("slices")) == (200, 10), answer
    assert max(alive_at_each_call) <= 2  # this slice, and the most suspicious one so far


# ---------------------------------------------------------------- 6. answers over 6 MB


def test_heatmap_is_capped_and_the_answer_fits_lambda(app_module, lambda_context):
    rng = np.random.default_rng(1)
    noisy = np.asarray(ct_like_image(2048), np.int16) + rng.integers(-40, 40, (2048, 2048))
    jpeg = encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "JPEG", quality=95)
    result = app_module.lambda_handler(json_event({"image": b64(jpeg), "explain": True}), lambda_context)
    answer = json.loads(result["body"])
    assert result["statusCode"] == 200, answer
    assert answer["input"]["width"] == 2048  # the answer still describes the upload
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["heatmap"])))
    assert overlay.size == (1024, 1024)
    assert len(json.dumps(result)) < 6 * 1024 * 1024


def test_an_answer_too_large_for_lambda_is_a_clear_error(app_module, lambda_context, ct_png, monkeypatch):
    import api_answers

    monkeypatch.setattr(api_answers, "MAX_RESPONSE_BYTES", 20_000)
    status, answer = call(app_module, lambda_context, json_event({"image": b64(ct_png), "explain": True}))
    assert_refused(status, answer, 413, "response_too_large")
    status, answer = call(app_module, lambda_context, json_event({"image": b64(ct_png)}))
    assert status == 200, answer  # without the heatmap it fits


# ---------------------------------------------------------------- 8. malformed DICOM tags: 400, never 500


def ct_small_with(**tags) -> pydicom.Dataset:
    dataset = pydicom.dcmread(CT_SMALL)
    for name, value in tags.items():
        setattr(dataset, name, value)
    return dataset


def rescale_slope_text(text: bytes) -> bytes:
    """CT_small with RescaleSlope's raw text replaced (pydicom refuses to write an invalid DS)."""
    data = dicom_bytes(ct_small_with(RescaleSlope="1.2500"))
    assert data.count(b"1.2500") == 1 and len(text) == 6
    return data.replace(b"1.2500", text)


def malformed_modality_lut() -> bytes:
    dataset = pydicom.dcmread(CT_SMALL)
    del dataset.RescaleSlope, dataset.RescaleIntercept
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # 4096 entries announced...
    item.LUTData = b"\x01\x00" * 3  # ...three given
    item.ModalityLUTType = "HU"
    dataset.ModalityLUTSequence = [item]
    return dicom_bytes(dataset)


def lut_without_data() -> bytes:
    dataset = pydicom.dcmread(CT_SMALL)
    del dataset.RescaleSlope, dataset.RescaleIntercept
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    dataset.ModalityLUTSequence = [item]
    return dicom_bytes(dataset)


def ct_small_with_byte_149_zeroed() -> bytes:
    data = bytearray(Path(CT_SMALL).read_bytes())
    data[149] = 0  # the file meta group length: pydicom raises BytesLengthException
    return bytes(data)


MALFORMED_DICOM = {
    "RescaleSlope abc": (lambda: rescale_slope_text(b"abc   "), 400, "corrupt_image"),
    "RescaleSlope nan": (lambda: rescale_slope_text(b"nan   "), 422, "non_finite_pixels"),
    "RescaleSlope inf": (lambda: rescale_slope_text(b"1e999 "), 422, "non_finite_pixels"),
    "ModalityLUTSequence short": (malformed_modality_lut, 400, "corrupt_image"),
    "ModalityLUTSequence without data": (lut_without_data, 400, "corrupt_image"),
    "BytesLengthException": (ct_small_with_byte_149_zeroed, 400, "corrupt_image"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_DICOM))
@pytest.mark.parametrize("framing", ["single", "study"])
def test_malformed_dicom_tags_are_a_4xx(app_module, lambda_context, case, framing):
    build, expected_status, expected_code = MALFORMED_DICOM[case]
    data = b64(build())
    status, answer = call(
        app_module, lambda_context, json_event({"image": data} if framing == "single" else {"images": [data]})
    )
    assert_refused(status, answer, expected_status, expected_code)


# ---------------------------------------------------------------- 9. one pixel must not decide


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_a_non_finite_pixel_is_refused(app_module, lambda_context, bad_value):
    pixels = np.asarray(ct_like_image(128), np.float32) / 255.0
    pixels[40, 40] = bad_value
    tiff = encode(Image.fromarray(pixels, mode="F"), "TIFF")
    status, answer = call(app_module, lambda_context, json_event({"image": b64(tiff)}))
    assert_refused(status, answer, 422, "non_finite_pixels")


def test_an_image_blank_after_conversion_to_8_bit_is_refused(app_module, lambda_context):
    pixels = np.zeros((128, 128), np.float32)
    pixels[::2] = 1e-9  # not constant, but one grey once stretched to 8 bits
    tiff = encode(Image.fromarray(pixels, mode="F"), "TIFF")
    status, answer = call(app_module, lambda_context, json_event({"image": b64(tiff)}))
    assert_refused(status, answer, 422, "empty_image")


def test_one_hot_pixel_does_not_rescale_a_16_bit_slice():
    slice_16 = np.asarray(ct_like_image(256, seed=4), np.uint16) * 100  # 0..25500 of 65535
    hot = slice_16.copy()
    hot[10, 10] = 65535
    plain, with_hot_pixel = (np.asarray(to_8bit(Image.fromarray(array)), np.int16) for array in (slice_16, hot))
    difference = np.abs(plain - with_hot_pixel)
    difference[10, 10] = 0  # the hot pixel itself is white, as it should be
    assert difference.max() <= 1
    assert plain.max() == 255 and plain.min() == 0  # still the full 8-bit range


def test_one_hot_pixel_does_not_change_the_answer(app_module, lambda_context):
    slice_16 = np.asarray(ct_like_image(256, seed=4), np.uint16) * 100
    hot = slice_16.copy()
    hot[10, 10] = 65535
    answers = []
    for array in (slice_16, hot):
        status, answer = call(app_module, lambda_context, json_event({"image": b64(encode(Image.fromarray(array)))}))
        assert status == 200, answer
        answers.append(answer["probabilities"])
    for name, probability in answers[0].items():
        assert answers[1][name] == pytest.approx(probability, abs=0.02)
