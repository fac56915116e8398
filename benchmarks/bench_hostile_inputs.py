"""What each hostile or oversized input of issue 24 costs a warm function: time, CPU and memory.

Every case runs in a fresh worker process that imports the function (``functions/classifier/app.py``,
the bundled model), warms it with an ordinary request (with ``explain``), then sends the case once
through ``lambda_handler`` (JSON base64 event) and reports:

- wall and CPU seconds of that request (the median of ``--repeat`` sends: this machine is shared);
- peak memory above the warm baseline (VmHWM - VmRSS before, after resetting VmHWM), and what is
  still held once the answer is built (VmRSS after - before): the function's memory, as the issue measured it;
- the answer: HTTP status and error code (or the label).

``--code-root DIR`` measures another checkout's code (``git worktree add --detach /tmp/before 0248d57``)
with the same files: run it once with and once without to get before and after. The files are built here,
by ``tests/hostile_inputs.py`` (the generators the tests use) at the sizes the issue measured, and handed
to the worker on disk; the worker imports the code under test from ``PYTHONPATH`` (``--code-root``).

Targets (the issue's): an answer in under 3 s and under 500 MiB more memory, explain included, or a
4xx in under 1 s. Printed beside the figures, never asserted (wall-clock times vary with the machine).

Usage: python -m benchmarks.bench_hostile_inputs [--code-root DIR] [--case NAME ...] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = next((p / "shared" / "data" for p in REPO_ROOT.parents[:2] if (p / "shared" / "data").is_dir()), None)
TARGET_ANSWER_S = 3.0
TARGET_REFUSAL_S = 1.0
TARGET_EXTRA_MIB = 500.0


def base_slice():
    """A real 512x512 CT slice when ../shared/data is here, else the test fixture (256x256)."""
    from PIL import Image

    if DATA_DIR is not None:
        candidates = sorted((DATA_DIR / "iq-oth-nccd").rglob("*.jpg"))
        if candidates:
            return Image.open(candidates[0]).convert("L")
    return Image.open(REPO_ROOT / "tests" / "fixtures" / "ct_normal_256.png").convert("L")


def cases() -> dict[str, tuple[str, Callable[[], list[bytes]], dict]]:
    """name -> (finding, files, request options); a case with several files is sent as a study."""
    from tests import hostile_inputs as h

    return {
        "dicom_520k_items": ("1", lambda: [h.dicom_with_empty_items(520_000)], {}),
        "dicom_520k_items_study": ("1", lambda: [h.dicom_with_empty_items(520_000)], {"study": True}),
        "bmp_rle8_4096": ("2", lambda: [h.rle_bmp(4096)], {}),
        "bmp_rle4_4096": ("2", lambda: [h.rle_bmp(4096, rle4=True)], {}),
        "png_340k_empty_chunks": ("3", lambda: [h.png_with_empty_chunks(base_slice(), 340_000)], {}),
        "png_340k_data_chunks": ("3", lambda: [h.png_with_split_data(base_slice(), 340_000)], {}),
        "dicom_400k_elements": ("3", lambda: [h.dicom_with_empty_elements(400_000)], {}),
        "dicom_520k_items_defined_length": (
            "1",
            lambda: [h.dicom_with_items_in_a_defined_length_sequence(520_000)],
            {},
        ),
        "dicom_study_8x_45k_elements": ("3", lambda: [h.dicom_with_empty_elements(45_000)] * 8, {"study": True}),
        "jpeg_4mb_fill_bytes": (
            "+",
            lambda: [h.jpeg_with_filler(h.jpeg_slice(base_slice(), 512), b"\xff", 4_000_000)],
            {},
        ),
        "png16_4096_explain": ("4", lambda: [h.png_16_bit(base_slice(), 4096)], {"explain": True}),
        "tiff_float_4096_explain": ("4", lambda: [h.float_tiff(base_slice(), 4096)], {"explain": True}),
        "dicom_deflated_4096x4000_explain": ("4", lambda: [h.deflated_dicom(4000, 4096)], {"explain": True}),
        "study_64x1024_explain": (
            "4",
            lambda: [h.jpeg_slice(base_slice().rotate(index % 7 - 3), 1024, quality=50) for index in range(64)],
            {"explain": True},
        ),
        "ordinary_512_explain": ("-", lambda: [h.jpeg_slice(base_slice(), 512, quality=90)], {"explain": True}),
    }


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(folder: Path, code_root: Path, repeat: int = 1) -> dict:
    """Import the function (from ``PYTHONPATH``: ``code_root``), warm it with ``folder``'s ``warm.bin``, then send
    the case (``folder``'s numbered files, ``options.json``) ``repeat`` times and measure."""
    os.environ.setdefault("MODEL_DIR", str(code_root / "models" / "iq-oth-3class"))
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "classifier")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "LungScan")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.pop("MODEL_BUCKET", None)
    from infrastructure.emulation import LambdaContext, proxy_event

    options = json.loads((folder / "options.json").read_text())
    finding, study = options.pop("finding"), options.pop("study", False)
    files = [path.read_bytes() for path in sorted(folder.glob("[0-9]*.bin"), key=lambda path: int(path.stem))]

    import app  # the function, with its model, from code_root (PYTHONPATH)

    def send(files: list[bytes], options: dict, study: bool) -> dict:
        encoded = [base64.b64encode(data).decode() for data in files]
        payload = {"images": encoded} if study or len(files) > 1 else {"image": encoded[0]}
        event = proxy_event(
            "POST", "/predict", body=json.dumps({**payload, **options}), headers={"Content-Type": "application/json"}
        )
        return app.lambda_handler(event, LambdaContext(timeout_s=600))

    warm = send([(folder / "warm.bin").read_bytes()], {"explain": True}, False)
    assert warm["statusCode"] == 200, warm["body"][:300]
    import gc

    gc.collect()
    before = memory_kib("VmRSS")
    walls, cpus, peak = [], [], 0
    for _ in range(repeat):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        cpu, wall = time.process_time(), time.perf_counter()
        result = send(files, options, study)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        peak = max(peak, memory_kib("VmHWM"))
        status, body = result["statusCode"], json.loads(result["body"])
        del result
        gc.collect()
    after = memory_kib("VmRSS")
    error = body.get("error", {})
    return {
        "finding": finding,
        "bytes": sum(len(data) for data in files),
        "status": status,
        "answer": error.get("code") or body.get("label") or (body.get("study") or {}).get("verdict"),
        "wall_s": round(statistics.median(walls), 3),
        "cpu_s": round(statistics.median(cpus), 3),
        "peak_extra_mib": round((peak - before) / 1024, 1),
        "held_after_mib": round((after - before) / 1024, 1),
        "baseline_mib": round(before / 1024, 1),
        "message": error.get("message", "")[:160],
    }


def run_case(case: str, code_root: Path, repeat: int) -> dict:
    """Build the case's files here, then measure them in a fresh worker that imports ``code_root``'s code."""
    finding, build, options = cases()[case]
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as scratch:
        folder = Path(scratch)
        for index, data in enumerate(build()):
            (folder / f"{index}.bin").write_bytes(data)
        (folder / "warm.bin").write_bytes(cases()["ordinary_512_explain"][1]()[0])
        (folder / "options.json").write_text(json.dumps({**options, "finding": finding}))
        # Run as a script, not with -m: the worker's first import path entry is benchmarks/, then PYTHONPATH.
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--files", scratch]
        command += ["--code-root", str(code_root), "--repeat", str(repeat)]
        path = os.pathsep.join([str(code_root), str(code_root / "functions" / "classifier")])
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    if done.returncode != 0:
        return {"case": case, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict], code_root: Path) -> None:
    print(f"code: {code_root}")
    print(
        f"{'case':36} {'f':>2} {'KB':>7} {'answer':>24} {'wall s':>7} {'cpu s':>6} {'peak+MiB':>9} {'held MiB':>9}  ok"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['case']:36} worker failed: {row['error'][-400:]}")
            continue
        refused = row["status"] is not None and row["status"] >= 400
        ok = (
            row["wall_s"] < (TARGET_REFUSAL_S if refused else TARGET_ANSWER_S)
            and row["peak_extra_mib"] < TARGET_EXTRA_MIB
        )
        answer = f"{row['status']} {row['answer']}"
        print(
            f"{row['case']:36} {row['finding']:>2} {row['bytes'] / 1024:7.0f} {answer:>24} {row['wall_s']:7.2f} "
            f"{row['cpu_s']:6.2f} {row['peak_extra_mib']:9.1f} {row['held_after_mib']:9.1f}  {'yes' if ok else 'NO'}"
        )
    print(
        f"targets: an answer under {TARGET_ANSWER_S:g} s, a refusal under {TARGET_REFUSAL_S:g} s, "
        f"peak under {TARGET_EXTRA_MIB:g} MiB above the warm baseline"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code-root", type=Path, default=REPO_ROOT, help="the checkout whose code is measured")
    parser.add_argument("--case", action="append", help="run only these cases (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="sends per case; the median time is printed")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    code_root = args.code_root.resolve()
    if args.worker:
        print(json.dumps({"case": args.worker, **worker(args.files, code_root, args.repeat)}))
        return
    names = args.case or list(cases())
    rows = []
    for name in names:
        print(f"... {name}", file=sys.stderr, flush=True)
        rows.append(run_case(name, code_root, args.repeat))
    report(rows, code_root)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
