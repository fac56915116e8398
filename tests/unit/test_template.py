"""template.yaml, the Dockerfile and events/: linted, scanned, validated by SAM CLI, and held to the design.

Everything here runs offline: cfn-lint, checkov, `sam validate --lint`, the SAM translator and
`sam local generate-event` need no AWS account and no Docker.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import decode

from infrastructure.emulation import REPO_ROOT, ROUTES, STAGE, proxy_event
from lungscan.accounts import access
from lungscan.errors import UnauthorizedError

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
EXPECTED_ROUTES = ROUTES  # what the local emulation sends; the template must declare the same
HISTORY_ROUTES = access.AUTHORIZED_ROUTES  # behind the Cognito authorizer
TLS_ONLY = {"Bool": {"aws:SecureTransport": "false"}}
ACCESS_LOGS_BUCKET = "AccessLogsBucket"


def sam_cli() -> str:
    """Path of the SAM CLI (its own virtualenv); a missing one fails the test, never skips it."""
    path = Path(os.environ.get("SAM_CLI", REPO_ROOT / ".venv-sam" / "bin" / "sam"))
    if not path.is_file():
        pytest.fail(f"SAM CLI not found at {path}: run `make install-sam` (or set SAM_CLI).")
    return str(path)


def checkov_cli() -> str:
    """Path of checkov (its own virtualenv, its pins conflict with the app's); missing fails, never skips."""
    path = Path(os.environ.get("CHECKOV_CLI", REPO_ROOT / ".venv-checkov" / "bin" / "checkov"))
    if not path.is_file():
        pytest.fail(f"checkov not found at {path}: run `make install-checkov` (or set CHECKOV_CLI).")
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


def test_checkov_reports_no_failed_check() -> None:
    # --skip-download (also in .checkov.yaml): checkov would otherwise try to reach Prisma Cloud.
    command = [checkov_cli(), "-f", str(TEMPLATE), "--framework", "cloudformation", "--compact", "-o", "json"]
    result = run([*command, "--skip-download"])
    assert result.stdout.lstrip().startswith("{"), result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    failed = [f"{check['check_id']} {check['resource']}" for check in report["results"]["failed_checks"]]
    assert not failed, failed
    assert result.returncode == 0, result.stderr
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] >= 30, summary  # it really read the resources
    # Every suppression says why (Metadata: checkov: skip: [{id, comment}] on the resource itself).
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) > 40, check["check_id"]


def test_every_suppression_is_in_place_and_justified(resources: dict) -> None:
    skips = [
        (name, skip)
        for name, resource in resources.items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for name, skip in skips:
        assert skip["id"].startswith("CKV"), name
        assert len(skip.get("comment", "")) > 40, (name, skip["id"])
    assert "skip-check" not in (REPO_ROOT / ".checkov.yaml").read_text(), "suppress per resource, not globally"


# --- template contents -------------------------------------------------------------------------


def test_sections_in_design_order(template: dict) -> None:
    sections = [key for key in template if key in {"Parameters", "Conditions", "Globals", "Resources", "Outputs"}]
    assert sections == ["Parameters", "Conditions", "Globals", "Resources", "Outputs"]
    assert template["Parameters"]["Stage"]["AllowedValues"] == ["dev", "staging", "prod"]
    assert template["Parameters"]["Stage"]["Default"] == STAGE  # the stage the local emulation's events name


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


def _function_statements(resources: dict) -> list[dict]:
    return [
        statement
        for policy in resources["ClassifierFunction"]["Properties"]["Policies"]
        for statement in policy["Statement"]
    ]


UPLOADS = "lungscan-uploads-${Id}"  # the uploads bucket's name (named, not referenced: see template.yaml)


def test_function_can_only_read_the_model_registry_and_reach_study_uploads(resources: dict) -> None:
    statements = [s for s in _function_statements(resources) if str(s["Action"]).startswith(("s3:", "['s3:"))]
    others = [s for s in _function_statements(resources) if s not in statements]
    assert not any("s3:" in str(s["Action"]) for s in others)
    assert all(statement["Effect"] == "Allow" for statement in statements)
    model, study = statements[:2], {s["Sid"]: s for s in statements[2:]}
    actions = {action for statement in model for action in _as_list(statement["Action"])}
    assert actions <= {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"}
    for statement in model:
        resource = statement["Resource"]["Fn::Sub"]
        if statement["Action"] == "s3:ListBucket":  # the bucket itself, listing only under models/
            assert resource == "arn:${AWS::Partition}:s3:::${ModelBucket}"
            assert statement["Condition"] == {"StringLike": {"s3:prefix": ["models/*"]}}
        else:
            assert resource == "arn:${AWS::Partition}:s3:::${ModelBucket}/models/*"
    # Studies: sign uploads under studies/ only, read rendered images under results/ only, list studies/ only.
    assert set(study) == {"SignStudyUploads", "ReadStudyImages", "ListStudyUploads"}
    assert study["SignStudyUploads"]["Action"] == "s3:PutObject"
    assert study["SignStudyUploads"]["Resource"]["Fn::Sub"][0].endswith(f"{UPLOADS}/studies/*")
    assert study["ReadStudyImages"]["Action"] == "s3:GetObject"
    assert study["ReadStudyImages"]["Resource"]["Fn::Sub"][0].endswith(f"{UPLOADS}/results/*")
    assert study["ListStudyUploads"]["Condition"] == {"StringLike": {"s3:prefix": ["studies/*"]}}


def test_api_has_exactly_the_designed_routes(resources: dict) -> None:
    events = resources["ClassifierFunction"]["Properties"]["Events"].values()
    routes = {(event["Properties"]["Method"].upper(), event["Properties"]["Path"]) for event in events}
    assert routes == EXPECTED_ROUTES
    assert all(event["Type"] == "Api" for event in events)
    assert all(event["Properties"]["RestApiId"] == {"Ref": "ClassifierApi"} for event in events)
    # The body that carries each route's key requirement lists the same routes, and nothing else.
    paths = resources["ClassifierApi"]["Properties"]["DefinitionBody"]["paths"]
    assert {(method.upper(), path) for path, methods in paths.items() for method in methods} == EXPECTED_ROUTES


def test_api_stage_throttles_and_writes_access_logs(resources: dict) -> None:
    api = resources["ClassifierApi"]["Properties"]
    (settings,) = api["MethodSettings"]
    assert (settings["ResourcePath"], settings["HttpMethod"]) == ("/*", "*")
    assert 0 < settings["ThrottlingRateLimit"] <= settings["ThrottlingBurstLimit"]
    assert not settings.get("DataTraceEnabled")  # would log request bodies (CT images)
    access_log = api["AccessLogSetting"]
    assert "${ApiAccessLogGroup}" in access_log["DestinationArn"]["Fn::Sub"]
    record = json.loads(access_log["Format"])  # one JSON object per request
    assert {"requestId", "ip", "status", "latency"} <= set(record)
    assert record["ip"] == "$context.identity.sourceIp"
    assert not any("body" in value.lower() or "$input" in value for value in record.values())
    log_group = resources["ApiAccessLogGroup"]["Properties"]
    assert log_group["RetentionInDays"] == {"Fn::If": ["IsProd", 365, 30]}
    # Access logs need the account's CloudWatch role in place before the stage is created.
    assert resources["ClassifierApi"]["DependsOn"] == "ApiGatewayAccountReady"
    ready = resources["ApiGatewayAccountReady"]["Metadata"]["ApiGatewayAccount"]
    assert ready == {"Fn::If": ["CreateApiGatewayLogsRole", {"Ref": "ApiGatewayAccount"}, ""]}
    account = resources["ApiGatewayAccount"]
    assert account["Properties"]["CloudWatchRoleArn"] == {"Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]}
    assert resources["ApiGatewayCloudWatchRole"]["DeletionPolicy"] == "Retain"


def test_function_log_group_has_a_retention(resources: dict) -> None:
    log_group = resources["ClassifierLogGroup"]["Properties"]
    assert log_group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${ClassifierFunction}"}
    assert log_group["RetentionInDays"] == {"Fn::If": ["IsProd", 365, 30]}


def test_alarms_watch_5xx_and_p99_latency(template: dict, resources: dict) -> None:
    alarms = {
        resource["Properties"]["MetricName"]: resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert {"5XXError", "Latency"} <= set(alarms)
    errors, latency = alarms["5XXError"], alarms["Latency"]
    assert (errors["Statistic"], errors["Period"], errors["Threshold"]) == ("Sum", 300, 0)
    assert errors["ComparisonOperator"] == "GreaterThanThreshold"
    assert latency["ExtendedStatistic"] == "p99"
    assert latency["Threshold"] == {"Ref": "LatencyAlarmThresholdMs"}
    for alarm in (errors, latency):
        assert alarm["Namespace"] == "AWS/ApiGateway"
        dimensions = {dimension["Name"]: dimension["Value"] for dimension in alarm["Dimensions"]}
        assert dimensions == {"ApiName": resources["ClassifierApi"]["Properties"]["Name"], "Stage": {"Ref": "Stage"}}
        assert alarm["AlarmActions"] == {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    # The topic exists only with an email, and is encrypted with a key CloudWatch alarms may use.
    topic = resources["AlarmTopic"]
    assert topic["Condition"] == "HasAlarmEmail"
    assert topic["Properties"]["Subscription"] == [{"Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}]
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": ["AlarmTopicKey", "Arn"]}
    key_statements = resources["AlarmTopicKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert any(s["Principal"] == {"Service": "cloudwatch.amazonaws.com"} for s in key_statements)


@pytest.mark.parametrize("stage", ["dev", "staging", "prod"])
def test_api_key_is_required_unless_explicitly_opted_out(template: dict, stage: str) -> None:
    """A guided deploy that accepts every default gets a key on every stage, dev included."""
    spec = template["Parameters"]["RequireApiKey"]
    assert spec["Default"] == "true"
    assert set(spec["AllowedValues"]) == {"true", "false"}  # no "auto" that opens dev by stage name
    parameters = {name: spec.get("Default") for name, spec in template["Parameters"].items()} | {"Stage": stage}
    assert _condition(template, "UseApiKey", parameters) is True
    assert _condition(template, "UseApiKey", parameters | {"RequireApiKey": "false"}) is False


def test_function_stops_before_api_gateway_gives_up(template: dict, resources: dict) -> None:
    """API Gateway answers 504 at 29 s (cold start included) while Lambda bills on: stop well before."""
    timeout = resources["ClassifierFunction"]["Properties"].get("Timeout", template["Globals"]["Function"]["Timeout"])
    variables = resources["ClassifierFunction"]["Properties"]["Environment"]["Variables"]
    deadline = float(variables["MODEL_REGISTRY_DEADLINE_SECONDS"])
    assert 0 < deadline <= 5
    assert timeout + deadline < 29


def test_concurrency_is_reserved_and_capped_by_default(template: dict, resources: dict) -> None:
    spec = template["Parameters"]["ReservedConcurrency"]
    assert 0 < spec["Default"] <= 50
    parameters = {name: value.get("Default") for name, value in template["Parameters"].items()}
    assert _condition(template, "HasReservedConcurrency", parameters) is True
    reserved = resources["ClassifierFunction"]["Properties"]["ReservedConcurrentExecutions"]
    assert reserved == {"Fn::If": ["HasReservedConcurrency", {"Ref": "ReservedConcurrency"}, {"Ref": "AWS::NoValue"}]}


def test_the_account_wide_api_gateway_role_is_left_alone_by_default(template: dict, resources: dict) -> None:
    assert template["Parameters"]["ConfigureApiGatewayAccount"]["Default"] == "false"
    parameters = {name: value.get("Default") for name, value in template["Parameters"].items()}
    assert _condition(template, "CreateApiGatewayLogsRole", parameters) is False
    for name in ("ApiGatewayCloudWatchRole", "ApiGatewayAccount"):
        assert resources[name]["Condition"] == "CreateApiGatewayLogsRole"


def test_cross_origin_access_is_only_the_site_or_an_explicit_origin(template: dict, resources: dict) -> None:
    api = resources["ClassifierApi"]["Properties"]
    assert api["Variables"]["allowedOrigin"] == {
        "Fn::If": ["UseSiteOrigin", {"Fn::Sub": "https://${SiteDistribution.DomainName}"}, {"Ref": "AllowedOrigin"}]
    }
    assert api["Cors"]["AllowOrigin"] == "stageVariables.allowedOrigin"  # the preflight answers the stage's origin
    variables = resources["ClassifierFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["ALLOWED_ORIGIN"] == {"Ref": "AllowedOrigin"}  # the site's origin comes from the stage
    pattern = template["Parameters"]["AllowedOrigin"]["AllowedPattern"]
    assert re.fullmatch(pattern, "https://scan.example.org") and re.fullmatch(pattern, "")
    assert not re.fullmatch(pattern, "*") and not re.fullmatch(pattern, "http://scan.example.org")


def test_the_site_may_connect_only_to_this_stacks_api(resources: dict) -> None:
    config = resources["SiteResponseHeadersPolicy"]["Properties"]["ResponseHeadersPolicyConfig"]
    csp, variables = config["SecurityHeadersConfig"]["ContentSecurityPolicy"]["ContentSecurityPolicy"]["Fn::Sub"]
    (connect,) = [d.strip() for d in csp.split(";") if d.strip().startswith("connect-src")]
    assert connect.split() == [
        "connect-src",
        "'self'",
        "https://${ClassifierApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}",
        "https://cognito-idp.${AWS::Region}.${AWS::URLSuffix}",  # sign-in (InitiateAuth) from the page
        "https://${UploadsHost}",  # a study's files, posted straight to the uploads bucket
    ]
    host = variables["UploadsHost"]["Fn::Sub"][0]
    assert host == f"{UPLOADS}.s3.${{AWS::Region}}.${{AWS::URLSuffix}}"


def test_the_translated_template_has_no_dependency_cycle(tmp_path: Path) -> None:
    """template.yaml silences cfn-lint's E3004 on SiteDistribution (a cycle only before the SAM transform):
    the CloudFormation that SAM really produces must lint clean, cycles included."""
    python = Path(sam_cli()).with_name("python")
    result = run([str(python), "-c", SAM_TRANSLATE, str(TEMPLATE)])
    assert result.returncode == 0, result.stderr
    translated = tmp_path / "translated.json"
    translated.write_text(result.stdout)
    result = run([sys.executable, "-c", "from cfnlint.runner import main; main()", str(translated)])
    assert "E3004" not in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_key_guards_every_route_but_the_preflight(template: dict, resources: dict) -> None:
    api = resources["ClassifierApi"]["Properties"]
    assert "Auth" not in api  # SAM's Auth.ApiKeyRequired takes no condition; the body carries it
    assert api["MergeDefinitions"] is True and api["AlwaysDeploy"] is True
    body = api["DefinitionBody"]
    required = {"Fn::If": ["UseApiKey", [{"api_key": []}], {"Ref": "AWS::NoValue"}]}
    signed_in = {"Fn::If": ["UseApiKey", [{"api_key": [], "CognitoIdToken": []}], [{"CognitoIdToken": []}]]}
    for path, methods in body["paths"].items():
        assert "options" not in methods, path
        for method, operation in methods.items():
            expected = signed_in if (method.upper(), path) in HISTORY_ROUTES else required
            assert operation["security"] == expected, (method, path)
    assert body["components"]["securitySchemes"]["api_key"] == {"type": "apiKey", "name": "x-api-key", "in": "header"}
    assert "X-Api-Key" in api["Cors"]["AllowHeaders"] and "Authorization" in api["Cors"]["AllowHeaders"]
    for name, kind in [
        ("ClassifierUsagePlan", "AWS::ApiGateway::UsagePlan"),
        ("ClassifierApiKey", "AWS::ApiGateway::ApiKey"),
        ("ClassifierUsagePlanKey", "AWS::ApiGateway::UsagePlanKey"),
    ]:
        assert (resources[name]["Type"], resources[name]["Condition"]) == (kind, "UseApiKey")
    (stage,) = resources["ClassifierUsagePlan"]["Properties"]["ApiStages"]
    assert stage == {"ApiId": {"Ref": "ClassifierApi"}, "Stage": {"Ref": "ClassifierApi.Stage"}}
    assert template["Outputs"]["ApiKeyId"] == {
        "Condition": "UseApiKey",
        "Description": template["Outputs"]["ApiKeyId"]["Description"],
        "Value": {"Ref": "ClassifierApiKey"},
    }
    assert "--include-value" in template["Outputs"]["ApiKeyId"]["Description"]


def test_sam_translation_keeps_the_preflight_open() -> None:
    """The real SAM translator: key on each route (under UseApiKey), none on OPTIONS, plan on the stage."""
    python = Path(sam_cli()).with_name("python")
    result = run([str(python), "-c", SAM_TRANSLATE, str(TEMPLATE)])
    assert result.returncode == 0, result.stderr
    translated = json.loads(result.stdout)["Resources"]
    paths = translated["ClassifierApi"]["Properties"]["Body"]["paths"]
    for path, methods in paths.items():
        assert methods["options"].get("security") is None, path
        assert methods["options"]["x-amazon-apigateway-integration"]["type"] == "mock"
        routes = [method for method in methods if method != "options"]
        for method in routes:
            assert methods[method]["security"]["Fn::If"][0] == "UseApiKey", (method, path)
            if (method.upper(), path) in HISTORY_ROUTES:  # the token is required whether keys are on or off
                assert all("CognitoIdToken" in option for option in methods[method]["security"]["Fn::If"][1])
                assert methods[method]["security"]["Fn::If"][2] == [{"CognitoIdToken": []}]
            assert methods[method]["x-amazon-apigateway-integration"]["type"] == "aws_proxy"
    stages = [name for name, resource in translated.items() if resource["Type"] == "AWS::ApiGateway::Stage"]
    assert len(stages) == 1
    plan = translated["ClassifierUsagePlan"]["Properties"]["ApiStages"][0]
    assert plan["Stage"] == {"Ref": stages[0]}
    assert translated[stages[0]]["Properties"]["AccessLogSetting"]["Format"]


def test_binary_media_types_exclude_wildcard(resources: dict) -> None:
    api = resources["ClassifierApi"]["Properties"]
    media_types = api["BinaryMediaTypes"]
    assert "*~1*" not in media_types
    assert "*/*" not in media_types
    assert {"image~1png", "image~1jpeg", "application~1dicom", "multipart~1form-data"} <= set(media_types)
    assert api["StageName"] == {"Ref": "Stage"}
    assert api["Cors"]["AllowMethods"] == "'GET,POST,DELETE,OPTIONS'"


def _bucket_policy(resources: dict, bucket: str) -> list[dict]:
    policies = [
        resource["Properties"]["PolicyDocument"]["Statement"]
        for resource in resources.values()
        if resource["Type"] == "AWS::S3::BucketPolicy" and resource["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    assert len(policies) == 1, bucket
    return policies[0]


def test_the_stack_has_exactly_these_buckets(resources: dict) -> None:
    """The parametrized bucket tests below cover every bucket: a new one must be added to them."""
    buckets = sorted(name for name, resource in resources.items() if resource["Type"] == "AWS::S3::Bucket")
    assert buckets == ["AccessLogsBucket", "ModelBucket", "SiteBucket", "UploadsBucket"]


@pytest.mark.parametrize("bucket", ["AccessLogsBucket", "ModelBucket", "SiteBucket", "UploadsBucket"])
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
    assert "AccessControl" not in properties  # no canned ACL grant
    # ACLs stay disabled everywhere but the log bucket, which CloudFront standard logging writes through.
    ownership = "BucketOwnerPreferred" if bucket == ACCESS_LOGS_BUCKET else "BucketOwnerEnforced"
    assert properties["OwnershipControls"]["Rules"] == [{"ObjectOwnership": ownership}]


@pytest.mark.parametrize("bucket", ["AccessLogsBucket", "ModelBucket", "SiteBucket", "UploadsBucket"])
def test_bucket_policies_deny_plain_http(resources: dict, bucket: str) -> None:
    statements = _bucket_policy(resources, bucket)
    deny = [s for s in statements if s["Effect"] == "Deny" and s.get("Condition") == TLS_ONLY]
    assert len(deny) == 1
    assert deny[0]["Principal"] == "*" and deny[0]["Action"] == "s3:*"
    assert deny[0]["Resource"] == [{"Fn::GetAtt": [bucket, "Arn"]}, {"Fn::Sub": f"${{{bucket}.Arn}}/*"}]


@pytest.mark.parametrize("bucket", ["ModelBucket", "SiteBucket", "UploadsBucket"])
def test_buckets_log_access_to_the_access_logs_bucket(resources: dict, bucket: str) -> None:
    logging = resources[bucket]["Properties"]["LoggingConfiguration"]
    assert logging["DestinationBucketName"] == {"Ref": ACCESS_LOGS_BUCKET}
    assert logging["LogFilePrefix"].startswith("s3/")
    # Log delivery is allowed before logging is switched on.
    assert resources[bucket]["DependsOn"] == "AccessLogsBucketPolicy"


def test_access_logs_bucket_lets_only_log_delivery_in_and_expires_logs(resources: dict) -> None:
    properties = resources[ACCESS_LOGS_BUCKET]["Properties"]
    assert "LoggingConfiguration" not in properties
    expiry = [rule for rule in properties["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in rule]
    assert len(expiry) == 1 and expiry[0]["Status"] == "Enabled" and expiry[0]["ExpirationInDays"] <= 365
    allow = [s for s in _bucket_policy(resources, ACCESS_LOGS_BUCKET) if s["Effect"] == "Allow"]
    assert len(allow) == 1
    assert allow[0]["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert allow[0]["Action"] == "s3:PutObject"
    assert allow[0]["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert resources[ACCESS_LOGS_BUCKET]["DeletionPolicy"] == "Retain"


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
    assert all(behavior["ViewerProtocolPolicy"] == "redirect-to-https" for behavior in config.get("CacheBehaviors", []))
    assert config["DefaultCacheBehavior"]["ResponseHeadersPolicyId"] == {"Ref": "SiteResponseHeadersPolicy"}
    assert config["Logging"]["Bucket"] == {"Fn::GetAtt": [ACCESS_LOGS_BUCKET, "DomainName"]}
    assert config["Logging"]["IncludeCookies"] is False
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
    assert security["StrictTransportSecurity"]["AccessControlMaxAgeSec"] >= 31536000
    assert security["ContentTypeOptions"] == {"Override": True}  # X-Content-Type-Options: nosniff
    assert security["ReferrerPolicy"]["ReferrerPolicy"] in {
        "no-referrer",
        "same-origin",
        "strict-origin-when-cross-origin",
    }
    assert all(header["Override"] is True for header in security.values())


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


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_the_local_emulations_events_have_the_generated_shape(method: str, path: str) -> None:
    """What the local stack, the Runtime API check and the tests send looks like the recorded events."""
    event = proxy_event(method, path, body=b"\x89PNG", query=[("explain", "true"), ("explain", "false")])
    assert set(event) == GENERATED_EVENT_KEYS
    assert set(event["requestContext"]) == GENERATED_REQUEST_CONTEXT_KEYS
    assert event["resource"] == event["path"] == event["requestContext"]["resourcePath"] == path
    assert (event["requestContext"]["stage"], event["requestContext"]["path"]) == (STAGE, f"/{STAGE}{path}")
    assert (event["isBase64Encoded"], base64.b64decode(event["body"])) == (True, b"\x89PNG")
    assert event["multiValueQueryStringParameters"] == {"explain": ["true", "false"]}


def test_generated_shape_matches_this_sam_cli() -> None:
    result = run([sam_cli(), "local", "generate-event", "apigateway", "aws-proxy", "--path", "health"])
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout)
    assert set(event) == GENERATED_EVENT_KEYS
    assert set(event["requestContext"]) == GENERATED_REQUEST_CONTEXT_KEYS


def test_events_are_reproducible_from_fixtures(tmp_path: Path) -> None:
    environment = {**os.environ, "SAM_CLI": sam_cli()}
    subprocess.run(
        [sys.executable, "-m", "events.generate", str(tmp_path)],
        check=True,
        cwd=REPO_ROOT,
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


def _condition(template: dict, name: str, parameters: dict) -> bool:
    """Evaluate a template condition for these parameter values (Equals, Not, And, Or, Condition)."""

    def value(node: object) -> object:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return parameters[node["Ref"]]
        return node

    def evaluate(node: dict) -> bool:
        ((function, arguments),) = node.items()
        if function == "Condition":
            return evaluate(template["Conditions"][arguments])
        if function == "Fn::Equals":
            left, right = (str(value(argument)) for argument in arguments)
            return left == right
        if function == "Fn::Not":
            return not evaluate(arguments[0])
        if function == "Fn::And":
            return all(evaluate(argument) for argument in arguments)
        if function == "Fn::Or":
            return any(evaluate(argument) for argument in arguments)
        raise ValueError(f"unsupported condition function {function}")

    return evaluate(template["Conditions"][name])


# Run by the SAM CLI's own Python (.venv-sam): translate template.yaml offline and print the CloudFormation.
SAM_TRANSLATE = """
import json, os, sys
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # the translator asks boto3 for a region
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.transform import transform

class NoManagedPolicies:
    def load(self):
        return {}

template = yaml_parse(open(sys.argv[1]).read())
for resource in template["Resources"].values():
    if resource["Type"] == "AWS::Serverless::Function":  # sam build fills ImageUri in
        resource["Properties"].setdefault("ImageUri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/lungscan:test")
parameters = {"AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::AccountId": "123456789012"}
print(json.dumps(transform(template, parameters, NoManagedPolicies())))
"""


# --- accounts and patient history ---------------------------------------------------------------


def test_clinicians_sign_in_with_cognito_and_belong_to_care_teams(resources: dict) -> None:
    pool = resources["ClinicianPool"]["Properties"]
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True  # no self sign-up
    assert pool["Policies"]["PasswordPolicy"]["MinimumLength"] >= 12
    client = resources["ClinicianPoolClient"]["Properties"]
    assert client["GenerateSecret"] is False
    assert {"ALLOW_USER_PASSWORD_AUTH", "ALLOW_USER_SRP_AUTH"} <= set(client["ExplicitAuthFlows"])
    groups = {r["Properties"]["GroupName"] for r in resources.values() if r["Type"] == "AWS::Cognito::UserPoolGroup"}
    assert groups == {"oncology", "radiology"}


def test_history_routes_sit_behind_the_cognito_authorizer(resources: dict) -> None:
    api = resources["ClassifierApi"]["Properties"]
    scheme = api["DefinitionBody"]["components"]["securitySchemes"]["CognitoIdToken"]
    assert (scheme["type"], scheme["name"], scheme["in"]) == ("apiKey", "Authorization", "header")
    authorizer = scheme["x-amazon-apigateway-authorizer"]
    assert authorizer == {"type": "cognito_user_pools", "providerARNs": [{"Fn::GetAtt": ["ClinicianPool", "Arn"]}]}
    template = json.loads(api["GatewayResponses"]["UNAUTHORIZED"]["ResponseTemplates"]["application/json"])
    assert template["error"]["code"] == "unauthorized" and template["error"]["request_id"] == "$context.requestId"


def test_the_template_guards_exactly_the_routes_the_access_table_names(resources: dict) -> None:
    """lungscan.accounts.access decides who may call what; the template's authorizer must agree with it."""
    api = resources["ClassifierApi"]["Properties"]
    guarded = set()
    for path, methods in api["DefinitionBody"]["paths"].items():
        for method, operation in methods.items():
            _, with_key, without_key = operation["security"]["Fn::If"]
            options = [*with_key, *(without_key if isinstance(without_key, list) else [])]
            if any(access.TOKEN_SCHEME in option for option in options):
                assert all(access.TOKEN_SCHEME in option for option in options), (method, path)  # never optional
                guarded.add((method.upper(), path))
    assert guarded == access.AUTHORIZED_ROUTES
    events = resources["ClassifierFunction"]["Properties"]["Events"].values()
    routes = {(event["Properties"]["Method"].upper(), event["Properties"]["Path"]) for event in events}
    assert routes == set(access.ROUTES)
    # The authorizer's 401 is the function's own: same code and message.
    error = json.loads(api["GatewayResponses"]["UNAUTHORIZED"]["ResponseTemplates"]["application/json"])["error"]
    assert (error["code"], error["message"]) == (UnauthorizedError.code, UnauthorizedError().message)


def test_history_table_is_recoverable_encrypted_with_a_rotated_key_and_expires(template: dict, resources: dict) -> None:
    table = resources["HistoryTable"]
    properties = table["Properties"]
    assert table["DeletionPolicy"] == "Retain"
    assert {key["AttributeName"]: key["KeyType"] for key in properties["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert properties["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": {"Ref": "HistoryKey"},
    }
    assert resources["HistoryKey"]["Properties"]["EnableKeyRotation"] is True
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    retention = template["Parameters"]["HistoryRetentionDays"]
    assert retention["Type"] == "Number" and retention["MinValue"] >= 1
    variables = resources["ClassifierFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["HISTORY_RETENTION_DAYS"] == {"Ref": "HistoryRetentionDays"}
    assert variables["HISTORY_TABLE"] == {"Ref": "HistoryTable"}
    assert variables["COGNITO_USER_POOL_ID"] == {"Ref": "ClinicianPool"}
    assert variables["COGNITO_CLIENT_ID"] == {"Ref": "ClinicianPoolClient"}


def test_the_function_may_touch_only_its_history_table(resources: dict) -> None:
    statements = {s["Sid"]: s for s in _function_statements(resources) if "Sid" in s}
    history = statements["ReadWriteHistory"]
    assert history["Resource"] == {"Fn::GetAtt": ["HistoryTable", "Arn"]}
    assert set(history["Action"]) == {
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    assert statements["ReadPatientRefHashKey"]["Action"] == "secretsmanager:GetSecretValue"
    assert statements["ReadPatientRefHashKey"]["Resource"] == {"Ref": "PatientRefHashSecret"}
    key = statements["UseHistoryKeyThroughDynamoDBAndSecretsManager"]
    assert key["Resource"] == {"Fn::GetAtt": ["HistoryKey", "Arn"]}
    assert set(key["Condition"]["StringEquals"]) == {"kms:ViaService"}
    every_resource = [s["Resource"] for s in _function_statements(resources)]
    assert "*" not in every_resource
    actions = {a for s in _function_statements(resources) for a in _as_list(s["Action"])}
    assert not any(action.endswith("*") or action == "dynamodb:Scan" for action in actions)


# --- whole studies (issue 21) ------------------------------------------------------------------


def test_the_study_machine_is_a_distributed_map_over_s3_batched_to_the_worker(template: dict, resources: dict) -> None:
    machine = resources["StudyStateMachine"]["Properties"]
    substitutions = machine["DefinitionSubstitutions"]
    assert substitutions["WorkerFunctionArn"] == {"Fn::GetAtt": ["StudyWorkerFunction", "Arn"]}
    assert substitutions["SummaryFunctionArn"] == {"Fn::GetAtt": ["StudySummaryFunction", "Arn"]}
    assert substitutions["MaxConcurrency"] == {"Ref": "StudyMaxConcurrency"}  # a template parameter
    assert substitutions["BatchSize"] == {"Ref": "StudyBatchSize"}
    states = machine["Definition"]["States"]
    # Substitutions are strings: the Pass state turns them into the numbers the Map's *Path fields read.
    configure = states["Configure"]["Parameters"]
    assert configure == {
        "batch_size.$": "States.StringToJson('${BatchSize}')",
        "max_concurrency.$": "States.StringToJson('${MaxConcurrency}')",
    }
    map_state = states["ClassifySlices"]
    assert map_state["Type"] == "Map"
    assert map_state["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:listObjectsV2",
        "Parameters": {"Bucket.$": "$.bucket", "Prefix.$": "$.prefix"},  # the input's bucket and prefix
    }
    batcher = map_state["ItemBatcher"]
    assert batcher["MaxItemsPerBatchPath"] == "$.config.batch_size"
    assert set(batcher["BatchInput"]) == {"bucket.$", "prefix.$", "study_id.$", "model.$"}
    assert map_state["MaxConcurrencyPath"] == "$.config.max_concurrency"
    assert 0 < map_state["ToleratedFailurePercentage"] < 50
    assert map_state["ResultWriter"]["Resource"] == "arn:aws:states:::s3:putObject"
    assert map_state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    (task,) = map_state["ItemProcessor"]["States"].values()
    assert task["Resource"] == "arn:aws:states:::lambda:invoke"
    assert task["Parameters"]["FunctionName"] == "${WorkerFunctionArn}"
    retried = {error for rule in task["Retry"] for error in rule["ErrorEquals"]}
    assert "Lambda.TooManyRequestsException" in retried  # throttling
    assert map_state["Next"] == "Summarize" and map_state["Catch"][0]["Next"] == "Summarize"
    summarize = states["Summarize"]
    assert summarize["Parameters"]["FunctionName"] == "${SummaryFunctionArn}" and summarize["End"] is True
    # The worker and the summary are the same image as the API, other handlers.
    for name, handler in (("StudyWorkerFunction", "worker_handler"), ("StudySummaryFunction", "summary_handler")):
        function = resources[name]
        assert function["Metadata"]["Dockerfile"] == resources["ClassifierFunction"]["Metadata"]["Dockerfile"]
        assert function["Properties"]["ImageConfig"]["Command"] == [f"study_tasks.{handler}"]
        assert hasattr(__import__("study_tasks"), handler)
    assert template["Parameters"]["StudyMaxConcurrency"]["Type"] == "Number"


def test_the_uploads_bucket_is_kms_encrypted_site_only_and_emptied_within_a_day(resources: dict) -> None:
    bucket = resources["UploadsBucket"]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    (cors,) = bucket["CorsConfiguration"]["CorsRules"]
    assert cors["AllowedOrigins"] == [
        {"Fn::If": ["UseSiteOrigin", {"Fn::Sub": "https://${SiteDistribution.DomainName}"}, {"Ref": "AllowedOrigin"}]}
    ]
    assert "*" not in str(cors["AllowedOrigins"])
    (lifecycle,) = bucket["LifecycleConfiguration"]["Rules"]
    assert lifecycle["ExpirationInDays"] == 1 and "Prefix" not in lifecycle and "Filter" not in lifecycle
    # The name every reference spells (the function's environment, the policies, the CSP).
    assert bucket["BucketName"]["Fn::Sub"][0] == UPLOADS
    studies = resources["StudiesTable"]["Properties"]
    assert studies["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    variables = resources["ClassifierFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["STUDY_STATE_MACHINE"] == {"Ref": "StudyStateMachine"}
    assert variables["UPLOADS_BUCKET"]["Fn::Sub"][0] == UPLOADS


def test_the_worker_reads_only_uploads_and_named_archives(resources: dict) -> None:
    policies = resources["StudyWorkerFunction"]["Properties"]["Policies"]
    statements = {s["Sid"]: s for s in policies[0]["Statement"]}
    assert statements["ReadStudyUploads"]["Action"] == "s3:GetObject"
    assert statements["ReadStudyUploads"]["Resource"]["Fn::Sub"][0].endswith(f"{UPLOADS}/studies/*")
    assert set(statements["WriteStudySlices"]["Action"]) == {"dynamodb:PutItem", "dynamodb:BatchWriteItem"}
    archive = policies[1]["Fn::If"]
    assert archive[0] == "HasArchiveBuckets" and archive[2] == {"Ref": "AWS::NoValue"}
    (read,) = archive[1]["Statement"]
    assert read["Action"] == "s3:GetObject"  # read-only, nothing else
    actions = {a for s in policies[0]["Statement"] for a in _as_list(s["Action"])}
    assert not any(action.endswith("*") or "Delete" in action for action in actions)
