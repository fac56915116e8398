"""The ``lungscan`` HTTPS client: against the local stack, and against tiny local servers for retries."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import FIXTURES_DIR, REPO_ROOT

from infrastructure.local_stack import stack_subprocess
from lungscan_client import DEFAULT_MAX_BYTES, RetryPolicy, classify_files
from lungscan_client.cli import main

NORMAL_PNG = FIXTURES_DIR / "ct_normal_256.png"
MALIGNANT_JPG = FIXTURES_DIR / "ct_malignant_256.jpg"
CLASSES = {"normal", "benign", "malignant"}  # this stack serves the 3-class bundle alone
ANSWER = {
    "label": "normal",
    "verdict": "No Cancer Detected",
    "prediction": "No Cancer Detected",
    "suspicious": False,
    "confidence": 0.8,
    "probabilities": {"normal": 0.8, "benign": 0.15, "malignant": 0.05},
    "threshold": 0.5,
    "model": {"name": "iq-oth-3class", "version": "fake", "sha256": None},
    "input": {"format": "PNG", "width": 256, "height": 256, "window": None},
    "heatmap": None,
    "preview": None,
    "disclaimer": "Research tool. Not a diagnosis. A clinician must review every scan.",
    "request_id": "fake-request",
}


@pytest.fixture(scope="module")
def stack(model_bundle_dir, tmp_path_factory):
    """``make run``'s stack on free ports; yields its base URL."""
    with stack_subprocess(tmp_path_factory.mktemp("client-stack") / "stack.log", [model_bundle_dir]) as running:
        yield running.base_url


@pytest.fixture
def scans(tmp_path) -> list[Path]:
    """Two real CT slices and one text file, under names a hospital script might use."""
    normal, malignant, notes = tmp_path / "0001.png", tmp_path / "0002.jpg", tmp_path / "0003-notes.txt"
    normal.write_bytes(NORMAL_PNG.read_bytes())
    malignant.write_bytes(MALIGNANT_JPG.read_bytes())
    notes.write_text("Referral letter, not an image.\n")
    return [normal, malignant, notes]


class FakeApi:
    """A tiny local API: answers POST /predict from a script of (status, body, headers)."""

    def __init__(self, script, delay: float = 0.0) -> None:
        self.script = list(script)
        self.delay = delay
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def next_answer(self):
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                with api.lock:
                    api.requests.append(
                        {"path": self.path, "body": body, "headers": dict(self.headers), "time": time.monotonic()}
                    )
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                try:
                    time.sleep(api.delay)
                    status, answer, headers = api.next_answer()
                    data = json.dumps(answer).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with api.lock:
                        api.in_flight -= 1

            def log_message(self, *args) -> None:
                pass

        return Handler


@contextmanager
def fake_api(script, delay: float = 0.0):
    api = FakeApi(script, delay)
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield api
    finally:
        server.shutdown()
        server.server_close()


def unavailable(request_id: str = "r-503") -> tuple[int, dict, dict]:
    error = {"code": "model_unavailable", "message": "No model could be loaded.", "request_id": request_id}
    return 503, {"error": error}, {}


# ---------------------------------------------------------------- the package


def test_the_client_needs_neither_tensorflow_nor_the_core():
    code = (
        "import sys, lungscan_client, lungscan_client.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'lungscan', 'numpy'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    version = subprocess.run(
        [sys.executable, "-m", "lungscan_client", "--version"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("lungscan ")


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("lungscan")
    assert script.is_file(), "the `lungscan` command is missing: run `make install` (pip install -e .)"
    out = subprocess.run([str(script), "classify", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--concurrency" in out.stdout


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--concurrency", "0", "must be at least 1"),
        ("--concurrency", "two", "invalid positive_int value: 'two'"),
        ("--retries", "-1", "must be 0 or more"),
        ("--backoff", "-0.5", "must be 0 or more"),
        ("--timeout", "0", "must be greater than 0"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(capsys, option, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["classify", str(NORMAL_PNG), "--api", "http://127.0.0.1:9", option, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_default_size_limit_is_the_apis():
    from lungscan.inputs.imaging import DEFAULT_LIMITS

    assert DEFAULT_LIMITS.max_bytes == DEFAULT_MAX_BYTES


# ---------------------------------------------------------------- against the local stack


def test_several_files_with_a_bad_one_exit_1_with_a_summary(stack, scans, capsys):
    code = main(["classify", *map(str, scans), "--api", stack])
    out, err = capsys.readouterr()
    assert code == 1
    results = json.loads(out)
    assert [result["file"] for result in results] == [str(path) for path in scans]  # input order
    for result in results[:2]:
        assert result["ok"] and result["status"] == 200
        assert result["result"]["label"] in CLASSES
        assert set(result["result"]["probabilities"]) == CLASSES
        assert result["result"]["verdict"] in ("Cancer Detected", "No Cancer Detected")
        assert result["result"]["prediction_set"][0] == result["result"]["label"]
        answer_set = set(result["result"]["prediction_set"])
        assert result["result"]["uncertain"] is (
            ("malignant" in answer_set and len(answer_set) > 1) or bool(result["result"]["unfamiliar"])
        )
        assert result["result"]["tier"] in ("suspicious", "not_excluded", "clear")
    bad = results[2]
    assert not bad["ok"] and bad["status"] == 415 and bad["attempts"] == 1  # a 4xx is never retried
    assert bad["error"]["code"] == "unsupported_format" and bad["error"]["request_id"]
    lines = err.strip().splitlines()
    assert any("0003-notes.txt: unsupported_format (415)" in line for line in lines)
    assert lines[-1].startswith("lungscan: 3 files: 2 classified (")
    assert "1 failed in" in lines[-1] and "Not a diagnosis" in lines[-1]


def test_csv_output(stack, scans, capsys):
    code = main(["classify", *map(str, scans[:2]), "--api", stack + "/", "--format", "csv", "--concurrency", "2"])
    out, err = capsys.readouterr()
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["file"] for row in rows] == [str(scans[0]), str(scans[1])]
    for row in rows:
        assert row["ok"] == "true" and row["status"] == "200" and row["label"] in CLASSES
        assert abs(sum(float(row[f"p_{name}"]) for name in CLASSES) - 1) < 1e-3
        assert row["model_name"] == "iq-oth-3class" and row["model_version"] and row["request_id"]
        assert row["error_code"] == ""
        assert row["prediction_set"].split("|")[0] == row["label"]
        answer_set = set(row["prediction_set"].split("|"))
        mixed = "malignant" in answer_set and len(answer_set) > 1
        assert row["uncertain"] == str(mixed or row["unfamiliar"] == "true").lower()
        assert row["tier"] in ("suspicious", "not_excluded", "clear")
    assert "2 files: 2 classified" in err


def test_json_output_for_a_dicom_with_explain(stack, tmp_path, capsys):
    dicom = tmp_path / "IM0001"  # DICOM files often have no extension
    dicom.write_bytes((FIXTURES_DIR / "ct_normal_256.dcm").read_bytes())
    code = main(["classify", str(dicom), "--api", stack + "/predict", "--explain", "--model", "iq-oth-3class"])
    out, _ = capsys.readouterr()
    assert code == 0
    [result] = json.loads(out)
    answer = result["result"]
    assert answer["input"]["format"] == "DICOM"
    assert answer["preview"] and answer["heatmap"], "explain=true should bring a heatmap"


def test_an_unknown_model_is_a_plain_failure(stack, scans, capsys):
    assert main(["classify", str(scans[0]), "--api", stack, "--model", "no-such-model"]) == 1
    [result] = json.loads(capsys.readouterr().out)
    assert result["status"] == 404 and result["error"]["code"] == "unknown_model"


# ---------------------------------------------------------------- retries, limits, concurrency


def test_a_503_is_retried_with_backoff(scans, capsys):
    with fake_api([unavailable(), (200, ANSWER, {})]) as api:
        started = time.monotonic()
        code = main(["classify", str(scans[0]), "--api", api.url, "--backoff", "0.05"])
        elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 0, err
    [result] = json.loads(out)
    assert result["ok"] and result["attempts"] == 2 and result["result"]["request_id"] == "fake-request"
    assert len(api.requests) == 2
    gap = api.requests[1]["time"] - api.requests[0]["time"]
    assert 0.025 <= gap < 5, "backoff: between 0.5x and 1x of 0.05 s"
    assert elapsed < 10
    body = api.requests[0]["body"]
    assert api.requests[0]["path"] == "/predict" and body["explain"] is False
    assert "filename" not in body and "0001" not in json.dumps(body)  # file names stay on this machine


def test_retries_are_bounded_and_the_last_error_is_reported(scans, capsys):
    with fake_api([unavailable()]) as api:
        code = main(["classify", str(scans[0]), "--api", api.url, "--retries", "2", "--backoff", "0"])
    out, err = capsys.readouterr()
    assert code == 1
    [result] = json.loads(out)
    assert result["attempts"] == 3 and len(api.requests) == 3
    assert result["error"] == {
        "code": "model_unavailable",
        "message": "No model could be loaded.",
        "request_id": "r-503",
    }
    assert "model_unavailable (503)" in err and "0 classified" in err


def test_429_honours_retry_after_and_gateway_errors_are_read(scans):
    sleeps: list[float] = []
    script = [(429, {"message": "Too Many Requests"}, {"Retry-After": "0.2"}), (502, {"message": "Bad Gateway"}, {})]
    with fake_api([*script, (200, ANSWER, {})]) as api:
        [result] = classify_files(
            [scans[0]], api.url, retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=sleeps.append
        )
    assert result.ok and result.attempts == 3
    assert sleeps[0] == 0.2 and 0.005 <= sleeps[1] <= 0.02 + 1e-9
    with fake_api([(502, {"message": "Bad Gateway"}, {})]) as api:
        [result] = classify_files([scans[0]], api.url, retry=RetryPolicy(attempts=1))
    assert (result.ok, result.status, result.error_code, result.error_message) == (
        False,
        502,
        "http_502",
        "Bad Gateway",
    )


def test_the_api_key_is_sent_and_never_printed(scans, capsys, monkeypatch):
    monkeypatch.setenv("LUNGSCAN_API_KEY", "s3cr3t-key")
    with fake_api([(403, {"message": "Forbidden"}, {"x-amzn-RequestId": "gw-1"})]) as api:
        code = main(["classify", str(scans[0]), "--api", api.url])
    out, err = capsys.readouterr()
    assert code == 1 and len(api.requests) == 1  # a refused key is not retried
    assert api.requests[0]["headers"]["x-api-key"] == "s3cr3t-key"
    [result] = json.loads(out)
    assert result["error"] == {"code": "http_403", "message": "Forbidden", "request_id": "gw-1"}
    assert "s3cr3t" not in out + err


def test_connection_errors_are_retried_then_fail(scans, capsys):
    url = "http://127.0.0.1:9"  # the discard port: nothing listens there
    code = main(["classify", str(scans[0]), "--api", url, "--retries", "1", "--backoff", "0", "--timeout", "5"])
    out, _err = capsys.readouterr()
    assert code == 1
    [result] = json.loads(out)
    assert result["attempts"] == 2 and result["status"] is None and result["error"]["code"] == "connection_error"


def test_concurrency_is_bounded(tmp_path):
    files = []
    for index in range(9):
        path = tmp_path / f"{index:04d}.png"
        path.write_bytes(NORMAL_PNG.read_bytes())
        files.append(path)
    with fake_api([(200, ANSWER, {})], delay=0.15) as api:
        results = classify_files(files, api.url, concurrency=3)
    assert all(result.ok for result in results) and len(api.requests) == 9
    assert 2 <= api.max_in_flight <= 3
    assert [result.file for result in results] == [str(path) for path in files]


def test_local_failures_are_never_sent(tmp_path, capsys):
    big, empty = tmp_path / "big.dcm", tmp_path / "empty.png"
    big.write_bytes(b"\0" * 2048)
    empty.write_bytes(b"")
    with fake_api([(200, ANSWER, {})]) as api:
        code = main(["classify", str(big), str(empty), str(tmp_path / "missing.png"), "--api", api.url])
        code_small_limit = main(["classify", str(big), "--api", api.url, "--max-bytes", "1024"])
    _out, err = capsys.readouterr()
    assert code == 1 and code_small_limit == 1
    assert "too_large" in err and "empty_file" in err and "unreadable" in err
    assert len(api.requests) == 1  # only big.dcm, under the default limit, and only in the first run


def test_folders_expand_to_their_files(tmp_path, capsys):
    (tmp_path / "series" / "sub").mkdir(parents=True)
    (tmp_path / "series" / "a.png").write_bytes(NORMAL_PNG.read_bytes())
    (tmp_path / "series" / "sub" / "b.png").write_bytes(NORMAL_PNG.read_bytes())
    (tmp_path / "series" / ".DS_Store").write_bytes(b"junk")
    with fake_api([(200, ANSWER, {})]) as api:
        assert main(["classify", str(tmp_path / "series"), "--api", api.url, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [Path(row["file"]).name for row in rows] == ["a.png", "b.png"]


@pytest.mark.parametrize(
    "args",
    [
        ["classify", "x.png"],  # no --api and no $LUNGSCAN_API_URL
        ["classify", "x.png", "--api", "http://scanner.hospital.example"],  # plain http to another machine
        ["classify", "x.png", "--api", "ftp://example.org"],
        ["classify", "x.png", "--api", "https://example.org", "--concurrency", "0"],
    ],
)
def test_usage_errors_exit_2(args, monkeypatch):
    monkeypatch.delenv("LUNGSCAN_API_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
