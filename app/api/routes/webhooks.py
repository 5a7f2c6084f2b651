"""Webhooks: register, list, read, delete, and each hook's delivery log (docs/integrations.md, "Webhooks")."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.openapi import BODY, COMMON, problems
from app.api.paging import CursorQuery, LimitQuery, page_limit
from app.schemas import WebhookCreate, WebhookCreated, WebhookDeliveryList, WebhookList, WebhookRead
from app.services import webhooks as webhooks_service

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=COMMON)

NOT_FOUND = problems({404: "no such webhook (or another owner's)"})

#: ``cursor`` of a delivery log: the position of the page's last delivery (below 10^18, inside 64 bits); the next
#: page holds the older ones. Any such number is a valid cursor.
DeliveryCursorQuery = Annotated[
    str | None,
    Query(
        max_length=18,
        pattern=r"^(?:0|[1-9][0-9]{0,17})$",
        description="`next_cursor` of the previous page: the position of its last (oldest) delivery.",
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses={
        **BODY,
        201: {
            "description": "the hook, with its signing secret (shown this once)",
            "headers": {"Location": {"description": "`/webhooks/{id}`", "schema": {"type": "string"}}},
        },
        **problems(
            {
                422: "a bad field; a URL whose host is not allowed or resolves to a private, loopback or link-local"
                " address is refused naming `url`",
            }
        ),
    },
)
def create_webhook(
    hook_in: WebhookCreate, response: Response, owner: OwnerDep, session: SessionDep, settings: SettingsDep
) -> WebhookCreated:
    """Register a URL for job events (`job.queued`, `job.started`, `job.succeeded`, `job.failed`, `job.cancelled`)
    and review events (`item.reviewed`). Each delivery is a signed POST, retried with backoff."""
    hook = webhooks_service.create_webhook(session=session, owner=owner, hook_in=hook_in, settings=settings)
    response.headers["Location"] = f"/webhooks/{hook.id}"
    return hook


@router.get("", response_model=WebhookList)
def list_webhooks(
    owner: OwnerDep, session: SessionDep, settings: SettingsDep, cursor: CursorQuery = None, limit: LimitQuery = None
) -> WebhookList:
    """A page of the owner's webhooks, oldest first, with the `total` and the `next_cursor`."""
    return webhooks_service.list_webhooks(
        session=session, owner=owner, cursor=cursor, limit=page_limit(limit, settings)
    )


@router.get("/{webhook_id}", response_model=WebhookRead, responses=NOT_FOUND)
def get_webhook(webhook_id: str, owner: OwnerDep, session: SessionDep) -> WebhookRead:
    """One webhook (its secret is never shown again)."""
    return webhooks_service.read_webhook(session=session, owner=owner, webhook_id=webhook_id)


@router.delete("/{webhook_id}", status_code=204, responses=NOT_FOUND)
def delete_webhook(webhook_id: str, owner: OwnerDep, session: SessionDep) -> Response:
    """Delete the webhook and its delivery log; deliveries still pending are not sent."""
    webhooks_service.delete_webhook(session=session, owner=owner, webhook_id=webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryList, responses=NOT_FOUND)
def list_deliveries(
    webhook_id: str,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query(description="Only these.")] = None,
    cursor: DeliveryCursorQuery = None,
    limit: LimitQuery = None,
) -> WebhookDeliveryList:
    """The delivery log, newest first: each delivery's status, attempts (status code, error, duration) and body."""
    return webhooks_service.list_deliveries(
        session=session,
        owner=owner,
        webhook_id=webhook_id,
        status=status,
        cursor=int(cursor) if cursor is not None else None,
        limit=page_limit(limit, settings),
    )
