"""The Lambda handler through API Gateway proxy events: the contract and every bad input."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import zlib

import numpy as np
import pytest
from helpers import ct_like_image, encode, make_event
from PIL import Image


def call(app_module, lambda_context, event) -> tuple[int, dict]:
    result = app_module.lambda_handler(event, lambda_context)
    return result["statusCode"], json.loads(result["body"]) if result.get("body") else {}


def json_event(payload: dict, **kwargs) -> dict:
    return make_event(body=json.dumps(payload), content_type="application/json", **kwargs)


def assert_prediction(answer: dict, app_module) -> None:
    classifier = app_module.store.get()
    classes = classifier.metadata.classes
    assert answer["label"] in classes
    assert set(answer["probabilities"]) == set(classes)
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert answer["confidence"] == max(answer["probabilities"].values())
    assert answer["verdict"] in ("Cancer Detected", "No Cancer Detected")
    assert answer["prediction"] == answer["verdict"]
    assert answer["suspicious"] is (answer["verdict"] == "Cancer Detected")
    positives = classifier.metadata.positive_classes
    expected = sum(answer["probabilities"][name] for name in positives)
    assert answer["positive_probability"] == pytest.approx(expected, abs=1e-3)
    assert answer["suspicion"] == answer["positive_probability"]  # the deprecated alias
    # The conformal set: the label first, then whatever could not be ruled out; uncertain when it mixes
    # flagged and unflagged classes (or the slice is unfamiliar); the tier follows the set and the label.
    assert answer["prediction_set"][0] == answer["label"]
    assert set(answer["prediction_set"]) <= set(classes)
    flagged = set(answer["prediction_set"]) & set(positives)
    mixed = bool(flagged) and bool(set(answer["prediction_set"]) - set(positives))
    assert answer["uncertain"] is (mixed or bool(answer["unfamiliar"]))
    expected_tier = "suspicious" if answer["label"] in positives else "not_excluded" if flagged else "clear"
    assert answer["tier"] == expected_tier
    assert answer["suspicious"] is (expected_tier != "clear")
    assert answer["tier_text"] in (
        "Suspicious — review first",
        "Malignancy not excluded — review",
        "No suspicious finding",
    )
    assert answer["model"]["name"] == classifier.metadata.name
    assert answer["model"]["sha256"] == classifier.metadata.sha256
    assert "Not a diagnosis" in answer["disclaimer"]
    assert answer["request_id"] == "test-request-id"


def test_json_base64_png(app_module, lambda_context, ct_png):
    status, answer = call(app_module, lambda_context, json_event({"image": base64.b64encode(ct_png).decode()}))
    assert status == 200, answer
    assert_prediction(answer, app_module)
    assert answer["input"] == {"format": "PNG", "width": 256, "height": 256, "window": None, "frame": None}
    assert answer["preview"] is None


def test_data_url_prefix_is_accepted(app_module, lambda_context, ct_png):
    image = "data:image/png;base64," + base64.b64encode(ct_png).decode()
    status, answer = call(app_module, lambda_context, json_event({"image": image, "filename": "scan.png"}))
    assert status == 200, answer


def test_same_image_same_answer_in_every_framing(app_module, lambda_context):
    jpeg = encode(ct_like_image(300, seed=3), "JPEG", quality=90)
    boundary = "----lungscan"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    events = [
        json_event({"image": base64.b64encode(jpeg).decode()}),
        make_event(body=jpeg, content_type="image/jpeg", base64_body=True),
        make_event(body=multipart, content_type=f"multipart/form-data; boundary={boundary}", base64_body=True),
    ]
    answers = []
    for event in events:
        status, answer = call(app_module, lambda_context, event)
        assert status == 200, answer
        answers.append(answer["probabilities"])
    assert answers[0] == answers[1] == answers[2]


def test_multipart_keeps_the_original_apps_prediction_field(app_module, lambda_context, ct_png):
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="patient.png"\r\n\r\n'.encode()
        + ct_png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    event = make_event(body=body, content_type=f"multipart/form-data; boundary={boundary}", base64_body=True)
    status, answer = call(app_module, lambda_context, event)
    assert status == 200, answer
    assert answer["prediction"] in ("Cancer Detected", "No Cancer Detected")


@pytest.mark.parametrize(
    ("image_mode", "image_format"),
    [("L", "PNG"), ("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("L", "BMP"), ("RGB", "TIFF")],
)
def test_decodes_common_modes_and_formats(app_module, lambda_context, image_mode, image_format):
    image = ct_like_image(128)
    if image_mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 200)
    else:
        image = image.convert(image_mode)
    data = encode(image, image_format)
    status, answer = call(app_module, lambda_context, json_event({"image": base64.b64encode(data).decode()}))
    assert status == 200, answer
    assert answer["input"]["format"] == image_format


def test_model_can_be_chosen_by_query_or_body(app_module, lambda_context, ct_png):
    name = app_module.store.get().metadata.name
    image = base64.b64encode(ct_png).decode()
    status, _ = call(app_module, lambda_context, json_event({"image": image}, query={"model": name}))
    assert status == 200
    status, answer = call(app_module, lambda_context, json_event({"image": image, "model": "no-such-model"}))
    assert (status, answer["error"]["code"]) == (404, "unknown_model")
    status, answer = call(app_module, lambda_context, json_event({"image": image}, query={"model": "../etc"}))
    assert (status, answer["error"]["code"]) == (400, "invalid_request")


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring huge dimensions, with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def gif_bytes() -> bytes:
    return encode(ct_like_image(64).convert("P"), "GIF")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_INPUTS = {
    "empty body": (lambda png: make_event(body="", content_type="application/json"), 400, "empty_body"),
    "not json": (lambda png: make_event(body="{not json", content_type="application/json"), 400, "invalid_json"),
    "json without image": (lambda png: json_event({"filename": "a.png"}), 400, "invalid_request"),
    "image not a string": (lambda png: json_event({"image": 42}), 400, "invalid_request"),
    "invalid base64": (lambda png: json_event({"image": "not base64 at all!"}), 400, "invalid_base64"),
    "text file": (
        lambda png: json_event({"image": b64(b"Patient notes\nnothing here\n" * 10)}),
        415,
        "unsupported_format",
    ),
    "truncated png": (lambda png: json_event({"image": b64(png[: len(png) // 2])}), 400, "corrupt_image"),
    "1x1 image": (lambda png: json_event({"image": b64(encode(Image.new("L", (1, 1))))}), 422, "image_too_small"),
    # 16.7M pixels, within max_pixels: padding or cropping it to a square would have allocated ~275 GB.
    "32x524288 strip": (
        lambda png: json_event({"image": b64(encode(Image.linear_gradient("L").resize((524288, 32))))}),
        422,
        "implausible_shape",
    ),
    "blank image": (lambda png: json_event({"image": b64(encode(Image.new("L", (256, 256), 7)))}), 422, "empty_image"),
    "30000x30000 bomb": (lambda png: json_event({"image": b64(bomb_png(30000, 30000))}), 422, "too_many_pixels"),
    # A small image padded with 7 MB of JSON whitespace: only the body-size check can refuse it (the image is fine).
    "7 MB body": (
        lambda png: make_event(
            body=json.dumps({"image": b64(png)}) + " " * (7 * 1024 * 1024), content_type="application/json"
        ),
        413,
        "payload_too_large",
    ),
    "gif": (lambda png: json_event({"image": b64(gif_bytes())}), 415, "unsupported_format"),
    "raw gif": (lambda png: make_event(body=gif_bytes(), content_type="image/gif", base64_body=True), 415, None),
    "wrong content type": (lambda png: make_event(body="hello", content_type="text/plain"), 415, None),
    "multipart without file": (
        lambda png: make_event(
            body=b'--x\r\nContent-Disposition: form-data; name="other"\r\n\r\nv\r\n--x--\r\n',
            content_type="multipart/form-data; boundary=x",
            base64_body=True,
        ),
        400,
        "missing_file",
    ),
    "raw body that is no image": (
        lambda png: make_event(body="%%%", content_type="image/png", base64_body=False),
        415,
        "unsupported_format",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_a_json_error_and_the_right_status(app_module, lambda_context, ct_png, case):
    build, expected_status, expected_code = BAD_INPUTS[case]
    status, answer = call(app_module, lambda_context, build(ct_png))
    assert status == expected_status, answer
    assert set(answer) == {"error"}
    assert answer["error"]["request_id"] == "test-request-id"
    assert answer["error"]["message"] and "Traceback" not in answer["error"]["message"]
    if expected_code:
        assert answer["error"]["code"] == expected_code
    # ...and the function keeps serving.
    status, _ = call(app_module, lambda_context, json_event({"image": b64(ct_png)}))
    assert status == 200


def test_dicom_is_decoded_through_the_lung_window(app_module, lambda_context):
    from helpers import ct_dataset

    buffer = io.BytesIO()
    ct_dataset().save_as(buffer, implicit_vr=False, little_endian=True)
    data = buffer.getvalue()
    status, answer = call(
        app_module, lambda_context, make_event(body=data, content_type="application/dicom", base64_body=True)
    )
    assert status == 200, answer
    assert answer["input"] == {
        "format": "DICOM",
        "width": 256,
        "height": 256,
        "window": {"center": -600.0, "width": 1500.0},
        "frame": 0,
    }
    preview = Image.open(io.BytesIO(base64.b64decode(answer["preview"])))
    assert preview.size == (256, 256)


def test_unexpected_errors_are_500_without_a_trace(app_module, lambda_context, ct_png, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    import lungscan.uploads

    monkeypatch.setattr(lungscan.uploads, "decode_upload", explode)
    status, answer = call(app_module, lambda_context, json_event({"image": b64(ct_png)}))
    assert status == 500
    assert answer["error"]["code"] == "internal_error"
    assert "secret" not in json.dumps(answer)


def test_no_model_loaded_is_503(app_module, lambda_context, ct_png, monkeypatch):
    monkeypatch.setattr(app_module.store, "models", {})
    status, answer = call(app_module, lambda_context, json_event({"image": b64(ct_png)}))
    assert (status, answer["error"]["code"]) == (503, "model_unavailable")
    status, _ = call(app_module, lambda_context, make_event("GET", "/model"))
    assert status == 503


def test_health_model_and_openapi(app_module, lambda_context):
    status, health = call(app_module, lambda_context, make_event("GET", "/health"))
    assert (status, health["status"]) == (200, "ok")
    status, described = call(app_module, lambda_context, make_event("GET", "/model"))
    assert status == 200
    default = app_module.store.get().metadata
    assert described["default"] == default.name
    (entry,) = [model for model in described["models"] if model["default"]]
    assert entry["classes"] == default.classes
    assert entry["version"] == default.version
    status, spec = call(app_module, lambda_context, make_event("GET", "/openapi.json"))
    assert status == 200
    assert {"/predict", "/health", "/model"} <= set(spec["paths"])
    assert "PredictResponse" in json.dumps(spec)
    # /predict's body is read by hand: every framing is described, with its models in components.
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert {"Window", "PredictRequest"} <= set(spec["components"]["schemas"])
    assert {"image/png", "image/jpeg", "application/dicom", "multipart/form-data"} <= set(body)
    assert body["multipart/form-data"]["schema"]["required"] == ["file"]
    query = {p["name"]: p["schema"] for p in spec["paths"]["/predict"]["post"]["parameters"]}
    assert set(query) == {"model", "explain", "frame", "all_frames", "patient"}
    assert {"minimum": 0, "type": "integer"} in query["frame"]["anyOf"]
    schemas = spec["components"]["schemas"]
    aliases = [("SliceResult", "suspicion"), ("PredictResponse", "suspicion"), ("StudySummary", "max_suspicion")]
    for model, alias in aliases:
        assert schemas[model]["properties"][alias]["deprecated"] is True
    status, missing = call(app_module, lambda_context, make_event("GET", "/nope"))
    assert (status, missing["error"]["code"]) == (404, "not_found")


def test_cors_preflight_and_headers(app_module, lambda_context, ct_png):
    """The site's origin comes from the stage's allowedOrigin variable (template.yaml); any other gets nothing."""
    for origin, allowed in [("https://site.example", True), ("https://elsewhere.example", False)]:
        preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        event = make_event("OPTIONS", "/predict", headers=preflight)
        event["stageVariables"] = {"allowedOrigin": "https://site.example"}
        result = app_module.lambda_handler(event, lambda_context)
        assert result["statusCode"] == 204
        headers = {key.lower(): value for key, value in (result.get("multiValueHeaders") or {}).items()}
        assert "POST" in ",".join(headers["access-control-allow-methods"])
        assert ("Content-Type" in ",".join(headers.get("access-control-allow-headers", []))) is allowed
        assert headers.get("access-control-allow-origin") == ([origin] if allowed else None)


def test_logs_hold_no_image_bytes_or_file_names(app_module, lambda_context, ct_png, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    log_copy = io.StringIO()
    handler = logging.StreamHandler(log_copy)
    handler.setFormatter(app_module.logger.registered_formatter)
    app_module.logger.addHandler(handler)  # the structured records exactly as CloudWatch would get them
    try:
        image = b64(ct_png)
        call(app_module, lambda_context, json_event({"image": image, "filename": "DOE_JOHN_1950.png"}))
        call(app_module, lambda_context, json_event({"image": image[:5000], "filename": "DOE_JOHN_1950.png"}))
    finally:
        app_module.logger.removeHandler(handler)
    captured = capfd.readouterr()
    logs = log_copy.getvalue() + captured.out + captured.err + caplog.text
    assert '"message":"classified"' in log_copy.getvalue()  # the logs are there...
    assert "DOE_JOHN" not in logs  # ...without the file name
    assert image[:200] not in logs and image[1000:1200] not in logs


def test_metrics_count_predictions_per_class(app_module, lambda_context, ct_png, capsys):
    status, answer = call(app_module, lambda_context, json_event({"image": b64(ct_png)}))
    assert status == 200
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    names = {
        metric["Name"] for blob in emitted for group in blob["_aws"]["CloudWatchMetrics"] for metric in group["Metrics"]
    }
    assert {"Predictions", f"Predicted_{answer['label']}", "PredictLatency"} <= names
