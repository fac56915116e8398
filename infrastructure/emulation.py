"""What AWS hands the function, emulated once for everything that runs it without AWS.

One API Gateway REST proxy event builder, with ``template.yaml``'s routes, stage and binary media
types, and one Lambda context: the local stack (``make run``), the local Runtime API, the tests,
``events/generate.py`` and the benchmarks all use them. ``standin_bundle`` builds a tiny untrained
bundle where the shipped one is not needed (or missing).

Only the standard library and the core's access table (standard library too) are imported at module
level: the Runtime API's process stays TF-free.
"""

from __future__ import annotations

import base64
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote

from lungscan.accounts import access

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK_ROOT = REPO_ROOT / "functions" / "classifier"  # /var/task in the image: app.py and its flat modules


def with_function_path(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the repository root and the function's task root first on ``PYTHONPATH``.

    A Python process started with it imports ``lungscan``, ``infrastructure`` and the function's flat
    modules (``import app``) as the image's process does; nothing edits ``sys.path`` at run time.
    """
    paths = [str(REPO_ROOT), str(TASK_ROOT), *([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])]
    return {**environ, "PYTHONPATH": os.pathsep.join(paths)}


# template.yaml: the API's routes (explicit, not {proxy+}), its default Stage and its BinaryMediaTypes
# (tests/unit/test_template.py checks each against the template).
# The routes are the access table's (lungscan.accounts.access), which also says which the authorizer guards.
ROUTES = set(access.ROUTES)
STAGE = "dev"
BINARY_MEDIA_TYPES = {
    "image/png",
    "image/jpeg",
    "image/tiff",
    "image/bmp",
    "application/dicom",
    "multipart/form-data",
    "application/octet-stream",
}
FUNCTION_NAME = "ClassifierFunction"
REGION = "us-east-1"
ACCOUNT = "123456789012"
API_ID = "1234567890"


def is_binary(content_type: str | None) -> bool:
    """Whether API Gateway delivers a body of this Content-Type base64-encoded."""
    return (content_type or "").split(";", 1)[0].strip().lower() in BINARY_MEDIA_TYPES


def _route_pattern(resource: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", resource) + "$")


RESOURCE_PATTERNS = {resource: _route_pattern(resource) for resource in sorted({path for _, path in ROUTES})}


def resource_of(path: str) -> tuple[str, dict[str, str] | None]:
    """API Gateway's resource and path parameters for a request path (``/patients/{ref}/scans``, ``{"ref": ...}``);
    an unknown path is its own resource. Logs name the resource, never a patient reference."""
    for resource, pattern in RESOURCE_PATTERNS.items():
        match = pattern.match(path)
        if match:
            return resource, {name: unquote(value) for name, value in match.groupdict().items()} or None
    return path, None


def with_body(event: dict, body: str | bytes | None, *, is_base64: bool | None = None) -> dict:
    """Set ``event``'s body as API Gateway delivers it: bytes base64-encoded (``isBase64Encoded``),
    text as is (flagged by ``is_base64`` when it already is base64); no body is ``None``."""
    if isinstance(body, bytes):
        body, is_base64 = base64.b64encode(body).decode("ascii"), True
    event["body"] = body if body else None
    event["isBase64Encoded"] = bool(body) and bool(is_base64)
    return event


def proxy_event(
    method: str,
    path: str,
    *,
    body: str | bytes | None = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    is_base64: bool | None = None,
    request_id: str | None = None,
    stage: str = STAGE,
) -> dict:
    """The REST proxy event API Gateway sends for one request, in the shape ``sam local generate-event
    apigateway aws-proxy`` makes. ``query`` may repeat a name (pairs), as a query string can."""
    pairs = list(query.items() if isinstance(query, Mapping) else query or [])
    headers = {"Accept": "application/json", "Host": f"{API_ID}.execute-api.{REGION}.amazonaws.com", **(headers or {})}
    now = time.time()
    resource, path_parameters = resource_of(path)
    event = {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "queryStringParameters": dict(pairs) or None,
        "multiValueQueryStringParameters": {name: [v for k, v in pairs if k == name] for name, _ in pairs} or None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
        "requestContext": {
            "accountId": ACCOUNT,
            "resourceId": "123456",
            "stage": stage,
            "requestId": request_id or str(uuid.uuid4()),
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "lungscan-local"},
            "path": f"/{stage}{path}",
            "resourcePath": resource,
            "httpMethod": method,
            "apiId": API_ID,
            "protocol": "HTTP/1.1",
        },
    }
    return with_body(event, body, is_base64=is_base64)


class LambdaContext:
    """The ``context`` the Lambda runtime passes the handler: names, memory and the time left."""

    def __init__(
        self, request_id: str = "00000000-0000-0000-0000-000000000000", *, memory_mb: int = 2048, timeout_s: float = 30
    ) -> None:
        self.function_name = FUNCTION_NAME
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FUNCTION_NAME}"
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{FUNCTION_NAME}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def standin_bundle(
    bundle_dir: Path,
    *,
    size: int = 64,
    filters: Iterable[int] = (4,),
    name: str = "iq-oth-3class",
    version: str = "test",
) -> Path:
    """A small untrained bundle with the default model's contract (grayscale, three classes), random weights:
    for tests and timings that need a model's shape, not its answers. ``filters``: one conv block each."""
    import keras

    from lungscan.bundle.files import MODEL_FILE
    from lungscan.bundle.metadata import BundleMetadata, InputSpec, PreprocessingSpec, ResizeSpec
    from lungscan.bundle.store import write_metadata
    from lungscan.model.conformal import ConformalSpec

    bundle_dir.mkdir(parents=True, exist_ok=True)
    layers = [keras.Input((size, size, 1))]
    for count in filters:
        layers += [keras.layers.Conv2D(count, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D()]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")]
    keras.Sequential(layers).save(bundle_dir / MODEL_FILE)
    write_metadata(
        bundle_dir,
        BundleMetadata(
            name=name,
            version=version,
            classes=["normal", "benign", "malignant"],
            positive_classes=["malignant"],
            input=InputSpec(height=size, width=size, channels=1, colour="grayscale"),
            preprocessing=PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=size, width=size)),
            conformal=ConformalSpec(coverage=0.9, thresholds={"normal": 0.7, "benign": 0.7, "malignant": 0.8}),
        ),
    )
    return bundle_dir
