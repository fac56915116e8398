"""Whole studies (issue 21): a 300-slice series through the local stack, and the worker alone.

Prints (or one JSON object with --json):
- end to end: a 300-slice 512x512 16-bit DICOM series (~150 MB, built from /work/shared/data slices or any folder of
  CT images given with --images) created, uploaded straight to the local S3 with the presigned POSTs (8 at a time),
  started and waited for until its summary, through ``make run``'s stack on free ports (target: <= 60 s);
- the worker alone, in a fresh process on moto in-process: its peak memory (ru_maxrss) after classifying one batch
  of ``StudyBatchSize`` slices (target: <= 1 GiB), and its throughput in slices/s batched (one invocation for 64
  slices) versus one at a time (64 invocations of one slice each).

Nothing is asserted; the figures and the projected deployed time and cost are in docs/performance.md.

Usage (from the repository root): python -m benchmarks.bench_studies [--slices 300] [--images DIR] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from infrastructure.emulation import REPO_ROOT, with_function_path
from infrastructure.local_engine import read_template

DATA = Path("/work/shared/data/chest-ct-scan")
SIDE = 512


def ct_images(folder: Path, count: int) -> list[Path]:
    images = sorted(path for path in folder.rglob("*") if path.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise SystemExit(f"no CT images under {folder}: pass --images DIR")
    return [images[index % len(images)] for index in range(count)]


def dicom_slice(image: Path, index: int, series: str = "1.2.826.0.1.3680043.8.498.77") -> bytes:
    """A 512x512 16-bit CT DICOM from a CT export: grey levels back through the lung window to HU."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian

    grey = np.asarray(Image.open(image).convert("L").resize((SIDE, SIDE)), np.float32)
    hounsfield = (grey / 255.0 * 1500.0 - 1350.0).round().astype(np.int16)
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.RescaleIntercept, dataset.RescaleSlope = 0, 1
    dataset.Rows = dataset.Columns = SIDE
    dataset.PixelData = hounsfield.tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SeriesInstanceUID, dataset.SOPInstanceUID = series, f"{series}.{index + 1}"
    dataset.InstanceNumber, dataset.ImagePositionPatient = index + 1, [-250.0, -250.0, -400.0 + 1.25 * index]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def build_series(images: Path, slices: int) -> list[bytes]:
    return [dicom_slice(path, index) for index, path in enumerate(ct_images(images, slices))]


# ---------------------------------------------------------------- end to end


def end_to_end(files: list[bytes], log: Path) -> dict[str, float]:
    import requests

    from infrastructure.local_stack import stack_subprocess

    with stack_subprocess(log) as stack:
        api = stack.base_url
        started = time.perf_counter()
        created = requests.post(f"{api}/studies", json={"files": [{"size": len(data)} for data in files]}, timeout=60)
        created.raise_for_status()
        study = created.json()

        def upload(target: dict) -> None:
            answer = requests.post(
                target["url"], data=target["fields"], files={"file": ("slice", files[target["index"]])}, timeout=120
            )
            answer.raise_for_status()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(upload, study["uploads"]))
        uploaded = time.perf_counter()
        requests.post(f"{api}/studies/{study['study_id']}/start", timeout=60).raise_for_status()
        while True:
            answer = requests.get(f"{api}/studies/{study['study_id']}", params={"limit": 1}, timeout=60).json()
            if answer["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        finished = time.perf_counter()
    return {
        "slices": len(files),
        "megabytes": round(sum(len(data) for data in files) / 2**20, 1),
        "status": answer["status"],
        "flagged": answer["summary"]["flagged"],
        "upload_s": round(uploaded - started, 2),
        "classify_s": round(finished - uploaded, 2),
        "total_s": round(finished - started, 2),
    }


# ---------------------------------------------------------------- the worker alone (a fresh process)


def worker_probe(files_dir: Path, batch: int) -> dict[str, float]:
    """Run in its own process: moto in-process, the real worker handler, one batch, then throughput."""
    import boto3
    from moto import mock_aws

    os.environ.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        MODEL_DIR=str(REPO_ROOT / "models" / "malignancy-screen"),
        MODEL_NAME="malignancy-screen",
        MODEL_NAMES="malignancy-screen",
        UPLOADS_BUCKET="uploads",
        STUDIES_TABLE="studies",
        POWERTOOLS_METRICS_DISABLED="1",
        POWERTOOLS_TRACE_DISABLED="1",
        POWERTOOLS_LOG_LEVEL="WARNING",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    os.environ.pop("MODEL_BUCKET", None)
    from lungscan.studies.store import create_table

    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="uploads")
        create_table(boto3.client("dynamodb"), "studies")
        paths = sorted(files_dir.iterdir())
        items = []
        for index, path in enumerate(paths):
            key = f"studies/bench/{index:05d}"
            s3.put_object(Bucket="uploads", Key=key, Body=path.read_bytes())
            items.append({"Key": key, "Size": path.stat().st_size})
        import study_tasks  # loads the model, as a worker's init phase does

        from infrastructure.emulation import LambdaContext

        common = {"bucket": "uploads", "prefix": "studies/bench/", "study_id": "bench", "model": None}
        study_tasks.worker_handler({"Items": items[:batch], "BatchInput": common}, LambdaContext())
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sample = items[:64]
        started = time.perf_counter()
        study_tasks.worker_handler({"Items": sample, "BatchInput": common}, LambdaContext())
        batched = len(sample) / (time.perf_counter() - started)
        started = time.perf_counter()
        for item in sample:
            study_tasks.worker_handler({"Items": [item], "BatchInput": common}, LambdaContext())
        single = len(sample) / (time.perf_counter() - started)
    return {
        "batch": batch,
        "peak_rss_mb": round(peak_mb, 1),
        "batched_slices_per_s": round(batched, 1),
        "single_slices_per_s": round(single, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--images", type=Path, default=DATA, help="a folder of CT images (PNG/JPEG) to build from")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker-probe", type=Path, help=argparse.SUPPRESS)  # the child process's mode
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch = args.batch or int(read_template()["Parameters"]["StudyBatchSize"]["Default"])
    if args.worker_probe:
        print(json.dumps(worker_probe(args.worker_probe, batch)))
        return 0
    files = build_series(args.images, args.slices)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "series"
        folder.mkdir()
        for index, data in enumerate(files[:64]):
            (folder / f"{index:05d}").write_bytes(data)
        probe = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_studies", "--worker-probe", str(folder), "--batch", str(batch)],
            cwd=REPO_ROOT,
            env=with_function_path(dict(os.environ)),
            capture_output=True,
            text=True,
            check=True,
        )
        worker = json.loads(probe.stdout.strip().splitlines()[-1])
        study = end_to_end(files, Path(scratch) / "stack.log")
    figures = {"end_to_end": study, "worker": worker, "cores": os.cpu_count()}
    if args.json:
        print(json.dumps(figures))
        return 0
    print(
        f"{study['slices']} slices ({study['megabytes']} MB, 512x512 16-bit DICOM) through the local stack on "
        f"{figures['cores']} cores: upload {study['upload_s']} s + classify {study['classify_s']} s = "
        f"{study['total_s']} s first byte to summary ({study['status']}, {study['flagged']} flagged)"
    )
    print(
        f"worker: peak RSS {worker['peak_rss_mb']} MB after a batch of {worker['batch']}; "
        f"{worker['batched_slices_per_s']} slices/s batched vs {worker['single_slices_per_s']} one at a time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
