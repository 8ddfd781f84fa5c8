"""``/v1/budgets``, ``/v1/alerts`` and ``/v1/webhooks``: a tenant's budgets with their spend,
the alerts the alerter raised, and where they are delivered.

The key decides the tenant: another tenant's budget or webhook id answers 404 like an
unknown one. Reading budgets and alerts needs the ``read`` scope (the dashboard shows them);
changing budgets and webhooks needs ``admin``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from producers.contract import ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE
from query_api.auth import read_tenant, require
from query_api.keys import Principal, Scope
from query_api.schemas import ErrorBody, iso, money
from query_api.window import MAX_MS, WindowError, parse_zone, to_ms
from stream_processor.alerts.budgets import (
    DEFAULT_THRESHOLDS,
    Budget,
    Period,
    crossed,
    spend_of,
)
from stream_processor.alerts.store import Alert, AlertStore, Webhook, new_id
from stream_processor.alerts.webhooks import SIGNATURE_HEADER

router = APIRouter(
    prefix="/v1",
    tags=["budgets and alerts"],
    responses={
        401: {"model": ErrorBody, "description": "missing or invalid API key"},
        403: {"model": ErrorBody, "description": "the key lacks the scope"},
        422: {"model": ErrorBody, "description": "invalid body or parameters"},
        503: {"model": ErrorBody, "description": "ClickHouse unavailable"},
    },
)
BodyT = TypeVar("BodyT", bound=BaseModel)
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
Reader = Annotated[str, Depends(read_tenant)]
Id = Annotated[str, Path(max_length=64, pattern=r"^[0-9a-f]{1,64}$")]


def _store(request: Request) -> AlertStore:
    store: AlertStore = request.app.state.alert_store
    return store


def _now(request: Request) -> datetime:
    return datetime.fromtimestamp(request.app.state.clock(), UTC)


async def _body(request: Request, model: type[BodyT]) -> BodyT:
    """The JSON body, parsed after authentication (a body parameter would be validated
    first, answering a caller without a key with a 422)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


# --- budgets ---------------------------------------------------------------------------
class BudgetIn(BaseModel):
    name: str = Field("", max_length=200, description="what the budget is for")
    source: Literal["chat", "agent", "memory"] | None = Field(
        None, description="only this source (none: the whole tenant)"
    )
    source_id: str | None = Field(
        None, min_length=1, max_length=200, description="one conversation or agent"
    )
    period: Period = Field(description="day or month (calendar, in time_zone), rolling_24h")
    time_zone: str = Field("UTC", description="IANA zone of calendar periods")
    limit_usd: Decimal = Field(gt=0, le=Decimal("1e12"), decimal_places=12)
    thresholds: list[int] = Field(
        default_factory=lambda: list(DEFAULT_THRESHOLDS),
        min_length=1,
        max_length=10,
        description="warning thresholds, percent of the limit",
    )
    hard: bool = Field(False, description="producers with budget_guard refuse calls at 100%")
    attr_key: str | None = Field(
        None,
        max_length=64,
        description="with attr_value: only the calls whose attribute attr_key has that value"
        " (attr.<key>=<value> of the usage endpoints), e.g. user",
    )
    attr_value: str | None = Field(
        None, min_length=1, max_length=MAX_ATTRIBUTE_VALUE, description="e.g. the user's id"
    )

    @field_validator("attr_key")
    @classmethod
    def _attribute_key(cls, value: str | None) -> str | None:
        if value is not None and not ATTRIBUTE_KEY.fullmatch(value):
            raise ValueError(
                f"{value!r} is no attribute key: lower-case letters, digits, '_' and '.',"
                " starting with a letter, at most 64 characters"
            )
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            parse_zone(value)
        except WindowError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: list[int]) -> list[int]:
        if any(not 1 <= t <= 1000 for t in value):
            raise ValueError("each threshold is a percentage between 1 and 1000")
        return sorted(set(value))

    @model_validator(mode="after")
    def _entity_needs_source(self) -> BudgetIn:
        if self.source_id and not self.source:
            raise ValueError("source_id needs source (chat, agent or memory)")
        if (self.attr_key is None) != (self.attr_value is None):
            raise ValueError("attr_key and attr_value go together (attr.<key>=<value>)")
        if self.attr_key and self.source_id:
            raise ValueError(
                "an attribute budget covers one value of a key (of one source at most),"
                " not one conversation or agent: leave out source_id"
            )
        if self.attr_key and self.hard:
            raise ValueError(
                "an attribute budget cannot be hard: budget_guard knows a call's source and"
                " entity, not its attributes (the budget still alerts)"
            )
        return self


class SpendBody(BaseModel):
    period_start: str
    period_end: str
    cost_usd: str = Field(description="equal to /v1/usage/summary for the period and filter")
    calls: int
    percent: float
    crossed: list[int] = Field(description="thresholds reached in this period")


class BudgetOut(BaseModel):
    budget_id: str
    name: str
    scope: Literal["tenant", "source", "entity", "attribute"]
    source: str | None
    source_id: str | None
    attr_key: str | None = Field(description="attribute budgets: the key, e.g. user")
    attr_value: str | None = Field(description="attribute budgets: the value covered")
    period: Period
    time_zone: str
    limit_usd: str
    thresholds: list[int]
    hard: bool
    created_at: str
    updated_at: str
    spend: SpendBody

    @classmethod
    def of(cls, budget: Budget, request: Request) -> BudgetOut:
        spend = spend_of(request.app.state.repository, budget, _now(request))
        return cls(
            budget_id=budget.budget_id,
            name=budget.name,
            scope=budget.scope,  # type: ignore[arg-type]
            source=budget.source or None,
            source_id=budget.source_id or None,
            attr_key=budget.attr_key or None,
            attr_value=budget.attr_value if budget.attr_key else None,
            period=budget.period,
            time_zone=budget.time_zone,
            limit_usd=money(budget.limit_usd),
            thresholds=list(budget.thresholds),
            hard=budget.hard,
            created_at=iso(budget.created_at),
            updated_at=iso(budget.updated_at),
            spend=SpendBody(
                period_start=iso(spend.start),
                period_end=iso(spend.end),
                cost_usd=money(spend.cost_usd),
                calls=spend.calls,
                percent=round(spend.percent(budget.limit_usd), 2),
                crossed=crossed(budget.thresholds, budget.limit_usd, spend.cost_usd),
            ),
        )


class BudgetList(BaseModel):
    items: list[BudgetOut]


def _budget(
    body: BudgetIn, tenant: str, budget_id: str, created: datetime, now: datetime
) -> Budget:
    return Budget(
        tenant_id=tenant,
        budget_id=budget_id,
        name=body.name,
        source=body.source or "",
        source_id=body.source_id or "",
        period=body.period,
        time_zone=body.time_zone,
        limit_usd=body.limit_usd,
        thresholds=tuple(body.thresholds),
        hard=body.hard,
        created_at=created,
        updated_at=now,
        attr_key=body.attr_key or "",
        attr_value=body.attr_value or "",
    )


def _owned(request: Request, tenant: str, budget_id: str) -> Budget:
    found = _store(request).budget(tenant, budget_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no budget {budget_id!r} in this tenant")
    return found


BUDGET_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": BudgetIn.model_json_schema()}},
    }
}


@router.get("/budgets", response_model=BudgetList)
def list_budgets(request: Request, tenant: Reader) -> BudgetList:
    """The tenant's budgets, each with its spend in the current period."""
    return BudgetList(items=[BudgetOut.of(b, request) for b in _store(request).budgets(tenant)])


@router.post("/budgets", response_model=BudgetOut, status_code=201, openapi_extra=BUDGET_BODY)
async def create_budget(request: Request, caller: Admin) -> BudgetOut:
    """A new budget of the caller's tenant (the admin scope)."""
    body = await _body(request, BudgetIn)
    now = _now(request)
    budget = _budget(body, caller.tenant_id, new_id(), now, now)
    await run_in_threadpool(_store(request).put_budget, budget)
    return await run_in_threadpool(BudgetOut.of, budget, request)


@router.get("/budgets/{budget_id}", response_model=BudgetOut, responses={404: {"model": ErrorBody}})
def get_budget(request: Request, tenant: Reader, budget_id: Id) -> BudgetOut:
    return BudgetOut.of(_owned(request, tenant, budget_id), request)


@router.put(
    "/budgets/{budget_id}",
    response_model=BudgetOut,
    openapi_extra=BUDGET_BODY,
    responses={404: {"model": ErrorBody}},
)
async def replace_budget(request: Request, caller: Admin, budget_id: Id) -> BudgetOut:
    """Change a budget (the whole body, as on creation)."""
    old = await run_in_threadpool(_owned, request, caller.tenant_id, budget_id)
    body = await _body(request, BudgetIn)
    budget = _budget(body, caller.tenant_id, budget_id, old.created_at, _now(request))
    await run_in_threadpool(_store(request).put_budget, budget)
    return await run_in_threadpool(BudgetOut.of, budget, request)


@router.delete("/budgets/{budget_id}", status_code=204, responses={404: {"model": ErrorBody}})
def delete_budget(request: Request, caller: Admin, budget_id: Id) -> None:
    budget = _owned(request, caller.tenant_id, budget_id)
    _store(request).put_budget(budget, deleted=True)


# --- alerts ------------------------------------------------------------------------------
class AlertOut(BaseModel):
    alert_id: str
    kind: Literal["spike_started", "spike_ended", "budget_threshold"]
    scope: Literal["tenant", "source", "entity", "attribute"]
    source: str | None
    source_id: str | None
    attr_key: str | None = Field(description="scope attribute: the key (user, customer, ...)")
    attr_value: str | None = Field(description="scope attribute: the value it is about")
    name: str = Field(description="entity or budget name (a value's spike: key=value)")
    budget_id: str | None
    threshold_pct: int | None
    window_start: str
    window_end: str
    observed_cost_usd: str
    observed_calls: int
    baseline_cost_usd: str = Field(description="median cost of a normal hour, or the limit")
    baseline_calls: float
    message: str
    raised_at: str
    cleared_at: str | None

    @classmethod
    def of(cls, alert: Alert) -> AlertOut:
        return cls(
            alert_id=alert.alert_id,
            kind=alert.kind,  # type: ignore[arg-type]
            scope=alert.scope,  # type: ignore[arg-type]
            source=alert.source or None,
            source_id=alert.source_id or None,
            attr_key=alert.attr_key or None,
            attr_value=alert.attr_value if alert.attr_key else None,
            name=alert.source_name
            or (f"{alert.attr_key}={alert.attr_value}" if alert.attr_key else ""),
            budget_id=alert.budget_id or None,
            threshold_pct=alert.threshold_pct or None,
            window_start=iso(alert.window_start),
            window_end=iso(alert.window_end),
            observed_cost_usd=money(alert.observed_cost_usd),
            observed_calls=alert.observed_calls,
            baseline_cost_usd=money(alert.baseline_cost_usd),
            baseline_calls=alert.baseline_calls,
            message=alert.message,
            raised_at=iso(alert.raised_at),
            cleared_at=iso(alert.cleared_at) if alert.cleared_at else None,
        )


class AlertList(BaseModel):
    items: list[AlertOut]


@router.get("/alerts", response_model=AlertList)
def list_alerts(
    request: Request,
    tenant: Reader,
    start: Annotated[
        datetime | None, Query(alias="from", description="windows ending after")
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="windows starting before")
    ] = None,
    kind: Annotated[
        Literal["spike_started", "spike_ended", "budget_threshold"] | None, Query()
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AlertList:
    """The tenant's alerts whose window overlaps [from, to), newest first."""
    start, end = _aware(start), _aware(end)
    for moment in (start, end):
        if moment is not None and not 0 <= to_ms(moment) < MAX_MS:
            raise HTTPException(422, "from/to must lie between 1970-01-01 and 2100-01-01")
    if start and end and start >= end:
        raise HTTPException(422, "from must be before to")
    found = _store(request).alerts(
        tenant, start=_aware(start), end=_aware(end), kind=kind, limit=limit
    )
    return AlertList(items=[AlertOut.of(a) for a in found])


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# --- webhooks ---------------------------------------------------------------------------
class WebhookIn(BaseModel):
    url: str = Field(max_length=2000, pattern=r"^https?://[^\s]+$", description="POST target")


class WebhookOut(BaseModel):
    webhook_id: str
    url: str
    created_at: str


class CreatedWebhook(WebhookOut):
    secret: str = Field(description=f"HMAC-SHA256 key of the {SIGNATURE_HEADER} header")


class WebhookList(BaseModel):
    items: list[WebhookOut]


WEBHOOK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": WebhookIn.model_json_schema()}},
    }
}


@router.get("/webhooks", response_model=WebhookList)
def list_webhooks(request: Request, caller: Admin) -> WebhookList:
    hooks = _store(request).webhooks(caller.tenant_id)
    return WebhookList(
        items=[
            WebhookOut(webhook_id=h.webhook_id, url=h.url, created_at=iso(h.created_at))
            for h in hooks
        ]
    )


@router.post(
    "/webhooks", response_model=CreatedWebhook, status_code=201, openapi_extra=WEBHOOK_BODY
)
async def create_webhook(request: Request, caller: Admin) -> CreatedWebhook:
    """A webhook for the tenant's alerts; its signing secret is shown in this answer only."""
    body = await _body(request, WebhookIn)
    hook = Webhook(caller.tenant_id, new_id(), body.url, new_id() + new_id(), _now(request))
    await run_in_threadpool(_store(request).put_webhook, hook)
    return CreatedWebhook(
        webhook_id=hook.webhook_id,
        url=hook.url,
        created_at=iso(hook.created_at),
        secret=hook.secret,
    )


@router.delete("/webhooks/{webhook_id}", status_code=204, responses={404: {"model": ErrorBody}})
def delete_webhook(request: Request, caller: Admin, webhook_id: Id) -> None:
    store = _store(request)
    found = [h for h in store.webhooks(caller.tenant_id) if h.webhook_id == webhook_id]
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook {webhook_id!r} in this tenant")
    store.put_webhook(found[0], deleted=True)
