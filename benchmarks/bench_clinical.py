"""What explanations and DICOM cost: Grad-CAM overhead and DICOM decode + windowing.

Prints a table (or one JSON object with --json):
- classify p50/p99 with and without ``explain`` (Grad-CAM + PNG overlay) for a 128x128 CNN,
  and the difference of the medians (target: explain adds < 50 ms);
- decode + lung window p50/p99 of a 512x512 16-bit CT DICOM (target: < 10 ms).

Timings are medians of repeated runs in one process on this machine; nothing is asserted.

Usage (from the repository root): python -m benchmarks.bench_clinical [--repeats 200] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from infrastructure.emulation import standin_bundle


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {"p50": statistics.median(ordered), "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def timed(function, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def ct_dicom_512() -> bytes:
    """A 512x512 16-bit CT DICOM: pydicom's CT_small header with a 512x512 body phantom in HU."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian

    rows, cols = np.ogrid[:512, :512]
    hounsfield = np.full((512, 512), -1000, np.int16)
    hounsfield[((rows - 256) / 200) ** 2 + ((cols - 256) / 240) ** 2 <= 1] = 40  # body
    for centre in (170, 342):
        hounsfield[((rows - 250) / 140) ** 2 + ((cols - centre) / 70) ** 2 <= 1] = -850  # lungs
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.Rows = dataset.Columns = 512
    dataset.RescaleIntercept, dataset.RescaleSlope = -1024, 1
    dataset.PixelData = (hounsfield + 1024).astype(np.int16).tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def explain_as_png(classifier, decoded) -> bytes:
    """What explain=true costs the handler: Grad-CAM, overlay, and the PNG it returns."""
    buffer = io.BytesIO()
    classifier.classify(decoded, explain=True).heatmap.save(buffer, "PNG", compress_level=1)  # as app.py does
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    from PIL import Image

    from lungscan.inputs.dicom import decode_dicom
    from lungscan.inputs.imaging import decode_image
    from lungscan.model.classifier import Classifier

    slice_png = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(np.random.default_rng(0).normal(110, 40, (512, 512)), 0, 255))).save(
        slice_png, "PNG"
    )
    decoded = decode_image(slice_png.getvalue())
    with tempfile.TemporaryDirectory() as folder:
        classifier = Classifier(
            standin_bundle(Path(folder), size=128, filters=(16, 32, 64), name="bench-128", version="bench")
        )
        classifier.classify(decoded, explain=True)  # trace Grad-CAM once
        plain = percentiles(timed(lambda: classifier.classify(decoded), args.repeats))
        explained = percentiles(timed(lambda: explain_as_png(classifier, decoded), args.repeats))
    dicom = ct_dicom_512()
    decode_dicom(dicom)  # import pydicom once
    dicom_times = percentiles(timed(lambda: decode_dicom(dicom), args.repeats))

    figures = {
        "classify_ms": plain,
        "classify_explain_ms": explained,
        "explain_overhead_p50_ms": explained["p50"] - plain["p50"],
        "dicom_decode_window_512_ms": dicom_times,
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    rows = [
        ("classify 512x512 PNG, 128x128 CNN", f"{plain['p50']:.2f} / {plain['p99']:.2f} ms", ""),
        ("classify + explain (Grad-CAM, overlay PNG)", f"{explained['p50']:.2f} / {explained['p99']:.2f} ms", ""),
        ("explain overhead, difference of p50s", f"{figures['explain_overhead_p50_ms']:.2f} ms", "< 50 ms"),
        ("DICOM 512x512 decode + lung window", f"{dicom_times['p50']:.2f} / {dicom_times['p99']:.2f} ms", "< 10 ms"),
    ]
    print(f"{'metric':42} {'p50 / p99':>22}  target   (n={args.repeats} each)")
    for name, value, target in rows:
        print(f"{name:42} {value:>22}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
