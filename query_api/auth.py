"""Bearer-key authentication with scopes: the key alone decides the tenant, so a caller can
never name another tenant in a parameter, and its scopes decide what it may call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from query_api.keys import Authenticator, Principal, Scope

_bearer = HTTPBearer(
    auto_error=False, description="an API key (`llm-usage keys create`, or LLM_USAGE_API_KEYS)"
)


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: who is calling, or 401.

    Async, so a known key costs no thread hop; only a lookup in the key store (a cache
    miss) runs in the thread pool.
    """
    if credentials is None or not credentials.credentials:
        raise _unauthorized("missing API key: send Authorization: Bearer <key>")
    authenticator: Authenticator = request.app.state.authenticator
    key = credentials.credentials
    known = authenticator.cached(key)
    found = await run_in_threadpool(authenticator.principal, key) if known is False else known
    if not isinstance(found, Principal):
        raise _unauthorized("invalid or revoked API key")
    return found


def require(scope: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits only keys with ``scope`` (403 names the missing scope)."""

    async def check(caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if scope not in caller.scopes:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"this API key lacks the {scope.value!r} scope",
            )
        return caller

    return check


async def read_tenant(caller: Annotated[Principal, Depends(require(Scope.READ))]) -> str:
    """FastAPI dependency of the dashboard API: the tenant of a key with the read scope."""
    return caller.tenant_id


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": "Bearer"},
    )
