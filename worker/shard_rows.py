"""The rows of a job's encoding shards (``app.models.EncodeShard``): plan, claim, renew, finish, give back, forget.

The same rules as a job's (``worker.leases``), one conditional ``UPDATE`` each, leases on the database's clock
(``app.dbclock.db_now``), so any number of workers on any number of hosts agree without locks held across a run:

* **plan** (:func:`write_plan`): the job's runner, fenced on its job lease, replaces the rows of earlier attempts
  with this attempt's (the images whose features the store's cache does not have yet);
* **claim** (:func:`claim_shard`): ``pending``, or ``running`` with an expired lease (its worker died), becomes
  ``running`` for this runner with a fresh lease; only for a worker of the shard's backbone, only while the job is
  ``running`` that attempt and no cancel was asked; a helper leaves a shard claimed :data:`MAX_HELPER_RUNS` times
  (the job's own run still takes it, and an error then fails the job as it would on one worker);
* **renew** / **finish** / **give back**: fenced on the shard's ``lease_owner``: a runner that lost its shard to
  another can neither renew nor finish it.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import and_, delete, or_, select, update

from app.db import session_scope
from app.dbclock import db_now
from app.models import EncodeShard, Job
from vocab import JobStatus

#: A helper leaves a shard that has been claimed this many times (its images may kill the workers that take it).
MAX_HELPER_RUNS = 3


@dataclasses.dataclass(frozen=True)
class Shard:
    id: str
    job_id: str
    attempt: int
    seq: int
    backbone_id: str
    views: int
    seed: int
    shas: list[str]
    runs: int


@dataclasses.dataclass(frozen=True)
class ShardState:
    """Where the shards of one attempt stand."""

    shards: int
    done: int
    done_images: int
    images: int
    retaken: int  # shards claimed more than once
    encoded_by: dict[str, int]  # runner -> shards it finished


def _fields(row: EncodeShard) -> Shard:
    return Shard(
        row.id, row.job_id, row.attempt, row.seq, row.backbone_id, row.views, row.seed, list(row.shas), row.runs
    )


def write_plan(
    session, job_id: str, attempt: int, backbone_id: str, seed: int, shards: list[tuple[int, list[str]]]
) -> None:
    """Replace the job's shard rows with ``shards`` ((views, shas) each) for ``attempt``, in the caller's
    transaction (the caller fences it on the job's lease)."""
    session.execute(delete(EncodeShard).where(EncodeShard.job_id == job_id))
    for seq, (views, shas) in enumerate(shards):
        session.add(
            EncodeShard(
                job_id=job_id,
                attempt=attempt,
                seq=seq,
                backbone_id=backbone_id,
                views=views,
                seed=seed,
                shas=list(shas),
                images=len(shas),
                status="pending",
                runs=0,
            )
        )


def claim_shard(job_id: str, *, runner: str, lease_seconds: float, backbone_id: str, helper: bool) -> Shard | None:
    """Claim the first claimable shard of ``job_id`` for ``runner`` (see the module docstring); None when none is."""
    now = db_now()
    claimable = and_(
        EncodeShard.job_id == job_id,
        EncodeShard.backbone_id == backbone_id,
        or_(
            EncodeShard.status == "pending",
            and_(EncodeShard.status == "running", EncodeShard.lease_expires_at < now),
        ),
    )
    if helper:
        claimable = and_(claimable, EncodeShard.runs < MAX_HELPER_RUNS)
    with session_scope() as session:
        job = session.execute(
            select(Job.status, Job.attempt, Job.cancel_requested).where(Job.id == job_id)
        ).one_or_none()
        if job is None or job.status != JobStatus.RUNNING or job.cancel_requested:
            return None
        candidates = session.scalars(
            select(EncodeShard.id).where(claimable, EncodeShard.attempt == job.attempt).order_by(EncodeShard.seq)
        ).all()
        for shard_id in candidates:  # another worker may take each first: the UPDATE decides
            res = session.execute(
                update(EncodeShard)
                .where(EncodeShard.id == shard_id, claimable)
                .values(
                    status="running",
                    runs=EncodeShard.runs + 1,
                    lease_owner=runner,
                    lease_expires_at=db_now(lease_seconds),
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                return _fields(session.get(EncodeShard, shard_id))
    return None


def _mine(shard_id: str, runner: str):
    return and_(EncodeShard.id == shard_id, EncodeShard.lease_owner == runner, EncodeShard.status == "running")


def renew_shard(shard_id: str, *, runner: str, lease_seconds: float) -> bool:
    """Extend our lease on the shard; False when it is no longer ours (taken over, or the plan was replaced)."""
    with session_scope() as session:
        res = session.execute(
            update(EncodeShard)
            .where(_mine(shard_id, runner))
            .values(lease_expires_at=db_now(lease_seconds))
            .execution_options(synchronize_session=False)
        )
        return res.rowcount == 1


def finish_shard(shard_id: str, *, runner: str) -> bool:
    """Mark our shard done (its features are in the store); False when it was no longer ours."""
    with session_scope() as session:
        res = session.execute(
            update(EncodeShard)
            .where(_mine(shard_id, runner))
            .values(status="done", encoded_by=runner, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return res.rowcount == 1


def give_back(shard_id: str, *, runner: str) -> None:
    """Put our shard back to ``pending`` at once (we stop without having finished it)."""
    with session_scope() as session:
        session.execute(
            update(EncodeShard)
            .where(_mine(shard_id, runner))
            .values(status="pending", lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )


def job_state(job_id: str) -> tuple[str, int, bool] | None:
    """(status, attempt, cancel_requested) of the job, or None when it is gone."""
    with session_scope() as session:
        row = session.execute(
            select(Job.status, Job.attempt, Job.cancel_requested).where(Job.id == job_id)
        ).one_or_none()
    return None if row is None else (row[0], row[1], bool(row[2]))


def shard_state(job_id: str, attempt: int) -> ShardState:
    with session_scope() as session:
        rows = session.execute(
            select(EncodeShard.status, EncodeShard.runs, EncodeShard.encoded_by, EncodeShard.images).where(
                EncodeShard.job_id == job_id, EncodeShard.attempt == attempt
            )
        ).all()
    encoded_by: dict[str, int] = {}
    for status, _, runner, _ in rows:
        if status == "done" and runner:
            encoded_by[runner] = encoded_by.get(runner, 0) + 1
    return ShardState(
        shards=len(rows),
        done=sum(status == "done" for status, *_ in rows),
        done_images=sum(images for status, _, _, images in rows if status == "done"),
        images=sum(images for *_, images in rows),
        retaken=sum(runs > 1 for _, runs, _, _ in rows),
        encoded_by=encoded_by,
    )


def forget(job_id: str) -> None:
    """Delete the job's shard rows (the job is over)."""
    with session_scope() as session:
        session.execute(delete(EncodeShard).where(EncodeShard.job_id == job_id))
