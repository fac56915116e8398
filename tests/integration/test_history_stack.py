"""Accounts and patient history through `make run`'s stack: tokens from the local Cognito pool with boto3
``initiate_auth``, the local authorizer in front of the history routes, records in the local DynamoDB."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request

import boto3
import pytest
from helpers import ct_like_image, encode

from infrastructure.local_accounts import DEMO_PASSWORD, DEMO_USERS
from infrastructure.local_stack import stack_subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with stack_subprocess(tmp_path_factory.mktemp("history-stack") / "stack.log") as running:
        yield running


def aws(stack, service: str):
    return boto3.client(
        service,
        endpoint_url=f"http://127.0.0.1:{stack.s3_port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def tokens(stack) -> dict[str, str]:
    """An ID token per demo user, the way any script signs in: find the pool and its client, InitiateAuth."""
    cognito = aws(stack, "cognito-idp")
    (pool,) = [pool for pool in cognito.list_user_pools(MaxResults=10)["UserPools"] if "lungscan" in pool["Name"]]
    (client,) = cognito.list_user_pool_clients(UserPoolId=pool["Id"], MaxResults=10)["UserPoolClients"]
    described = cognito.describe_user_pool_client(UserPoolId=pool["Id"], ClientId=client["ClientId"])
    flows = set(described["UserPoolClient"]["ExplicitAuthFlows"])
    assert {"ALLOW_USER_PASSWORD_AUTH", "ALLOW_USER_SRP_AUTH"} <= flows
    groups = {group["GroupName"] for group in cognito.list_groups(UserPoolId=pool["Id"])["Groups"]}
    assert groups == {"oncology", "radiology"}
    tokens = {}
    for email in DEMO_USERS:
        result = cognito.initiate_auth(
            ClientId=client["ClientId"],
            AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": email, "PASSWORD": DEMO_PASSWORD},
        )
        tokens[email[: len("clinician-a")]] = result["AuthenticationResult"]["IdToken"]
    return {"A": tokens["clinician-a"], "B": tokens["clinician-b"], "C": tokens["clinician-c"]}


def call(stack, method: str, path: str, token: str | None = None, payload: dict | None = None):
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    if token:
        headers["Authorization"] = token  # the raw ID token, as API Gateway's Cognito authorizer expects
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(stack.base_url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if body else None


def scan_payload(seed: int = 0, **extra) -> dict:
    return {"image": base64.b64encode(encode(ct_like_image(seed=seed))).decode(), **extra}


def table_items(stack) -> int:
    return aws(stack, "dynamodb").scan(TableName="lungscan-history-local")["Count"]


def test_done_when(stack, tokens):
    """The issue's acceptance list, in order."""
    before = table_items(stack)
    status, answer = call(stack, "POST", "/predict", payload=scan_payload())  # anonymous: as today
    assert status == 200 and answer["verdict"]
    assert table_items(stack) == before  # stored nothing

    status, answer = call(stack, "POST", "/predict", tokens["A"], scan_payload(1, patient="P-0001", explain=True))
    assert status == 200, answer
    record_id = answer["record_id"]

    status, page = call(stack, "GET", "/patients/P-0001/scans", tokens["B"])  # a colleague sees it
    assert status == 200, page
    assert record_id in [record["record_id"] for record in page["scans"]]
    record = next(record for record in page["scans"] if record["record_id"] == record_id)
    assert record["clinician"]["name"] == "Dr A. Demo"  # the administrator's name, never the (editable) email
    assert record["preview"] and record["has_heatmap"] and "heatmap" not in record
    status, shown = call(stack, "GET", f"/patients/P-0001/scans/{record_id}/heatmap", tokens["B"])
    assert status == 200 and shown["heatmap"]

    status, page = call(stack, "GET", "/patients/P-0001/scans", tokens["C"])  # the other team does not
    assert status == 404 or not page["scans"]
    assert call(stack, "GET", "/patients", tokens["C"])[1]["patients"] == []

    path = f"/patients/P-0001/scans/{record_id}"
    assert call(stack, "DELETE", path, tokens["C"])[0] == 404  # C cannot delete it
    assert call(stack, "GET", "/patients/P-0001/scans", tokens["B"])[0] == 200
    assert call(stack, "DELETE", path, tokens["A"]) == (204, None)  # A can
    status, page = call(stack, "GET", "/patients/P-0001/scans", tokens["B"])
    assert status == 404 or record_id not in [record["record_id"] for record in page["scans"]]

    log = stack.log_path.read_text()
    assert "GET /patients/{ref}/scans 200" in log  # the stack's access log names the resource...
    assert "P-0001" not in log  # ...never the patient reference
    assert '"action":"scan.delete"' in log


@pytest.mark.parametrize("route", [("GET", "/patients"), ("GET", "/patients/P-0001/scans")])
def test_no_or_bad_token_is_401(stack, tokens, route):
    method, path = route
    header, payload, signature = tokens["C"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["cognito:groups"] = ["oncology"]  # C tries to join oncology
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    for token in (None, "not-a-jwt", f"{header}.{forged}.{signature}", tokens["A"][:-4] + "AAAA"):
        status, error = call(stack, method, path, token)
        assert (status, error["error"]["code"]) == (401, "unauthorized"), token
        assert error["error"]["request_id"]  # as the template's UNAUTHORIZED gateway response has it


def test_predict_with_a_patient_needs_a_valid_token(stack, tokens):
    before = table_items(stack)
    assert call(stack, "POST", "/predict", None, scan_payload(patient="P-0002"))[0] == 401
    tampered = tokens["A"][:-4] + ("AAAA" if not tokens["A"].endswith("AAAA") else "BBBB")
    assert call(stack, "POST", "/predict", tampered, scan_payload(patient="P-0002"))[0] == 401
    status, error = call(stack, "POST", "/predict", tokens["A"], scan_payload(patient="John Smith"))
    assert (status, error["error"]["code"]) == (400, "invalid_patient_ref")
    assert table_items(stack) == before


def test_history_is_paginated_newest_first(stack, tokens):
    ids = []
    for seed in range(3):
        status, answer = call(stack, "POST", "/predict", tokens["B"], scan_payload(seed, patient="P-0003"))
        assert status == 200, answer
        ids.append(answer["record_id"])
        time.sleep(0.01)
    status, first = call(stack, "GET", "/patients/P-0003/scans?limit=2", tokens["A"])
    assert status == 200 and first["next"]
    status, second = call(stack, "GET", f"/patients/P-0003/scans?limit=2&next={first['next']}", tokens["A"])
    assert status == 200
    assert [record["record_id"] for record in first["scans"] + second["scans"]] == ids[::-1]
    (summary,) = [p for p in call(stack, "GET", "/patients", tokens["A"])[1]["patients"] if p["patient"] == "P-0003"]
    assert summary["scans"] == 3


def test_the_page_is_told_where_to_sign_in(stack):
    with urllib.request.urlopen(stack.base_url + "/config.js", timeout=10) as response:
        text = response.read().decode()
    assert "window.LUNGSCAN_CONFIG.cognito" in text and '"endpoint": "/cognito-idp/"' in text
    client_id = json.loads(text.split("window.LUNGSCAN_CONFIG.cognito = ", 1)[1].rstrip().rstrip(";"))["clientId"]
    # The page's InitiateAuth goes through the stack's own origin (the CSP allows only 'self' locally).
    request = urllib.request.Request(
        stack.base_url + "/cognito-idp/",
        data=json.dumps(
            {
                "AuthFlow": "USER_PASSWORD_AUTH",
                "ClientId": client_id,
                "AuthParameters": {"USERNAME": "clinician-c@example.org", "PASSWORD": DEMO_PASSWORD},
            }
        ).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["AuthenticationResult"]["IdToken"].count(".") == 2


def test_other_methods_and_paths_get_json_and_leave_no_reference_in_the_log(stack, tokens):
    for method in ("PUT", "PATCH", "TRACE"):  # a known path: 405, and what it does answer
        status, error = call(stack, method, "/patients", tokens["A"], payload={})
        assert (status, error["error"]["code"]) == (405, "method_not_allowed"), method
    request = urllib.request.Request(stack.base_url + "/patients", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=10)
    assert answer.value.code == 405 and answer.value.headers["Allow"] == "GET, OPTIONS"
    assert answer.value.headers["Content-Type"] == "application/json"
    # A path that is no route (a typo, a guessed URL) still holds the reference the clinician typed.
    for path in ("/patients/P-LOGGED-7", "/patients/P-LOGGED-8/scans/"):
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(urllib.request.Request(stack.base_url + path), timeout=10)
        assert answer.value.code == 404
    log = stack.log_path.read_text()
    assert "P-LOGGED" not in log
    assert "GET (no route) 404" in log and "PUT /patients 405" in log


def cognito_call(stack, action: str, payload: dict) -> tuple[int, dict]:
    """One call of Cognito's JSON API through the stack's sign-in proxy, as the page makes it."""
    request = urllib.request.Request(
        stack.base_url + "/cognito-idp/",
        data=json.dumps(payload).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"AWSCognitoIdentityProviderService.{action}",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_a_removed_clinician_is_refused_at_once_and_sign_out_revokes_the_refresh_token(stack):
    """Issue 24, finding 5, through the stack: a moved or disabled clinician's unexpired token stores and deletes
    nothing; the page's sign-out (RevokeToken) leaves no way to renew the session."""
    cognito = aws(stack, "cognito-idp")
    (pool,) = [pool["Id"] for pool in cognito.list_user_pools(MaxResults=10)["UserPools"] if "lungscan" in pool["Name"]]
    (client,) = [
        c["ClientId"] for c in cognito.list_user_pool_clients(UserPoolId=pool, MaxResults=10)["UserPoolClients"]
    ]
    email = "clinician-r@example.org"
    cognito.admin_create_user(UserPoolId=pool, Username=email, MessageAction="SUPPRESS")
    cognito.admin_set_user_password(UserPoolId=pool, Username=email, Password=DEMO_PASSWORD, Permanent=True)
    cognito.admin_add_user_to_group(UserPoolId=pool, Username=email, GroupName="oncology")
    status, signed_in = cognito_call(
        stack,
        "InitiateAuth",
        {
            "AuthFlow": "USER_PASSWORD_AUTH",
            "ClientId": client,
            "AuthParameters": {"USERNAME": email, "PASSWORD": DEMO_PASSWORD},
        },
    )
    assert status == 200, signed_in
    token, refresh = signed_in["AuthenticationResult"]["IdToken"], signed_in["AuthenticationResult"]["RefreshToken"]
    status, answer = call(stack, "POST", "/predict", token, scan_payload(5, patient="P-0005"))
    assert status == 200, answer
    assert call(stack, "GET", "/patients/P-0005/scans", token)[0] == 200
    sub = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["sub"]
    assert f"GET /patients/{{ref}}/scans 200 caller={sub}" in stack.log_path.read_text()  # who, in the access log

    cognito.admin_remove_user_from_group(UserPoolId=pool, Username=email, GroupName="oncology")
    cognito.admin_add_user_to_group(UserPoolId=pool, Username=email, GroupName="radiology")
    status, error = call(stack, "POST", "/predict", token, scan_payload(6, patient="P-0005"))
    assert (status, error["error"]["code"]) == (403, "access_revoked")
    path = f"/patients/P-0005/scans/{answer['record_id']}"
    assert call(stack, "DELETE", path, token)[0] == 403
    cognito.admin_remove_user_from_group(UserPoolId=pool, Username=email, GroupName="radiology")
    cognito.admin_add_user_to_group(UserPoolId=pool, Username=email, GroupName="oncology")
    cognito.admin_disable_user(UserPoolId=pool, Username=email)
    assert call(stack, "DELETE", path, token)[0] == 403
    cognito.admin_enable_user(UserPoolId=pool, Username=email)
    assert call(stack, "DELETE", path, token) == (204, None)  # back in the team: the author deletes it

    renew = {"AuthFlow": "REFRESH_TOKEN_AUTH", "ClientId": client, "AuthParameters": {"REFRESH_TOKEN": refresh}}
    assert cognito_call(stack, "InitiateAuth", renew)[0] == 200
    assert cognito_call(stack, "RevokeToken", {"Token": refresh, "ClientId": client}) == (200, {})
    status, refused = cognito_call(stack, "InitiateAuth", renew)
    assert status == 400 and refused["__type"].endswith("NotAuthorizedException"), refused


def test_the_sign_in_proxy_forwards_no_administrator_call(stack):
    """moto checks no AWS signature: forwarded, ListUsers (or AdminSetUserPassword) would need no credentials."""
    cognito = aws(stack, "cognito-idp")
    (pool,) = [pool for pool in cognito.list_user_pools(MaxResults=10)["UserPools"] if "lungscan" in pool["Name"]]
    for call_name, body in [("ListUsers", {"UserPoolId": pool["Id"]}), ("AdminGetUser", {"UserPoolId": pool["Id"]})]:
        request = urllib.request.Request(
            stack.base_url + "/cognito-idp/",
            data=json.dumps({**body, "Username": "clinician-a@example.org"}).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"AWSCognitoIdentityProviderService.{call_name}",
            },
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 400
        assert b"example.org" not in answer.value.read()


def raw_exchange(stack, request: bytes) -> bytes:
    """One request written as is on a socket (what urllib would refuse to send), and the whole answer."""
    with socket.create_connection(("127.0.0.1", int(stack.base_url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_requests_http_server_refuses_get_json_and_no_reference_in_the_log(stack):
    huge_token = b"GET /patients HTTP/1.1\r\nHost: x\r\nAuthorization: " + b"a" * 100_000 + b"\r\n\r\n"
    negative_length = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"  # read to EOF: hung
    for request, status in [(huge_token, b"431"), (negative_length, b"400")]:
        head, _, body = raw_exchange(stack, request).partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == status, head
        assert b"application/json" in head and json.loads(body)["error"]["code"] == "bad_request"
    # A request line it cannot parse is answered as HTTP/0.9 would be: the body alone, JSON too.
    bad_line = b"GET /patients/P-LOGGED-9/scans HTTP/1.1 extra\r\nHost: x\r\n\r\n"
    assert json.loads(raw_exchange(stack, bad_line))["error"]["code"] == "bad_request"
    assert "P-LOGGED-9" not in stack.log_path.read_text()
