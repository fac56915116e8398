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

Usage::

    python -m infrastructure.runtime_api events/predict_png_json.json [--model-dir DIR]

or, from Python (tests, benchmarks)::

    with local_function(model_dir, log_path) as function:
        response = function.invoke(event, timeout=60)

Only the standard library is imported here; the subprocess imports TensorFlow, not this one.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from infrastructure.emulation import ACCOUNT, FUNCTION_NAME, REGION, REPO_ROOT

TASK_ROOT = REPO_ROOT / "functions" / "classifier"  # /var/task in the image
HANDLER = "app.lambda_handler"  # the Dockerfile's CMD
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "iq-oth-3class"
DEFAULT_MEMORY_MB = 3008

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


# ---------------------------------------------------------------- the function process


def lambda_environment(
    runtime_address: str,
    *,
    model_dir: Path | str | None,
    function_name: str = FUNCTION_NAME,
    region: str = REGION,
    memory_mb: int = DEFAULT_MEMORY_MB,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment Lambda gives the image's process (a clean one: nothing leaks from ours).

    Differences from the image, on purpose: ``PYTHONPATH`` is the repository root (the image
    copies ``lungscan/`` into /var/task), ``MODEL_DIR`` is the given bundle rather than
    /var/task/model, and the Python is the one running this module (the image has 3.12).
    """
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PYTHONPATH": str(REPO_ROOT),
        "LAMBDA_TASK_ROOT": str(TASK_ROOT),
        "LAMBDA_RUNTIME_DIR": str(Path(sys.executable).parent),
        "_HANDLER": HANDLER,
        "AWS_LAMBDA_RUNTIME_API": runtime_address,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{python}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d')}/[$LATEST]{secrets.token_hex(16)}",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "POWERTOOLS_SERVICE_NAME": "classifier",
        "POWERTOOLS_METRICS_NAMESPACE": "LungScan",
        "POWERTOOLS_TRACE_DISABLED": "1",
        # The Dockerfile's ENV lines.
        "KERAS_HOME": str(Path(tempfile.gettempdir()) / ".keras"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if model_dir is not None:
        env["MODEL_DIR"] = str(Path(model_dir).resolve())
    env.update(extra_env or {})
    return env


def launch_entry_point(
    runtime: LocalRuntime,
    *,
    model_dir: Path | str | None,
    log_path: Path | str,
    python: str = sys.executable,
    memory_mb: int = DEFAULT_MEMORY_MB,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``python -m awslambdaric app.lambda_handler`` in ``functions/classifier`` against ``runtime``.

    The process's stdout and stderr (its logs, the metrics' EMF lines) are appended to ``log_path``.
    The runtime watches the process, so a waiting ``invoke`` fails at once if it dies.
    """
    env = lambda_environment(
        runtime.address,
        model_dir=model_dir,
        function_name=runtime.function_name,
        region=runtime.region,
        memory_mb=memory_mb,
        extra_env=extra_env,
    )
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [python, "-m", "awslambdaric", HANDLER],
            cwd=TASK_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it
        )
    runtime.watch(process)
    return process


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> int:
    """Terminate ``process`` (SIGTERM, then SIGKILL) and return its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def peak_rss_kib(pid: int) -> int | None:
    """Peak resident set size (``VmHWM``, KiB) of a live process, from /proc; None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class LocalFunction:
    """A running function: the runtime and the awslambdaric process that polls it."""

    runtime: LocalRuntime
    process: subprocess.Popen
    log_path: Path

    def invoke(self, event: Mapping[str, Any], timeout: float = 30.0) -> dict:
        return self.runtime.invoke(event, timeout=timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_kib(self) -> int | None:
        return peak_rss_kib(self.process.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def local_function(
    model_dir: Path | str | None,
    log_path: Path | str,
    **launch_options: Any,
) -> Iterator[LocalFunction]:
    """Start a runtime and the entry point against it; stop both on exit."""
    runtime = LocalRuntime().start()
    process = None
    try:
        process = launch_entry_point(runtime, model_dir=model_dir, log_path=log_path, **launch_options)
        yield LocalFunction(runtime, process, Path(log_path))
    finally:
        if process is not None:
            stop_process(process)
        runtime.stop()


# ---------------------------------------------------------------- API Gateway proxy events


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.runtime_api",
        description="Invoke the classifier's real Lambda entry point (awslambdaric) with an event file.",
    )
    parser.add_argument("event", type=Path, help="API Gateway proxy event (JSON), e.g. events/predict_png_json.json")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="bundle folder (MODEL_DIR)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for init + invocation")
    parser.add_argument(
        "--log", type=Path, default=REPO_ROOT / "build" / "runtime_api.log", help="the function's stdout/stderr"
    )
    args = parser.parse_args(argv)

    try:
        event = json.loads(args.event.read_text())
    except (OSError, ValueError) as error:
        print(f"cannot read event {args.event}: {error}", file=sys.stderr)
        return 2
    if not (args.model_dir / "model.h5").is_file():
        print(f"no model bundle at {args.model_dir} (expected model.h5 there); pass --model-dir", file=sys.stderr)
        return 2

    print(f"function log: {args.log}", file=sys.stderr)
    started = time.monotonic()
    with local_function(args.model_dir, args.log) as function:
        try:
            response = function.invoke(event, timeout=args.timeout)
        except (InvocationError, InvocationTimeoutError) as error:
            print(f"invocation failed: {error}\n--- function log (tail) ---\n{function.log_tail()}", file=sys.stderr)
            return 1
    print(json.dumps(response, indent=2))
    print(f"answered in {time.monotonic() - started:.2f} s (cold start included)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
