"""The container's real entry point (``python -m awslambdaric app.lambda_handler``) as a local process,
with the environment Lambda would give it, polling a :class:`~infrastructure.runtime_api.LocalRuntime`.

Usage::

    python -m infrastructure.local_function events/predict_png_json.json [--model-dir DIR]

or, from Python (tests, benchmarks)::

    with local_function(model_dir, log_path) as function:
        response = function.invoke(event, timeout=60)

Only the standard library is imported here; the subprocess imports TensorFlow, not this one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infrastructure.emulation import FUNCTION_NAME, REGION, REPO_ROOT, TASK_ROOT
from infrastructure.runtime_api import InvocationError, InvocationTimeoutError, LocalRuntime
from lungscan.bundle.files import MODEL_FILE

HANDLER = "app.lambda_handler"  # the Dockerfile's CMD
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "malignancy-screen"
DEFAULT_MEMORY_MB = 3008


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infrastructure.local_function",
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
    if not (args.model_dir / MODEL_FILE).is_file():
        print(f"no model bundle at {args.model_dir} (expected {MODEL_FILE} there); pass --model-dir", file=sys.stderr)
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
