"""Accounts and history for ``make run``: Cognito and DynamoDB in the local moto server, and API
Gateway's Cognito authorizer played in front of the history routes.

- a user pool whose name contains ``lungscan``, with the administrator-only ``custom:display_name`` that records
  show; its first (and only) app client allows password sign-in and SRP without MFA, so that scripts and tests
  sign in with one call (deployed, the page's client is SRP only and MFA is required: template.yaml); ID and
  access tokens valid for TOKEN_VALIDITY_MINUTES, as deployed (moto signs hour-long tokens whatever the client
  says, so the local authorizer and the function refuse older ones themselves); the care teams as groups, and
  the demo users (DEMO_USERS, listed in docs/accounts.md);
- the history table, keyed as template.yaml declares it;
- ``LocalAuthorizer``: on the routes behind the authorizer (``lungscan.accounts.access``, as the template
  declares them), the raw ID token in ``Authorization`` is checked against the pool's JWKS (signature,
  expiry, audience, token use) and its claims are added to ``requestContext.authorizer.claims``, or the
  request is answered 401 as the template's UNAUTHORIZED gateway response would, before the function runs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from lungscan.accounts.access import checked_by_gateway
from lungscan.accounts.history_store import create_table
from lungscan.accounts.tokens import CognitoTokenVerifier, InvalidTokenError
from lungscan.errors import UnauthorizedError

POOL_NAME = "lungscan-local"
CLIENT_NAME = "lungscan-page"
HISTORY_TABLE = "lungscan-history-local"
DEMO_PASSWORD = "LungScan-demo-2026!"
DEMO_USERS = {
    "clinician-a@example.org": "oncology",
    "clinician-b@example.org": "oncology",
    "clinician-c@example.org": "radiology",
}
# What records show ("by Dr A. Demo"): set by the administrator, never by the clinician (not a write attribute).
DEMO_NAMES = {
    "clinician-a@example.org": "Dr A. Demo",
    "clinician-b@example.org": "Dr B. Demo",
    "clinician-c@example.org": "Dr C. Demo",
}
TOKEN_VALIDITY_MINUTES = 15  # template.yaml's ClinicianPoolClient: IdTokenValidity, AccessTokenValidity
REFRESH_VALIDITY_HOURS = 12
# The attributes a clinician may change with their own access token: none that names them (not the email).
WRITE_ATTRIBUTES = ["zoneinfo"]
# What the page posts Cognito's JSON API to, on the page's own origin (the local stack forwards it to moto).
COGNITO_PROXY_PATH = "/cognito-idp/"
# Only the calls Cognito's public endpoint serves without AWS credentials: moto checks no signature, so a
# forwarded AdminSetUserPassword or AdminAddUserToGroup would let anyone who reaches the page (make run
# --host 0.0.0.0) take over an account or join another care team.
PUBLIC_COGNITO_CALLS = {
    "InitiateAuth",
    "RespondToAuthChallenge",
    "GetUser",
    "GlobalSignOut",
    "RevokeToken",
    "AssociateSoftwareToken",  # a TOTP authenticator's setup, with the sign-in's session
    "VerifySoftwareToken",
}
# template.yaml's UNAUTHORIZED gateway response: the function's own 401 (tests/unit/test_template.py).
UNAUTHORIZED_BODY = {"error": {"code": UnauthorizedError.code, "message": UnauthorizedError().message}}


@dataclass
class LocalAccounts:
    endpoint: str
    region: str
    user_pool_id: str
    client_id: str
    table: str


def create_accounts(endpoint: str, region: str = "us-east-1") -> LocalAccounts:
    """The pool, client, teams and demo users, and the history table, in the moto server at ``endpoint``."""
    import boto3

    cognito = boto3.client("cognito-idp", endpoint_url=endpoint, region_name=region)
    pool = cognito.create_user_pool(
        PoolName=POOL_NAME,
        UsernameAttributes=["email"],
        Policies={"PasswordPolicy": {"MinimumLength": 12, "RequireSymbols": True}},
        AdminCreateUserConfig={"AllowAdminCreateUserOnly": True},
        Schema=[{"Name": "display_name", "AttributeDataType": "String", "Mutable": True}],
        MfaConfiguration="OFF",  # the demo pool: deployed, TOTP is required
    )["UserPool"]["Id"]
    client = cognito.create_user_pool_client(
        UserPoolId=pool,
        ClientName=CLIENT_NAME,
        GenerateSecret=False,  # a browser page cannot keep a secret
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        EnableTokenRevocation=True,
        IdTokenValidity=TOKEN_VALIDITY_MINUTES,
        AccessTokenValidity=TOKEN_VALIDITY_MINUTES,
        RefreshTokenValidity=REFRESH_VALIDITY_HOURS,
        TokenValidityUnits={"IdToken": "minutes", "AccessToken": "minutes", "RefreshToken": "hours"},
        ReadAttributes=["email", "email_verified", "custom:display_name"],
        WriteAttributes=WRITE_ATTRIBUTES,
    )["UserPoolClient"]["ClientId"]
    for team in sorted(set(DEMO_USERS.values())):
        cognito.create_group(UserPoolId=pool, GroupName=team, Description=f"Care team {team}")
    for email, team in DEMO_USERS.items():
        cognito.admin_create_user(
            UserPoolId=pool,
            Username=email,
            UserAttributes=[
                {"Name": "email", "Value": email},
                {"Name": "email_verified", "Value": "true"},
                {"Name": "custom:display_name", "Value": DEMO_NAMES[email]},
            ],
            MessageAction="SUPPRESS",
        )
        cognito.admin_set_user_password(UserPoolId=pool, Username=email, Password=DEMO_PASSWORD, Permanent=True)
        cognito.admin_add_user_to_group(UserPoolId=pool, Username=email, GroupName=team)
    create_table(boto3.client("dynamodb", endpoint_url=endpoint, region_name=region), HISTORY_TABLE)
    return LocalAccounts(endpoint, region, pool, client, HISTORY_TABLE)


def page_config(accounts: LocalAccounts) -> str:
    """What config.js adds locally: where the page signs in (Cognito's JSON API on this origin), as deploy.sh
    writes it, plus ``passwordSignIn``."""
    cognito = {
        "endpoint": COGNITO_PROXY_PATH,
        "clientId": accounts.client_id,
        "region": accounts.region,
        "userPoolId": accounts.user_pool_id,
        # The demo pool's first client takes the password itself (moto checks no SRP proof); deployed, SRP.
        "passwordSignIn": True,
    }
    return f"\nwindow.LUNGSCAN_CONFIG.cognito = {json.dumps(cognito)};\n"


class LocalAuthorizer:
    """API Gateway's Cognito authorizer, for the routes the template puts behind it."""

    def __init__(self, accounts: LocalAccounts) -> None:
        self.verifier = CognitoTokenVerifier(
            accounts.user_pool_id,
            [accounts.client_id],
            accounts.region,
            endpoint=accounts.endpoint,
            max_age=TOKEN_VALIDITY_MINUTES * 60,
        )

    @staticmethod
    def guards(event: dict) -> bool:
        """Whether this request's route is behind the Cognito authorizer."""
        return checked_by_gateway((event["httpMethod"], event["resource"]))

    def authorize(self, event: dict) -> bool:
        """Add the claims to the event and return True, or return False (answer 401, do not invoke)."""
        headers = {key.lower(): value for key, value in (event.get("headers") or {}).items()}
        token = headers.get("authorization", "")
        if not token:
            return False
        try:
            claims = self.verifier.authorizer_claims(token)
        except InvalidTokenError:
            return False
        event["requestContext"]["authorizer"] = {"claims": claims}
        return True


def forward_to_cognito(endpoint: str, body: bytes, target: str) -> tuple[int, bytes]:
    """Pass one call of Cognito's JSON API (InitiateAuth, ...) from the page to the local pool."""
    service, _, call = target.partition(".")
    if service != "AWSCognitoIdentityProviderService" or call not in PUBLIC_COGNITO_CALLS:
        return 400, b'{"__type":"InvalidAction","message":"Only Cognito sign-in calls are forwarded."}'
    if call == "RevokeToken":
        return revoke_token(body)
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def revoke_token(body: bytes) -> tuple[int, bytes]:
    """Cognito's RevokeToken, which moto lacks, played on the pool of this process's moto server: the refresh
    token (and the access tokens issued with it) can no longer be used; a token of another app client is
    refused as Cognito refuses it. Only a ``make run`` process holds the moto server this reaches."""
    from moto.cognitoidp.models import cognitoidp_backends

    try:
        request = json.loads(body)
        token, client_id = str(request["Token"]), str(request["ClientId"])
    except (ValueError, KeyError, TypeError):
        return 400, b'{"__type":"InvalidParameterException","message":"Token and ClientId are required."}'
    for backend in (backend for regions in cognitoidp_backends.values() for backend in regions.values()):
        for pool in backend.user_pools.values():
            issued = pool.refresh_tokens.get(token)
            if issued is None:
                continue
            if issued[0] != client_id:
                return 400, b'{"__type":"UnauthorizedException","message":"Token was not issued to this client."}'
            pool.refresh_tokens[token] = None  # as moto's own sign-out marks a revoked refresh token
            for access, (_, username) in list(pool.access_tokens.items()):
                if username == issued[1]:
                    pool.access_tokens.pop(access)
            return 200, b"{}"
    return 200, b"{}"  # an unknown or already revoked token: Cognito answers success too
