"""``/v1/keys``: a tenant's admin manages its own API keys (the ``admin`` scope).

The same store as ``llm-usage keys``; a key can only see, create and revoke keys of its own
tenant, and another tenant's key id answers 404 as an unknown one does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from query_api.auth import require
from query_api.keys import ApiKey, KeyStore, Principal, Scope
from query_api.schemas import ErrorBody

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    responses={
        401: {"model": ErrorBody, "description": "missing or invalid API key"},
        403: {"model": ErrorBody, "description": "the key lacks the admin scope"},
        422: {"model": ErrorBody, "description": "invalid body or parameters"},
        503: {"model": ErrorBody, "description": "ClickHouse unavailable"},
    },
)
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]


class KeyInfo(BaseModel):
    key_id: str
    scopes: list[Scope]
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyInfo:
        return cls(
            key_id=key.key_id,
            scopes=sorted(key.scopes),
            name=key.name,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class KeyList(BaseModel):
    items: list[KeyInfo]


class NewKey(BaseModel):
    scopes: list[Scope] = Field(min_length=1, description="read, ingest and/or admin")
    name: str = Field("", max_length=200, description="what the key is for")


class CreatedKey(KeyInfo):
    key: str = Field(description="the key itself: shown only in this answer, stored hashed")


def _store(request: Request) -> KeyStore:
    store: KeyStore = request.app.state.authenticator.store
    return store


@router.get("", response_model=KeyList)
def list_keys(request: Request, caller: Admin) -> KeyList:
    """The tenant's keys, revoked ones included (never the keys themselves)."""
    return KeyList(items=[KeyInfo.of(k) for k in _store(request).list(caller.tenant_id)])


NEW_KEY_SCHEMA = {  # NewKey, inline: the body is parsed after authentication (see below)
    "type": "object",
    "required": ["scopes"],
    "properties": {
        "scopes": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "enum": [s.value for s in Scope]},
        },
        "name": {"type": "string", "maxLength": 200},
    },
}


@router.post(
    "",
    response_model=CreatedKey,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": NEW_KEY_SCHEMA}},
        }
    },
)
async def create_key(request: Request, caller: Admin) -> CreatedKey:
    """A new key of the caller's tenant.

    The body is read by hand, after the key was checked: a body parameter would be parsed
    (and a broken one answered 422) before authentication, to a caller without a key.
    """
    try:
        body = NewKey.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    store = _store(request)
    key, plain = await run_in_threadpool(
        store.create, caller.tenant_id, frozenset(body.scopes), body.name
    )
    return CreatedKey(**KeyInfo.of(key).model_dump(), key=plain)


@router.delete("/{key_id}", response_model=KeyInfo, responses={404: {"model": ErrorBody}})
def revoke_key(
    request: Request,
    caller: Admin,
    key_id: Annotated[str, Path(max_length=64, description="a key id from GET /v1/keys")],
) -> KeyInfo:
    """Revoke one of the tenant's keys (idempotent)."""
    store = _store(request)
    owned = {k.key_id for k in store.list(caller.tenant_id)}
    revoked = store.revoke(key_id) if key_id in owned else None
    if revoked is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no key {key_id!r} in this tenant")
    return KeyInfo.of(revoked)
