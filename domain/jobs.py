"""Background jobs with progress: one lifecycle for every kind (exports, erasure, conversation
deletion, key rotation).

A job row is created with its outbox row in the caller's transaction (`start`). The task that
runs it claims it by compare-and-set, so a duplicate delivery (the outbox sweeper re-sending,
a redelivery after a worker died) runs it once. `updated_at` doubles as the claim's heartbeat:
every progress report renews it, and a claim whose holder stopped reporting for `STALE_CLAIM`
is taken over. Every kind's work is idempotent, so a takeover finishes what the dead run began.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from core.ids import new_id, utcnow
from core.services import Services
from domain import outbox
from domain.errors import NotFound
from models import Job

logger = logging.getLogger(__name__)

STALE_CLAIM = timedelta(minutes=2)

Progress = Callable[[int], None]
Errors = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class JobKind:
    """What a kind of job is: its `jobs.kind`, the task that runs it, how many items it has (its
    `total`, counted before the work starts), the work itself (which returns the job's result)
    and, optionally, what else to record in the transaction that marks it done."""

    name: str
    task: str
    size: Callable[[Services, Session, Job], int]
    work: Callable[[Services, Job, Progress], Mapping[str, Any]]
    finish: Callable[[Session, Job, Mapping[str, Any]], None] | None = None


def start(session: Session, kind: JobKind, params: dict[str, Any], created_by: str) -> Job:
    """Create a queued job and its outbox row in the caller's transaction."""
    job = Job(id=new_id(), kind=kind.name, params=params, created_by=created_by)
    session.add(job)
    session.flush()  # state, timestamps: a 202 shows them
    outbox.add(session, kind.task, [job.id], ref_id=job.id)
    return job


def claim(svc: Services, job_id: str, task: str) -> Job | None:
    """The job if this run may work on it now: queued, or running under a stale claim.

    Marks its outbox row done either way: from here on the broker's redelivery, not the
    sweeper, covers a crash."""
    now = utcnow()
    with svc.Session.begin() as s:
        outbox.mark_done(s, [job_id], task)
        claimed = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.state == "queued",
                    (Job.state == "running") & (Job.updated_at < now - STALE_CLAIM),
                ),
            )
            .values(state="running", updated_at=now)
        )
        if not getattr(claimed, "rowcount", 0):
            logger.info("job %s not claimed: missing, finished or running elsewhere", job_id)
            return None
        return s.get(Job, job_id)


def progress(svc: Services, job_id: str, **values: Any) -> None:
    """Record progress (or any column) in a transaction of its own; renews the claim."""
    values = {"updated_at": utcnow(), **values}
    with svc.Session.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


@contextmanager
def recording_failure(svc: Services, job_id: str, retryable: Errors = ()) -> Iterator[None]:
    """`retryable` faults propagate (the task retries) with the claim made stale, so the retry
    claims the job again at once; anything else fails the job with its reason."""
    try:
        yield
    except retryable:
        with suppress(*retryable):
            progress(svc, job_id, updated_at=utcnow() - STALE_CLAIM)
        raise
    except NotFound as exc:
        progress(svc, job_id, state="failed", error=exc.detail)
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        progress(svc, job_id, state="failed", error=f"{type(exc).__name__}: {exc}"[:500])


def run(svc: Services, job_id: str, kind: JobKind, *, retryable: Errors = ()) -> None:
    """Claim the job, count its items, do its work with progress, and mark it done."""
    job = claim(svc, job_id, kind.task)
    if job is None:
        return
    with recording_failure(svc, job_id, retryable):
        with svc.ReadSession() as s:
            total = kind.size(svc, s, job)
        progress(svc, job_id, total=total, done=0)
        result = kind.work(svc, job, lambda done: progress(svc, job_id, done=min(done, total)))
        with svc.Session.begin() as s:
            row = s.get(Job, job_id)
            if row is None:
                raise NotFound(f"job {job_id} vanished while it ran")
            row.state, row.done, row.result, row.updated_at = "done", total, dict(result), utcnow()
            if kind.finish is not None:
                kind.finish(s, row, result)


def follow(
    svc: Services, job_id: str, poll_s: float = 0.5, timeout_s: float = 3600
) -> Iterator[str]:
    """Lines of a job's progress as it changes, until it ends or `timeout_s` passes (the CLI)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        with svc.ReadSession() as s:
            job = s.get(Job, job_id)
            if job is None:
                yield f"job {job_id} does not exist"
                return
            line = f"{job.state}: {job.done}/{job.total}"
            if line != last:
                yield line
                last = line
            if job.state in ("done", "failed"):
                if job.error:
                    yield f"error: {job.error}"
                return
        time.sleep(poll_s)
    yield "still running; check again later"
