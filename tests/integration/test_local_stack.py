"""`make run`'s stack over real HTTP: moto S3 registry, the real handler, the page."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import boto3
import pytest
from helpers import FIXTURES_DIR, ct_like_image, encode
from PIL import Image

from infrastructure.local_stack import FRONTEND_DIR, stack_subprocess


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with stack_subprocess(tmp_path_factory.mktemp("stack") / "stack.log") as running:
        yield {"base": running.base_url, "process": running.process, "s3_port": running.s3_port}


def test_page_is_served(stack):
    status, headers, body = request(stack["base"] + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"Not a diagnosis" in body
    for path in sorted(p for p in FRONTEND_DIR.rglob("*") if p.is_file()):  # the modules and vendor/ included
        name = path.relative_to(FRONTEND_DIR).as_posix()
        status, asset_headers, _ = request(stack["base"] + "/" + name)
        assert status == 200, name
        if path.suffix == ".js":  # a module script of any other type does not run
            assert asset_headers["Content-Type"].startswith("text/javascript"), name
    assert request(stack["base"] + "/../../etc/passwd")[0] == 404


def test_models_come_from_the_local_s3_registry(stack):
    """Every served model is the registry's copy (not the image's baked fallback), at the pointer's version.

    Cold start waits for the registry only up to its deadline, then the refresh finishes in the
    background: poll until it has (a store that never reads the registry never gets there).
    """
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{stack['s3_port']}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    published = {}
    for name in ("malignancy-screen", "iq-oth-3class", "chest-ct-4class"):
        pointer = s3.get_object(Bucket="lungscan-models-local", Key=f"models/{name}/latest.json")
        published[name] = json.loads(pointer["Body"].read())["version"]
    expected = {name: ("registry", version) for name, version in published.items()}
    give_up = time.monotonic() + 120
    while True:
        status, _, body = request(stack["base"] + "/model")
        assert status == 200
        described = json.loads(body)
        served = {model["name"]: (model["source"], model["version"]) for model in described["models"]}
        if served == expected or time.monotonic() > give_up:
            break
        time.sleep(0.5)
    assert served == expected
    # The screening model trained on both hospitals is the default; each model says what it is for.
    assert described["default"] == "malignancy-screen"
    by_name = {model["name"]: model for model in described["models"]}
    assert by_name["malignancy-screen"]["default"] is True and by_name["malignancy-screen"]["classes"] == [
        "normal",
        "malignant",
    ]
    assert all(model["purpose"] for model in described["models"])


def test_upload_like_the_original_flask_app(stack):
    png = encode(ct_like_image(256, seed=5))
    boundary = "lungscanboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="scan.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, answer = request(
        stack["base"] + "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert status == 200, answer
    answer = json.loads(answer)
    assert answer["prediction"] in ("Cancer Detected", "No Cancer Detected")  # the original app's field, kept
    assert set(answer["probabilities"]) == {"normal", "malignant"}  # the default: the screening model


def test_raw_bytes_and_errors_over_http(stack):
    jpeg = encode(ct_like_image(256, seed=6, mode="RGB"), "JPEG")
    status, _, answer = request(stack["base"] + "/predict", jpeg, {"Content-Type": "image/jpeg"})
    assert status == 200, answer
    status, _, answer = request(stack["base"] + "/predict", b"not json", {"Content-Type": "application/json"})
    assert status == 400 and json.loads(answer)["error"]["code"] == "invalid_json"
    assert too_large_status(stack["base"]) == 413
    status, headers, _ = request(
        stack["base"] + "/predict",
        method="OPTIONS",
        headers={"Origin": stack["base"], "Access-Control-Request-Method": "POST"},
    )
    assert status == 204 and headers["Access-Control-Allow-Origin"] == stack["base"]
    assert request(stack["base"] + "/health")[0] == 200  # still serving


@pytest.mark.parametrize(("content_type", "image_format"), [("image/tiff", "TIFF"), ("image/bmp", "BMP")])
def test_raw_tiff_and_bmp_arrive_intact(stack, content_type, image_format):
    """Raw bytes of a type API Gateway does not treat as binary arrive as mangled text."""
    data = encode(Image.open(FIXTURES_DIR / "ct_malignant_256.jpg"), image_format)
    status, _, raw_answer = request(stack["base"] + "/predict", data, {"Content-Type": content_type})
    assert status == 200, raw_answer
    payload = json.dumps({"image": base64.b64encode(data).decode()}).encode()
    status, _, json_answer = request(stack["base"] + "/predict", payload, {"Content-Type": "application/json"})
    assert status == 200, json_answer
    raw_answer, json_answer = json.loads(raw_answer), json.loads(json_answer)
    assert raw_answer["input"]["format"] == image_format
    assert raw_answer["probabilities"] == json_answer["probabilities"]


def too_large_status(base: str) -> int:
    """Send only the headers of an 11 MB upload: API Gateway (and the stack) answer 413 before the body."""
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "image/png")
    connection.putheader("Content-Length", str(11 * 1024 * 1024))
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def test_ctrl_c_stops_everything(stack):
    process = stack["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    with pytest.raises(OSError):
        request(stack["base"] + "/health")
    with pytest.raises(OSError):
        request(f"http://127.0.0.1:{stack['s3_port']}/")
