"""Clinical inputs through the handler: DICOM variants, windows, frames, Grad-CAM, whole studies."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import ct_dataset, ct_like_image, dicom_bytes, encode, frame, make_event
from PIL import Image
from pydicom.data import get_testdata_file

from lungscan.errors import MalformedInputError
from lungscan.inputs.dicom import DicomOptions, decode_dicom

CT_SMALL = get_testdata_file("CT_small.dcm")


def call(app_module, lambda_context, payload: dict, query: dict | None = None) -> tuple[int, dict]:
    event = make_event(body=json.dumps(payload), content_type="application/json", query=query)
    result = app_module.lambda_handler(event, lambda_context)
    return result["statusCode"], json.loads(result["body"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_real_ct_dicom_with_a_chosen_window(app_module, lambda_context):
    data = dicom_bytes(ct_dataset())
    status, answer = call(app_module, lambda_context, {"image": b64(data), "window": {"center": -500, "width": 1400}})
    assert status == 200, answer
    assert answer["input"]["window"] == {"center": -500.0, "width": 1400.0}
    data = Path(CT_SMALL).read_bytes()
    lung = decode_dicom(data)
    soft_tissue = decode_dicom(data, options=DicomOptions(window={"center": 40, "width": 400}))
    assert np.asarray(lung.image).tolist() != np.asarray(soft_tissue.image).tolist()


def test_jpeg2000_dicom_is_decoded(app_module, lambda_context):
    data = Path(get_testdata_file("693_J2KI.dcm")).read_bytes()
    assert decode_dicom(data).image.size == (512, 512)
    # pydicom's 693_J2KI is a head CT (DERIVED/PRIMARY/AXIAL): a CT slice, so the gate lets it through, but
    # unlike anything the model learned from: answered as unfamiliar, never as a confident all-clear.
    status, answer = call(app_module, lambda_context, {"image": b64(data)})
    assert status == 200, answer
    assert answer["unfamiliar"] is True and answer["uncertain"] is True
    assert "malignant" in answer["prediction_set"] and answer["tier"] != "clear"


def original_axial(name: str) -> bytes:
    """One of pydicom's files declared an original axial image (MR_small is DERIVED/SECONDARY/OTHER)."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return dicom_bytes(dataset)


def test_non_ct_modality_needs_permission(app_module, lambda_context):
    mr = b64(original_axial("MR_small.dcm"))
    status, answer = call(app_module, lambda_context, {"image": mr})
    assert (status, answer["error"]["code"]) == (422, "not_ct_modality")
    # allow_non_ct lifts the header check only: the not-CT gate still judges the pixels, and an MR is no CT slice.
    status, answer = call(app_module, lambda_context, {"image": mr, "allow_non_ct": True})
    assert (status, answer["error"]["code"]) == (422, "not_ct_like"), answer


def test_undecodable_transfer_syntax_is_named(app_module, lambda_context):
    jpeg_ls = b64(original_axial("MR_small_jpeg_ls_lossless.dcm"))
    status, answer = call(app_module, lambda_context, {"image": jpeg_ls, "allow_non_ct": True})
    assert status == 415
    assert "JPEG-LS" in answer["error"]["message"]


def test_monochrome1_is_inverted():
    pixels = [frame(-1000)]
    normal = decode_dicom(dicom_bytes(ct_dataset(pixels, PhotometricInterpretation="MONOCHROME2")))
    inverted = decode_dicom(dicom_bytes(ct_dataset(pixels, PhotometricInterpretation="MONOCHROME1")))
    # Equal up to rounding: the inversion happens before the 8-bit rounding.
    np.testing.assert_allclose(np.asarray(inverted.image), 255 - np.asarray(normal.image).astype(int), atol=1)


def test_missing_rescale_tags_read_stored_values_as_hounsfield():
    pixels = np.full((64, 64), -1000, np.int16)
    pixels[32:, 32:] = 0  # not blank
    data = dicom_bytes(ct_dataset([pixels], RescaleSlope=None, RescaleIntercept=None))
    image = np.asarray(decode_dicom(data).image)
    # The lung window spans -1350..150 HU, so -1000 HU maps to 350/1500 of the grey range.
    assert image[0, 0] == round((-1000 + 1350) * 255 / 1500)


def test_no_preamble_is_still_dicom(app_module, lambda_context):
    data = dicom_bytes(ct_dataset([frame(-800)]), preamble=False)
    assert data[128:132] != b"DICM"
    status, answer = call(app_module, lambda_context, {"image": b64(data)})
    assert (status, answer.get("input", {}).get("format")) == (200, "DICOM"), answer


def test_garbage_after_the_preamble_is_a_clear_400(app_module, lambda_context):
    data = b"\0" * 128 + b"DICM" + bytes(range(256)) * 8
    status, answer = call(app_module, lambda_context, {"image": b64(data)})
    assert (status, answer["error"]["code"]) == (400, "corrupt_image")


def test_multi_frame_middle_by_default_or_chosen(app_module, lambda_context):
    data = dicom_bytes(ct_dataset([frame(-1200), frame(-600), frame(0)]))
    assert decode_dicom(data).meta == {"frame": 1, "frames": 3, "modality": "CT"}
    status, answer = call(app_module, lambda_context, {"image": b64(data), "frame": 2})
    assert (status, answer["input"]["frame"]) == (200, 2)
    status, answer = call(app_module, lambda_context, {"image": b64(data), "frame": 3})
    assert (status, answer["error"]["code"]) == (400, "frame_out_of_range")
    with pytest.raises(MalformedInputError):
        decode_dicom(data, options=DicomOptions(frame=7))


def test_multi_frame_dicom_as_a_study(app_module, lambda_context):
    data = dicom_bytes(ct_dataset([frame(-1200), frame(-600), frame(0)]))
    status, answer = call(app_module, lambda_context, {"image": b64(data), "all_frames": True})
    assert status == 200, answer
    assert answer["study"]["slices"] == 3
    assert [item["input"]["frame"] for item in answer["slices"]] == [0, 1, 2]


def test_a_multi_frame_study_over_the_limit_is_refused_from_the_header(app_module, lambda_context):
    data = dicom_bytes(ct_dataset([frame(-600 + index) for index in range(65)]))
    status, answer = call(app_module, lambda_context, {"image": b64(data), "all_frames": True})
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    status, answer = call(app_module, lambda_context, {"image": b64(data)})  # one frame of it is fine
    assert (status, answer["input"]["frame"]) == (200, 32)


def test_study_of_slices_summarises_the_most_suspicious(app_module, lambda_context):
    images = [b64(encode(ct_like_image(128, seed=seed))) for seed in range(4)]
    status, answer = call(app_module, lambda_context, {"images": images, "explain": True})
    assert status == 200, answer
    study, slices = answer["study"], answer["slices"]
    positive = [item["positive_probability"] for item in slices]
    assert study["most_suspicious_slice"] == int(np.argmax(positive))
    assert study["max_positive_probability"] == max(positive)
    # The deprecated first names carry the same values, for the integrations that still read them.
    assert [item["suspicion"] for item in slices] == positive
    assert study["max_suspicion"] == study["max_positive_probability"]
    assert study["suspicious"] == any(item["suspicious"] for item in slices)
    assert sum(study["label_counts"].values()) == 4
    assert study["uncertain"] == any(item["uncertain"] for item in slices)
    assert study["uncertain_slices"] == [index for index, item in enumerate(slices) if item["uncertain"]]
    assert all(item["prediction_set"] and item["prediction_set"][0] == item["label"] for item in slices)
    with_heatmap = [index for index, item in enumerate(slices) if item["heatmap"]]
    assert with_heatmap == [study["most_suspicious_slice"]]
    assert "Not a diagnosis" in answer["disclaimer"]


def test_study_limits(app_module, lambda_context):
    image = b64(encode(ct_like_image(64)))
    status, answer = call(app_module, lambda_context, {"images": [image] * 65})
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    status, answer = call(app_module, lambda_context, {"images": [image], "image": image})
    assert (status, answer["error"]["code"]) == (400, "invalid_request")


def test_explain_returns_an_overlay_at_the_upload_size(app_module, lambda_context):
    data = encode(ct_like_image(200, seed=2).resize((240, 200)))
    status, answer = call(app_module, lambda_context, {"image": b64(data), "explain": True})
    assert status == 200, answer
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["heatmap"])))
    assert (overlay.format, overlay.size) == ("PNG", (240, 200))
    assert answer["explained_class"] == answer["label"]
    classes = app_module.store.get().metadata.classes
    status, answer = call(
        app_module, lambda_context, {"image": b64(data), "explain": True, "explain_class": classes[0]}
    )
    assert (status, answer["explained_class"]) == (200, classes[0])
    status, answer = call(app_module, lambda_context, {"image": b64(data), "explain": True, "explain_class": "x"})
    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    status, answer = call(app_module, lambda_context, {"image": b64(data)}, query={"explain": "true"})
    assert status == 200
    assert answer["heatmap"]


@contextmanager
def every_log_line(app_module, caplog, capfd) -> Iterator[list[str]]:
    """Everything the request logs, at DEBUG: the function's structured logger (as CloudWatch gets it),
    any library logger through the root (pydicom, lungscan.*) and raw stdout/stderr. Filled on exit."""
    caplog.set_level(logging.DEBUG)
    structured = io.StringIO()
    handler = logging.StreamHandler(structured)
    handler.setFormatter(app_module.logger.registered_formatter)
    previous_level = app_module.logger.log_level
    app_module.logger.setLevel(logging.DEBUG)
    app_module.logger.addHandler(handler)
    lines: list[str] = []
    try:
        yield lines
    finally:
        app_module.logger.removeHandler(handler)
        app_module.logger.setLevel(previous_level)
        captured = capfd.readouterr()
        lines.extend([structured.getvalue(), caplog.text, captured.out, captured.err])


def test_patient_tags_never_leave_the_decoder(app_module, lambda_context, caplog, capfd):
    dataset = ct_dataset([frame(-700)], PatientName="DOE^JANE", PatientID="PID-4242", PatientBirthDate="19500101")
    with every_log_line(app_module, caplog, capfd) as logs:
        status, answer = call(
            app_module, lambda_context, {"image": b64(dicom_bytes(dataset)), "filename": "DOE_JANE.dcm"}
        )
        assert status == 200, answer
    output = json.dumps(answer) + "".join(logs)
    assert '"message":"classified"' in output  # the logs were captured...
    for secret in ("DOE", "JANE", "PID-4242", "19500101"):
        assert secret not in output  # ...and hold no patient tag


def test_invalid_tag_values_are_not_quoted_in_warnings(app_module, lambda_context, capfd, recwarn):
    """pydicom's validation warnings quote the offending value (fuzzing met pixel bytes in one)."""
    dataset = ct_dataset([frame(-700)])
    dataset.Modality = "CT-DOE^JANE-" + "X" * 40  # longer than a CS value may be
    status, answer = call(app_module, lambda_context, {"image": b64(dicom_bytes(dataset))})
    assert (status, answer["error"]["code"]) == (422, "not_ct_modality")
    emitted = "".join(capfd.readouterr()) + "".join(str(warning.message) for warning in recwarn)
    assert "DOE^JANE" not in emitted + json.dumps(answer)


@pytest.mark.parametrize("padding_hu", [-1000, -2000], ids=["air to the edges", "padding outside the field of view"])
def test_a_dicom_is_cropped_to_the_body_as_its_export_is(padding_hu):
    """The lung window shows air (-1000 HU) as grey 60, not the black of an export: the crop must still
    find the body, not frame the whole field (the model would see the body ~1.5x smaller than in training)."""
    from lungscan.bundle.metadata import PreprocessingSpec, ResizeSpec
    from lungscan.model.transforms import build_preprocess, preprocess_image

    rows, cols = np.mgrid[:256, :256]
    hu = np.full((256, 256), -1000, np.int16)
    hu[60:200, 40:200] = 40  # the body (soft tissue), off-centre
    hu[((rows - 130) / 50) ** 2 + ((cols - 85) / 30) ** 2 < 1] = -850  # a lung
    hu[((rows - 130) ** 2 + (cols - 128) ** 2 > 127**2) & (hu == -1000)] = padding_hu
    decoded = decode_dicom(dicom_bytes(ct_dataset([hu])))  # the bundles' lung window
    chain = build_preprocess(
        PreprocessingSpec(colour="grayscale", crop_to_body=True, resize=ResizeSpec(height=64, width=64)).model_dump()
    )
    left, top, right, bottom = preprocess_image(decoded, chain)[1]["view"]
    assert abs(left - 40) <= 12 and abs(right - 200) <= 12 and abs((top + bottom) / 2 - 130) <= 6, (left, top, right)
