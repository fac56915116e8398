"""The whole stack on one machine, no AWS account: ``make run``.

- a moto server plays S3: the model bucket, with the bundled models published into it
  by the training CLI's ``publish`` (validated, then ``lungscan.registry.bundles.publish_bundle``);
- the real Lambda handler (``functions/classifier/app.py``) answers the API; each HTTP
  request is turned into the REST proxy event API Gateway would send, with the same
  binary media types as ``template.yaml``;
- ``frontend/`` is served as CloudFront would serve the site bucket;
- the same moto server plays Cognito (user pool, care teams, demo users) and DynamoDB (patient
  history), and API Gateway's Cognito authorizer guards the history routes
  (``infrastructure/local_accounts.py``);
- whole studies: the uploads bucket (CORS for this page) and studies table on the same moto server, and the study
  state machine, template.yaml's Definition run in-process (``infrastructure/local_studies.py``, ``local_engine.py``).

Everything listens on 127.0.0.1 only. Ctrl-C stops all of it.

The handler is imported as the image imports it, from its task root (``functions/classifier``), which
must be on ``PYTHONPATH``: ``make run`` runs ``PYTHONPATH=functions/classifier python -m infrastructure.local_stack``
from the repository root, and ``stack_subprocess`` sets it for its child.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import mimetypes
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from infrastructure import local_accounts, local_studies
from infrastructure.emulation import (
    REPO_ROOT,
    ROUTES,
    TASK_ROOT,
    LambdaContext,
    is_binary,
    proxy_event,
    resource_of,
    with_function_path,
)

FRONTEND_DIR = REPO_ROOT / "frontend"
# The first is the default: the screening model trained on both hospitals; the single-source models beside it.
DEFAULT_BUNDLES = [
    REPO_ROOT / "models" / "malignancy-screen",
    REPO_ROOT / "models" / "iq-oth-3class",
    REPO_ROOT / "models" / "chest-ct-4class",
]
API_PATHS = {path for _, path in ROUTES}
API_GATEWAY_MAX_BODY = 10 * 1024 * 1024  # API Gateway refuses larger payloads before Lambda runs
# The page's ES modules load only when served with a JavaScript MIME type, and mimetypes answers from this machine's
# own table (text/plain for .js on some Windows setups): say it here, as deploy.sh does for the site bucket.
SITE_CONTENT_TYPES = {".js": "text/javascript; charset=utf-8"}


def make_request_handler(
    lambda_handler,
    frontend_dir: Path,
    accounts: local_accounts.LocalAccounts | None = None,
    states: local_studies.LocalStepFunctions | None = None,
):
    authorizer = local_accounts.LocalAuthorizer(accounts) if accounts else None
    invoke_lock = threading.Lock()  # one Lambda container answers one request at a time
    site_files = {path.resolve() for path in frontend_dir.rglob("*") if path.is_file()}

    class Handler(BaseHTTPRequestHandler):
        server_version = "LungScanLocal/1"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if resource_of(urlsplit(self.path).path)[0] in API_PATHS:
                self._invoke()
            else:
                self._static()

        def do_POST(self) -> None:
            if accounts and urlsplit(self.path).path == local_accounts.COGNITO_PROXY_PATH:
                return self._cognito()
            if states and urlsplit(self.path).path.rstrip("/") == local_studies.STATES_PATH:
                return self._states()
            self._invoke()

        def do_DELETE(self) -> None:
            self._invoke()

        # Any other method gets the API's JSON 404, not http.server's HTML 501 page.
        def do_PUT(self) -> None:
            self._invoke()

        def do_PATCH(self) -> None:
            self._invoke()

        def do_TRACE(self) -> None:
            self._invoke()

        def do_HEAD(self) -> None:
            self.do_GET()

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # http.server's own refusals (a header over 64 KB, a request line it cannot parse): JSON, not an HTML
            # page, and never its message, which quotes the request line (and so a patient reference).
            self.close_connection = True
            body = {"error": {"code": "bad_request", "message": HTTPStatus(code).phrase}}
            self._send(code, {"Content-Type": "application/json", "Connection": "close"}, json.dumps(body).encode())

        def _content_length(self) -> int | None:
            """The body's length, or None (400 sent) when the header is no count: int("-1") would read to EOF."""
            value = self.headers.get("Content-Length") or "0"
            if not value.isdigit():
                self.send_error(400)
                return None
            return int(value)

        def _cognito(self) -> None:
            length = self._content_length()
            if length is None:
                return
            body = self.rfile.read(min(length, 64 * 1024))
            target = self.headers.get("X-Amz-Target", "")
            status, data = local_accounts.forward_to_cognito(accounts.endpoint, body, target)
            self._send(status, {"Content-Type": "application/x-amz-json-1.1"}, data)

        def _states(self) -> None:
            """Step Functions' API for the function's own client (the study engine, local_studies)."""
            length = self._content_length()
            if length is None:
                return
            status, data = states.handle(self.headers.get("X-Amz-Target", ""), self.rfile.read(min(length, 1 << 20)))
            self._send(status, {"Content-Type": "application/x-amz-json-1.0"}, data)

        def do_OPTIONS(self) -> None:
            self._invoke()

        def _invoke(self) -> None:
            length = self._content_length()
            if length is None:
                return
            if length > API_GATEWAY_MAX_BODY:
                self.close_connection = True
                return self._send(413, {"Content-Type": "application/json"}, b'{"message":"Request Too Long"}')
            body = self.rfile.read(length) if length else b""
            headers = dict(self.headers.items())
            url = urlsplit(self.path)
            event = proxy_event(
                self.command,
                url.path,
                # Only BinaryMediaTypes arrive base64-encoded; API Gateway passes any other body on as text.
                body=body if is_binary(headers.get("Content-Type")) else body.decode("utf-8", errors="replace"),
                headers=headers,
                query=parse_qsl(url.query, keep_blank_values=True),
            )
            if authorizer and authorizer.guards(event) and not authorizer.authorize(event):
                # As the template's UNAUTHORIZED gateway response, with its $context.requestId.
                error = dict(local_accounts.UNAUTHORIZED_BODY["error"], request_id=event["requestContext"]["requestId"])
                data = json.dumps({"error": error}).encode()
                return self._send(401, {"Content-Type": "application/json"}, data)
            with invoke_lock:
                result = lambda_handler(event, LambdaContext(event["requestContext"]["requestId"]))
            payload = result.get("body") or ""
            data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
            response_headers = dict(result.get("headers") or {})
            for key, values in (result.get("multiValueHeaders") or {}).items():
                response_headers[key] = ", ".join(values)
            self._send(result.get("statusCode", 502), response_headers, data)

        def _static(self) -> None:
            path = urlsplit(self.path).path
            relative = "index.html" if path in ("", "/") else path.lstrip("/")
            target = (frontend_dir / relative).resolve()
            if not target.is_relative_to(frontend_dir.resolve()) or not target.is_file():
                return self._send(404, {"Content-Type": "text/plain"}, b"Not found")
            content_type = (
                SITE_CONTENT_TYPES.get(target.suffix)
                or mimetypes.guess_type(target.name)[0]
                or "application/octet-stream"
            )
            data = target.read_bytes()
            if relative == "config.js" and accounts:  # where the page signs in, as deploy.sh would write it
                data += local_accounts.page_config(accounts).encode()
            self._send(200, {"Content-Type": content_type, "Cache-Control": "no-cache"}, data)

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            # Method, path and status only: never bodies or file names.
            # The resource, as API Gateway's access log has it: /patients/{ref}/scans, never the reference;
            # a path that is no route (/patients/P-0001, a typo) is logged only if it names a file of the site.
            resource = resource_of(urlsplit(getattr(self, "path", "")).path)[0]  # no path: an unparsed request
            site_file = resource == "/" or (frontend_dir / resource.lstrip("/")).resolve() in site_files
            shown = resource if resource in API_PATHS or site_file else "(no route)"
            sys.stderr.write(f"{self.address_string()} {self.command} {shown} {args[1] if len(args) > 1 else ''}\n")

    return Handler


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 resets connections under 20 concurrent clients


def start_s3(port: int):
    """Start moto's server as the local S3 and point boto3 at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}",
    )
    return server


def publish_models(bucket: str, bundles: list[Path]) -> list[str]:
    """Publish each bundle as a data scientist does (``python -m training publish``: validate, then upload,
    verify, record, move the pointer); returns their names."""
    import boto3

    from training.release.publish import publish

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return [publish(s3, bucket, bundle).name for bundle in bundles]


def serve(host: str, port: int, s3_port: int, bundles: list[Path], bucket: str):
    """Start S3, publish the models, import the real handler; returns (HTTP server, S3 server)."""
    s3_server = start_s3(s3_port)
    names = publish_models(bucket, bundles)
    accounts = local_accounts.create_accounts(os.environ["AWS_ENDPOINT_URL_S3"])
    os.environ.update(local_studies.create_studies(accounts.endpoint, f"http://{host}:{port}"))
    os.environ.update(
        MODEL_BUCKET=bucket,
        MODEL_NAME=names[0],
        MODEL_NAMES=",".join(names),
        MODEL_DIR=str(bundles[0]),  # the image's baked fallback
        ALLOWED_ORIGIN=f"http://{host}:{port}",
        POWERTOOLS_SERVICE_NAME="classifier",
        POWERTOOLS_TRACE_DISABLED="1",
        POWERTOOLS_METRICS_DISABLED="1",
        AWS_ENDPOINT_URL_DYNAMODB=accounts.endpoint,
        AWS_ENDPOINT_URL_COGNITO_IDP=accounts.endpoint,
        AWS_ENDPOINT_URL_SFN=f"http://{host}:{port}{local_studies.STATES_PATH}",
        COGNITO_USER_POOL_ID=accounts.user_pool_id,
        COGNITO_CLIENT_ID=accounts.client_id,
        HISTORY_TABLE=accounts.table,
        PATIENT_REF_HASH_KEY=secrets.token_hex(32),  # per run: the local history lives as long as the run
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MODEL_CACHE_DIR", str(REPO_ROOT / "build" / "model-cache"))
    import boto3

    import app  # loads the models from the local registry, as a cold start would (PYTHONPATH: TASK_ROOT)
    from infrastructure.local_engine import local_engine

    states = local_studies.LocalStepFunctions(local_engine(boto3.client("s3")))
    server = LocalServer((host, port), make_request_handler(app.lambda_handler, FRONTEND_DIR, accounts, states))
    return server, s3_server


@dataclass
class StackProcess:
    base_url: str
    s3_port: int
    process: subprocess.Popen
    log_path: Path


@contextmanager
def stack_subprocess(log_path: Path, bundles: Sequence[Path] = (), timeout: float = 180) -> Iterator[StackProcess]:
    """This stack in a child process on free ports, healthy on entry and stopped on exit (tests, load tests)."""
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    env = with_function_path(
        {**os.environ, "MODEL_CACHE_DIR": str(log_path.parent / "model-cache"), "PYTHONUNBUFFERED": "1"}
    )
    env.pop("MODEL_DIR", None)
    command = [sys.executable, "-m", "infrastructure.local_stack", "--port", str(ports[0]), "--s3-port", str(ports[1])]
    for bundle in bundles:
        command += ["--bundle", str(bundle)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    stack = StackProcess(f"http://127.0.0.1:{ports[0]}", ports[1], process, log_path)
    try:
        _wait_until_healthy(stack, timeout)
        yield stack
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_healthy(stack: StackProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if stack.process.poll() is not None:
            raise RuntimeError(f"the local stack exited early:\n{stack.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(stack.base_url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the local stack did not start in {timeout:.0f} s:\n{stack.log_path.read_text()[-3000:]}"
            )
        time.sleep(0.3)


def handler_importable() -> bool:
    """Whether ``import app`` finds the function's ``app.py`` (its task root is on ``PYTHONPATH``)."""
    spec = importlib.util.find_spec("app")
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve() == TASK_ROOT / "app.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001, help="page and API (the original app's port)")
    parser.add_argument("--s3-port", type=int, default=5002, help="moto server (local S3)")
    parser.add_argument("--bucket", default="lungscan-models-local")
    parser.add_argument("--bundle", type=Path, action="append", help="bundle folder(s) to publish; default: models/")
    args = parser.parse_args(argv)
    bundles = args.bundle or [path for path in DEFAULT_BUNDLES if path.is_dir()]
    if not bundles:
        parser.error("no model bundle found under models/; pass --bundle DIR")
    if not handler_importable():
        parser.error(
            f"the handler is not importable: put {TASK_ROOT} on PYTHONPATH (`make run` does: "
            "PYTHONPATH=functions/classifier python -m infrastructure.local_stack)"
        )
    server, s3_server = serve(args.host, args.port, args.s3_port, bundles, args.bucket)
    print(f"LungScan is running: page and API on http://{args.host}:{args.port}  (Ctrl-C stops)", flush=True)
    users = ", ".join(f"{email} ({team})" for email, team in local_accounts.DEMO_USERS.items())
    print(f"Demo users (password {local_accounts.DEMO_PASSWORD}): {users}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nStopping LungScan.", flush=True)
    finally:
        server.server_close()
        s3_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
