"""A job as the API shows it (``GET /jobs/{id}``, webhook payloads): one function that every service can import."""

from __future__ import annotations

from app.models import Job
from app.schemas import ErrorRead, JobRead, ProgressRead


def job_read(job: Job) -> JobRead:
    error = ErrorRead(code=job.error_code, message=job.error_message) if job.error_code else None
    progress = {k: v for k, v in (job.progress or {}).items() if k in ProgressRead.model_fields}
    return JobRead(
        id=job.id,
        type=job.type,
        dataset_id=job.dataset_id,
        status=job.status,
        params=job.params or {},
        progress=ProgressRead(**progress),
        metrics={k: v for k, v in (job.metrics or {}).items() if k != "quality"},
        quality=(job.metrics or {}).get("quality"),
        error=error,
        attempt=job.attempt,
        cancel_requested=bool(job.cancel_requested),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        model_id=job.model_id,
    )
