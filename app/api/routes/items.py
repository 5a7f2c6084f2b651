"""Items: read one, its image, and a reviewer's tag."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import OwnerDep, ReviewerDep, SessionDep, SettingsDep, StorageDep
from app.api.openapi import BODY, COMMON, problems
from app.schemas import ItemRead, ItemUpdate
from app.services import items as items_service
from app.services import reviews

router = APIRouter(prefix="/items", tags=["items"], responses=COMMON)

PROBLEMS = problems({404: "no such item (or another owner's)"})


@router.get("/{item_id}", response_model=ItemRead, responses=PROBLEMS)
def get_item(item_id: str, owner: OwnerDep, session: SessionDep, settings: SettingsDep) -> ItemRead:
    """One item with its candidates and current tag."""
    return items_service.read_item(session=session, owner=owner, item_id=item_id, settings=settings)


@router.patch("/{item_id}", response_model=ItemRead, responses={**PROBLEMS, **BODY})
def review_item(
    item_id: str,
    item_in: ItemUpdate,
    owner: OwnerDep,
    reviewer: ReviewerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> ItemRead:
    """A reviewer sets the tag (one of the dataset's classes); the item then counts as certain. The decision is
    recorded in the item's review history with the API key's name."""
    return reviews.review_item(
        session=session, owner=owner, item_id=item_id, item_in=item_in, settings=settings, reviewer=reviewer
    )


@router.get(
    "/{item_id}/image",
    responses={**PROBLEMS, 200: {"description": "the image bytes", "content": {"image/*": {}}}},
    response_class=Response,
)
def get_item_image(item_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    """The stored image, as uploaded."""
    data, media_type, sha = items_service.item_image(session=session, storage=storage, owner=owner, item_id=item_id)
    return Response(
        data,
        media_type=media_type,
        headers={"ETag": f'"{sha}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )
