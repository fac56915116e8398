"""Screening an archive (issue 23): 2,000 real CT slices through the study state machine on the local engine.

The archive: every image under /work/shared/data (1,616 PNG and JPEG slices of the two public datasets, as they
are) plus 16-bit 512x512 DICOM slices built from the first of them (``bench_studies.dicom_slice``) up to
``--slices``, under one prefix of a moto S3 bucket in this process. Prints (or one JSON object with --json):

- batched: template.yaml's Definition as deployed (``StudyBatchSize`` items per worker invocation), slices/s;
- one at a time: the same Definition with ``StudyBatchSize`` 1 (one worker invocation per slice), slices/s;
- re-run: the batched screen again over the same prefix and model version (answers from the records), slices/s;
- the worker alone: a fresh process, the real worker handler on one batch of an archive: its peak memory
  (ru_maxrss) and its time (slices/s of one worker, the r of docs/archive.md's projection).

The Map runs as many workers at once as this machine has cores (``infrastructure.local_engine``); every figure
is for the whole machine. Nothing is asserted; the projection to 100,000 and 1,000,000 slices is docs/archive.md.

Usage (from the repository root): python -m benchmarks.bench_archive [--slices 2000] [--data DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.bench_studies import dicom_slice
from infrastructure.emulation import REPO_ROOT, with_function_path
from infrastructure.local_engine import read_template

DATA = Path("/work/shared/data")
PREFIX = "archive/"
ENVIRONMENT = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "MODEL_DIR": str(REPO_ROOT / "models" / "malignancy-screen"),
    "MODEL_NAME": "malignancy-screen",
    "MODEL_NAMES": "malignancy-screen",
    "UPLOADS_BUCKET": "uploads",
    "STUDIES_TABLE": "studies",
    "POWERTOOLS_METRICS_DISABLED": "1",
    "POWERTOOLS_TRACE_DISABLED": "1",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def archive_files(data: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` (key, bytes): the real images as they are, then DICOM slices built from them."""
    images = sorted(path for path in data.rglob("*") if path.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise SystemExit(f"no CT images under {data}: pass --data DIR")
    files = [(f"{PREFIX}{path.relative_to(data)}", path.read_bytes()) for path in images[:count]]
    for index in range(count - len(files)):
        files.append((f"{PREFIX}dicom/IM{index:05d}.dcm", dicom_slice(images[index % len(images)], index)))
    return files


def _environment() -> None:
    os.environ.update(ENVIRONMENT)
    os.environ.pop("MODEL_BUCKET", None)
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)


def screen_runs(files: list[tuple[str, bytes]]) -> dict[str, object]:
    """The three screens, on moto in this process."""
    import boto3
    from moto import mock_aws

    _environment()
    from infrastructure.local_engine import LOCAL_CORES, local_engine
    from lungscan.studies.store import create_table

    with mock_aws():
        s3 = boto3.client("s3")
        create_table(boto3.client("dynamodb"), "studies")
        for bucket in ("uploads", "batched", "single"):
            s3.create_bucket(Bucket=bucket)
        for bucket in ("batched", "single"):  # two copies: the one-at-a-time screen must not find batched's records
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda file, b=bucket: s3.put_object(Bucket=b, Key=file[0], Body=file[1]), files))
        import study_tasks  # noqa: F401 - loads the model, as a worker's init phase does

        summarizing: dict[str, float] = {}

        def run(bucket: str, run_id: str, batch: int | None = None) -> tuple[float, dict]:
            engine = local_engine(s3, parameters={"StudyBatchSize": batch} if batch else None)
            summary = engine.handlers["local:StudySummaryFunction"]

            def timed(event: dict, context: object) -> object:  # the last state alone, apart from the Map
                started = time.perf_counter()
                try:
                    return summary(event, context)
                finally:
                    summarizing[run_id] = time.perf_counter() - started

            engine.handlers["local:StudySummaryFunction"] = timed
            machine_input = {
                "bucket": bucket,
                "prefix": PREFIX,
                "study_id": run_id,
                "model": None,
                "results_bucket": "uploads",
                "results_prefix": f"results/{run_id}/",
            }
            started = time.perf_counter()
            output = engine.run(machine_input, run_id)
            return time.perf_counter() - started, output["report"]["summary"]

        batched_s, batched = run("batched", "batched")
        single_s, single = run("single", "single", batch=1)
        rerun_s, rerun = run("batched", "rerun")
    count = len(files)
    return {
        "slices": count,
        "workers_at_once": LOCAL_CORES,
        "batch": int(read_template()["Parameters"]["StudyBatchSize"]["Default"]),
        "batched_s": round(batched_s, 1),
        "batched_slices_per_s": round(count / batched_s, 1),
        "single_s": round(single_s, 1),
        "single_slices_per_s": round(count / single_s, 1),
        "rerun_s": round(rerun_s, 1),
        "summary_s": {name: round(seconds, 1) for name, seconds in summarizing.items()},
        "rerun_slices_per_s": round(count / rerun_s, 1),
        "answered": batched["answered"],
        "flagged": batched["flagged"],
        "errors": batched["errors"],
        "skipped": batched["skipped"],
        "single_answered": single["answered"],
        "rerun_classified": rerun["classified"],
        "rerun_reused": rerun["reused"],
    }


def worker_probe(folder: Path, batch: int) -> dict[str, float]:
    """In a fresh process: the real worker handler on one archive batch; its peak RSS (model loaded)."""
    import boto3
    from moto import mock_aws

    _environment()
    from infrastructure.emulation import LambdaContext
    from lungscan.studies.store import create_table

    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="archive")
        create_table(boto3.client("dynamodb"), "studies")
        items = []
        for path in sorted(folder.iterdir())[:batch]:
            s3.put_object(Bucket="archive", Key=path.name, Body=path.read_bytes())
            items.append({"Key": path.name, "Size": path.stat().st_size, "Etag": path.name})
        import study_tasks

        common = {"bucket": "archive", "prefix": "", "study_id": "probe", "model": None}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        study_tasks.worker_handler({"Items": items, "BatchInput": common}, LambdaContext())
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "batch": len(items),
        "rss_after_init_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "batch_s": round(seconds, 2),
        "slices_per_s": round(len(items) / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=2000)
    parser.add_argument("--data", type=Path, default=DATA, help="a folder of CT images (PNG/JPEG)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker-probe", type=Path, help=argparse.SUPPRESS)  # the child process's mode
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch = args.batch or int(read_template()["Parameters"]["StudyBatchSize"]["Default"])
    if args.worker_probe:
        print(json.dumps(worker_probe(args.worker_probe, batch)))
        return 0
    files = archive_files(args.data, args.slices)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        step = max(1, len(files) // batch)  # a mixed batch: PNG, JPEG and DICOM
        for number, (_, data) in enumerate(files[::step][:batch]):
            (folder / f"{number:05d}").write_bytes(data)
        probe = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_archive", "--worker-probe", str(folder), "--batch", str(batch)],
            cwd=REPO_ROOT,
            env=with_function_path(dict(os.environ)),
            capture_output=True,
            text=True,
            check=True,
        )
    worker = json.loads(probe.stdout.strip().splitlines()[-1])
    figures = {"screen": screen_runs(files), "worker": worker}
    if args.json:
        print(json.dumps(figures))
        return 0
    screen = figures["screen"]
    print(
        f"{screen['slices']} real slices, local engine, {screen['workers_at_once']} workers at once: "
        f"batched ({screen['batch']} a batch) {screen['batched_s']} s = {screen['batched_slices_per_s']} slices/s; "
        f"one at a time {screen['single_s']} s = {screen['single_slices_per_s']} slices/s; "
        f"re-run {screen['rerun_s']} s = {screen['rerun_slices_per_s']} slices/s "
        f"({screen['rerun_classified']} classified, {screen['rerun_reused']} from records)"
    )
    print(f"of which the summary step (report, top-5 images): {screen['summary_s']} s")
    print(
        f"answers: {screen['answered']} answered, {screen['flagged']} flagged, {screen['errors']} errors, "
        f"{screen['skipped']} skipped"
    )
    print(
        f"worker: peak RSS {worker['peak_rss_mb']} MB after a batch of {worker['batch']} "
        f"({worker['rss_after_init_mb']} MB after init); alone, that batch took {worker['batch_s']} s = "
        f"{worker['slices_per_s']} slices/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
