"""How fast does a prediction come back, warm and cold, and against the original Flask app's pipeline?

Measured on one 512x512 CT slice sent as a PNG:

- warm latency through ``lambda_handler`` in this process (JSON base64 event, after a warm-up),
- warm latency through the real entry point (awslambdaric subprocess + local Runtime API),
- cold start: spawn the runtime and ``python -m awslambdaric app.lambda_handler``, time to the first
  200 (median of several), with the init phase (until the function first polls for an event),
- peak RSS of this process after the handler run, and of the function process,
- the original app's per-request pipeline in the same run: upload saved to disk,
  ``keras.utils.load_img(path, target_size=(64, 64))``, ``/255``, ``model.predict`` on a 64x64x3
  sigmoid CNN (random weights unless ``--legacy-model``),
- the ratio original p50 / handler p50.

Targets are printed beside the figures, never asserted (wall-clock times vary with the machine).

Usage: python benchmarks/bench_predict.py [--model-dir DIR] [--requests N] [--image PNG] [--json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK_ROOT = REPO_ROOT / "functions" / "classifier"
DEFAULT_IMAGE = REPO_ROOT.parent / "shared" / "data" / "iq-oth-nccd" / "malignant" / "Malignant case (1).jpg"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "iq-oth-3class"

TARGET_WARM_P50_MS = 10.0
TARGET_SPEEDUP = 10.0
TARGET_COLD_START_S = 5.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(samples: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(samples), q))


@contextlib.contextmanager
def stdout_to(path: Path) -> Iterator[None]:
    """Send fd 1 (the handler's JSON logs and EMF metrics, Keras' progress bars) to a file for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def max_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- inputs


def load_png(image_path: Path | None) -> tuple[bytes, str]:
    """The benchmark image as PNG bytes, and where it came from."""
    from PIL import Image, ImageDraw

    path = image_path or DEFAULT_IMAGE
    if path.is_file():
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "PNG":
                return data, f"{path} ({image.width}x{image.height} {image.mode})"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue(), f"{path} -> PNG in memory ({image.width}x{image.height} {image.mode})"
    if image_path is not None:
        raise SystemExit(f"--image {image_path} does not exist")
    # No data folder on this machine: a synthetic 512x512 slice (gradient, body, two lungs).
    import numpy as np

    size = 512
    gradient = np.linspace(0, 60, size, dtype=np.float32)[:, None].repeat(size, axis=1).astype(np.uint8)
    image = Image.fromarray(gradient, mode="L")
    draw = ImageDraw.Draw(image)
    draw.ellipse((50, 100, 462, 435), fill=180)
    draw.ellipse((100, 150, 230, 385), fill=35)
    draw.ellipse((282, 150, 412, 385), fill=45)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), f"synthetic 512x512 L ({DEFAULT_IMAGE} not found)"


def resolve_model_dir(model_dir: Path, scratch: Path) -> tuple[Path, str]:
    """The bundle to serve; a tiny untrained stand-in when the default bundle is not there yet."""
    if (model_dir / "model.h5").is_file():
        metadata = model_dir / "model.json"
        if metadata.is_file():
            info = json.loads(metadata.read_text())
            return model_dir, f"{info['name']} version {info['version']} ({model_dir})"
        return model_dir, f"legacy bare model.h5 ({model_dir})"
    if model_dir != DEFAULT_MODEL_DIR:
        raise SystemExit(f"--model-dir {model_dir} has no model.h5")
    log(f"{model_dir} not found: building a tiny untrained stand-in bundle (64x64 grayscale, 3 classes)")
    import keras

    from lungscan.bundle import BundleMetadata, InputSpec, PreprocessingSpec, ResizeSpec, write_metadata

    bundle = scratch / "iq-oth-3class"
    bundle.mkdir(parents=True)
    model = keras.Sequential(
        [
            keras.Input((64, 64, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.save(bundle / "model.h5")
    write_metadata(
        bundle,
        BundleMetadata(
            name="iq-oth-3class",
            version="stand-in",
            classes=["normal", "benign", "malignant"],
            positive_classes=["malignant"],
            input=InputSpec(height=64, width=64, channels=1, colour="grayscale"),
            preprocessing=PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=64, width=64)),
        ),
    )
    return bundle, "STAND-IN: tiny untrained Conv2D(4)-GAP-Dense(3) bundle (models/iq-oth-3class absent)"


def predict_event(png: bytes) -> dict:
    from infrastructure.runtime_api import proxy_event

    body = json.dumps({"image": base64.b64encode(png).decode("ascii"), "filename": "slice.png"})
    return proxy_event("POST", "/predict", body=body, headers={"Content-Type": "application/json"})


# ---------------------------------------------------------------- measurements


@dataclass
class FakeContext:
    function_name: str = "ClassifierFunction"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ClassifierFunction"
    aws_request_id: str = "bench"
    log_group_name: str = "/aws/lambda/ClassifierFunction"
    log_stream_name: str = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def time_calls(call: Callable[[], Any], warmup: int, requests: int) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_cold_start(model_dir: Path, event: dict, runs: int, warm_requests: int, scratch: Path) -> dict:
    """Spawn runtime + awslambdaric, time to the first 200; then a few warm requests through it."""
    from infrastructure.runtime_api import InvocationError, InvocationTimeoutError, local_function

    totals, inits, rss, warm = [], [], [], []
    for run in range(runs):
        log_path = scratch / f"function-{run}.log"
        started = time.monotonic()
        with local_function(model_dir, log_path) as function:
            try:
                response = function.invoke(event, timeout=600)
            except (InvocationError, InvocationTimeoutError) as error:
                raise SystemExit(f"cold start run {run} failed: {error}\n{function.log_tail()}") from None
            answered = time.monotonic()
            if response["statusCode"] != 200:
                raise SystemExit(f"cold start run {run}: status {response['statusCode']}: {response['body'][:300]}")
            totals.append(answered - started)
            inits.append((function.runtime.init_done_at or answered) - started)
            if run == 0 and warm_requests:
                warm = time_calls(lambda: function.invoke(event, timeout=60), warmup=3, requests=warm_requests)
            peak = function.peak_rss_kib()
            if peak is not None:
                rss.append(peak / 1024)
        log(f"  cold start {run + 1}/{runs}: {totals[-1]:.2f} s (init {inits[-1]:.2f} s)")
    children = max_rss_mib(resource.RUSAGE_CHILDREN)
    return {
        "cold_start_s": totals,
        "cold_start_median_s": statistics.median(totals),
        "init_median_s": statistics.median(inits),
        "function_peak_rss_mib": max(rss) if rss else children,
        "function_peak_rss_source": "/proc VmHWM" if rss else "getrusage(RUSAGE_CHILDREN)",
        "runtime_warm_ms": warm,
    }


def bench_handler(model_dir: Path, event: dict, requests: int, scratch: Path) -> dict:
    """Warm latency of lambda_handler in this process (the model loads at import, as in the init phase)."""
    os.environ["MODEL_DIR"] = str(model_dir)
    os.environ.pop("MODEL_BUCKET", None)
    for path in (REPO_ROOT, TASK_ROOT):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    with stdout_to(scratch / "handler.log"):
        started = time.perf_counter()
        import app  # the import is the init phase (model load) of the in-process run

        import_s = time.perf_counter() - started
        context = FakeContext()
        first = app.lambda_handler(event, context)
        if first["statusCode"] != 200:
            raise SystemExit(f"handler answered {first['statusCode']}: {first['body'][:300]}")
        samples = time_calls(lambda: app.lambda_handler(event, context), warmup=30, requests=requests)
    body = json.loads(first["body"])
    return {
        "import_s": import_s,
        "samples_ms": samples,
        "label": body["label"],
        "probabilities": body["probabilities"],
        "peak_rss_mib": max_rss_mib(),
    }


def bench_original(png: bytes, legacy_model: Path | None, requests: int, scratch: Path) -> dict:
    """The original Flask app's request path, reproduced: save, load_img, /255, expand_dims, predict."""
    import keras
    import numpy as np

    if legacy_model is not None:
        model = keras.models.load_model(legacy_model, compile=False)
        model_source = str(legacy_model)
    else:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((64, 64, 3)),
                keras.layers.Conv2D(32, (3, 3), activation="relu"),
                keras.layers.MaxPooling2D((2, 2)),
                keras.layers.Conv2D(64, (3, 3), activation="relu"),
                keras.layers.MaxPooling2D((2, 2)),
                keras.layers.Flatten(),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model_source = "Conv2D(32)-MaxPool-Conv2D(64)-MaxPool-Flatten-Dense(128)-Dense(1,sigmoid), random weights"
    uploads = scratch / "uploads"
    uploads.mkdir(exist_ok=True)
    path = uploads / "slice.png"

    def request() -> float:
        path.write_bytes(png)  # Flask: file.save(os.path.join(UPLOAD_FOLDER, file.filename))
        image = keras.utils.load_img(path, target_size=(64, 64))
        x = keras.utils.img_to_array(image) / 255.0
        x = np.expand_dims(x, axis=0)
        return float(model.predict(x)[0][0])

    with stdout_to(scratch / "original.log"):  # model.predict prints a progress bar per call
        samples = time_calls(request, warmup=5, requests=requests)
    return {"samples_ms": samples, "model": model_source, "peak_rss_mib": max_rss_mib()}


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def render_table(report: dict) -> str:
    handler, original, cold = report["handler"], report["original"], report["cold_start"]
    rows = [
        (
            "warm p50, lambda_handler in-process",
            f"{handler['p50_ms']:.2f} ms",
            f"< {TARGET_WARM_P50_MS:g} ms",
            verdict(handler["p50_ms"] < TARGET_WARM_P50_MS),
        ),
        ("warm p99, lambda_handler in-process", f"{handler['p99_ms']:.2f} ms", "", ""),
    ]
    if cold.get("runtime_warm_p50_ms") is not None:
        rows += [
            ("warm p50, via awslambdaric + Runtime API", f"{cold['runtime_warm_p50_ms']:.2f} ms", "", ""),
            ("warm p99, via awslambdaric + Runtime API", f"{cold['runtime_warm_p99_ms']:.2f} ms", "", ""),
        ]
    runs = ", ".join(f"{s:.2f}" for s in cold["cold_start_s"])
    rows += [
        (
            f"cold start median, spawn -> first 200 (n={len(cold['cold_start_s'])})",
            f"{cold['cold_start_median_s']:.2f} s",
            f"< {TARGET_COLD_START_S:g} s",
            verdict(cold["cold_start_median_s"] < TARGET_COLD_START_S),
        ),
        ("  runs", f"{runs} s", "", ""),
        ("  of which init phase (spawn -> first poll)", f"{cold['init_median_s']:.2f} s", "", ""),
        ("peak RSS, this process after handler run", f"{handler['peak_rss_mib']:.0f} MiB", "", ""),
        ("peak RSS, function process", f"{cold['function_peak_rss_mib']:.0f} MiB", "", ""),
        ("original pipeline p50", f"{original['p50_ms']:.2f} ms", "", ""),
        ("original pipeline p99", f"{original['p99_ms']:.2f} ms", "", ""),
        (
            "speed-up, original p50 / handler p50",
            f"{report['speedup']:.1f}x",
            f">= {TARGET_SPEEDUP:g}x",
            verdict(report["speedup"] >= TARGET_SPEEDUP),
        ),
    ]
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    lines = [
        "LungScan prediction benchmark",
        f"image:    {report['image']} , PNG {report['image_bytes'] / 1024:.0f} KiB",
        f"model:    {report['model']}",
        f"original: {original['model']}",
        f"answer:   {handler['label']} {handler['probabilities']}",
        f"requests: {report['requests']} handler, {report['legacy_requests']} original; machine: {report['machine']}",
        "",
        f"{'metric':<{width}}  {'value':>{value_width}}  {'target':<9} status",
        "-" * (width + value_width + 22),
    ]
    for name, value, target, status in rows:
        lines.append(f"{name:<{width}}  {value:>{value_width}}  {target:<9} {status}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="bundle folder to serve")
    parser.add_argument("--image", type=Path, default=None, help=f"CT slice (default: {DEFAULT_IMAGE})")
    parser.add_argument("--requests", type=int, default=300, help="timed handler requests (after warm-up)")
    parser.add_argument("--legacy-requests", type=int, default=100, help="timed original-pipeline requests")
    parser.add_argument("--legacy-model", type=Path, default=None, help="the original app's model.h5")
    parser.add_argument("--cold-starts", type=int, default=3, help="cold starts to time (median reported)")
    parser.add_argument("--runtime-requests", type=int, default=50, help="warm requests through awslambdaric")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (table on stderr)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "classifier")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "LungScan")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))

    with tempfile.TemporaryDirectory(prefix="lungscan-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        png, image_source = load_png(args.image)
        model_dir, model_source = resolve_model_dir(args.model_dir.resolve(), scratch)
        event = predict_event(png)

        # Cold starts first, while this process has not imported TensorFlow (unless the stand-in needed it).
        log(f"cold start x{args.cold_starts} (runtime + awslambdaric subprocess), logs in {scratch}")
        cold = bench_cold_start(model_dir, event, args.cold_starts, args.runtime_requests, scratch)
        if cold["runtime_warm_ms"]:
            cold["runtime_warm_p50_ms"] = percentile(cold["runtime_warm_ms"], 50)
            cold["runtime_warm_p99_ms"] = percentile(cold["runtime_warm_ms"], 99)
        log(f"lambda_handler in-process x{args.requests}")
        handler = bench_handler(model_dir, event, args.requests, scratch)
        handler["p50_ms"] = percentile(handler["samples_ms"], 50)
        handler["p99_ms"] = percentile(handler["samples_ms"], 99)
        log(f"original Flask pipeline x{args.legacy_requests}")
        original = bench_original(png, args.legacy_model, args.legacy_requests, scratch)
        original["p50_ms"] = percentile(original["samples_ms"], 50)
        original["p99_ms"] = percentile(original["samples_ms"], 99)

    import tensorflow as tf

    report = {
        "image": image_source,
        "image_bytes": len(png),
        "model": model_source,
        "requests": args.requests,
        "legacy_requests": args.legacy_requests,
        "machine": f"Python {platform.python_version()}, TensorFlow {tf.__version__}, {os.cpu_count()} CPUs",
        "handler": {k: v for k, v in handler.items() if k != "samples_ms"},
        "original": {k: v for k, v in original.items() if k != "samples_ms"},
        "cold_start": {k: v for k, v in cold.items() if k != "runtime_warm_ms"},
        "speedup": original["p50_ms"] / handler["p50_ms"],
        "targets": {
            "warm_p50_ms": TARGET_WARM_P50_MS,
            "speedup": TARGET_SPEEDUP,
            "cold_start_s": TARGET_COLD_START_S,
        },
    }
    table = render_table(report)
    if args.json:
        log(table)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
