"""Whole studies end to end through ``make run``'s stack: the ``lungscan study`` client uploads a 300-slice series
(real slices, a corrupt file and a localizer among them) straight to the local S3 with presigned POSTs, the state
machine (template.yaml's Definition, local engine) classifies it, and the answer comes back in reading order."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers import REPO_ROOT, ct_series, localizer_dicom

from infrastructure.emulation import with_function_path
from infrastructure.local_stack import stack_subprocess
from lungscan_client import StudyError, run_study

pytestmark = pytest.mark.slow
SLICES = 300


@pytest.fixture(scope="module")
def stack(model_bundle_dir, tmp_path_factory):
    """``make run``'s stack on free ports; yields its base URL."""
    with stack_subprocess(tmp_path_factory.mktemp("studies-stack") / "stack.log", [model_bundle_dir]) as running:
        yield running.base_url


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory) -> tuple[Path, list[float]]:
    """300 files: 298 axial slices built from the real fixtures (shuffled names: upload order is not body order),
    one truncated file and one localizer of the same series."""
    folder = tmp_path_factory.mktemp("series")
    slices = ct_series(SLICES - 2)
    positions = [z for z, _ in slices]
    files = [data for _, data in slices] + [slices[0][1][:4000], localizer_dicom()]
    random.Random(7).shuffle(files)
    for number, data in enumerate(files):
        (folder / f"IM{number:04d}").write_bytes(data)
    return folder, positions


def test_a_300_slice_series_is_answered_end_to_end_by_the_client(stack, series_dir):
    folder, positions = series_dir
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "lungscan_client", "study", str(folder), "--api", stack, "--format", "json"],
        cwd=REPO_ROOT,
        env=with_function_path({}),
        capture_output=True,
        text=True,
        timeout=240,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["status"] == "done"
    assert answer["progress"] == {"done": SLICES, "total": SLICES, "failed": 2}
    slices = answer["slices"]
    assert len(slices) == SLICES  # every page
    answered = [item for item in slices if "error" not in item]
    assert [item["position"] for item in answered] == sorted(positions)  # reading order: ImagePositionPatient z
    assert sorted(item["error"]["code"] for item in slices if "error" in item) == ["corrupt_image", "not_ct_localizer"]
    summary = answer["summary"]
    assert summary["total"] == SLICES - 2 and summary["failed"] == 2
    assert summary["flagged"] == sum(item["suspicious"] for item in answered)
    top = summary["most_suspicious_slices"]
    assert top and top[0]["positive_probability"] == max(item["positive_probability"] for item in answered)
    assert {"instance_number", "position", "positive_probability"} <= set(top[0])
    preview = requests.get(top[0]["preview_url"], timeout=10)  # a short-lived presigned GET on the local S3
    assert preview.status_code == 200 and preview.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "study done" in result.stderr and f"{SLICES}/{SLICES}" in result.stderr  # progress on stderr
    print(f"\n300-slice study through the local stack, first byte to summary: {seconds:.1f} s")


def test_the_page_may_post_uploads_to_the_local_s3_and_no_other_origin(stack):
    created = requests.post(f"{stack}/studies", json={"files": [{"size": 100}]}, timeout=10).json()
    target = created["uploads"][0]
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = requests.options(target["url"], headers={"Origin": stack, **preflight}, timeout=10)
    assert allowed.status_code == 200 and allowed.headers["Access-Control-Allow-Origin"] == stack
    refused = requests.options(target["url"], headers={"Origin": "http://evil.example", **preflight}, timeout=10)
    assert refused.status_code == 403
    # The presigned POST's policy holds the declared size, which S3 enforces (moto does not: docs/deploy.md).
    policy = json.loads(base64.b64decode(target["fields"]["policy"]))
    assert ["content-length-range", 1, 100] in policy["conditions"]


def test_a_study_of_only_corrupt_files_fails_and_the_client_exits_1(stack, tmp_path):
    (tmp_path / "a").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (tmp_path / "b").write_bytes(b"not an image at all")
    result = subprocess.run(
        [sys.executable, "-m", "lungscan_client", "study", str(tmp_path), "--api", stack],
        cwd=REPO_ROOT,
        env=with_function_path({}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["status"] == "failed" and all("error" in item for item in answer["slices"])


def test_bad_requests_are_answered_with_their_codes_never_a_5xx(stack, tmp_path):
    too_many = requests.post(f"{stack}/studies", json={"files": [{"size": 1}] * 2001}, timeout=10)
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "too_many_slices"
    unknown = requests.get(f"{stack}/studies/{'A' * 32}", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    created = requests.post(f"{stack}/studies", json={"files": [{"size": 10}]}, timeout=10).json()
    early = requests.post(f"{stack}/studies/{created['study_id']}/start", timeout=10)
    assert early.status_code == 409 and early.json()["error"]["code"] == "uploads_incomplete"
    (tmp_path / "big").write_bytes(b"\0" * 10)
    with pytest.raises(StudyError) as error:
        run_study([tmp_path / "big"], stack, patient="P-1")  # a patient needs a signed-in clinician
    assert error.value.status == 401
