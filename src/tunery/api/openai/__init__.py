"""OpenAI's fine-tuning API on the same server, store, queue and workers as Together's.

Point the official ``openai`` SDK at ``http://HOST:PORT/v1`` with a tunery API key. The routes here
are the ones only OpenAI's dialect has; the shared URLs (``/v1/files``, ``/v1/models``) live with
the rest of the API and answer both SDKs:

    POST /v1/uploads · /{id}/parts · /{id}/complete · /{id}/cancel      uploads.py
    /v1/fine_tuning/jobs …                                               fine_tuning.py

Request bodies are OpenAI's (``schemas.py``); a malformed one is a 400, as OpenAI answers it, so the
SDK raises the same ``BadRequestError`` a user's code already catches.
"""

from __future__ import annotations

from fastapi import APIRouter

from tunery.api.openai import fine_tuning, uploads

router = APIRouter()
router.include_router(uploads.router)
router.include_router(fine_tuning.router)
