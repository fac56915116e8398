"""A local Lambda Runtime API, to run the container's real entry point without Docker.

On Lambda, the image's entry point starts ``python -m awslambdaric app.lambda_handler``,
which long-polls the Runtime API (``AWS_LAMBDA_RUNTIME_API``) for events and posts the
handler's answers back. This module serves the few endpoints awslambdaric uses, on
127.0.0.1 with an ephemeral port, so the same entry point runs here as a subprocess,
with the environment Lambda would give it:

    GET  /2018-06-01/runtime/invocation/next              blocks until an event is queued
    POST /2018-06-01/runtime/invocation/{id}/response     the handler's result
    POST /2018-06-01/runtime/invocation/{id}/error        an unhandled exception
    POST /2018-06-01/runtime/init/error                   the module failed to import

The entry point itself is started, against this runtime, by :mod:`infrastructure.local_function`.

Only the standard library is imported here; the subprocess imports TensorFlow, not this one.
"""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infrastructure.emulation import ACCOUNT, FUNCTION_NAME, REGION

API_PREFIX = "/2018-06-01/runtime"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
_POLL_SECONDS = 0.1


class InvocationError(RuntimeError):
    """The function did not answer: it reported an error, failed to start, or died."""

    def __init__(self, message: str, error_type: str = "Unknown", payload: Any = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.payload = payload


class InitError(InvocationError):
    """The entry point posted to ``/runtime/init/error`` (the handler module failed to import)."""


class ProcessExitedError(InvocationError):
    """The watched function process exited while an invocation waited for it."""


class InvocationTimeoutError(TimeoutError):
    """No answer before the invocation's deadline."""


@dataclass
class _Invocation:
    event: bytes
    deadline_ms: int
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    trace_id: str = field(
        default_factory=lambda: (
            f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=0"
        )
    )
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    result: bytes | None = None
    error: Any = None
    error_type: str | None = None


class LocalRuntime:
    """The Runtime API side of one Lambda execution environment (one invocation at a time)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        function_name: str = FUNCTION_NAME,
        region: str = REGION,
        account: str = ACCOUNT,
    ) -> None:
        self.host = host
        self.port = port
        self.function_name = function_name
        self.region = region
        self.function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.init_error: Any = None
        self.init_done_at: float | None = None  # time.monotonic() of the first /next: the init phase is over
        self._queue: queue.Queue[_Invocation] = queue.Queue()
        self._pending: dict[str, _Invocation] = {}
        self._lock = threading.Lock()
        self._first_next = threading.Event()
        self._init_failed = threading.Event()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """``host:port``, the value of ``AWS_LAMBDA_RUNTIME_API``."""
        if self._server is None:
            raise RuntimeError("the runtime is not started")
        return f"{self.host}:{self._server.server_address[1]}"

    def start(self) -> LocalRuntime:
        if self._server is not None:
            return self
        server = _RuntimeServer((self.host, self.port), _RuntimeRequestHandler)
        server.daemon_threads = True
        server.runtime = self  # type: ignore[attr-defined]
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="lambda-runtime-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def watch(self, process: subprocess.Popen) -> None:
        """Fail waiting invocations at once if ``process`` exits."""
        self._process = process

    # ------------------------------------------------------------ client side

    def wait_for_init(self, timeout: float) -> float:
        """Wait until the function first asks for an event (its init phase is over); return when it did.

        Raises:
            InitError, ProcessExitedError: the function failed to start.
            InvocationTimeoutError: still initialising after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self._first_next.wait(_POLL_SECONDS):
            self._raise_if_dead()
            if time.monotonic() > deadline:
                raise InvocationTimeoutError(f"the function did not finish its init phase in {timeout:.0f} s")
        assert self.init_done_at is not None
        return self.init_done_at

    def invoke(self, event: Mapping[str, Any], timeout: float = 30.0) -> dict:
        """Queue ``event``, wait for the function's answer, and return it (the proxy response dict).

        ``timeout`` covers the wait for the function to pick the event up (its init phase, on a
        cold start) and the handler's run; it is also the deadline the function sees.

        Raises:
            InvocationError: the handler raised (``error_type``/``payload`` hold what it posted).
            InitError, ProcessExitedError: the function failed to start or died.
            InvocationTimeoutError: no answer in ``timeout`` seconds.
        """
        if self._server is None:
            raise RuntimeError("the runtime is not started")
        invocation = _Invocation(
            event=json.dumps(event).encode("utf-8"),
            deadline_ms=int((time.time() + timeout) * 1000),
        )
        with self._lock:
            self._pending[invocation.request_id] = invocation
        self._queue.put(invocation)
        deadline = time.monotonic() + timeout
        try:
            while not invocation.done.wait(_POLL_SECONDS):
                self._raise_if_dead()
                if time.monotonic() > deadline:
                    invocation.cancelled = True  # never handed out later, if still queued
                    raise InvocationTimeoutError(f"no answer to invocation {invocation.request_id} in {timeout:g} s")
        finally:
            with self._lock:
                self._pending.pop(invocation.request_id, None)
        if invocation.error is not None:
            payload = invocation.error
            message = payload.get("errorMessage", str(payload)) if isinstance(payload, dict) else str(payload)
            # awslambdaric's native client sends no error-type header: fall back to the payload's errorType.
            error_type = invocation.error_type or (payload.get("errorType") if isinstance(payload, dict) else None)
            raise InvocationError(message, error_type or "Unknown", payload)
        assert invocation.result is not None
        try:
            return json.loads(invocation.result)
        except ValueError as error:
            raise InvocationError(f"the function's response is not JSON: {error}", "InvalidResponse") from None

    def _raise_if_dead(self) -> None:
        if self._init_failed.is_set():
            payload = self.init_error
            message = payload.get("errorMessage", str(payload)) if isinstance(payload, dict) else str(payload)
            error_type = payload.get("errorType", "Unknown") if isinstance(payload, dict) else "Unknown"
            raise InitError(f"init failed: {message}", error_type, payload)
        if self._process is not None and self._process.poll() is not None:
            status = self._process.returncode
            raise ProcessExitedError(f"the function process exited with status {status}", "ProcessExited")

    # ------------------------------------------------------------ server side (handler threads)

    def _next(self) -> _Invocation | None:
        if not self._first_next.is_set():
            self.init_done_at = time.monotonic()
            self._first_next.set()
        while not self._stopping.is_set():
            try:
                invocation = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if not invocation.cancelled:
                return invocation
        return None

    def _complete(self, request_id: str, *, result: bytes | None = None, error: Any = None, error_type=None) -> bool:
        with self._lock:
            invocation = self._pending.get(request_id)
        if invocation is None:
            return False
        invocation.result = result
        invocation.error = error
        invocation.error_type = error_type
        invocation.done.set()
        return True

    def _fail_init(self, error: Any) -> None:
        self.init_error = error
        self._init_failed.set()


class _RuntimeServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the function process was stopped with a keep-alive connection open
        super().handle_error(request, client_address)


class _RuntimeRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the runtime client expects
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every exchange.
    disable_nagle_algorithm = True
    server_version = "LocalLambdaRuntimeAPI/1.0"

    @property
    def runtime(self) -> LocalRuntime:
        return self.server.runtime  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the access log would only repeat what the tests and benchmarks measure

    def do_GET(self) -> None:
        if self.path != f"{API_PREFIX}/invocation/next":
            self._reply(HTTPStatus.NOT_FOUND, {"errorMessage": f"unknown path {self.path}", "errorType": "NotFound"})
            return
        invocation = self.runtime._next()
        if invocation is None:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"errorMessage": "runtime stopping", "errorType": "Stopping"})
            return
        self._reply(
            HTTPStatus.OK,
            invocation.event,
            {
                "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": self.runtime.function_arn,
                "Lambda-Runtime-Trace-Id": invocation.trace_id,
            },
        )

    def do_POST(self) -> None:
        body = self._read_body()
        parts = self.path.removeprefix(API_PREFIX).strip("/").split("/")
        if parts == ["init", "error"]:
            self.runtime._fail_init(_json_or_text(body))
            self._reply(HTTPStatus.ACCEPTED, {"status": "OK"})
            return
        if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            request_id = parts[1]
            if parts[2] == "response":
                known = self.runtime._complete(request_id, result=body)
            else:
                error_type = self.headers.get(ERROR_TYPE_HEADER)
                known = self.runtime._complete(request_id, error=_json_or_text(body), error_type=error_type)
            if known:
                self._reply(HTTPStatus.ACCEPTED, {"status": "OK"})
            else:
                message = f"unknown or expired request id {request_id}"
                self._reply(HTTPStatus.BAD_REQUEST, {"errorMessage": message, "errorType": "InvalidRequestID"})
            return
        self._reply(HTTPStatus.NOT_FOUND, {"errorMessage": f"unknown path {self.path}", "errorType": "NotFound"})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: HTTPStatus, body: bytes | dict, headers: Mapping[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        self.send_response(status)
        # awslambdaric's native client crashes on a response without a Content-Type.
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")
