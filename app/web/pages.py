"""The web app's HTML pages and their form posts (sign in and out, datasets, jobs, review, item history, models).

Handlers parse the request, call one service function and render a template; every POST goes through the CSRF
check (:data:`app.web.security.CsrfUserDep`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select
from starlette.background import BackgroundTask

import vocab
from app.api.deps import SessionDep, SettingsDep, StorageDep
from app.db import get_sessionmaker
from app.errors import ApiError, Conflict, NotFound
from app.job_defaults import AUTO_METHOD, METHOD_DEFAULTS
from app.models import Dataset
from app.schemas import JobCreate
from app.services import datasets as datasets_service
from app.services import items as items_service
from app.services import jobs as jobs_service
from app.services import models as models_service
from app.services import progress, review_queue, reviews, thumbnails, web_sessions
from app.services.audits import default_size
from app.services.review_queue import ReviewFilter
from app.web.fastpath import thumb_items, thumbnail_headers
from app.web.item_pages import safe_back
from app.web.quality import event_text, pct, quality_panel
from app.web.security import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    CsrfUserDep,
    UserDep,
    forget_session,
    new_login_csrf,
    same_origin,
    set_cookie,
)
from vocab import AUTO_METHOD_NAME, LOSS_HELP, PARAMS

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def ordered_candidates(item) -> list[str]:
    """The item's candidates, most probable first when a model scored them (keys 1-9 follow this order)."""
    probs = item.probs or {}
    return sorted(item.candidates, key=lambda c: -probs.get(c, -1.0))


templates.env.globals["ordered_candidates"] = ordered_candidates
templates.env.globals["pct"] = pct
templates.env.globals["event_text"] = event_text

router = APIRouter(prefix="/ui", include_in_schema=False)

#: Items per review page (the grid loads this many thumbnails at once).
REVIEW_PAGE = 200

#: One line per job option, shown beside its field (``vocab``: the parameters' lines; the method's names the method
#: ``auto`` stands for).
JOB_HELP = {
    "method": f"auto: {AUTO_METHOD.replace('_', ' ')} at every dataset size (the best measured on validation).",
    "loss": LOSS_HELP,
    **{name: param.help for name, param in PARAMS.items() if param.help},
}
#: What each method does, in one line (the form shows the chosen one's): ``vocab.METHOD_HELP``.
METHOD_HELP = {AUTO_METHOD_NAME: JOB_HELP["method"], **vocab.METHOD_HELP}
_INT_FIELDS = {name for name, param in PARAMS.items() if param.integer}
_FLOAT_FIELDS = {name for name, param in PARAMS.items() if not param.integer}
#: The form's choices: ``auto`` and the method it stands for first, then the others; "" (the method's default) first,
#: then every loss.
METHODS = [AUTO_METHOD_NAME, AUTO_METHOD, *(m for m in vocab.METHODS if m != AUTO_METHOD)]
LOSSES = ["", *vocab.LOSSES]


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _render(request: Request, name: str, user=None, status_code: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"user": user, "csrf": user.csrf_token if user else None, **context}, status_code=status_code
    )


# --- sign in / out ---------------------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/ui/") and not value.startswith("//") else "/ui/datasets"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: Annotated[str | None, Query(max_length=500)] = None) -> HTMLResponse:
    token = new_login_csrf()
    response = _render(request, "login.html", login_csrf=token, next=_safe_next(next), error=None)
    set_cookie(response, request, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=500)],
    csrf_token: Annotated[str, Form(max_length=200)],
    next: Annotated[str | None, Form(max_length=500)] = None,
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not same_origin(request) or not expected or not web_sessions.csrf_ok(expected, csrf_token):
        return _login_error(request, "The sign-in form expired; please try again.", 403)
    token = web_sessions.sign_in(session=session, api_key=api_key, hours=settings.session_hours)
    if token is None:
        return _login_error(request, "That API key is not valid (or was revoked).", 401)
    response = _redirect(_safe_next(next))
    set_cookie(response, request, SESSION_COOKIE, token, max_age=int(settings.session_hours * 3600))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


def _login_error(request: Request, message: str, status: int) -> HTMLResponse:
    token = new_login_csrf()
    response = _render(request, "login.html", login_csrf=token, next="/ui/datasets", error=message, status_code=status)
    set_cookie(response, request, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/logout")
def logout(request: Request, user: CsrfUserDep, session: SessionDep) -> Response:
    web_sessions.sign_out(session=session, token=request.cookies.get(SESSION_COOKIE))
    forget_session(request.cookies.get(SESSION_COOKIE))
    response = _redirect("/ui/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- datasets --------------------------------------------------------------------------------------------------


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
def home() -> Response:
    return _redirect("/ui/datasets")


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, user: UserDep, session: SessionDep) -> HTMLResponse:
    summaries = review_queue.dataset_summaries(session=session, owner=user.owner)
    return _render(request, "datasets.html", user, summaries=summaries)


@router.get("/datasets/new", response_class=HTMLResponse)
def new_dataset_page(request: Request, user: UserDep) -> HTMLResponse:
    return _render(request, "dataset_new.html", user)


def _dataset_context(session, user, dataset_id: str) -> dict:
    summary = review_queue.dataset_summary(session=session, owner=user.owner, dataset_id=dataset_id)
    report = review_queue.latest_quality(session=session, owner=user.owner, dataset=summary.dataset)
    return {
        "s": summary,
        # the estimate against the reviews so far: the lead wires series= to app.services.refits.quality_series
        "quality": quality_panel(report, audit_size=default_size(summary.items)),
        "jobs": review_queue.dataset_jobs(session=session, owner=user.owner, dataset_id=dataset_id),
        "models": review_queue.dataset_models(session=session, owner=user.owner, dataset_id=dataset_id),
        "methods": METHODS,
        "losses": LOSSES,
        "method_defaults": {"auto": METHOD_DEFAULTS[AUTO_METHOD], **METHOD_DEFAULTS},
        "method_help": METHOD_HELP,
        "help": JOB_HELP,
        "progress": progress.reviewer_days(session=session, owner=user.owner, dataset_id=dataset_id),
    }


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset_id: str, user: UserDep, session: SessionDep) -> HTMLResponse:
    return _render(request, "dataset.html", user, job_errors=[], form={}, **_dataset_context(session, user, dataset_id))


@router.get("/datasets/{dataset_id}/delete", response_class=HTMLResponse)
def delete_dataset_page(request: Request, dataset_id: str, user: UserDep, session: SessionDep) -> HTMLResponse:
    summary = review_queue.dataset_summary(session=session, owner=user.owner, dataset_id=dataset_id)
    return _render(request, "dataset_delete.html", user, s=summary)


@router.post("/datasets/{dataset_id}/delete")
def delete_dataset(dataset_id: str, user: CsrfUserDep, session: SessionDep, storage: StorageDep) -> Response:
    datasets_service.delete_dataset(session=session, storage=storage, owner=user.owner, dataset_id=dataset_id)
    return _redirect("/ui/datasets")


@router.post("/datasets/{dataset_id}/jobs", response_class=HTMLResponse)
async def start_job(request: Request, dataset_id: str, user: CsrfUserDep, settings: SettingsDep) -> Response:
    form = await request.form()
    fields = {k: str(v).strip() for k, v in form.items() if k != "csrf_token" and isinstance(v, str)}
    unknown = sorted(set(fields) - set(JobCreate.model_fields))
    errors = [f"{k}: unknown option" for k in unknown]
    params: dict = {}
    for k, v in fields.items():
        if v == "" or k not in JobCreate.model_fields:
            continue
        try:
            params[k] = int(v) if k in _INT_FIELDS else float(v) if k in _FLOAT_FIELDS else v
        except ValueError:
            errors.append(f"{k}: {'a whole number' if k in _INT_FIELDS else 'a number'}, not {v[:40]!r}")
    job_in = None
    try:
        job_in = JobCreate.model_validate(params)
    except ValidationError as exc:
        errors += [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return await run_in_threadpool(_start_job_sync, request, dataset_id, user, settings, job_in, errors, fields)


def _start_job_sync(request, dataset_id, user, settings, job_in, errors, fields) -> Response:
    session = get_sessionmaker()()
    try:
        if not errors and job_in is not None:
            try:
                job, _ = jobs_service.create_job(
                    session=session,
                    owner=user.owner,
                    dataset_id=dataset_id,
                    job_in=job_in,
                    idempotency_key=None,
                    settings=settings,
                )
                return _redirect(f"/ui/jobs/{job.id}")
            except NotFound:
                raise
            except ApiError as exc:  # the job's input refused: the form shows why
                errors = [e.message for e in exc.errors] or [exc.detail]
        context = _dataset_context(session, user, dataset_id)
        return _render(request, "dataset.html", user, status_code=422, job_errors=errors, form=fields, **context)
    finally:
        session.close()


# --- jobs ------------------------------------------------------------------------------------------------------


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, user: UserDep, session: SessionDep) -> HTMLResponse:
    job = jobs_service.get_job(session=session, owner=user.owner, job_id=job_id)
    events = jobs_service.list_events(session=session, owner=user.owner, job_id=job_id, after=None, limit=1000)
    return _render(
        request,
        "job.html",
        user,
        job=jobs_service.job_read(job),
        events=events.data,
        quality=quality_panel(review_queue.job_quality(job), audit_size=default_size(_dataset_items(session, job))),
    )


def _dataset_items(session, job) -> int:
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    return dataset.item_count if dataset else 0


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, user: CsrfUserDep, session: SessionDep) -> Response:
    with contextlib.suppress(Conflict):  # already finished: the page shows its final state
        jobs_service.cancel_job(session=session, owner=user.owner, job_id=job_id)
    return _redirect(f"/ui/jobs/{job_id}")


# --- review ----------------------------------------------------------------------------------------------------


@router.get("/datasets/{dataset_id}/review", response_class=HTMLResponse)
def review_page(
    request: Request,
    dataset_id: str,
    user: UserDep,
    session: SessionDep,
    needs_review: Annotated[Literal["yes", "no", "all"], Query()] = "yes",
    tag: Annotated[str | None, Query(max_length=200)] = None,
    source: Annotated[Literal["model", "reviewer", "none", ""], Query()] = "",
    model: Annotated[str | None, Query(max_length=64)] = None,
    sort: Annotated[Literal["margin", "confidence"], Query()] = "margin",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    file: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    flt = ReviewFilter(
        file=file.strip() or None,
        needs_review={"yes": True, "no": False, "all": None}[needs_review],
        tag=tag or None,
        source=source or None,
        model_id=model or None,
        sort=sort,
    )
    dataset, items, total = review_queue.review_items(
        session=session,
        owner=user.owner,
        dataset_id=dataset_id,
        flt=flt,
        offset=(page - 1) * REVIEW_PAGE,
        limit=REVIEW_PAGE,
    )
    summary = review_queue.dataset_summary(session=session, owner=user.owner, dataset_id=dataset_id)
    query = {"needs_review": needs_review, "tag": tag or "", "source": source, "model": model or "", "sort": sort}
    query["file"] = file.strip()
    return _render(
        request,
        "review.html",
        user,
        s=summary,
        dataset=dataset,
        items=items,
        total=total,
        page=page,
        pages=max(1, -(-total // REVIEW_PAGE)),
        query=query,
        query_string=lambda p: urlencode({**query, "page": p}),
        back=f"{request.url.path}?{urlencode({**query, 'page': page})}",
        models=review_queue.dataset_models(session=session, owner=user.owner, dataset_id=dataset_id),
    )


@router.get("/items/{item_id}", response_class=HTMLResponse)
def item_page(
    request: Request,
    item_id: str,
    user: UserDep,
    session: SessionDep,
    back: Annotated[str | None, Query(max_length=2000)] = None,
) -> HTMLResponse:
    item = items_service.get_item(session=session, owner=user.owner, item_id=item_id)
    history = reviews.item_history(session=session, owner=user.owner, item_id=item_id)
    can_undo = any(h.action not in reviews.NOT_DECISIONS and not h.undone for h in history)
    back = safe_back(back, item.dataset_id)
    return _render(request, "item.html", user, item=item, history=history, can_undo=can_undo, back=back)


@router.post("/items/{item_id}/undo")
def undo_item(
    item_id: str, user: CsrfUserDep, session: SessionDep, back: Annotated[str | None, Form(max_length=2000)] = None
) -> Response:
    item = reviews.undo_last(session=session, owner=user.owner, item_id=item_id, reviewer=user.reviewer)
    return _redirect(f"/ui/items/{item_id}?{urlencode({'back': safe_back(back, item.dataset_id)})}")


def _item_sha(owner, item_id: str) -> str:
    session = get_sessionmaker()()
    try:
        return items_service.get_item(session=session, owner=owner, item_id=item_id).sha256
    finally:
        session.close()


@router.get("/thumbs/{item_id}/{size}")
async def thumbnail(
    request: Request, item_id: str, size: int, user: UserDep, storage: StorageDep, settings: SettingsDep
) -> Response:
    """The item's image shrunk to ``size`` (one of :data:`thumbnails.SIZES`), cached by the browser for a year.

    Owner-scoped (another owner's item is a 404). The owner check and the resized bytes are remembered in this
    process; once they are, :mod:`app.web.fastpath` answers before routing."""
    if size not in thumbnails.SIZES:
        return Response(status_code=404)
    key = (user.owner.id, item_id)
    sha = thumb_items.get(key)
    if sha is None:
        sha = await run_in_threadpool(_item_sha, user.owner, item_id)
        thumb_items.put(key, sha, settings.lookup_cache_seconds)
    headers = thumbnail_headers(sha, size)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    data = thumbnails.cached(sha, size)
    if data is None:
        data = await run_in_threadpool(thumbnails.thumbnail, storage=storage, sha256=sha, size=size)
    return Response(data, media_type="image/jpeg", headers=headers)


# --- models ----------------------------------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, user: UserDep, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    limit = settings.page_limit_max
    page = models_service.list_models(
        session=session, owner=user.owner, settings=settings, cursor=None, limit=limit, dataset_id=None
    )
    names = dict(session.execute(select(Dataset.id, Dataset.name).where(Dataset.owner_id == user.owner.id)).all())
    return _render(request, "models.html", user, models=list(reversed(page.data)), names=names)  # newest first


@router.get("/models/{model_id}/export")
def export_model(
    model_id: str, user: UserDep, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> FileResponse:
    path = models_service.export_model(
        session=session, storage=storage, owner=user.owner, model_id=model_id, settings=settings
    )
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"tagsift-model-{model_id}.zip",
        background=BackgroundTask(os.unlink, path),
    )
