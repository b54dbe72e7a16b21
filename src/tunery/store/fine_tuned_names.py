"""OpenAI-style names of a job's models: ``ft:<base>:<org>:<suffix>:<job id>`` for its final model and
``ft:<base>:<org>:<suffix>:<job id>:ckpt-step-<N>`` for its checkpoint at step N.

``<base>`` is the model the job was asked for (the alias, when it named one), ``<org>`` the owner's user
name, ``<suffix>`` the job's suffix (empty when it has none). Every job has these names, whichever API
created it; they are what OpenAI's dialect shows as ``fine_tuned_model`` and what chat requests may name.
Reading one back checks the whole name against the job, so a name is never half-right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tunery.store.models import Job, User

PREFIX = "ft:"
_CHECKPOINT = re.compile(r"^(.*):ckpt-step-(\d+)$")


def fine_tuned_model_name(job: Job, org: str) -> str:
    spec = job.spec
    return f"{PREFIX}{spec.model_alias or spec.model}:{org}:{spec.suffix or ''}:{job.id}"


def checkpoint_model_name(job: Job, org: str, step: int) -> str:
    return f"{fine_tuned_model_name(job, org)}:ckpt-step-{step}"


@dataclass(frozen=True)
class NamedModel:
    job: Job
    step: int | None  # None: the final model


def find_named_model(s: Session, user_id: str, name: str) -> NamedModel | None:
    """The user's job (and checkpoint step) an ``ft:`` name stands for, or None when ``name`` is not
    exactly such a name of one of the user's jobs."""
    if not name.startswith(PREFIX):
        return None
    final, step = name, None
    m = _CHECKPOINT.match(name)
    if m:
        final, step = m.group(1), int(m.group(2))
    job, user = s.get(Job, final.rsplit(":", 1)[-1]), s.get(User, user_id)
    if job is None or user is None or job.user_id != user.id or fine_tuned_model_name(job, user.name) != final:
        return None
    return NamedModel(job, step)
