"""The container contract without Docker: the image's real entry point against a local Runtime API.

``python -m awslambdaric app.lambda_handler`` runs as a subprocess in functions/classifier, with the
environment Lambda would give it, and polls ``infrastructure.runtime_api.LocalRuntime`` for API
Gateway proxy events. The recorded events/*.json are used when present; events built here from
synthetic images are always sent too.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ct_like_image
from PIL import Image

from infrastructure.emulation import REPO_ROOT, proxy_event
from infrastructure.local_function import LocalFunction, local_function
from infrastructure.runtime_api import InitError, InvocationError, InvocationTimeoutError, LocalRuntime

EVENTS_DIR = REPO_ROOT / "events"
INIT_TIMEOUT_S = 300.0  # TensorFlow's import on a busy 2-core machine; a wall-clock bound, not a target
INVOKE_TIMEOUT_S = 60.0


# ---------------------------------------------------------------- events


def synthetic_ct(size: int = 256) -> Image.Image:
    """conftest's synthetic chest CT slice: realistic enough for the not-CT gate (a cartoon is refused)."""
    return ct_like_image(size)


def image_bytes(image_format: str) -> bytes:
    buffer = io.BytesIO()
    synthetic_ct().save(buffer, format=image_format)
    return buffer.getvalue()


def built_event(name: str) -> dict:
    if name == "predict_png_json":
        body = json.dumps({"image": base64.b64encode(image_bytes("PNG")).decode("ascii"), "filename": "slice.png"})
        return proxy_event("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
    if name == "predict_raw_jpeg":
        return proxy_event("POST", "/predict", body=image_bytes("JPEG"), headers={"Content-Type": "image/jpeg"})
    if name == "predict_bad_body":
        return proxy_event("POST", "/predict", body="this is not json", headers={"Content-Type": "application/json"})
    if name == "health":
        return proxy_event("GET", "/health")
    raise KeyError(name)


@pytest.fixture(params=["recorded", "built"])
def event_source(request) -> str:
    return request.param


def get_event(name: str, source: str) -> dict:
    if source == "built":
        return built_event(name)
    path = EVENTS_DIR / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"{path.relative_to(REPO_ROOT)} is not there")
    return json.loads(path.read_text())


def header(response: dict, name: str) -> str | None:
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name.lower():
            return value
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name.lower() and values:
            return values[0]
    return None


def json_body(response: dict) -> dict:
    assert (header(response, "Content-Type") or "").startswith("application/json")
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body)
    return json.loads(body)


# ---------------------------------------------------------------- the function process


@pytest.fixture(scope="module")
def function(model_bundle_dir: Path, tmp_path_factory) -> Iterator[LocalFunction]:
    log_path = tmp_path_factory.mktemp("runtime") / "function.log"
    with local_function(model_bundle_dir, log_path) as running:
        try:
            running.runtime.wait_for_init(INIT_TIMEOUT_S)
        except (InvocationError, InvocationTimeoutError) as error:
            pytest.fail(f"the entry point did not start: {error}\n{running.log_tail()}")
        yield running


@pytest.fixture(scope="module")
def classes(model_bundle_dir: Path) -> list[str]:
    return json.loads((model_bundle_dir / "model.json").read_text())["classes"]


def invoke(function: LocalFunction, event: dict) -> dict:
    try:
        return function.invoke(event, timeout=INVOKE_TIMEOUT_S)
    except (InvocationError, InvocationTimeoutError) as error:
        pytest.fail(f"invocation failed: {error}\n{function.log_tail()}")


def assert_prediction(response: dict, classes: list[str]) -> dict:
    assert response["statusCode"] == 200, response["body"]
    body = json_body(response)
    assert body["label"] in classes
    assert set(body["probabilities"]) == set(classes)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert body["probabilities"][body["label"]] == pytest.approx(max(body["probabilities"].values()))
    assert body["disclaimer"]
    return body


@pytest.mark.slow
def test_json_base64_png_is_classified(function: LocalFunction, classes: list[str], event_source: str) -> None:
    response = invoke(function, get_event("predict_png_json", event_source))
    body = assert_prediction(response, classes)
    assert body["input"]["format"] == "PNG"


@pytest.mark.slow
def test_raw_base64_jpeg_is_classified(function: LocalFunction, classes: list[str], event_source: str) -> None:
    event = get_event("predict_raw_jpeg", event_source)
    assert event["isBase64Encoded"] is True
    body = assert_prediction(invoke(function, event), classes)
    assert body["input"]["format"] == "JPEG"


@pytest.mark.slow
def test_bad_body_is_a_400_json_error(function: LocalFunction, event_source: str) -> None:
    response = invoke(function, get_event("predict_bad_body", event_source))
    assert response["statusCode"] == 400
    error = json_body(response)["error"]
    assert isinstance(error["code"], str)
    assert error["code"]
    assert error["message"]
    assert "Traceback" not in response["body"]


@pytest.mark.slow
def test_health(function: LocalFunction, event_source: str) -> None:
    response = invoke(function, get_event("health", event_source))
    assert response["statusCode"] == 200
    assert json_body(response)["status"] == "ok"


@pytest.mark.slow
def test_process_survives_a_bad_request(function: LocalFunction) -> None:
    assert invoke(function, built_event("predict_bad_body"))["statusCode"] == 400
    assert function.alive(), function.log_tail()
    assert invoke(function, built_event("health"))["statusCode"] == 200
    assert function.alive(), function.log_tail()


@pytest.mark.slow
def test_unhandled_exception_is_posted_as_an_invocation_error(function: LocalFunction) -> None:
    # Not an API Gateway event: the resolver raises, awslambdaric posts to /invocation/{id}/error.
    with pytest.raises(InvocationError) as raised:
        function.invoke({"not": "a proxy event"}, timeout=INVOKE_TIMEOUT_S)
    assert raised.value.error_type == "KeyError"
    assert "stackTrace" in raised.value.payload
    assert function.alive(), function.log_tail()
    assert invoke(function, built_event("health"))["statusCode"] == 200


# ---------------------------------------------------------------- the Runtime API alone (no TensorFlow)


class FakeRuntimeClient:
    """Speaks to a LocalRuntime as awslambdaric does, from a thread."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.connection = http.client.HTTPConnection(runtime.address, timeout=10)

    def next(self) -> tuple[dict, dict]:
        self.connection.request("GET", "/2018-06-01/runtime/invocation/next")
        response = self.connection.getresponse()
        assert response.status == 200
        return json.loads(response.read()), dict(response.getheaders())

    def post(self, path: str, payload: dict, headers: dict | None = None) -> int:
        self.connection.request("POST", f"/2018-06-01/runtime/{path}", json.dumps(payload), headers or {})
        response = self.connection.getresponse()
        response.read()
        return response.status


def serve_once(runtime: LocalRuntime, answer) -> threading.Thread:
    def run() -> None:
        client = FakeRuntimeClient(runtime)
        event, headers = client.next()
        answer(client, event, headers)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_runtime_delivers_the_event_with_lambda_headers() -> None:
    seen: dict = {}

    def answer(client: FakeRuntimeClient, event: dict, headers: dict) -> None:
        seen.update(headers)
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        assert client.post(f"invocation/{request_id}/response", {"echo": event}) == 202

    with LocalRuntime() as runtime:
        thread = serve_once(runtime, answer)
        assert runtime.invoke({"hello": "world"}, timeout=10) == {"echo": {"hello": "world"}}
        thread.join(5)
    assert seen["Content-Type"] == "application/json"
    assert int(seen["Lambda-Runtime-Deadline-Ms"]) > 0
    assert seen["Lambda-Runtime-Invoked-Function-Arn"].startswith("arn:aws:lambda:")
    assert seen["Lambda-Runtime-Trace-Id"].startswith("Root=1-")


def test_runtime_raises_the_function_error() -> None:
    def answer(client: FakeRuntimeClient, event: dict, headers: dict) -> None:
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        payload = {"errorMessage": "boom", "errorType": "ValueError", "stackTrace": []}
        headers = {"Lambda-Runtime-Function-Error-Type": "Unhandled"}
        assert client.post(f"invocation/{request_id}/error", payload, headers) == 202

    with LocalRuntime() as runtime:
        thread = serve_once(runtime, answer)
        with pytest.raises(InvocationError, match="boom") as raised:
            runtime.invoke({}, timeout=10)
        thread.join(5)
    assert raised.value.error_type == "Unhandled"
    assert raised.value.payload["errorType"] == "ValueError"


def test_runtime_raises_an_init_error() -> None:
    with LocalRuntime() as runtime:
        client = FakeRuntimeClient(runtime)
        payload = {"errorMessage": "Unable to import module 'app'", "errorType": "Runtime.ImportModuleError"}
        assert client.post("init/error", payload) == 202
        with pytest.raises(InitError, match="Unable to import"):
            runtime.invoke({}, timeout=10)


def test_runtime_times_out_and_rejects_late_answers() -> None:
    with LocalRuntime() as runtime:
        with pytest.raises(InvocationTimeoutError):
            runtime.invoke({}, timeout=0.3)
        client = FakeRuntimeClient(runtime)
        assert client.post("invocation/unknown-id/response", {}) == 400
