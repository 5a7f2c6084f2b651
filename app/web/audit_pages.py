"""The review page's audit mode: start an audit, then answer its items one at a time, blind.

The page shows the item's image and asks for its true tag among its candidates (in name order, never the model's
order) or any class of the dataset; it never shows the model's tag, confidence, margin, probabilities or the file
name. Rules live in :mod:`app.services.audits`; an answer is a review decision (``reviews.decide``)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api.deps import SessionDep
from app.errors import ApiError, NotFound
from app.services import audits, review_queue, reviews
from app.web.pages import _render
from app.web.security import CsrfUserDep, UserDep

router = APIRouter(prefix="/ui", include_in_schema=False)


def _page(request: Request, session, user, dataset_id: str, *, errors=(), form=None, last=None, status=200):
    summary = review_queue.dataset_summary(session=session, owner=user.owner, dataset_id=dataset_id)
    progress = audits.progress(session=session, owner=user.owner, dataset_id=dataset_id, limit=1)
    item = progress.next_items[0] if progress and progress.next_items else None
    return _render(
        request,
        "audit.html",
        user,
        status_code=status,
        s=summary,
        dataset=summary.dataset,
        progress=progress,
        item=item,
        choices=sorted(item.candidates) if item else [],
        others=[c for c in summary.dataset.classes if item is None or c not in item.candidates],
        default_size=audits.default_size(summary.items),
        max_size=audits.MAX_SIZE,
        errors=list(errors),
        form=form or {},
        last=last,
    )


@router.get("/datasets/{dataset_id}/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    dataset_id: str,
    user: UserDep,
    session: SessionDep,
    last: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    return _page(request, session, user, dataset_id, last=last)


def _whole(value: str, name: str, errors: list[str]) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        errors.append(f"{name}: a whole number, not {value[:40]!r}")
        return None


def _problems(exc: ApiError) -> list[str]:
    return [e.message for e in exc.errors] or [exc.detail]


@router.post("/datasets/{dataset_id}/audit", response_class=HTMLResponse)
def start_audit(
    request: Request,
    dataset_id: str,
    user: CsrfUserDep,
    session: SessionDep,
    size: Annotated[str, Form(max_length=40)] = "",
    seed: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    errors: list[str] = []
    n, s = _whole(size, "size", errors), _whole(seed, "seed", errors)
    if not errors:
        try:
            audits.start_audit(
                session=session, owner=user.owner, dataset_id=dataset_id, size=n, seed=s, reviewer=user.reviewer
            )
            return RedirectResponse(f"/ui/datasets/{dataset_id}/audit", status_code=303)
        except NotFound:
            raise
        except ApiError as exc:
            session.rollback()
            errors = _problems(exc)
    form = {"size": size, "seed": seed}
    return _page(request, session, user, dataset_id, errors=errors, form=form, status=422)


@router.post("/datasets/{dataset_id}/audit/answer", response_class=HTMLResponse)
def answer(
    request: Request,
    dataset_id: str,
    user: CsrfUserDep,
    session: SessionDep,
    item_id: Annotated[str, Form(max_length=64)],
    label: Annotated[str, Form(max_length=500)],
) -> Response:
    try:
        audits.answer(
            session=session,
            owner=user.owner,
            dataset_id=dataset_id,
            item_id=item_id,
            label=label,
            reviewer=user.reviewer,
        )
    except NotFound:
        raise
    except ApiError as exc:
        session.rollback()
        return _page(request, session, user, dataset_id, errors=_problems(exc), status=exc.status)
    return RedirectResponse(f"/ui/datasets/{dataset_id}/audit?{urlencode({'last': item_id})}", status_code=303)


@router.post("/datasets/{dataset_id}/audit/undo")
def undo(dataset_id: str, user: CsrfUserDep, session: SessionDep, item_id: Annotated[str, Form(max_length=64)]):
    """Undo the answer just given (the item's latest decision): it is asked again."""
    reviews.undo_last(session=session, owner=user.owner, item_id=item_id, reviewer=user.reviewer)
    return RedirectResponse(f"/ui/datasets/{dataset_id}/audit", status_code=303)
