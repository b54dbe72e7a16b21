"""The dashboard's pages: sign-in, jobs list (``/``), job page, files page, and the small POSTs
behind their buttons. Every page reads the same store functions the API uses, scoped to the
signed-in user, so another user's job is a 404 here exactly as it is in the API.

Pages work without JavaScript; ``static/live.js`` only refreshes the ``data-live-url`` region of
a page (the ``/partials/...`` routes render those regions alone) while something can still change.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import AppContext, Ctx
from tunery.api.generation import Render, generate, open_events
from tunery.api.streaming import blob_response
from tunery.errors import Conflict, InvalidRequest, NotFound, TuneryError
from tunery.jobs import lifecycle
from tunery.jobs.downloads import find_download
from tunery.store import files as file_store
from tunery.store import jobs as job_store
from tunery.store.models import Job
from tunery.store.status import JobStatus
from tunery.web import views
from tunery.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SessionSigner,
    WebSession,
    check_login_csrf,
    end_session,
    key_id_for_secret,
    load_session,
    new_login_csrf,
    start_session,
)

router = APIRouter(include_in_schema=False)
env = views.make_env()

# No inline script or style anywhere, so the policy can forbid both.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC_FILES = {"style.css": "text/css", "live.js": "text/javascript", "playground.js": "text/javascript"}
Str = Annotated[str, Form()]


# -- plumbing -------------------------------------------------------------------------------------

def _signer(ctx: AppContext, request: Request) -> SessionSigner:
    # Built once per app: signing_key() reads the key file.
    signer: SessionSigner | None = getattr(request.app.state, "web_signer", None)
    if signer is None:
        signer = request.app.state.web_signer = SessionSigner(ctx.settings.signing_key())
    return signer


def _session(ctx: AppContext, request: Request, s: Session) -> WebSession | None:
    return load_session(s, _signer(ctx, request), request.cookies.get(SESSION_COOKIE))


def render(name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    html = env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})})


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: ``/x`` yes, ``//evil.example`` or ``https://…`` no."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _error(sess: WebSession | None, status_code: int, message: str) -> HTMLResponse:
    titles = {403: "Forbidden", 404: "Not found", 400: "Cannot do that"}
    return render("error.html", status_code, session=sess, title=titles.get(status_code, "Error"), message=message)


def _no_job(sess: WebSession, job_id: str) -> HTMLResponse:
    return _error(sess, 404, f"There is no fine-tuning job {job_id} in your account.")


def _forged(ctx: AppContext, request: Request, sess: WebSession | None, token: str) -> HTMLResponse | None:
    """The 403 page unless this POST carries this session's CSRF token and is not cross-site."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return _error(sess, 403, "Cross-site form submissions are refused.")
    if sess is None or not _signer(ctx, request).check_csrf(sess.token, token):
        return _error(sess, 403, "This form has expired or did not come from this site. Reload the page and try again.")
    return None


def _secure(ctx: AppContext, request: Request) -> bool:
    return request.url.scheme == "https" or ctx.settings.public_url.startswith("https://")


# -- sign-in --------------------------------------------------------------------------------------

@router.get("/login")
def login_form(ctx: Ctx, request: Request, next: str = "/") -> Response:
    with ctx.db.read() as s:
        if _session(ctx, request, s) is not None:
            return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(ctx, request, next)


def _login_page(ctx: AppContext, request: Request, next: str, error: str | None = None,
                status_code: int = 200) -> HTMLResponse:
    token = new_login_csrf()
    response = render("login.html", status_code, session=None, csrf=token, next=_safe_next(next), error=error)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=_secure(ctx, request), path="/login")
    return response


@router.post("/login")
def login(ctx: Ctx, request: Request, api_key: Str = "", csrf: Str = "", next: Str = "/") -> Response:
    if request.headers.get("sec-fetch-site") == "cross-site" or not check_login_csrf(
            request.cookies.get(LOGIN_CSRF_COOKIE), csrf):
        return _login_page(ctx, request, next, "The sign-in form expired. Please try again.", 403)
    signer = _signer(ctx, request)
    with ctx.db.session() as s:
        key_id = key_id_for_secret(s, api_key) if api_key.strip() else None
        token = start_session(s, signer, key_id) if key_id is not None else None
    if token is None:
        return _login_page(ctx, request, next, "That API key is not valid (or was revoked).", 401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=signer.ttl_s, httponly=True, samesite="lax",
                        secure=_secure(ctx, request), path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(ctx: Ctx, request: Request, csrf: Str = "") -> Response:
    with ctx.db.session() as s:
        sess = _session(ctx, request, s)
        if sess is not None and (forged := _forged(ctx, request, sess, csrf)):
            return forged
        end_session(s, _signer(ctx, request), request.cookies.get(SESSION_COOKIE))  # the cookie dies here too
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- jobs -----------------------------------------------------------------------------------------
# Each request reads its session and its page in one transaction.

@router.get("/")
def jobs_list(ctx: Ctx, request: Request, status: str | None = None, page: int = 1) -> Response:
    with ctx.db.read() as s:
        if (sess := _session(ctx, request, s)) is None:
            return _to_login(request)
        listing = views.job_page(s, sess.user.id, status, page)
    return render("jobs.html", session=sess, listing=listing, query=_list_query(listing.status, listing.page))


@router.get("/partials/jobs")
def jobs_table(ctx: Ctx, request: Request, status: str | None = None, page: int = 1) -> Response:
    with ctx.db.read() as s:
        if (sess := _session(ctx, request, s)) is None:
            return Response(status_code=401)
        listing = views.job_page(s, sess.user.id, status, page)
    return render("_jobs_table.html", session=sess, listing=listing,
                  headers={"X-Live-Done": "0" if listing.live else "1"})


def _list_query(status: str | None, page: int) -> str:
    return urlencode({k: v for k, v in (("status", status), ("page", page)) if v})


@router.get("/jobs/{job_id}")
def job_detail(ctx: Ctx, request: Request, job_id: str) -> Response:
    with ctx.db.read() as s:
        if (sess := _session(ctx, request, s)) is None:
            return _to_login(request)
        try:
            view = views.job_view(s, job_store.get_job(s, job_id, sess.user.id))
        except NotFound:
            return _no_job(sess, job_id)
    return render("job.html", session=sess, v=view, job=view.job)


# -- playground: the fine-tuned model beside its base model ---------------------------------------
# The form works without JavaScript (one page with both whole answers); static/playground.js streams
# both answers into the page instead, from the /stream route. Both go through the API's forwarding.

PLAYGROUND_MAX_TOKENS = 128


def _playground_request(prompt: str, system: str) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
        {"role": "user", "content": prompt}]
    return {"messages": messages, "max_tokens": PLAYGROUND_MAX_TOKENS, "sampling": {"temperature": 0}}


def _playground_job(ctx: AppContext, request: Request, job_id: str,
                    csrf: str) -> tuple[WebSession | None, Job | None, Response | None]:
    """The signed-in user's completed job, or the response that refuses the request."""
    with ctx.db.session() as s:
        sess = _session(ctx, request, s)
        if forged := _forged(ctx, request, sess, csrf):
            return sess, None, forged
        assert sess is not None
        try:
            job = job_store.get_job(s, job_id, sess.user.id)
        except NotFound:
            return sess, None, _no_job(sess, job_id)
        if job.status != JobStatus.COMPLETED:
            return sess, None, _error(sess, 400, f"Job {job_id} is {job.status}; try it once it has completed.")
        s.expunge(job)
    return sess, job, None


def playground_models(job: Job) -> dict[str, str]:
    return {"tuned": job.model_output_name, "base": job.spec.from_hf_model or job.model}


@router.post("/jobs/{job_id}/playground")
async def playground(ctx: Ctx, request: Request, job_id: str, prompt: Str = "", system: Str = "",
                     csrf: Str = "") -> Response:
    sess, job, refused = await run_in_threadpool(_playground_job, ctx, request, job_id, csrf)
    if refused is not None:
        return refused
    assert sess is not None and job is not None
    answers = {}
    for side, name in playground_models(job).items():
        try:
            events = await open_events(ctx, sess.user, name, _playground_request(prompt, system))
            body = await Render("chat", name, "openai", False).whole(events)
            answers[side] = str(body["choices"][0]["message"]["content"] or "")
        except TuneryError as e:
            answers[side] = f"(no answer: {e.message})"
    return await run_in_threadpool(_job_page, ctx, sess, job_id, {"prompt": prompt, "system": system, **answers})


def _job_page(ctx: AppContext, sess: WebSession, job_id: str, playground: dict[str, str]) -> Response:
    with ctx.db.session() as s:
        view = views.job_view(s, job_store.get_job(s, job_id, sess.user.id))
    return render("job.html", session=sess, v=view, job=view.job, playground=playground)


@router.post("/jobs/{job_id}/playground/stream", response_model=None)
async def playground_stream(ctx: Ctx, request: Request, job_id: str, side: str, prompt: Str = "", system: Str = "",
                            csrf: Str = "") -> Response:
    sess, job, refused = await run_in_threadpool(_playground_job, ctx, request, job_id, csrf)
    if refused is not None:
        return refused
    assert sess is not None and job is not None
    models = playground_models(job)
    if side not in models:
        return _error(sess, 400, "side must be tuned or base")
    try:
        return await generate(ctx, sess.user, models[side], _playground_request(prompt, system), "chat", True,
                              "openai")
    except TuneryError as e:
        return _error(sess, e.status_code, e.message)


@router.get("/partials/jobs/{job_id}")
def job_live(ctx: Ctx, request: Request, job_id: str) -> Response:
    with ctx.db.read() as s:
        if (sess := _session(ctx, request, s)) is None:
            return Response(status_code=401)
        try:
            view = views.job_view(s, job_store.get_job(s, job_id, sess.user.id))
        except NotFound:
            return Response(status_code=404)
    return render("_job_live.html", session=sess, v=view, job=view.job,
                  headers={"X-Live-Done": "1" if view.terminal else "0"})


@router.post("/jobs/{job_id}/cancel")
def cancel(ctx: Ctx, request: Request, job_id: str, csrf: Str = "") -> Response:
    with ctx.db.session() as s:
        sess = _session(ctx, request, s)
        if forged := _forged(ctx, request, sess, csrf):
            return forged
        assert sess is not None
        try:
            job = job_store.get_job(s, job_id, sess.user.id)
        except NotFound:
            return _no_job(sess, job_id)
        # Already ended, or ended meanwhile (the compare-and-set lost): the job page shows how.
        with suppress(InvalidRequest, Conflict):
            lifecycle.cancel(s, job, by=sess.user.name)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/delete")
def delete(ctx: Ctx, request: Request, job_id: str, csrf: Str = "") -> Response:
    with ctx.db.session() as s:
        sess = _session(ctx, request, s)
    if forged := _forged(ctx, request, sess, csrf):
        return forged
    assert sess is not None
    try:
        lifecycle.delete(ctx.db, ctx.blobs, sess.user.id, job_id)
    except NotFound:
        return _no_job(sess, job_id)
    except Conflict as e:
        return _error(sess, 400, f"{e.message}.")
    return RedirectResponse("/", status_code=303)


@router.get("/jobs/{job_id}/download")
def download(ctx: Ctx, request: Request, job_id: str, checkpoint: str = "merged", step: int | None = None) -> Response:
    with ctx.db.read() as s:
        if (sess := _session(ctx, request, s)) is None:
            return _to_login(request)
        try:
            found = find_download(s, sess.user.id, job_id, checkpoint, step)
        except (NotFound, InvalidRequest) as e:
            return _error(sess, 404 if isinstance(e, NotFound) else 400, e.message)
    return blob_response(request, ctx.blobs, found.checkpoint.blob_key, found.checkpoint.size,
                         filename=found.filename)


# -- files ----------------------------------------------------------------------------------------

@router.get("/files")
def files_page(ctx: Ctx, request: Request) -> Response:
    with ctx.db.read() as s:
        if (sess := _session(ctx, request, s)) is None:
            return _to_login(request)
        rows = views.file_rows(file_store.list_files(s, sess.user.id))
    return render("files.html", session=sess, rows=rows)


# -- static ---------------------------------------------------------------------------------------

@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        return Response(status_code=404)
    return FileResponse(views.STATIC_DIR / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})
