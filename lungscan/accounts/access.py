"""Who may call what: every route of the API and the ID token it needs, decided here and nowhere else.

Read by the function (``functions/classifier``: who is asking, and the ``security`` of each operation in
``/openapi.json``) and by the local stack (``infrastructure.emulation``: the routes, and those its stand-in
for API Gateway's Cognito authorizer guards); ``template.yaml`` declares the same authorizer on the same
routes (tests/unit/test_template.py holds it to this table).

A route is API Gateway's ``(method, resource)``: ``("GET", "/patients/{ref}/scans")``. Standard library only.
"""

from __future__ import annotations

import re
from enum import Enum

# The security scheme of the ID token (the Authorization header), named as template.yaml names it.
TOKEN_SCHEME = "CognitoIdToken"

Route = tuple[str, str]


class Access(Enum):
    OPEN = "open"  # anyone (with the API key, on a stage that requires one)
    SIGNED_IN = "signed_in"  # a valid ID token, checked by API Gateway's Cognito authorizer before the function runs
    # Anyone; a valid ID token only to store the result for a patient, checked by the function itself
    # (the authorizer would refuse the anonymous calls).
    TOKEN_TO_STORE = "token_to_store"
    # Anyone (an anonymous study is reached by its unguessable id alone); a token, when sent, is checked by the
    # function and makes the study its care team's (another team's study is then not found); needed for a patient.
    TOKEN_IF_SENT = "token_if_sent"


ROUTES: dict[Route, Access] = {
    ("POST", "/predict"): Access.TOKEN_TO_STORE,
    ("GET", "/model"): Access.OPEN,
    ("GET", "/health"): Access.OPEN,
    ("GET", "/openapi.json"): Access.OPEN,
    ("GET", "/patients"): Access.SIGNED_IN,
    ("GET", "/patients/{ref}/scans"): Access.SIGNED_IN,
    ("GET", "/patients/{ref}/scans/{record_id}/heatmap"): Access.SIGNED_IN,
    ("DELETE", "/patients/{ref}/scans/{record_id}"): Access.SIGNED_IN,
    ("POST", "/studies"): Access.TOKEN_IF_SENT,
    ("POST", "/studies/{study_id}/start"): Access.TOKEN_IF_SENT,
    ("GET", "/studies/{study_id}"): Access.TOKEN_IF_SENT,
    ("GET", "/studies/{study_id}/dicom"): Access.TOKEN_IF_SENT,
}

# The routes behind the Cognito authorizer.
AUTHORIZED_ROUTES = frozenset(route for route, access in ROUTES.items() if access is Access.SIGNED_IN)


def _resource_pattern(resource: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(resource)))


_RESOURCE_PATTERNS = {resource: _resource_pattern(resource) for _, resource in ROUTES}


def declared_methods(path: str) -> list[str]:
    """The methods the API declares on a request path's resource (``/patients/P-1/scans``: ``["GET"]``); none
    for a path that is no resource. Another method there is a 405 with these in ``Allow``, not a 404."""
    resources = {resource for resource, pattern in _RESOURCE_PATTERNS.items() if pattern.fullmatch(path)}
    return sorted(method for method, resource in ROUTES if resource in resources)


def needs_token(route: Route, *, patient: str | None = None, token_sent: bool = False) -> bool:
    """Whether a request must carry a valid ID token: always behind the authorizer; on ``POST /predict`` only
    when it names a ``patient`` (anonymous use stores nothing); on the studies routes also whenever one is sent.
    A route missing from the table: always."""
    access = ROUTES.get(route, Access.SIGNED_IN)
    if access is Access.TOKEN_IF_SENT:
        return token_sent or patient is not None
    return access is Access.SIGNED_IN or (access is Access.TOKEN_TO_STORE and patient is not None)


def checked_by_gateway(route: Route) -> bool:
    """Whether API Gateway's Cognito authorizer checks the token before the function runs (and hands on its
    claims); elsewhere a token the route needs is the function's to check."""
    return route in AUTHORIZED_ROUTES


def openapi_security(route: Route) -> list[dict[str, list[str]]] | None:
    """The operation's OpenAPI ``security``: the token required, optional (``{}`` first), or none at all."""
    access = ROUTES[route]
    if access is Access.SIGNED_IN:
        return [{TOKEN_SCHEME: []}]
    if access in (Access.TOKEN_TO_STORE, Access.TOKEN_IF_SENT):
        return [{}, {TOKEN_SCHEME: []}]
    return None
