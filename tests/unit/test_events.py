"""Every recorded event in events/ (what `sam local invoke -e` sends) through the handler."""

from __future__ import annotations

import json

import pytest
from helpers import EVENTS_DIR, load_event

EXPECTED = {
    "predict_png_json.json": (200, None),
    "predict_raw_jpeg.json": (200, None),
    "predict_bad_body.json": (400, "invalid_json"),
    "health.json": (200, None),
}


def test_every_event_has_an_expectation():
    assert sorted(path.name for path in EVENTS_DIR.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_event(app_module, lambda_context, name):
    expected_status, expected_code = EXPECTED[name]
    result = app_module.lambda_handler(load_event(name), lambda_context)
    assert result["statusCode"] == expected_status, result["body"][:500]
    answer = json.loads(result["body"])
    if expected_code:
        assert answer["error"]["code"] == expected_code
    elif name.startswith("predict"):
        assert answer["label"] in app_module.store.get().metadata.classes
        assert answer["request_id"] == load_event(name)["requestContext"]["requestId"]
