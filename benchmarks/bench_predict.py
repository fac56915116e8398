"""How fast does a prediction come back, cold and warm, served by the runtime twin and by model.h5?

One run measures, side by side, the same bundle served two ways: with its runtime twin
(``model.onnx`` under onnxruntime, no TensorFlow) and as ``model.h5`` through Keras (a copy of
the bundle without the twin: what a bare ``.h5`` or an older published version gets). For each,
on one 512x512 CT slice sent as a PNG:

- cold start: spawn the local Runtime API and ``python -m awslambdaric app.lambda_handler``,
  time to the first 200 (median of ``--cold-starts``, the two ways alternating), with the init
  phase (spawn -> first poll for an event) and the function process's peak RSS (VmHWM);
- warm p50/p99 through the real entry point (awslambdaric + Runtime API);
- warm p50/p99 through ``lambda_handler`` in a fresh worker process (JSON base64 event), with
  and without ``explain=true`` (the heatmap's overhead), and that process's peak RSS;
- parity: the two ways' unrounded probabilities for the image, and the twin's recorded parity
  on the bundle's smoke set (model.json ``twin.parity``);
- the studies and archive workers' batch path (``lungscan.uploads.classify_batch``): CPU time per slice
  (``time.process_time``) over ``--batch-slices`` CT slices of the dataset (the image repeated without it),
  in the same worker process. A tree without that entry (an older commit) is measured on its per-slice
  loop, ``classify_upload`` for each file: what a worker would have called.

Then the original Flask app's per-request pipeline in this process: upload saved to disk,
``keras.utils.load_img(path, target_size=(64, 64))``, ``/255``, ``model.predict`` on a 64x64x3
sigmoid CNN (random weights unless ``--legacy-model``), and the speed-ups over it.

Targets are printed beside the figures, never asserted (wall-clock times vary with the machine), with the
machine's load average before and after the run (the machines are shared: compare runs of one session).

Usage, from the repository root:
    python -m benchmarks.bench_predict [--model-dir DIR] [--requests N] [--image PNG] [--json]
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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from infrastructure.emulation import REPO_ROOT, LambdaContext, proxy_event, with_function_path

# The shared data folder sits beside the checkout (or beside the folder of worktrees).
_SLICE = Path("shared") / "data" / "iq-oth-nccd" / "malignant" / "Malignant case (1).jpg"
DEFAULT_IMAGE = next((p / _SLICE for p in REPO_ROOT.parents[:2] if (p / _SLICE).is_file()), REPO_ROOT.parent / _SLICE)
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "iq-oth-3class"
BATCH_SLICES_DIR = DEFAULT_IMAGE.parent.parent  # the dataset's class folders: a mix of slices for the batch path

TARGET_COLD_START_S = 0.8  # twin, median (issue 25: and under 1 s on a slower machine)
TARGET_COLD_SPEEDUP = 5.0  # .h5 cold start / twin cold start
TARGET_WARM_P50_MS = 8.0  # twin, through the handler
TARGET_SPEEDUP_OVER_ORIGINAL = 10.0  # original pipeline p50 / twin handler p50, measured in the same run
TARGET_BATCH_CPU_MS = 6.0  # CPU per slice, the workers' batch path (twin)
TARGET_PEAK_RSS_MIB = 200.0  # twin, function process
TARGET_PARITY = 1e-5  # max |probability difference|, twin vs model.h5
TARGET_EXPLAIN_OVERHEAD_MS = 30.0  # warm p50 with explain=true minus without

VARIANTS = ("twin", "h5")
VARIANT_TITLES = {"twin": "twin (onnxruntime)", "h5": "model.h5 (Keras)"}


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


def bundle_variants(model_dir: Path, scratch: Path) -> tuple[dict[str, Path], dict]:
    """The bundle as it is (with its twin) and a copy without the twin (served from model.h5)."""
    from lungscan.bundle.files import MODEL_FILE
    from lungscan.bundle.store import has_metadata, read_metadata, write_metadata
    from lungscan.model.runtime import verify_twin

    if not has_metadata(model_dir):
        raise SystemExit(f"{model_dir} has no model.json")
    metadata = read_metadata(model_dir)
    info = metadata.model_dump(mode="json")
    if metadata.twin is None or not (model_dir / metadata.twin.file).is_file():
        raise SystemExit(f"{model_dir} has no runtime twin: run `python -m training twin {model_dir}` first")
    verify_twin(model_dir, metadata.twin)
    h5_only = scratch / "h5-only" / model_dir.name
    h5_only.mkdir(parents=True)
    shutil.copy2(model_dir / MODEL_FILE, h5_only / MODEL_FILE)
    metadata.twin = None
    write_metadata(h5_only, metadata)
    return {"twin": model_dir, "h5": h5_only}, info


def predict_event(png: bytes, explain: bool = False) -> dict:
    body = {"image": base64.b64encode(png).decode("ascii"), "filename": "slice.png"}
    if explain:
        body["explain"] = True
    return proxy_event("POST", "/predict", body=json.dumps(body), headers={"Content-Type": "application/json"})


# ---------------------------------------------------------------- measurements


def time_calls(call: Callable[[], Any], warmup: int, requests: int) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def cold_start_once(model_dir: Path, event: dict, log_path: Path, warm_requests: int) -> dict:
    """Spawn runtime + awslambdaric, time to the first 200; optionally a few warm requests through it."""
    from infrastructure.local_function import local_function
    from infrastructure.runtime_api import InvocationError, InvocationTimeoutError

    started = time.monotonic()
    with local_function(model_dir, log_path) as function:
        try:
            response = function.invoke(event, timeout=600)
        except (InvocationError, InvocationTimeoutError) as error:
            raise SystemExit(f"cold start failed: {error}\n{function.log_tail()}") from None
        answered = time.monotonic()
        if response["statusCode"] != 200:
            raise SystemExit(f"cold start: status {response['statusCode']}: {response['body'][:300]}")
        warm = time_calls(lambda: function.invoke(event, timeout=60), warmup=3, requests=warm_requests)
        peak = function.peak_rss_kib()
    return {
        "total_s": answered - started,
        "init_s": (function.runtime.init_done_at or answered) - started,
        "peak_rss_mib": peak / 1024 if peak is not None else None,
        "warm_ms": warm,
    }


def bench_cold_starts(bundles: dict[str, Path], event: dict, runs: int, warm_requests: int, scratch: Path) -> dict:
    """Cold starts of both ways, alternating (twin, h5, twin, h5...) so machine load hits both alike."""
    results: dict[str, dict] = {
        variant: {"cold_start_s": [], "init_s": [], "rss": [], "runtime_warm_ms": []} for variant in bundles
    }
    for run in range(runs):
        for variant, model_dir in bundles.items():
            log_path = scratch / f"function-{variant}-{run}.log"
            once = cold_start_once(model_dir, event, log_path, warm_requests if run == 0 else 0)
            result = results[variant]
            result["cold_start_s"].append(once["total_s"])
            result["init_s"].append(once["init_s"])
            if once["peak_rss_mib"] is not None:
                result["rss"].append(once["peak_rss_mib"])
            result["runtime_warm_ms"] += once["warm_ms"]
            log(f"  cold start {run + 1}/{runs} {variant:>4}: {once['total_s']:.2f} s (init {once['init_s']:.2f} s)")
    for result in results.values():
        result["cold_start_median_s"] = statistics.median(result["cold_start_s"])
        result["init_median_s"] = statistics.median(result["init_s"])
        result["function_peak_rss_mib"] = max(result.pop("rss")) if result.get("rss") else None
        warm = result.pop("runtime_warm_ms")
        if warm:
            result["runtime_warm_p50_ms"] = percentile(warm, 50)
            result["runtime_warm_p99_ms"] = percentile(warm, 99)
    return results


def batch_files(png: bytes, count: int) -> tuple[list[bytes], str]:
    """``count`` CT slices as stored in the dataset (every class, files spread over it), else the image repeated."""
    paths = sorted(path for path in BATCH_SLICES_DIR.rglob("*") if path.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(paths) < count:
        return [png] * count, f"the benchmark image x{count}"
    chosen = paths[:: len(paths) // count][:count]
    return [path.read_bytes() for path in chosen], f"{count} slices of {BATCH_SLICES_DIR.name} (as stored)"


def bench_batch(classifier, files: list[bytes], rounds: int = 3) -> dict:
    """CPU per slice of the workers' batch entry (or, on a tree without one, of a classify_upload per file)."""
    import lungscan.uploads as uploads

    batch = getattr(uploads, "classify_batch", None)
    if batch is not None:

        def run() -> int:
            return sum(result.prediction is not None for result in batch(classifier, files))

        entry = "lungscan.uploads.classify_batch"
    else:

        def run() -> int:
            return sum(
                len(uploads.classify_upload(classifier, [data], uploads.UploadOptions()).predictions) for data in files
            )

        entry = "classify_upload per file (no batch entry in this tree)"
    run()  # warm
    per_slice = []
    for _ in range(rounds):
        started = time.process_time()
        answered = run()
        per_slice.append((time.process_time() - started) * 1000 / len(files))
    return {
        "entry": entry,
        "slices": len(files),
        "answered": answered,
        "cpu_ms_per_slice": statistics.median(per_slice),
    }


def handler_worker(
    model_dir: Path, png_path: Path, requests: int, explain_requests: int, log_path: Path, batch_slices: int
) -> dict:
    """In a fresh process: import app (the init phase), time lambda_handler warm, with and without explain."""
    import numpy as np

    os.environ["MODEL_DIR"] = str(model_dir)
    os.environ.pop("MODEL_BUCKET", None)
    png = png_path.read_bytes()
    event, explain_event = predict_event(png), predict_event(png, explain=True)
    with stdout_to(log_path):
        started = time.perf_counter()
        import app  # the init phase (model load) of the in-process run; bench_handler put it on PYTHONPATH

        import_s = time.perf_counter() - started
        context = LambdaContext("bench", memory_mb=3008)
        first = app.lambda_handler(event, context)
        if first["statusCode"] != 200:
            raise SystemExit(f"handler answered {first['statusCode']}: {first['body'][:300]}")
        samples = time_calls(lambda: app.lambda_handler(event, context), warmup=30, requests=requests)
        explained = time_calls(lambda: app.lambda_handler(explain_event, context), warmup=5, requests=explain_requests)
        from lungscan.uploads import decode_upload

        classifier = app.store.get()
        array, _ = classifier.prepare(decode_upload(png))
        probabilities = classifier.predict_batch(array[np.newaxis])[0]
        files, files_source = batch_files(png, batch_slices)
        batch = {**bench_batch(classifier, files), "source": files_source}
    body = json.loads(first["body"])
    return {
        "runtime": classifier.runtime.name,
        "import_s": import_s,
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "explain_p50_ms": percentile(explained, 50),
        "explain_p99_ms": percentile(explained, 99),
        "label": body["label"],
        "probabilities": [float(p) for p in probabilities],
        "peak_rss_mib": max_rss_mib(),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "batch": batch,
    }


def bench_handler(variant: str, model_dir: Path, png_path: Path, args, scratch: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_predict",
        "--handler-worker",
        str(model_dir),
        "--image",
        str(png_path),
        "--requests",
        str(args.requests),
        "--explain-requests",
        str(args.explain_requests),
        "--worker-log",
        str(scratch / f"handler-{variant}.log"),
        "--batch-slices",
        str(args.batch_slices),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=with_function_path(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"handler worker ({variant}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    return {
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "model": model_source,
        "peak_rss_mib": max_rss_mib(),
    }


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def render_table(report: dict) -> str:
    cold, handler, original = report["cold_start"], report["handler"], report["original"]
    twin_cold, h5_cold = cold["twin"]["cold_start_median_s"], cold["h5"]["cold_start_median_s"]
    twin_rss = cold["twin"]["function_peak_rss_mib"]
    overhead = handler["twin"]["explain_p50_ms"] - handler["twin"]["p50_ms"]
    parity = report["parity"]

    def both(fmt: Callable[[dict], str], source: dict) -> tuple[str, str]:
        return fmt(source["twin"]), fmt(source["h5"])

    def ms(key: str) -> Callable[[dict], str]:
        return lambda r: f"{r[key]:.2f} ms" if r.get(key) is not None else "-"

    def mib(key: str) -> Callable[[dict], str]:
        return lambda r: f"{r[key]:.0f} MiB" if r.get(key) is not None else "-"

    runs = both(lambda r: "/".join(f"{s:.2f}" for s in r["cold_start_s"]), cold)
    rows = [
        (
            f"cold start median, spawn -> first 200 (n={len(cold['twin']['cold_start_s'])})",
            *both(lambda r: f"{r['cold_start_median_s']:.2f} s", cold),
            f"<= {TARGET_COLD_START_S:g} s",
            verdict(twin_cold <= TARGET_COLD_START_S),
        ),
        ("  runs (s)", *runs, "", ""),
        ("  of which init phase (spawn -> first poll)", *both(lambda r: f"{r['init_median_s']:.2f} s", cold), "", ""),
        (
            "  .h5 cold start / twin cold start",
            f"{h5_cold / twin_cold:.1f}x",
            "",
            f">= {TARGET_COLD_SPEEDUP:g}x",
            verdict(h5_cold / twin_cold >= TARGET_COLD_SPEEDUP),
        ),
        (
            "warm p50, lambda_handler in-process",
            *both(ms("p50_ms"), handler),
            f"<= {TARGET_WARM_P50_MS:g} ms",
            verdict(handler["twin"]["p50_ms"] <= TARGET_WARM_P50_MS),
        ),
        ("warm p99, lambda_handler in-process", *both(ms("p99_ms"), handler), "", ""),
        ("warm p50, via awslambdaric + Runtime API", *both(ms("runtime_warm_p50_ms"), cold), "", ""),
        ("warm p99, via awslambdaric + Runtime API", *both(ms("runtime_warm_p99_ms"), cold), "", ""),
        ("warm p50 with explain=true (heatmap)", *both(ms("explain_p50_ms"), handler), "", ""),
        (
            "  explain overhead at p50",
            f"{overhead:.2f} ms",
            f"{handler['h5']['explain_p50_ms'] - handler['h5']['p50_ms']:.2f} ms",
            f"<= {TARGET_EXPLAIN_OVERHEAD_MS:g} ms",
            verdict(overhead <= TARGET_EXPLAIN_OVERHEAD_MS),
        ),
        (
            "peak RSS, function process (VmHWM)",
            *both(mib("function_peak_rss_mib"), cold),
            f"<= {TARGET_PEAK_RSS_MIB:g} MiB",
            verdict(twin_rss is not None and twin_rss <= TARGET_PEAK_RSS_MIB),
        ),
        ("peak RSS, handler worker process", *both(mib("peak_rss_mib"), handler), "", ""),
        ("TensorFlow imported by the function", *both(lambda r: str(r["tensorflow_imported"]), handler), "", ""),
        (
            "parity, max |p twin - p .h5|, this image",
            f"{parity['image_max_abs_diff']:.1e}",
            "",
            f"<= {TARGET_PARITY:g}",
            verdict(parity["image_max_abs_diff"] <= TARGET_PARITY and parity["labels_equal"]),
        ),
        (
            "parity on the smoke set (model.json twin.parity)",
            f"{parity['smoke_max_abs_diff']:.1e}",
            "",
            f"<= {TARGET_PARITY:g}",
            verdict(parity["smoke_max_abs_diff"] <= TARGET_PARITY and parity["smoke_labels_equal"]),
        ),
        ("original pipeline p50 / p99", f"{original['p50_ms']:.2f} / {original['p99_ms']:.2f} ms", "", "", ""),
        (
            "speed-up, original p50 / handler p50",
            *both(lambda r: f"{original['p50_ms'] / r['p50_ms']:.1f}x", handler),
            f">= {TARGET_SPEEDUP_OVER_ORIGINAL:g}x",
            verdict(original["p50_ms"] / handler["twin"]["p50_ms"] >= TARGET_SPEEDUP_OVER_ORIGINAL),
        ),
        (
            f"batch path CPU per slice ({handler['twin']['batch']['slices']} slices)",
            *both(lambda r: f"{r['batch']['cpu_ms_per_slice']:.2f} ms", handler),
            f"<= {TARGET_BATCH_CPU_MS:g} ms",
            verdict(handler["twin"]["batch"]["cpu_ms_per_slice"] <= TARGET_BATCH_CPU_MS),
        ),
    ]
    name_width = max(len(row[0]) for row in rows)
    widths = [max(len(row[i]) for row in [*rows, ("", *VARIANT_TITLES.values(), "target", "")]) for i in (1, 2, 3)]
    header = ("metric", VARIANT_TITLES["twin"], VARIANT_TITLES["h5"], "target", "status")
    lines = [
        "LungScan prediction benchmark: the runtime twin and model.h5, side by side",
        f"image:    {report['image']} , PNG {report['image_bytes'] / 1024:.0f} KiB",
        f"model:    {report['model']}",
        f"original: {original['model']}",
        f"answer:   {handler['twin']['label']} (twin), {handler['h5']['label']} (.h5)",
        f"requests: {report['requests']} handler (+{report['explain_requests']} with explain) per way, "
        f"{report['legacy_requests']} original; machine: {report['machine']}",
        f"batch:    {handler['twin']['batch']['source']}, through {handler['twin']['batch']['entry']}",
        f"load:     1-min load average {report['load_average'][0]:.2f} before, {report['load_average'][1]:.2f} after",
        "",
    ]
    for row in [header, tuple("-" * len(h) for h in header), *rows]:
        name, twin, h5, target, status = row
        lines.append(
            f"{name:<{name_width}}  {twin:>{widths[0]}}  {h5:>{widths[1]}}  {target:<{widths[2]}}  {status}".rstrip()
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="bundle folder (with its twin)")
    parser.add_argument("--image", type=Path, default=None, help=f"CT slice (default: {DEFAULT_IMAGE})")
    parser.add_argument("--requests", type=int, default=300, help="timed handler requests per way (after warm-up)")
    parser.add_argument("--explain-requests", type=int, default=100, help="timed explain=true requests per way")
    parser.add_argument("--legacy-requests", type=int, default=100, help="timed original-pipeline requests")
    parser.add_argument("--legacy-model", type=Path, default=None, help="the original app's model.h5")
    parser.add_argument("--cold-starts", type=int, default=5, help="cold starts per way (median reported)")
    parser.add_argument("--runtime-requests", type=int, default=50, help="warm requests through awslambdaric")
    parser.add_argument("--batch-slices", type=int, default=64, help="slices through the workers' batch path")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (table on stderr)")
    parser.add_argument("--handler-worker", type=Path, help=argparse.SUPPRESS)  # internal: one way, in-process
    parser.add_argument("--worker-log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "classifier")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "LungScan")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")

    if args.handler_worker is not None:
        result = handler_worker(
            args.handler_worker, args.image, args.requests, args.explain_requests, args.worker_log, args.batch_slices
        )
        print(json.dumps(result))
        return 0

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lungscan-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        png, image_source = load_png(args.image)
        png_path = scratch / "slice.png"
        png_path.write_bytes(png)
        bundles, info = bundle_variants(args.model_dir.resolve(), scratch)
        event = predict_event(png)

        # Cold starts first, while this process has not imported TensorFlow.
        log(f"cold start x{args.cold_starts} per way (runtime + awslambdaric subprocess), logs in {scratch}")
        cold = bench_cold_starts(bundles, event, args.cold_starts, args.runtime_requests, scratch)
        handler = {}
        for variant, model_dir in bundles.items():
            log(f"lambda_handler in a worker process, {variant}: x{args.requests}, explain x{args.explain_requests}")
            handler[variant] = bench_handler(variant, model_dir, png_path, args, scratch)
        log(f"original Flask pipeline x{args.legacy_requests}")
        original = bench_original(png, args.legacy_model, args.legacy_requests, scratch)

    import numpy as np
    import tensorflow as tf

    twin_p, h5_p = (np.asarray(handler[v]["probabilities"]) for v in VARIANTS)
    report = {
        "load_average": [load_before, os.getloadavg()[0]],
        "image": image_source,
        "image_bytes": len(png),
        "model": f"{info['name']} version {info['version']} ({args.model_dir})",
        "requests": args.requests,
        "explain_requests": args.explain_requests,
        "legacy_requests": args.legacy_requests,
        "machine": f"Python {platform.python_version()}, TensorFlow {tf.__version__}, {os.cpu_count()} CPUs",
        "cold_start": cold,
        "handler": handler,
        "original": original,
        "parity": {
            "image_max_abs_diff": float(np.abs(twin_p - h5_p).max()),
            "labels_equal": handler["twin"]["label"] == handler["h5"]["label"],
            "smoke_max_abs_diff": info["twin"]["parity"]["max_abs_diff"],
            "smoke_labels_equal": info["twin"]["parity"]["labels_equal"],
            "smoke_on": info["twin"]["parity"]["on"],
        },
        "speedup_over_original": {v: original["p50_ms"] / handler[v]["p50_ms"] for v in VARIANTS},
        "cold_start_speedup": cold["h5"]["cold_start_median_s"] / cold["twin"]["cold_start_median_s"],
        "targets": {
            "cold_start_s": TARGET_COLD_START_S,
            "cold_start_speedup": TARGET_COLD_SPEEDUP,
            "warm_p50_ms": TARGET_WARM_P50_MS,
            "peak_rss_mib": TARGET_PEAK_RSS_MIB,
            "parity": TARGET_PARITY,
            "explain_overhead_ms": TARGET_EXPLAIN_OVERHEAD_MS,
            "speedup_over_original": TARGET_SPEEDUP_OVER_ORIGINAL,
            "batch_cpu_ms_per_slice": TARGET_BATCH_CPU_MS,
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
