"""template.yaml, the Dockerfile and events/: linted, validated by SAM CLI, and held to the design.

Everything here runs offline: cfn-lint, `sam validate --lint` and `sam local generate-event`
need no AWS account and no Docker.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import decode

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"
EVENTS_DIR = REPO_ROOT / "events"
EVENT_FILES = sorted(EVENTS_DIR.glob("*.json"))

# Keys `sam local generate-event apigateway aws-proxy` emits (SAM CLI 1.170.0).
GENERATED_EVENT_KEYS = {
    "body",
    "resource",
    "path",
    "httpMethod",
    "isBase64Encoded",
    "queryStringParameters",
    "multiValueQueryStringParameters",
    "pathParameters",
    "stageVariables",
    "headers",
    "multiValueHeaders",
    "requestContext",
}
GENERATED_REQUEST_CONTEXT_KEYS = {
    "accountId",
    "resourceId",
    "stage",
    "requestId",
    "requestTime",
    "requestTimeEpoch",
    "identity",
    "path",
    "resourcePath",
    "httpMethod",
    "apiId",
    "protocol",
}
EXPECTED_ROUTES = {("POST", "/predict"), ("GET", "/model"), ("GET", "/health"), ("GET", "/openapi.json")}


def sam_cli() -> str:
    """Path of the SAM CLI (its own virtualenv); a missing one fails the test, never skips it."""
    path = Path(os.environ.get("SAM_CLI", REPO_ROOT / ".venv-sam" / "bin" / "sam"))
    if not path.is_file():
        pytest.fail(f"SAM CLI not found at {path}: run `make install-sam` (or set SAM_CLI).")
    return str(path)


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=environment, timeout=300)


@pytest.fixture(scope="module")
def template() -> dict:
    parsed, matches = decode(str(TEMPLATE))
    assert not matches, matches
    return parsed


@pytest.fixture(scope="module")
def resources(template: dict) -> dict:
    return template["Resources"]


# --- linters -----------------------------------------------------------------------------------


def test_cfn_lint_reports_nothing() -> None:
    # cfn-lint's console script (cfnlint has no __main__), run by this interpreter.
    result = run([sys.executable, "-c", "from cfnlint.runner import main; main()", str(TEMPLATE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_validate_lint_passes() -> None:
    result = run([sam_cli(), "validate", "--lint", "--template", str(TEMPLATE), "--region", "us-east-1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


# --- template contents -------------------------------------------------------------------------


def test_sections_in_design_order(template: dict) -> None:
    sections = [key for key in template if key in {"Parameters", "Conditions", "Globals", "Resources", "Outputs"}]
    assert sections == ["Parameters", "Conditions", "Globals", "Resources", "Outputs"]
    assert template["Parameters"]["Stage"]["AllowedValues"] == ["dev", "staging", "prod"]


def test_function_is_a_container_image_built_from_the_dockerfile(resources: dict) -> None:
    function = resources["ClassifierFunction"]
    assert function["Properties"]["PackageType"] == "Image"
    metadata = function["Metadata"]
    dockerfile = REPO_ROOT / metadata["DockerContext"] / metadata["Dockerfile"]
    assert dockerfile.is_file(), dockerfile
    text = dockerfile.read_text()
    assert "FROM public.ecr.aws/lambda/python:3.12" in text
    assert 'CMD ["app.lambda_handler"]' in text
    assert "MODEL_DIR=${LAMBDA_TASK_ROOT}/model" in text


def test_dockerignore_lets_every_copy_source_in() -> None:
    """.dockerignore is an allowlist ("*" then "!path"): a new COPY needs its own "!" line."""
    allowed = {
        line[1:].rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"
    }
    dockerfile = (REPO_ROOT / "functions" / "classifier" / "Dockerfile").read_text().splitlines()
    sources = [line.split()[1].rstrip("/") for line in dockerfile if line.startswith("COPY ")]
    assert sources
    for source in sources:
        assert any(source == path or source.startswith(path + "/") for path in allowed), source


def test_function_environment_names_the_registry(resources: dict) -> None:
    variables = resources["ClassifierFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["MODEL_BUCKET"] == {"Ref": "ModelBucket"}
    assert {"MODEL_NAME", "MODEL_REFRESH_SECONDS", "ALLOWED_ORIGIN"} <= set(variables)


def test_events_are_never_logged(template: dict) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert str(variables.get("POWERTOOLS_LOGGER_LOG_EVENT", "false")).lower() != "true"
    assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"} <= set(variables)


def test_function_can_only_read_the_model_registry(resources: dict) -> None:
    statements = [
        statement
        for policy in resources["ClassifierFunction"]["Properties"]["Policies"]
        for statement in policy["Statement"]
    ]
    actions = {action for statement in statements for action in _as_list(statement["Action"])}
    assert actions <= {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"}
    assert all(statement["Effect"] == "Allow" for statement in statements)
    assert "ModelBucket}/models/*" in json.dumps(statements)


def test_api_has_exactly_the_designed_routes(resources: dict) -> None:
    events = resources["ClassifierFunction"]["Properties"]["Events"].values()
    routes = {(event["Properties"]["Method"].upper(), event["Properties"]["Path"]) for event in events}
    assert routes == EXPECTED_ROUTES
    assert all(event["Type"] == "Api" for event in events)
    assert all(event["Properties"]["RestApiId"] == {"Ref": "ClassifierApi"} for event in events)


def test_binary_media_types_exclude_wildcard(resources: dict) -> None:
    api = resources["ClassifierApi"]["Properties"]
    media_types = api["BinaryMediaTypes"]
    assert "*~1*" not in media_types
    assert "*/*" not in media_types
    assert {"image~1png", "image~1jpeg", "application~1dicom", "multipart~1form-data"} <= set(media_types)
    assert api["StageName"] == {"Ref": "Stage"}
    assert api["Cors"]["AllowMethods"] == "'GET,POST,OPTIONS'"


@pytest.mark.parametrize("bucket", ["ModelBucket", "SiteBucket"])
def test_buckets_are_private_and_encrypted(resources: dict, bucket: str) -> None:
    properties = resources[bucket]["Properties"]
    block = properties["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    rules = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert properties["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


@pytest.mark.parametrize("policy", ["ModelBucketPolicy", "SiteBucketPolicy"])
def test_bucket_policies_deny_plain_http(resources: dict, policy: str) -> None:
    statements = resources[policy]["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for statement in statements
    )


def test_model_bucket_is_versioned(resources: dict) -> None:
    assert resources["ModelBucket"]["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}


def test_site_is_served_only_through_cloudfront(resources: dict) -> None:
    allow = [
        s for s in resources["SiteBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"
    ]
    assert len(allow) == 1
    assert allow[0]["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert "AWS:SourceArn" in allow[0]["Condition"]["StringEquals"]
    config = resources["SiteDistribution"]["Properties"]["DistributionConfig"]
    assert config["DefaultRootObject"] == "index.html"
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    assert config["Origins"][0]["OriginAccessControlId"] == {"Fn::GetAtt": ["SiteOriginAccessControl", "Id"]}
    oac = resources["SiteOriginAccessControl"]["Properties"]["OriginAccessControlConfig"]
    assert (oac["SigningBehavior"], oac["SigningProtocol"]) == ("always", "sigv4")


def test_site_sends_security_headers(resources: dict) -> None:
    headers = resources["SiteResponseHeadersPolicy"]["Properties"]["ResponseHeadersPolicyConfig"]
    security = headers["SecurityHeadersConfig"]
    csp = json.dumps(security["ContentSecurityPolicy"]["ContentSecurityPolicy"])
    for directive in ("default-src 'self'", "frame-ancestors 'none'", "img-src 'self' data: blob:", "execute-api"):
        assert directive in csp
    assert security["FrameOptions"]["FrameOption"] == "DENY"
    assert {"StrictTransportSecurity", "ContentTypeOptions", "ReferrerPolicy"} <= set(security)


def test_outputs_are_the_contract(template: dict) -> None:
    outputs = template["Outputs"]
    required = {"ApiUrl", "PredictUrl", "SiteUrl", "SiteBucketName", "ModelBucketName", "DistributionId"}
    assert required | {"ClassifierFunctionArn", "ClassifierFunctionRoleArn"} <= set(outputs)
    assert outputs["ClassifierFunctionArn"]["Value"] == {"Fn::GetAtt": ["ClassifierFunction", "Arn"]}
    assert "function" in outputs["ClassifierFunctionArn"]["Description"].lower()


# --- events/ -----------------------------------------------------------------------------------


def test_all_designed_events_exist() -> None:
    names = {path.stem for path in EVENT_FILES}
    assert {"predict_png_json", "predict_raw_jpeg", "predict_bad_body", "health"} <= names


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.name)
def test_events_have_the_generated_shape(path: Path) -> None:
    event = json.loads(path.read_text())
    assert set(event) == GENERATED_EVENT_KEYS
    assert set(event["requestContext"]) == GENERATED_REQUEST_CONTEXT_KEYS
    assert (event["httpMethod"], event["path"]) in EXPECTED_ROUTES
    assert event["resource"] == event["path"] == event["requestContext"]["resourcePath"]


def test_generated_shape_matches_this_sam_cli() -> None:
    result = run([sam_cli(), "local", "generate-event", "apigateway", "aws-proxy", "--path", "health"])
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout)
    assert set(event) == GENERATED_EVENT_KEYS
    assert set(event["requestContext"]) == GENERATED_REQUEST_CONTEXT_KEYS


def test_events_are_reproducible_from_fixtures(tmp_path: Path) -> None:
    environment = {**os.environ, "SAM_CLI": sam_cli()}
    subprocess.run(
        [sys.executable, str(EVENTS_DIR / "generate.py"), str(tmp_path)],
        check=True,
        capture_output=True,
        env=environment,
    )
    for generated in tmp_path.glob("*.json"):
        assert generated.read_text() == (EVENTS_DIR / generated.name).read_text(), generated.name


def test_event_bodies_carry_real_images() -> None:
    png_event = json.loads((EVENTS_DIR / "predict_png_json.json").read_text())
    assert png_event["isBase64Encoded"] is False
    assert png_event["headers"]["Content-Type"] == "application/json"
    body = json.loads(png_event["body"])
    assert base64.b64decode(body["image"]).startswith(b"\x89PNG\r\n\x1a\n")

    jpeg_event = json.loads((EVENTS_DIR / "predict_raw_jpeg.json").read_text())
    assert jpeg_event["isBase64Encoded"] is True
    assert jpeg_event["headers"]["Content-Type"] == "image/jpeg"
    assert base64.b64decode(jpeg_event["body"]).startswith(b"\xff\xd8\xff")

    bad_event = json.loads((EVENTS_DIR / "predict_bad_body.json").read_text())
    assert (bad_event["body"], bad_event["isBase64Encoded"]) == ("this is not json", False)


def _as_list(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]
