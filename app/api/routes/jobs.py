"""Training jobs: create (202 + Location, Idempotency-Key), read, events, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app import job_defaults, logs
from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.openapi import BODY, COMMON, problems
from app.api.paging import CursorQuery, LimitQuery, page_limit
from app.schemas import JobCreate, JobEventList, JobList, JobRead, JobStatus
from app.services import jobs as jobs_service

router = APIRouter(tags=["jobs"], responses=COMMON)

#: An Idempotency-Key: visible ASCII, spaces only inside (a header's ends are trimmed on the way anyway).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$"

#: Event ids are 64-bit signed integers in the database: a larger `after` is a 422, not a 500 from the driver.
MAX_EVENT_ID = 2**63 - 1

NOT_FOUND = problems({404: "no such job / dataset (or another owner's)"})
CREATED = {
    202: {
        "description": "the job (queued, or the earlier one for a replayed Idempotency-Key)",
        "headers": {
            "Location": {"description": "`/jobs/{id}`", "required": True, "schema": {"type": "string"}},
            "Idempotent-Replayed": {
                "description": "`true` when an earlier request with this Idempotency-Key made the job",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
    }
}


@router.post(
    "/datasets/{dataset_id}/jobs",
    status_code=202,
    description="Start a training job on the dataset. " + job_defaults.describe_defaults(),
    response_model=JobRead,
    responses={
        **CREATED,
        **NOT_FOUND,
        **BODY,
        **problems(
            {
                409: "the dataset has no items or fewer than 2 classes",
                422: "invalid parameters (each named in `errors`), or an Idempotency-Key reused with another body",
            }
        ),
    },
)
def create_job(
    dataset_id: str,
    response: Response,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    job_in: JobCreate | None = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Same key + same body: the same job. 1 to 200 visible ASCII characters (spaces inside).",
        ),
    ] = None,
) -> JobRead:
    """Start a training job on the dataset (its defaults: ``app.job_defaults``)."""
    job, replayed = jobs_service.create_job(
        session=session,
        owner=owner,
        dataset_id=dataset_id,
        job_in=job_in or JobCreate(),
        idempotency_key=idempotency_key,
        settings=settings,
        request_id=logs.request_id.get(),
    )
    response.headers["Location"] = f"/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job


@router.get("/jobs", response_model=JobList, responses=problems({404: "no such dataset (or another owner's)"}))
def list_jobs(
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = None,
    dataset_id: Annotated[str | None, Query(max_length=64, description="Only the jobs of this dataset.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only the jobs in this status.")] = None,
) -> JobList:
    """A page of the owner's jobs, oldest first, with the `total` and the `next_cursor`."""
    return jobs_service.list_jobs(
        session=session,
        owner=owner,
        cursor=cursor,
        limit=page_limit(limit, settings),
        dataset_id=dataset_id,
        status=status,
    )


@router.get("/jobs/{job_id}", response_model=JobRead, responses=NOT_FOUND)
def get_job(job_id: str, owner: OwnerDep, session: SessionDep) -> JobRead:
    """A job's status, progress, metrics, error and model."""
    return jobs_service.read_job(session=session, owner=owner, job_id=job_id)


@router.get("/jobs/{job_id}/events", response_model=JobEventList, responses=NOT_FOUND)
def list_job_events(
    job_id: str,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="Only events with an id above this (`next_after`).")
    ] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> JobEventList:
    """Stage changes and per-epoch metrics, oldest first."""
    limit = min(limit or settings.page_limit_default, settings.page_limit_max)
    return jobs_service.list_events(session=session, owner=owner, job_id=job_id, after=after, limit=limit)


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=JobRead,
    responses={**NOT_FOUND, **problems({409: "the job already finished"})},
)
def cancel_job(job_id: str, owner: OwnerDep, session: SessionDep) -> JobRead:
    """Cancel: a queued job at once, a running one at the worker's next step; 409 if already finished."""
    return jobs_service.cancel_job(session=session, owner=owner, job_id=job_id)
