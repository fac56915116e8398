"""Property tests over the whole request path: whatever arrives, the answer is JSON, never a 500.

Bounded and repeatable for `make test` (FUZZ_EXAMPLES per property, default 150, fixed seed).
`make fuzz` runs long with fresh random inputs (FUZZ_RANDOM=1); a property that finds a 5xx
leaves its shrunk input in build/fuzz-findings/<test>.json: move that file into
tests/fixtures/fuzz_regressions/ (with the fix), and every run replays it from then on.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
from helpers import FIXTURES_DIR, REPO_ROOT, ct_like_image, encode, make_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The same inputs every run unless FUZZ_RANDOM=1: a failure in CI reproduces here.
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    database=None,  # findings are kept as files (below), not in a local .hypothesis folder
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REGRESSIONS_DIR = FIXTURES_DIR / "fuzz_regressions"
FINDINGS_DIR = REPO_ROOT / "build" / "fuzz-findings"
SEEDS = {
    "png": encode(ct_like_image(96)),
    "jpeg": encode(ct_like_image(96, mode="RGB"), "JPEG"),
    "dicom": Path(get_testdata_file("CT_small.dcm")).read_bytes(),
}
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "image/png",
        "image/jpeg",
        "application/dicom",
        "application/octet-stream",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data",
        "text/plain",
        "",
        "application/json; charset=utf-8",
    ]
)
ALLOWED_ERRORS = {400, 404, 413, 415, 422}


def check_answer(app_module, lambda_context, event) -> None:
    result = app_module.lambda_handler(event, lambda_context)
    answer = json.loads(result["body"])
    if result["statusCode"] >= 500:
        keep_finding(event)
    assert result["statusCode"] == 200 or result["statusCode"] in ALLOWED_ERRORS, answer
    if result["statusCode"] != 200:
        assert answer["error"]["code"]
        assert "Traceback" not in answer["error"]["message"]


@st.composite
def mutated_file(draw) -> bytes:
    """A real PNG, JPEG or DICOM with bytes flipped, cut or inserted."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[position : position + draw(st.integers(1, 512))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        if not data:
            break
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@FUZZ
@given(body=st.binary(max_size=2048), content_type=CONTENT_TYPES, base64_body=st.booleans())
def test_random_bytes(app_module, lambda_context, body, content_type, base64_body):
    check_answer(app_module, lambda_context, make_event(body=body, content_type=content_type, base64_body=base64_body))


@FUZZ
@given(data=mutated_file(), framing=st.sampled_from(["json", "raw", "multipart"]))
def test_mutated_images(app_module, lambda_context, data, framing):
    if framing == "json":
        event = make_event(body=json.dumps({"image": base64.b64encode(data).decode()}), content_type="application/json")
    elif framing == "raw":
        event = make_event(body=data, content_type="application/octet-stream", base64_body=True)
    else:
        body = b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + data + b"\r\n--xyz--\r\n"
        event = make_event(body=body, content_type="multipart/form-data; boundary=xyz", base64_body=True)
    check_answer(app_module, lambda_context, event)


@FUZZ
@given(
    payload=st.dictionaries(
        st.sampled_from(["image", "images", "model", "explain", "explain_class", "window", "frame", "all_frames"])
        | st.text(max_size=10),
        JSON_VALUES,
        max_size=6,
    )
)
def test_arbitrary_json(app_module, lambda_context, payload):
    check_answer(app_module, lambda_context, make_event(body=json.dumps(payload), content_type="application/json"))


@FUZZ
@given(depth=st.integers(1, 5000), query=st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=4))
def test_deeply_nested_json_and_odd_query_strings(app_module, lambda_context, depth, query):
    body = "[" * depth + "]" * depth
    check_answer(app_module, lambda_context, make_event(body=body, content_type="application/json", query=query))


@FUZZ
@given(
    parts=st.lists(
        st.tuples(st.sampled_from(["file", "model", "explain", "frame", "", "x" * 300]), st.binary(max_size=300)),
        max_size=5,
    ),
    boundary=st.sampled_from(["xyz", "", "a" * 80, "--", "x y"]),
)
def test_multipart_edge_cases(app_module, lambda_context, parts, boundary):
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
            for name, value in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    event = make_event(body=body, content_type=f"multipart/form-data; boundary={boundary}", base64_body=True)
    check_answer(app_module, lambda_context, event)


def keep_finding(event: dict) -> None:
    """Write the event that found a 5xx; while Hypothesis shrinks, the smallest one is written last."""
    test = re.sub(r"\W+", "-", os.environ.get("PYTEST_CURRENT_TEST", "finding").split(" ")[0].split("::")[-1])
    FINDINGS_DIR.mkdir(parents=True, exist_ok=True)
    finding = {key: event.get(key) for key in ("body", "isBase64Encoded", "queryStringParameters")}
    finding["content_type"] = event["headers"].get("Content-Type")
    (FINDINGS_DIR / f"{test}.json").write_text(json.dumps(finding))


def regression_events(path: Path) -> list[dict]:
    """A kept finding: a whole event (.json), or a file (.bin) sent in every framing."""
    if path.suffix == ".json":
        finding = json.loads(path.read_text())
        event = make_event(
            body=finding["body"], content_type=finding["content_type"], query=finding.get("queryStringParameters")
        )
        event["isBase64Encoded"] = finding["isBase64Encoded"]
        return [event]
    data = path.read_bytes()
    encoded = base64.b64encode(data).decode()
    form = b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + data + b"\r\n--xyz--\r\n"
    return [
        make_event(body=json.dumps({"image": encoded}), content_type="application/json"),
        make_event(body=json.dumps({"images": [encoded]}), content_type="application/json"),
        make_event(body=data, content_type="application/octet-stream", base64_body=True),
        make_event(body=form, content_type="multipart/form-data; boundary=xyz", base64_body=True),
    ]


@pytest.mark.parametrize("path", sorted(REGRESSIONS_DIR.iterdir()), ids=lambda path: path.name)
def test_every_input_that_once_found_a_5xx(app_module, lambda_context, path):
    for event in regression_events(path):
        check_answer(app_module, lambda_context, event)
