"""Run one claimed job to its end: stage inputs, train in a child process while relaying its
reports, then package and upload the model and finish the job — heartbeating throughout from a
background thread (``worker/heartbeat.py``). Every status this worker writes goes through the
job's ``JobFate`` (``worker/fate.py``), which also settles, once, whether a refused write means the
user cancelled or another worker took the job over."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tunery.errors import TrainingFailed, TuneryError
from tunery.jobs.results import ResultsBlob, list_results_file, store_results_blob
from tunery.jobspec import GRPO, LocalInputs
from tunery.lifetime import on_parent_death
from tunery.models.catalog import ModelCatalog
from tunery.outbound import check_url, parse_allow_list
from tunery.settings import Settings
from tunery.storage import BlobStore
from tunery.storage.archives import unpack
from tunery.store import jobs as job_store
from tunery.store.base_models import registered_models
from tunery.store.db import Database
from tunery.store.files import get_file_any_owner
from tunery.store.models import File, Job
from tunery.store.secrets import SecretBox
from tunery.store.status import JobStatus
from tunery.training.config import TrainConfig
from tunery.training.exit_codes import ExitCode
from tunery.worker.fate import JobEnded, JobFate, Outcome
from tunery.worker.heartbeat import JobHeartbeat
from tunery.worker.hub_push import HubPushFailed, push_model
from tunery.worker.packaging import FINAL_PARTS, checkpoint_path, discard, list_parts, pack_parts, primary, store_parts
from tunery.worker.relay import Relay

log = logging.getLogger("tunery.worker")

TORCHRUN_SHUTDOWN_TIMEOUT_S = 900
# How long a job waits between tries to give itself back while the database is away.
DATABASE_RETRY_WAITS_S = (1, 2, 4, 8, 16)


@dataclass
class WorkerContext:
    settings: Settings
    db: Database
    blobs: BlobStore
    catalog: ModelCatalog
    worker_id: str
    scratch: Path
    stopping: threading.Event
    # Opens jobs' sealed secrets (the API's TUNERY_SECRET_KEY).
    secrets: SecretBox
    # The test seam of worker/pause.py; a no-op in production.
    pause: Callable[[str], None] = lambda phase: None


@dataclass
class Running:
    """One job on this worker: its heartbeat, the owner of its status, and its devices."""

    job_id: str
    heartbeat: JobHeartbeat
    fate: JobFate
    devices: list[str] = field(default_factory=list)


def run_job(ctx: WorkerContext, job_id: str, devices: list[str] | None = None) -> None:
    """Take a claimed (``running``) job to ``completed``, ``cancelled``, ``error``/``user_error``,
    or back to ``queued`` when this worker shuts down."""
    scratch = ctx.scratch / job_id
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    fate = JobFate(ctx.db, job_id, ctx.worker_id)
    try:
        with JobHeartbeat(ctx.db, job_id, ctx.worker_id, ctx.settings.heartbeat_interval_s) as beat, \
                ExitStack() as stack:
            running = Running(job_id, beat, fate, devices or [])
            config = stage(ctx, running, scratch, stack)
            finish(ctx, running, train(ctx, running, config, scratch), scratch)
    except JobEnded as ended:
        if ended.outcome == Outcome.LOST:
            log.warning("job %s was taken over by another worker; abandoning it", job_id)
    except TrainingFailed as e:
        fate.fail(e.message, user_error=e.user_error)
    except TuneryError as e:
        fate.fail(e.message, user_error=e.status_code < 500)
    except DBAPIError as e:  # the database is locked, restarting or unreachable: not the job's fault
        log.warning("job %s: database error (%s); giving the job back to the queue", job_id, type(e.orig).__name__)
        _give_back(fate, job_id, f"Worker {ctx.worker_id} lost its database connection ({type(e.orig).__name__}); "
                                 "the job was requeued and resumes from its last checkpoint")
    except Exception as e:  # a bug or an environment problem; the job must not stay running
        log.exception("job %s failed", job_id)
        fate.fail(_internal_error(e), user_error=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _give_back(fate: JobFate, job_id: str, message: str) -> None:
    """Requeue the job, retrying while the database is away; if it stays away, the heartbeat check
    requeues the job once this worker's beats have lapsed. Never fails the job."""
    for wait in DATABASE_RETRY_WAITS_S:
        try:
            fate.requeue(message)
            return
        except JobEnded:
            return
        except DBAPIError:
            time.sleep(wait)
    log.error("job %s: the database stayed unavailable; the heartbeat check will requeue the job", job_id)


def _internal_error(error: Exception) -> str:
    """What the user is told of a failure that is not theirs; a full disk is named plainly."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return ("the worker ran out of disk space (No space left on device); its partial files were removed, "
                "so the job can run again once the operator has freed space")
    return f"internal error: {type(error).__name__}: {error}"


# -- staging --------------------------------------------------------------------------------------

def _event(ctx: WorkerContext, job_id: str, type_: str, message: str, fields: dict[str, Any] | None = None) -> None:
    with ctx.db.session() as s:
        job_store.add_event(s, job_id, type_, message, fields=fields)


def stage(ctx: WorkerContext, running: Running, scratch: Path, stack: ExitStack) -> TrainConfig:
    """Resolve the base model, training data, parent checkpoint and resume state to local paths
    (downloading them from the object store), and write the training config."""
    job_id = running.job_id
    with ctx.db.session() as s:
        job = job_store.get_job(s, job_id)
        registered = registered_models(s)
        train_file = _file(s, job.spec.training_file)
        val_file = _file(s, job.spec.validation_file) if job.spec.validation_file else None
        spec = job.spec
        parent = job_store.find_checkpoint(s, spec.parent.job_id, spec.checkpoint_variant,
                                           spec.parent.step) if spec.parent else None
        resume = job_store.latest_state_checkpoint(s, job.id)
        secrets = ctx.secrets.open(job.secrets)
    source = spec.from_hf_model or spec.model
    _event(ctx, job_id, "model_downloading", f"Loading base model {source}")
    model = ctx.catalog.resolve(source, registered, revision=spec.hf_model_revision, token=secrets.hf_api_token)
    _event(ctx, job_id, "model_download_complete", f"Base model {source} ready")
    # Bring-your-own weights must be built like the job's model (the template); the recipe checks.
    template = ctx.catalog.resolve(spec.model, registered).path if spec.from_hf_model else None
    method = spec.training_method
    judges = {name: ctx.catalog.resolve(name, registered).path
              for name in (method.judge_models if isinstance(method, GRPO) else ())}
    _event(ctx, job_id, "training_data_downloading", f"Fetching training file {train_file.id}")
    train_path = stack.enter_context(ctx.blobs.local_copy(train_file.blob_key))
    _event(ctx, job_id, "training_data_download_complete", f"Training file {train_file.id} ready")
    val_path = None
    if val_file is not None:
        _event(ctx, job_id, "validation_data_downloading", f"Fetching validation file {val_file.id}")
        val_path = stack.enter_context(ctx.blobs.local_copy(val_file.blob_key))
        _event(ctx, job_id, "validation_data_download_complete", f"Validation file {val_file.id} ready")
    init_from = None
    if parent is not None:
        init_from = _fetch_archive(ctx, parent.blob_key, scratch / "init")
    resume_from = None
    if resume is not None:
        resume_from = _fetch_checkpoint(ctx, job, resume.step, scratch / "resume")
        _event(ctx, job_id, "job_start", f"Resuming from the checkpoint at step {resume.step}")
    ctx.pause("staging")
    running.heartbeat.check()
    if spec.wandb.base_url:  # checked at create too; the operator's list may have changed since
        check_url(spec.wandb.base_url, parse_allow_list(ctx.settings.outbound_url_allow), param="wandb_base_url")
    inputs = LocalInputs(base_model_dir=model.path, train_file=train_path, file_type=_file_type(train_file),
                         output_dir=scratch / "out", validation_file=val_path, init_from=init_from,
                         resume_from=resume_from, template_model_dir=template, judge_model_dirs=judges)
    config = spec.train_config(job.id, inputs, secrets)
    path = scratch / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold a W&B key
    with os.fdopen(fd, "w") as f:
        f.write(config.model_dump_json())
    return config


def _file(s: Session, file_id: str) -> File:
    f = get_file_any_owner(s, file_id)
    if f is None:
        raise TrainingFailed(f"file {file_id} was deleted before the job started", user_error=True)
    return f


def _file_type(f: File) -> Literal["jsonl", "parquet"]:
    if f.file_type not in ("jsonl", "parquet"):
        raise TrainingFailed(f"file {f.id} is {f.file_type}; training reads jsonl or parquet", user_error=True)
    return "jsonl" if f.file_type == "jsonl" else "parquet"


def _fetch_archive(ctx: WorkerContext, key: str, dest: Path) -> Path:
    with ctx.blobs.local_copy(key) as archive:
        return unpack(archive, dest)


def _fetch_checkpoint(ctx: WorkerContext, job: Job, step: int, dest: Path) -> Path:
    """Rebuild ``checkpoints/step-N/`` (state plus weights) of this job from the object store."""
    root = dest / f"step-{step}"
    with ctx.db.session() as s:
        parts = [c for c in job_store.list_checkpoints(s, job.id) if c.step == step and not c.final]
    for c in parts:
        _fetch_archive(ctx, c.blob_key, root)
    return root


# -- training -------------------------------------------------------------------------------------

def training_command(config: TrainConfig, config_path: Path, report_path: Path, processes: int,
                     recipe_module: str = "") -> list[str]:
    module = recipe_module or f"tunery.training.recipes.{config.method}"
    args = ["--config", str(config_path), "--report", str(report_path)]
    if processes > 1:
        # torchrun passes SIGTERM on to the ranks and SIGKILLs them after --shutdown-timeout (30 s by
        # default): too short for a large model to finish its step and write the resumable checkpoint.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                f"--shutdown-timeout={TORCHRUN_SHUTDOWN_TIMEOUT_S}", "-m", module, *args]
    return [sys.executable, "-m", module, *args]


def child_env(settings: Settings, devices: list[str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if devices:  # this job's share of the worker's accelerators (TUNERY_WORKER_DEVICES)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    if not settings.allow_hub_downloads:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@dataclass(frozen=True)
class TrainingRun:
    relay: Relay
    exit_code: int
    stop_reason: str | None  # why the worker asked the child to stop: "cancel", "pause", "shutdown", "timeout"


def train(ctx: WorkerContext, running: Running, config: TrainConfig, scratch: Path) -> TrainingRun:
    """Run the training child to its exit, relaying its reports."""
    job_id, beat = running.job_id, running.heartbeat
    report = scratch / "report.jsonl"
    relay = Relay(ctx.db, ctx.blobs, job_id, ctx.worker_id, report, ctx.pause)
    # GRPO samples and grades in one process (its recipe refuses torchrun).
    processes = 1 if config.method == "grpo" else ctx.settings.processes_per_job
    cmd = training_command(config, scratch / "config.json", report, processes,
                           ctx.settings.recipe_module)
    with open(scratch / "train.log", "wb") as log_file:
        # The child gets SIGKILL when the worker dies, however it dies, so a killed worker never
        # leaves an orphan training on. Linux sends it when the forking *thread* ends: that is the
        # job's thread, which outlives the child.
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                env=child_env(ctx.settings, running.devices), start_new_session=True,
                                preexec_fn=on_parent_death(signal.SIGKILL))
    stop_reason: str | None = None
    stopping_since: float | None = None
    limit = ctx.settings.job_timeout_s
    deadline = time.monotonic() + limit if limit > 0 else None
    paused = False
    try:
        while proc.poll() is None:
            relay.pump()
            beat.check()
            if stop_reason is None:
                stop_reason = _why_stop(ctx, running, deadline)
                if stop_reason is not None:  # SIGTERM: the child checkpoints at its next step and exits
                    proc.send_signal(signal.SIGTERM)
                    stopping_since = time.monotonic()
            elif stopping_since is not None and time.monotonic() - stopping_since > ctx.settings.stop_grace_s:
                log.warning("job %s: the training process ignored SIGTERM for %.0f s; killing it", job_id,
                            ctx.settings.stop_grace_s)
                os.killpg(proc.pid, signal.SIGKILL)
                stopping_since = None
            if not paused and relay.listed_steps:  # the test seam: killed mid-training, resumable
                paused = True
                ctx.pause("training")
            time.sleep(0.1)
        relay.drain()
        relay.flush()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (scratch / "config.json").unlink(missing_ok=True)
    return TrainingRun(relay, proc.returncode, stop_reason)


def _why_stop(ctx: WorkerContext, running: Running, deadline: float | None) -> str | None:
    """Why the worker should stop the training child now ("cancel", "pause", "shutdown", "timeout"), if at
    all. A pause is a stop too: the child saves a resumable checkpoint at its next step."""
    if running.heartbeat.cancel_requested.is_set():
        return "cancel"
    if running.heartbeat.pause_requested.is_set():
        return "pause"
    if ctx.stopping.is_set():
        return "shutdown"
    if deadline is not None and time.monotonic() > deadline:
        return "timeout"
    return None


# -- finishing ------------------------------------------------------------------------------------

def finish(ctx: WorkerContext, running: Running, run: TrainingRun, scratch: Path) -> None:
    """End the job according to how its training child ended."""
    relay, code, fate = run.relay, run.exit_code, running.fate
    running.heartbeat.check()
    if code == ExitCode.STOPPED or (run.stop_reason and code != ExitCode.COMPLETED):
        if run.stop_reason == "shutdown":
            fate.requeue(f"Worker {ctx.worker_id} shut down at step {relay.last_step}; the job was requeued "
                         "and resumes from its last checkpoint")
            return
        fate.stop_if_ended(relay.last_step)  # cancelled or paused, as asked
        if run.stop_reason == "pause":  # resumed before the pause took effect: continue from the checkpoint
            fate.requeue(f"Job resumed while it was pausing; it continues from step {relay.last_step}")
            return
        if run.stop_reason == "timeout":
            raise TrainingFailed(f"the job ran longer than the {ctx.settings.job_timeout_s:g} s this server allows "
                                 f"a run of a job (TUNERY_JOB_TIMEOUT_S); it was stopped at step {relay.last_step}",
                                 user_error=True)
        raise TrainingFailed(f"training stopped unexpectedly at step {relay.last_step}")
    if code != ExitCode.COMPLETED:
        message = relay.error_message or _log_tail(scratch / "train.log")
        raise TrainingFailed(message, user_error=code == ExitCode.USER_ERROR or relay.error_is_users)
    if relay.final_path is None:
        raise TrainingFailed("training ended without writing a final model")
    package_and_complete(ctx, running, relay)


def package_and_complete(ctx: WorkerContext, running: Running, relay: Relay) -> None:
    """Pack the final model, upload it, and then — in one transaction — list it and complete the
    job (a worker killed before that commit leaves nothing listed; the rerun uploads anew). A
    cancel that arrives meanwhile ends the job as cancelled and leaves nothing stored."""
    job_id, fate, step, final_dir = running.job_id, running.fate, relay.final_step, relay.final_path
    assert final_dir is not None
    at_end = {"step": step, **relay.known}
    fate.advance(JobStatus.COMPRESSING, "model_compressing", "Compressing the trained model", at_end)
    packed = pack_parts(ctx.blobs, job_id, step, final_dir, FINAL_PARTS, ctx.pause, "compressing")
    _event(ctx, job_id, "model_compression_complete", "Model compressed", at_end)
    try:
        fate.advance(JobStatus.UPLOADING, "model_uploading", "Uploading the trained model", at_end)
    except BaseException:
        for p in packed:
            p.archive.unlink(missing_ok=True)
        raise
    stored = store_parts(ctx.blobs, job_id, step, packed, final=True, pause=ctx.pause, phase="uploading")
    results: ResultsBlob | None = None
    try:
        push_to_hub(ctx, job_id, final_dir)
        results = store_results_blob(ctx.db, ctx.blobs, job_id)
        running.heartbeat.check()
        kept_results = True

        def record(s: Session) -> None:
            nonlocal kept_results
            list_parts(s, job_id, ctx.worker_id, step, stored, final=True)
            job = job_store.get_job(s, job_id)
            job.total_price_nanodollars = int(job.token_count * ctx.settings.price_per_million_tokens * 1000)
            assert results is not None
            kept_results = list_results_file(s, job_id, job.user_id, results)
            main = primary(stored)
            where = {"hash": main.sha256} if main is not None else {}
            if relay.final_event is not None:  # the child's "final model saved", now that it is stored
                path = checkpoint_path(job_id, step, True, main.part) if main is not None else ""
                job_store.add_event(s, job_id, "checkpoint_save", relay.final_event.message, relay.final_event.level,
                                    {**relay.final_event.fields, **where, "checkpoint_path": path})
            job_store.add_event(s, job_id, "model_upload_complete",
                                f"Model uploaded ({', '.join(p.part for p in stored)})",
                                fields={**at_end, **where, "model_path": f"jobs/{job_id}/final"})

        fate.complete(record, event_fields={**at_end, "model_path": f"jobs/{job_id}/final"})
        if not kept_results:
            ctx.blobs.delete(results.key)
    except BaseException:
        discard(ctx.blobs, stored)
        if results is not None:
            ctx.blobs.delete(results.key)
        raise


def push_to_hub(ctx: WorkerContext, job_id: str, final_dir: Path) -> None:
    """Upload the model to the job's ``hf_output_repo_name``, if it has one. A refusal does not fail
    the job: the model stays downloadable here, and an error-level warning event says what went wrong."""
    with ctx.db.session() as s:
        job = job_store.get_job(s, job_id)
        repo, token = job.spec.hf_output_repo_name, ctx.secrets.open(job.secrets).hf_api_token
    if not repo:
        return
    _event(ctx, job_id, "model_uploading_to_hf", f"Uploading the model to Hugging Face repo {repo}")
    try:
        url = push_model(final_dir, repo, token, f"Fine-tuned by tunery job {job_id}")
    except HubPushFailed as e:
        with ctx.db.session() as s:
            job_store.add_event(s, job_id, "warning", f"Could not upload the model to Hugging Face repo {repo}: {e}. "
                            "The model is still downloadable from this server.", level="error")
        return
    _event(ctx, job_id, "model_upload_to_hf_complete", f"Model uploaded to Hugging Face: {url}")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        tail = []
    return "training process failed" + (":\n" + "\n".join(tail) if tail else "")
