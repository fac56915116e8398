"""Answers name what was wrong without echoing what the caller sent; no cross-origin access by default."""

from __future__ import annotations

import base64
import io
import json

import pydicom
import pytest
from helpers import make_event
from pydicom.data import get_testdata_file

from lungscan.errors import UnsupportedFormatError
from lungscan.inputs.dicom import decode_dicom

MARKER = "1.2.826.0.1.3680043.2.1143.999.424242"  # a well-formed UID no standard registers


def call(app_module, lambda_context, event: dict) -> tuple[int, dict, dict]:
    result = app_module.lambda_handler(event, lambda_context)
    headers = {key.lower(): value for key, value in (result.get("multiValueHeaders") or {}).items()}
    return result["statusCode"], json.loads(result["body"]), headers


def test_an_unregistered_transfer_syntax_is_named_not_echoed():
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.file_meta.TransferSyntaxUID = MARKER
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with pytest.raises(UnsupportedFormatError) as refused:
        decode_dicom(buffer.getvalue())
    assert "transfer syntax" in refused.value.message
    assert MARKER not in refused.value.message and "424242" not in refused.value.message


def test_an_unknown_explain_class_is_named_not_echoed(app_module, lambda_context, ct_png):
    body = {"image": base64.b64encode(ct_png).decode(), "explain": True, "explain_class": "<img src=x onerror=1>"}
    status, answer, _ = call(
        app_module, lambda_context, make_event(body=json.dumps(body), content_type="application/json")
    )
    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    message = answer["error"]["message"]
    assert "explain_class" in message and "onerror" not in message and "<img" not in message
    assert all(name in message for name in app_module.store.get().metadata.classes)  # says what is accepted


def test_no_cross_origin_access_unless_configured(app_module, lambda_context):
    """Unit tests run without ALLOWED_ORIGIN, as a deployed function does: no origin may read the answers."""
    assert not app_module.os.environ.get("ALLOWED_ORIGIN")
    event = make_event("GET", "/health", headers={"Origin": "https://evil.example"})
    status, _, headers = call(app_module, lambda_context, event)
    assert status == 200
    assert "access-control-allow-origin" not in headers
    event["stageVariables"] = {"allowedOrigin": "https://site.example"}  # the stack's own site, set by the stage
    assert "access-control-allow-origin" not in call(app_module, lambda_context, event)[2]
    event = {**event, **make_event("GET", "/health", headers={"Origin": "https://site.example"})}
    event["stageVariables"] = {"allowedOrigin": "https://site.example"}
    assert call(app_module, lambda_context, event)[2]["access-control-allow-origin"] == ["https://site.example"]
