"""``GET /downloads/jobs/{job_id}/tokenized-dataset?token=…``: the signed, expiring URL that
``GET /v1/fine-tunes/{id}/download-tokenized-dataset`` hands out. The `together` CLI fetches it with
a bare GET and no API key, as it would an S3 presigned URL, so the URL carries its own credential
(``tunery.api.signing``). Ours, not Together's API, hence outside ``/v1`` (like ``/uploads``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tunery.api.deps import Ctx, get_ctx, public_base_url
from tunery.api.routes.uploads import Token, upload_signer
from tunery.api.signing import TOKENIZED_DATASET
from tunery.api.streaming import blob_response
from tunery.jobs.downloads import TOKENIZED_MEDIA_TYPE, find_tokenized_dataset

router = APIRouter(prefix="/downloads", tags=["downloads"])


def tokenized_dataset_url(request: Request, job_id: str) -> tuple[str, int]:
    """The absolute, signed URL of ``job_id``'s tokenized training set and when it expires (unix s)."""
    signer = upload_signer(request)
    token = signer.sign(TOKENIZED_DATASET, job_id)
    base = public_base_url(request, get_ctx(request).settings)
    return f"{base}/downloads/jobs/{job_id}/tokenized-dataset?token={token}", signer.expires_at(token)


@router.get("/jobs/{job_id}/tokenized-dataset")
def tokenized_dataset(request: Request, ctx: Ctx, job_id: str, token: Token = None) -> Response:
    upload_signer(request).verify(TOKENIZED_DATASET, job_id, token, what="download URL",
                                  renew=f"GET /v1/fine-tunes/{job_id}/download-tokenized-dataset")
    with ctx.db.session() as s:
        found = find_tokenized_dataset(s, job_id, None)
    return blob_response(request, ctx.blobs, found.key, found.size, filename=found.filename,
                         media_type=TOKENIZED_MEDIA_TYPE)
