"""Screening an archive end to end through ``make run``'s stack (issue 23): a prefix of the local
``lungscan-archive-local`` bucket holding a few hundred real slices (the fixtures as a DICOM series, and as PNG and
JPEG variants), a note, a truncated file and an object S3 will not hand over (archived to Glacier), screened by
``lungscan screen ... --endpoint-url --wait`` with no AWS credentials or region, through moto's Step Functions API
and the template's state machine on the local engine."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from helpers import FIXTURES_DIR, REPO_ROOT, ct_series, encode
from PIL import Image, ImageOps

from infrastructure.emulation import with_function_path
from infrastructure.local_archive import ARCHIVE_BUCKET
from infrastructure.local_stack import stack_subprocess

pytestmark = pytest.mark.slow
DICOM_SLICES = 200
RASTER_SLICES = 60
PREFIX = "ward-7/2024/"


@pytest.fixture(scope="module")
def stack(model_bundle_dir, tmp_path_factory):
    with stack_subprocess(tmp_path_factory.mktemp("archive-stack") / "stack.log", [model_bundle_dir]) as running:
        yield running


def _rasters(count: int) -> list[tuple[str, bytes]]:
    """The two real raster fixtures, mirrored and shifted a few grey levels, as PNG and as JPEG."""
    files = []
    for number in range(count):
        name = ("ct_normal_256.png", "ct_malignant_256.jpg")[number % 2]
        image = Image.open(FIXTURES_DIR / name).convert("L")
        image = ImageOps.mirror(image) if number % 4 >= 2 else image
        image = image.point(lambda value, shift=number % 5: min(255, value + shift))
        if number % 3:
            files.append((f"raster/{number:03d}.png", encode(image)))
        else:
            files.append((f"raster/{number:03d}.jpg", encode(image, "JPEG", quality=92)))
    return files


@pytest.fixture(scope="module")
def archive(stack) -> dict[str, str]:
    """Fill the prefix; returns each key's kind (slice, note, corrupt, archived)."""
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{stack.s3_port}",
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    series = ct_series(DICOM_SLICES)
    objects = [(f"series/IM{number:04d}", data, "slice") for number, (_, data) in enumerate(series)]
    objects += [(key, data, "slice") for key, data in _rasters(RASTER_SLICES)]
    objects += [("notes/report.txt", b"Reported by the radiologist; see PACS.", "note")]
    objects += [("series/IM9999", series[0][1][:3000], "corrupt")]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda o: s3.put_object(Bucket=ARCHIVE_BUCKET, Key=PREFIX + o[0], Body=o[1]), objects))
    raster = (FIXTURES_DIR / "ct_normal_256.png").read_bytes()
    s3.put_object(Bucket=ARCHIVE_BUCKET, Key=f"{PREFIX}cold/IM0001.png", Body=raster, StorageClass="GLACIER")
    kinds = {PREFIX + key: kind for key, _, kind in objects} | {f"{PREFIX}cold/IM0001.png": "archived"}
    return kinds


def _screen(stack, *options: str, prefix: str = PREFIX) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lungscan_client", "screen", f"s3://{ARCHIVE_BUCKET}/{prefix}"]
    command += ["--endpoint-url", f"http://127.0.0.1:{stack.s3_port}", "--wait", *options]
    # No AWS credentials, region or configuration at all: the local endpoint needs none.
    environment = with_function_path({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120)


def test_screen_answers_one_row_per_object_flagged_first_and_a_rerun_redoes_nothing(stack, archive):
    started = time.monotonic()
    first = _screen(stack, "--format", "json")
    seconds = time.monotonic() - started
    assert first.returncode == 0, first.stderr[-3000:]
    screened = json.loads(first.stdout)
    rows, summary = screened["rows"], screened["summary"]
    assert sorted(row["key"] for row in rows) == sorted(archive)  # one row per object
    flagged = [row.get("suspicious") is True for row in rows]
    assert any(flagged) and not all(flagged)
    assert flagged == sorted(flagged, reverse=True)  # every flagged row before every other row
    top = [row["positive_probability"] for row in rows if row.get("suspicious")]
    assert top == sorted(top, reverse=True)
    by_key = {row["key"]: row for row in rows}
    assert {key: by_key[key]["status"] for key, kind in archive.items() if kind != "slice"} == {
        f"{PREFIX}notes/report.txt": "skipped",
        f"{PREFIX}series/IM9999": "error",
        f"{PREFIX}cold/IM0001.png": "error",
    }
    assert by_key[f"{PREFIX}series/IM9999"]["error"] == "corrupt_image"
    assert by_key[f"{PREFIX}cold/IM0001.png"]["error"] == "object_unreadable"  # reported, not fatal
    slices = DICOM_SLICES + RASTER_SLICES
    assert all(by_key[key]["status"] == "answered" for key, kind in archive.items() if kind == "slice")
    assert (summary["objects"], summary["answered"], summary["skipped"], summary["errors"]) == (
        slices + 3,
        slices,
        1,
        2,
    )
    assert summary["flagged"] == sum(flagged) and summary["classified"] == slices + 3 and summary["reused"] == 0
    assert "screening: succeeded" in first.stderr  # progress on stderr
    # The report sits beside the Distributed Map's own result files.
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{stack.s3_port}",
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    folder = summary["report"].removeprefix(f"s3://{ARCHIVE_BUCKET}/").removesuffix("report.json")
    keys = {
        item["Key"].removeprefix(folder)
        for item in s3.list_objects_v2(Bucket=ARCHIVE_BUCKET, Prefix=folder)["Contents"]
    }
    assert {"report.json"} <= keys and any(key.endswith("manifest.json") for key in keys)

    again = _screen(stack, "--format", "csv")
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert lines[0] == "key,status,label,tier,positive_probability,suspicious,uncertain,unfamiliar,error"
    assert len(lines) == 1 + len(archive) and ",true," in lines[1]
    # Only the object S3 refused is asked again: every answer (and refusal from the content) came from its record.
    assert f"(1 classified now, {slices + 2} from earlier runs)" in again.stderr
    rerun = time.monotonic() - started - seconds
    print(f"\nlungscan screen over {len(archive)} objects: {seconds:.1f} s, re-run {rerun:.1f} s")


def test_a_bad_address_or_an_unknown_machine_is_a_clear_error(stack):
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungscan_client",
            "screen",
            "https://example.org/x",
            "--endpoint-url",
            "http://127.0.0.1:9",
        ],
        cwd=REPO_ROOT,
        env=with_function_path({}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "not an s3://BUCKET/PREFIX address" in bad.stderr
    unknown = _screen(stack, "--state-machine", "arn:aws:states:us-east-1:123456789012:stateMachine:Nope")
    assert unknown.returncode == 1 and "AWS refused" in unknown.stderr and "Traceback" not in unknown.stderr
    empty = _screen(stack, prefix="no-such-ward/")
    assert empty.returncode == 1 and "no object under" in empty.stderr
