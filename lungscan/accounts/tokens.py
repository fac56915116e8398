"""Check a Cognito ID token the way API Gateway's Cognito authorizer does, and hand on its claims
in the shape that authorizer puts in ``requestContext.authorizer.claims`` (every value a string).

Used by the local stack (which plays API Gateway) and by ``POST /predict``, which takes an optional
token and so cannot sit behind the authorizer.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

# API Gateway's rendering of the time claims, e.g. "Sat Nov 28 14:05:09 UTC 2026".
CLAIM_TIME_FORMAT = "%a %b %d %H:%M:%S UTC %Y"
TIME_CLAIMS = ("exp", "iat", "auth_time")


class InvalidTokenError(Exception):
    """Missing, malformed, tampered, expired, for another client, or not an ID token."""


class CognitoTokenVerifier:
    """RS256 signature against the pool's JWKS, expiry, issuer, audience (the app client) and token_use=id."""

    def __init__(
        self,
        user_pool_id: str,
        client_ids: list[str],
        region: str,
        endpoint: str | None = None,
        *,
        max_age: int | None = None,
    ) -> None:
        """``endpoint``: a local Cognito (moto) instead of ``https://cognito-idp.<region>.amazonaws.com``.
        ``max_age``: refuse a token issued longer ago than this (seconds) whatever its ``exp`` says: the app
        client's ID token validity, for an issuer that ignores it (moto signs hour-long tokens).

        PyJWT and its crypto backend (about 0.3 s to import) load here, with the first token to check:
        the function's init and its anonymous requests never pay for them.
        """
        import jwt

        self.max_age = max_age
        self.issuer = f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"
        base = endpoint.rstrip("/") + f"/{user_pool_id}" if endpoint else self.issuer
        self.client_ids = client_ids
        self.jwks = jwt.PyJWKClient(base + "/.well-known/jwks.json", cache_keys=True, lifespan=3600, timeout=5)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or InvalidTokenError.

        ``token`` is the Authorization header's value: the raw ID token, or the same after "Bearer ",
        which API Gateway's Cognito authorizer also takes (and which Amplify's examples send).
        """
        scheme, _, rest = token.strip().partition(" ")
        if scheme.lower() == "bearer":
            token = rest.strip()
        import jwt  # loaded by __init__

        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.client_ids,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "aud", "iss", "sub", "token_use"]},
            )
        except (jwt.PyJWTError, ValueError) as error:
            raise InvalidTokenError(type(error).__name__) from None
        if claims.get("token_use") != "id":
            raise InvalidTokenError("not an ID token")
        if self.max_age is not None and not (
            isinstance(claims["iat"], int | float) and claims["iat"] + self.max_age > time.time()
        ):
            raise InvalidTokenError("older than the client's token validity")
        return claims

    def authorizer_claims(self, token: str) -> dict[str, str]:
        return as_authorizer_claims(self.verify(token))


def as_authorizer_claims(claims: dict[str, Any]) -> dict[str, str]:
    """Claims as API Gateway's REST Cognito authorizer passes them: strings, groups comma-separated."""
    shown: dict[str, str] = {}
    for name, value in claims.items():
        if name in TIME_CLAIMS and isinstance(value, int | float):
            shown[name] = datetime.fromtimestamp(value, UTC).strftime(CLAIM_TIME_FORMAT)
        elif isinstance(value, list):
            shown[name] = ",".join(str(item) for item in value)
        else:
            shown[name] = str(value)
    return shown
