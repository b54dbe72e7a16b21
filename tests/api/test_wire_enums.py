"""What Together's wire shows is always in the `together` SDK's enums: every job status, and every
event type tunery writes beyond them is shown as one of the SDK's."""

from __future__ import annotations

from typing import get_args

from together.types.finetune_event_type import FinetuneEventType
from together.types.finetune_response import FinetuneResponse

from tunery.api.schemas.fine_tunes import WIRE_EVENT_TYPES, WIRE_STATUSES
from tunery.store.status import JobStatus


def test_every_status_is_shown_as_one_of_the_sdks() -> None:
    sdk = set(get_args(FinetuneResponse.model_fields["status"].annotation))
    assert {WIRE_STATUSES.get(s, s).value for s in JobStatus} <= sdk
    assert {s.value for s in JobStatus} - sdk == {s.value for s in WIRE_STATUSES}  # mapped only where needed


def test_event_types_beyond_the_sdks_are_shown_as_one_of_its() -> None:
    sdk = set(get_args(FinetuneEventType))
    assert set(WIRE_EVENT_TYPES.values()) <= sdk
    assert not set(WIRE_EVENT_TYPES) & sdk  # only types the SDK lacks are mapped
