"""Whether a user may queue a job: the operator's limits, checked by ``lifecycle.create`` for every
front door, in the transaction that inserts the job.

- Outbound URLs: a job may make the server call only URLs the operator allows
  (``TUNERY_OUTBOUND_URL_ALLOW``; ``tunery.outbound``): 400 naming the field otherwise.
- Concurrent jobs: at most ``TUNERY_MAX_ACTIVE_JOBS_PER_USER`` unfinished jobs per user (0 = any):
  429 ``insufficient_quota`` otherwise.
- Token quota: the user's tokens so far plus this job's estimate within ``TUNERY_TOKEN_QUOTA``
  (0 = none): 429 otherwise. A job counts its estimate (``reserved_tokens``) from the moment it is
  queued until it starts training, then the tokens it reports (``token_count``); a job that ended
  before it started counts nothing. The price estimate's ``allowed_to_proceed`` uses the same
  measure, so a job it allows is one create accepts.

The counts take the user's row lock first (PostgreSQL; SQLite's write transaction is already
exclusive), so two concurrent creates cannot both take the last place.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from tunery.errors import QuotaExceeded
from tunery.jobspec import JobSpec
from tunery.outbound import check_url, parse_allow_list
from tunery.settings import Settings
from tunery.store.models import Job, User
from tunery.store.status import ACTIVE


@dataclass(frozen=True)
class Limits:
    """The operator's limits on queueing jobs."""

    outbound_allow: list[tuple[str, str, int]]
    token_quota: int = 0
    max_active_jobs: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(parse_allow_list(settings.outbound_url_allow), settings.token_quota,
                   settings.max_active_jobs_per_user)


def tokens_used(s: Session, user_id: str) -> int:
    """The quota's measure of what ``user_id``'s jobs have taken: trained tokens where reported,
    else the estimate of a job that has not ended."""
    counted = case((Job.token_count > 0, Job.token_count),
                   (Job.status.in_([a.value for a in ACTIVE]), Job.reserved_tokens), else_=0)
    return int(s.scalar(select(func.coalesce(func.sum(counted), 0)).where(Job.user_id == user_id)) or 0)


def check_urls(spec: JobSpec, limits: Limits) -> None:
    """400 (naming the field) for a URL in ``spec`` this server may not call."""
    if spec.wandb.base_url:
        check_url(spec.wandb.base_url, limits.outbound_allow, param="wandb_base_url")


def admit(s: Session, user: User, spec: JobSpec, estimated_tokens: int, limits: Limits) -> None:
    """Raise ``InvalidRequest`` or ``QuotaExceeded`` unless ``user`` may queue ``spec`` now."""
    check_urls(spec, limits)
    if not (limits.max_active_jobs or limits.token_quota):
        return
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(User.id).where(User.id == user.id).with_for_update())
    if limits.max_active_jobs:
        active = int(s.scalar(select(func.count()).select_from(Job).where(
            Job.user_id == user.id, Job.status.in_([a.value for a in ACTIVE]))) or 0)
        if active >= limits.max_active_jobs:
            raise QuotaExceeded(f"{user.name} has {active} unfinished fine-tuning jobs; this server runs at most "
                                f"{limits.max_active_jobs} per user at once (TUNERY_MAX_ACTIVE_JOBS_PER_USER): "
                                "wait for one to end, or cancel one")
    if limits.token_quota:
        used = tokens_used(s, user.id)
        if used + estimated_tokens > limits.token_quota:
            raise QuotaExceeded(f"this job needs about {estimated_tokens} tokens, and {user.name} has used {used} of a "
                                f"quota of {limits.token_quota} (TUNERY_TOKEN_QUOTA); the price estimate says "
                                "allowed_to_proceed: false for it")
