"""Bearer-key authentication: the key alone decides the tenant, so a caller can never name
another tenant in a parameter."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llm_usage.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="an API key from LLM_USAGE_API_KEYS")


def tenant_for_key(settings: Settings, key: str) -> str | None:
    """The tenant of ``key``; every configured key is compared in constant time."""
    found = None
    for candidate, tenant in settings.api_key_tenants.items():
        if hmac.compare_digest(candidate.encode(), key.encode()):
            found = tenant
    return found


def current_tenant(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> str:
    """FastAPI dependency: the caller's tenant, or 401."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized("missing API key: send Authorization: Bearer <key>")
    tenant = tenant_for_key(request.app.state.settings, credentials.credentials)
    if tenant is None:
        raise _unauthorized("invalid API key")
    return tenant


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": "Bearer"},
    )
