"""/openapi.json keeps the API's promises: every status a route answers, with the body it really sends; the one-of
rule of /predict; 204 with no body; 405 with ``Allow`` for a method a route does not declare (Schemathesis checks the
same from outside: tests/integration/test_api_contract.py)."""

from __future__ import annotations

import base64
import json

import pytest
from helpers import ct_like_image, encode, make_event

from lungscan.accounts import access

ERROR_BODY = {"$ref": "#/components/schemas/ErrorResponse"}


def call(app_module, lambda_context, event) -> tuple[int, dict, dict | None]:
    result = app_module.lambda_handler(event, lambda_context)
    headers = {
        **(result.get("headers") or {}),
        **{k: ", ".join(v) for k, v in (result.get("multiValueHeaders") or {}).items()},
    }
    return result["statusCode"], headers, json.loads(result["body"]) if result.get("body") else None


@pytest.fixture
def document(app_module, lambda_context) -> dict:
    return call(app_module, lambda_context, make_event("GET", "/openapi.json"))[2]


def operations(document: dict) -> dict[tuple[str, str], dict]:
    return {(method.upper(), path): op for path, ops in document["paths"].items() for method, op in ops.items()}


def test_every_route_documents_its_errors_with_the_one_error_body(document):
    schemas = document["components"]["schemas"]
    assert set(schemas["ErrorResponse"]["required"]) == {"error"}
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message", "request_id"}
    assert "HTTPValidationError" not in json.dumps(document)  # Powertools' 422 shape: never sent
    expected = {
        ("POST", "/predict"): {"200", "400", "401", "403", "404", "413", "415", "422", "503"},
        ("GET", "/model"): {"200", "503"},
        ("GET", "/health"): {"200"},
        ("GET", "/openapi.json"): {"200"},
        ("GET", "/patients"): {"200", "400", "401", "403", "503"},
        ("GET", "/patients/{ref}/scans"): {"200", "400", "401", "403", "404", "503"},
        ("GET", "/patients/{ref}/scans/{record_id}/heatmap"): {"200", "400", "401", "403", "404", "503"},
        ("DELETE", "/patients/{ref}/scans/{record_id}"): {"204", "400", "401", "403", "404", "503"},
        ("POST", "/studies"): {"201", "400", "401", "403", "404", "413", "415", "503"},
        ("POST", "/studies/{study_id}/start"): {"202", "400", "401", "403", "404", "409", "503"},
        ("GET", "/studies/{study_id}"): {"200", "400", "401", "403", "404", "503"},
        ("GET", "/studies/{study_id}/dicom"): {"200", "400", "401", "403", "404", "409", "422", "503"},
    }
    for route, operation in operations(document).items():
        responses = operation["responses"]
        assert set(responses) - {"500", "429"} == expected[route], route
        for status, response in responses.items():
            if status.startswith(("4", "5")) and status != "429":
                assert response["content"]["application/json"]["schema"] == ERROR_BODY, (route, status)


def test_delete_is_204_with_no_body_and_predict_needs_exactly_one_image(document):
    deleted = operations(document)[("DELETE", "/patients/{ref}/scans/{record_id}")]["responses"]["204"]
    assert deleted.get("content", {}) == {}
    request = document["components"]["schemas"]["PredictRequest"]
    assert request["oneOf"] == [{"required": ["image"]}, {"required": ["images"]}]
    assert request["properties"]["image"]["type"] == "string"  # absent, never null
    parameters = operations(document)[("GET", "/patients/{ref}/scans")]["parameters"]
    (ref,) = [parameter for parameter in parameters if parameter["name"] == "ref"]
    assert (
        ref["schema"]["pattern"]
        == document["components"]["schemas"]["PredictRequest"]["properties"]["patient"]["pattern"]
    )


def test_each_documented_error_is_sent_as_documented(app_module, lambda_context):
    """A few of the statuses, answered for real: the body the document describes, never Powertools' 422 shape."""
    png = base64.b64encode(encode(ct_like_image())).decode()
    cases = [
        (make_event(body="{", content_type="application/json"), 400, "invalid_json"),
        (make_event(body=json.dumps({"explain": True}), content_type="application/json"), 400, "invalid_request"),
        (make_event(body=json.dumps({"image": None, "images": [png]}), content_type="application/json"), 400, None),
        (make_event("GET", "/patients/P-1/scans"), 401, "unauthorized"),
        (make_event(body=json.dumps({"image": png, "model": "nope"}), content_type="application/json"), 404, None),
        (make_event(body="x", content_type="text/plain"), 415, "unsupported_media_type"),
        (
            make_event(body=json.dumps({"images": [png, png], "patient": "P-1"}), content_type="application/json"),
            422,
            "history_single_slice",
        ),
    ]
    for event, status, code in cases:
        answered, _, body = call(app_module, lambda_context, event)
        assert answered == status, body
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
        assert code is None or body["error"]["code"] == code


@pytest.mark.parametrize(("method", "path"), [("PUT", "/predict"), ("GET", "/predict"), ("POST", "/health")])
def test_an_undeclared_method_on_a_known_path_is_405_with_allow(app_module, lambda_context, method, path):
    status, headers, body = call(app_module, lambda_context, make_event(method, path))
    declared = ", ".join([*access.declared_methods(path), "OPTIONS"])
    assert (status, headers["Allow"], body["error"]["code"]) == (405, declared, "method_not_allowed")


def test_an_unknown_path_is_404_and_a_token_route_asked_wrongly_is_405_before_any_token(app_module, lambda_context):
    status, headers, body = call(app_module, lambda_context, make_event("GET", "/predictions"))
    assert (status, body["error"]["code"]) == (404, "not_found") and "Allow" not in headers
    status, headers, _ = call(app_module, lambda_context, make_event("PUT", "/patients/P-1/scans/x"))
    assert (status, headers["Allow"]) == (405, "DELETE, OPTIONS")
