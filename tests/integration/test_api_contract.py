"""The API's contract, checked from outside against `make run`'s stack: Schemathesis over ``/openapi.json`` with
every check (a signed-in demo user, bounded examples, a fixed seed), 405 for a method a route does not declare,
and the docs' curl examples run as written, on slices whose base64 is too long for a command-line argument."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURES_DIR, demo_id_token
from PIL import Image

from infrastructure.emulation import REPO_ROOT
from infrastructure.local_stack import stack_subprocess

pytestmark = pytest.mark.slow

SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
# Linux refuses a single command-line argument longer than this (MAX_ARG_STRLEN): "Argument list too long".
MAX_ARGUMENT_BYTES = 128 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with stack_subprocess(tmp_path_factory.mktemp("contract-stack") / "stack.log") as running:
        yield running


@pytest.fixture(scope="module")
def token(stack) -> str:
    return demo_id_token(f"http://127.0.0.1:{stack.s3_port}", "clinician-a@example.org")


def test_schemathesis_finds_nothing_with_every_check(stack, token, tmp_path):
    st = Path(sys.executable).with_name("st")
    command = [
        str(st),
        "--no-color",
        "--config-file",
        str(SCHEMATHESIS_CONFIG),
        "run",
        stack.base_url + "/openapi.json",
    ]
    command += ["--checks", "all", "--max-examples", "12", "--seed", "2024"]
    result = subprocess.run(
        command,
        cwd=tmp_path,  # its .hypothesis database and reports stay out of the tree
        env={**os.environ, "LUNGSCAN_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    document = json.loads(urllib.request.urlopen(stack.base_url + "/openapi.json", timeout=30).read())
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in output, output[-3000:]  # every operation was exercised


def call(url: str, method: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers={"Authorization": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/predict", "POST, OPTIONS"),
        ("QUERY", "/health", "GET, OPTIONS"),  # a method http.server has no do_ for goes through too
        ("HEAD", "/model", "GET, OPTIONS"),
        ("POST", "/patients/P-0001/scans", "GET, OPTIONS"),  # not behind the authorizer: nothing to authorize
        ("GET", "/patients/P-0001/scans/20261204T000000000Z-0123456789ab", "DELETE, OPTIONS"),
    ],
)
def test_an_undeclared_method_is_405_with_allow(stack, method, path, allow):
    status, headers, body = call(stack.base_url + path, method)
    assert (status, headers.get("Allow")) == (405, allow)
    if method != "HEAD":
        assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_an_unknown_path_stays_404(stack):
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = call(stack.base_url + "/predictions", method)
        assert status == 404 and "Allow" not in headers and json.loads(body)["error"]["code"] == "not_found"


def documented_commands(page: Path) -> list[str]:
    """The shell commands of a page's bash blocks that call the local API, a continued line (``|``, ``\\``) joined."""
    commands, current = [], ""
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += line + "\n"
            if not line.rstrip().endswith(("|", "\\")):
                commands.append(current)
                current = ""
    return [
        command for command in commands if ("curl" in command and ":5001/" in command) or command.startswith("TOKEN=")
    ]


@pytest.fixture(scope="module")
def large_slices(tmp_path_factory) -> dict[str, Path]:
    """The docs' fixtures as 512x512 slices (the size a CT scanner writes): their base64 passes one argument's limit."""
    folder = tmp_path_factory.mktemp("slices")
    slices = {}
    for name in ("ct_normal_256.png", "ct_malignant_256.jpg"):
        image = Image.open(FIXTURES_DIR / name).convert("L").resize((512, 512), Image.Resampling.LANCZOS)
        target = folder / name.replace("256", "512")
        if target.suffix == ".png":  # 16-bit, as CT exports are
            Image.fromarray(np.asarray(image).astype(np.uint16) * 257).save(target)
        else:
            image.save(target, quality=95)
        slices[f"tests/fixtures/{name}"] = target
    assert len(base64.b64encode((folder / "ct_normal_512.png").read_bytes())) > MAX_ARGUMENT_BYTES
    return slices


def run_documented(command: str, stack, slices: dict[str, Path], variables: dict[str, str]) -> list[dict]:
    for documented, large in slices.items():
        command = command.replace(documented, str(large))
    command = command.replace("http://127.0.0.1:5001", stack.base_url)
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=REPO_ROOT,
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (command, result.stderr[-2000:])
    decoder, answers, text = json.JSONDecoder(), [], result.stdout.strip()
    while text:
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:].strip()
    return answers


def test_the_documented_curl_examples_work_on_a_512_slice(stack, token, large_slices):
    readme_and_api = documented_commands(REPO_ROOT / "README.md")[:1] + documented_commands(
        REPO_ROOT / "docs" / "api.md"
    )
    assert len(readme_and_api) >= 4  # README's, then JSON piped, raw bytes and a form
    for command in readme_and_api:
        (answer,) = run_documented(command, stack, large_slices, {})
        assert answer["input"]["width"] == 512 and answer["label"], (command, answer)

    token_line, store, patients, scans, heatmap, delete = documented_commands(REPO_ROOT / "docs" / "accounts.md")[:6]
    assert token_line.startswith("TOKEN=")
    variables = {"TOKEN": token}
    (stored,) = run_documented(store, stack, large_slices, variables)
    assert stored["record_id"] and stored["input"]["width"] == 512
    (listed,) = run_documented(patients, stack, large_slices, variables)
    assert "P-0001" in {patient["patient"] for patient in listed["patients"]}
    (page,) = run_documented(scans, stack, large_slices, variables)
    assert stored["record_id"] in {scan["record_id"] for scan in page["scans"]}
    (shown,) = run_documented(heatmap.replace("RECORD_ID", stored["record_id"]), stack, large_slices, variables)
    assert shown["record_id"] == stored["record_id"] and shown["heatmap"]
    assert run_documented(delete.replace("RECORD_ID", stored["record_id"]), stack, large_slices, variables) == []
