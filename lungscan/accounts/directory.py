"""Whether a signed-in clinician may still act: asked of the Cognito user pool, not of the token.

An ID token says who the clinician was when it was issued, for its whole lifetime (15 minutes): disabling the
account, removing it from its care team or signing it out everywhere changes none of its claims, and API
Gateway's Cognito authorizer goes on accepting it. So the function asks the pool (``AdminGetUser``,
``AdminListGroupsForUser``) whether the account is still enabled and still in exactly the team the token names:
fresh before every write and delete, and from a short cache (``cache_seconds``) before a read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from lungscan.errors import AccessRevokedError, HistoryUnavailableError

logger = logging.getLogger(__name__)
DEFAULT_CACHE_SECONDS = 60.0
MAX_CACHED = 1024  # clinicians remembered per container; past that the cache starts again


class ClinicianDirectory:
    """The pool's current view of a clinician (``boto3.client("cognito-idp")``, admin calls)."""

    def __init__(
        self,
        cognito,
        user_pool_id: str,
        *,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cognito = cognito
        self.user_pool_id = user_pool_id
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cache: dict[str, tuple[float, bool, tuple[str, ...]]] = {}

    def check(self, username: str, team: str, *, fresh: bool) -> None:
        """AccessRevokedError unless ``username`` is enabled and in ``team`` and no other care team now.
        ``fresh``: ask the pool now (writes, deletes); otherwise an answer up to ``cache_seconds`` old will do."""
        enabled, teams = self.standing(username, fresh=fresh)
        if not enabled or teams != (team,):
            raise AccessRevokedError()

    def standing(self, username: str, *, fresh: bool) -> tuple[bool, tuple[str, ...]]:
        """(enabled, care teams) of an account; a deleted account is (False, ())."""
        now = self.clock()
        cached = self._cache.get(username)
        if cached is not None and not fresh and now - cached[0] < self.cache_seconds:
            return cached[1], cached[2]
        enabled, teams = self._ask(username)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[username] = (now, enabled, teams)
        return enabled, teams

    def _ask(self, username: str) -> tuple[bool, tuple[str, ...]]:
        errors = self.cognito.exceptions
        try:
            user = self.cognito.admin_get_user(UserPoolId=self.user_pool_id, Username=username)
            if not user.get("Enabled", False):
                return False, ()
            pages = self.cognito.get_paginator("admin_list_groups_for_user").paginate(
                UserPoolId=self.user_pool_id, Username=username
            )
            teams = tuple(sorted(group["GroupName"] for page in pages for group in page["Groups"]))
        except (errors.UserNotFoundException, errors.NotAuthorizedException):
            return False, ()
        except (BotoCoreError, ClientError) as error:  # throttled, unreachable: never act on a maybe revoked account
            logger.warning("account check failed: %s", type(error).__name__)
            raise HistoryUnavailableError(
                "The account check is unavailable right now: try again in a moment."
            ) from error
        return True, teams
