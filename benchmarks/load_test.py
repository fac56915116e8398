"""Bounded load test of the local stack on 127.0.0.1 (the only address it ever targets).

Starts `python -m infrastructure.local_stack` on free ports, then N client threads send a
fixed number of mixed requests (valid PNG/JPEG/DICOM, and bad inputs expecting 4xx), and
prints throughput, p50/p99 latency, the stack's peak RSS and the count of unexpected
answers (a status other than the one each request expects). Stops by itself.

Usage (from the repository root): python -m benchmarks.load_test [--clients 20] [--requests 5000] [--json]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from infrastructure.emulation import REPO_ROOT
from infrastructure.local_stack import stack_subprocess


def request_mix() -> list[tuple[str, bytes, str, int]]:
    """(name, body, content type, expected status)."""
    from PIL import Image

    fixtures = REPO_ROOT / "tests" / "fixtures"
    png = (fixtures / "ct_normal_256.png").read_bytes()
    jpeg = (fixtures / "ct_malignant_256.jpg").read_bytes()
    dicom = (fixtures / "ct_normal_256.dcm").read_bytes()  # real CT pixels: the gate reads a DICOM's pixels
    tiny = io.BytesIO()
    Image.new("L", (1, 1)).save(tiny, "PNG")
    as_json = json.dumps({"image": base64.b64encode(png).decode()}).encode()
    return [
        ("png json", as_json, "application/json", 200),
        ("jpeg raw", jpeg, "image/jpeg", 200),
        ("dicom raw", dicom, "application/dicom", 200),
        ("png explain", json.dumps({"image": base64.b64encode(png).decode(), "explain": True}).encode(),
         "application/json", 200),
        ("not json", b"{nope", "application/json", 400),
        ("text file", b"hello " * 50, "application/octet-stream", 415),
        ("1x1 png", tiny.getvalue(), "image/png", 422),
        ("truncated png", png[: len(png) // 3], "image/png", 400),
    ]  # fmt: skip


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    (REPO_ROOT / "build").mkdir(exist_ok=True)
    with stack_subprocess(REPO_ROOT / "build" / "load_test_stack.log") as stack:
        port = int(stack.base_url.rsplit(":", 1)[1])
        mix = request_mix()
        latencies: list[float] = []
        unexpected: dict[str, int] = {}
        lock = threading.Lock()
        counter = iter(range(args.requests))

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for index in counter:  # shared iterator: exactly --requests in total
                name, body, content_type, expected = mix[index % len(mix)]
                started = time.perf_counter()
                try:
                    connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except OSError:
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    status = -1
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)
                    if status != expected:
                        unexpected[f"{name}: {status}"] = unexpected.get(f"{name}: {status}", 0) + 1

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        ordered = sorted(latencies)
        figures = {
            "clients": args.clients,
            "requests": len(latencies),
            "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
            "stack_peak_rss_mib": round(peak_rss_mib(stack.process.pid), 1),
            "unexpected": sum(unexpected.values()),
            "unexpected_by_kind": unexpected,
            "mix": [name for name, *_ in mix],
        }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{figures['requests']} requests from {figures['clients']} clients in {figures['wall_s']} s")
        print(f"throughput        {figures['throughput_rps']} requests/s")
        print(f"latency p50/p99   {figures['p50_ms']} / {figures['p99_ms']} ms (client side, one Lambda container)")
        print(f"stack peak RSS    {figures['stack_peak_rss_mib']} MiB")
        print(f"unexpected        {figures['unexpected']} {figures['unexpected_by_kind'] or ''}")
        print(f"mix               {', '.join(figures['mix'])}")
    return 1 if figures["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
