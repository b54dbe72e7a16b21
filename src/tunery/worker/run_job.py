"""Run one claimed job to its end: stage inputs, train in a child process while relaying its
reports, then package and upload the model and finish the job — heartbeating throughout from a
background thread (``worker/heartbeat.py``). Every status change is guarded by ownership
(``owned_by``), so a worker that was presumed dead can never touch the job's new run."""

from __future__ import annotations

import ctypes
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
from typing import Any

from sqlalchemy.orm import Session

from tunery.errors import TrainingFailed, TuneryError
from tunery.models.catalog import ModelCatalog
from tunery.queue.states import IllegalTransition, transition
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
from tunery.training.config import LoraSettings, TrainConfig
from tunery.worker.heartbeat import JobHeartbeat, JobLost
from tunery.worker.hub_push import HubPushFailed, push_model
from tunery.worker.relay import Relay, discard, list_parts, pack_parts, store_parts

log = logging.getLogger("tunery.worker")

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_STOPPED = 0, 1, 2, 3
PR_SET_PDEATHSIG = 1
TORCHRUN_SHUTDOWN_TIMEOUT_S = 900


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
    """One job on this worker: its heartbeat and the devices it may use."""

    job_id: str
    heartbeat: JobHeartbeat
    devices: list[str] = field(default_factory=list)


class JobCancelled(Exception):
    """The user cancelled the job while it was being packaged."""


def run_job(ctx: WorkerContext, job_id: str, devices: list[str] | None = None) -> None:
    """Take a claimed (``running``) job to ``completed``, ``cancelled``, ``error``/``user_error``,
    or back to ``queued`` when this worker shuts down."""
    scratch = ctx.scratch / job_id
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        with JobHeartbeat(ctx.db, job_id, ctx.worker_id, ctx.settings.heartbeat_interval_s) as beat, \
                ExitStack() as stack:
            job = Running(job_id, beat, devices or [])
            config = stage(ctx, job, scratch, stack)
            relay, code, stop_reason = train(ctx, job, config, scratch)
            finish(ctx, job, relay, code, stop_reason, scratch)
    except JobLost:
        log.warning("job %s was taken over by another worker; abandoning it", job_id)
    except JobCancelled:
        pass
    except TrainingFailed as e:
        fail(ctx, job_id, e.message, user_error=e.user_error)
    except TuneryError as e:
        fail(ctx, job_id, e.message, user_error=e.status_code < 500)
    except Exception as e:  # a bug or an environment problem; the job must not stay running
        log.exception("job %s failed", job_id)
        fail(ctx, job_id, f"internal error: {type(e).__name__}: {e}", user_error=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fail(ctx: WorkerContext, job_id: str, message: str, *, user_error: bool) -> None:
    to = JobStatus.USER_ERROR if user_error else JobStatus.ERROR
    try:
        with ctx.db.session() as s:
            transition(s, job_id, to, event_type="job_error", level="error", message=message, error=message,
                       worker_id=None, owned_by=ctx.worker_id)
    except IllegalTransition:
        if not _cancel_if_requested(ctx, job_id):
            log.warning("job %s failed here (%s) but is no longer this worker's", job_id, message)


# -- staging --------------------------------------------------------------------------------------

def _event(ctx: WorkerContext, job_id: str, type_: str, message: str) -> None:
    with ctx.db.session() as s:
        job_store.add_event(s, job_id, type_, message)


def stage(ctx: WorkerContext, running: Running, scratch: Path, stack: ExitStack) -> TrainConfig:
    """Resolve the base model, training data, parent checkpoint and resume state to local paths
    (downloading them from the object store), and write the training config."""
    job_id = running.job_id
    with ctx.db.session() as s:
        job = job_store.get_job(s, job_id)
        registered = registered_models(s)
        train_file = _file(s, job.training_file)
        val_file = _file(s, job.validation_file) if job.validation_file else None
        parent = job_store.find_checkpoint(s, job.params["parent_job_id"],
                                       "adapter" if _is_lora(job) else "model",
                                       job.params["parent_step"]) if job.params.get("parent_job_id") else None
        resume = job_store.latest_state_checkpoint(s, job.id)
        secrets = ctx.secrets.open(job.secrets)
    p = job.params
    source = p.get("from_hf_model") or job.model
    _event(ctx, job_id, "model_downloading", f"Loading base model {source}")
    model = ctx.catalog.resolve(source, registered, revision=p.get("hf_model_revision"),
                                token=secrets.get("hf_api_token"))
    _event(ctx, job_id, "model_download_complete", f"Base model {source} ready")
    # Bring-your-own weights must be built like the job's model (the template); the recipe checks.
    template = ctx.catalog.resolve(job.model, registered).path if p.get("from_hf_model") else None
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
        init_from = str(_fetch_archive(ctx, parent.blob_key, scratch / "init"))
    resume_from = None
    if resume is not None:
        resume_from = str(_fetch_checkpoint(ctx, job, resume.step, scratch / "resume"))
        _event(ctx, job_id, "job_start", f"Resuming from the checkpoint at step {resume.step}")
    ctx.pause("staging")
    running.heartbeat.check()
    config = _train_config(job, model.path, train_path, train_file.file_type, val_path, init_from, resume_from,
                           scratch / "out", secrets, template)
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


def _is_lora(job: Job) -> bool:
    return bool(job.params["training_type"]["type"] == "Lora")


def _fetch_archive(ctx: WorkerContext, key: str, dest: Path) -> Path:
    with ctx.blobs.local_copy(key) as archive:
        return unpack(archive, dest)


def _fetch_checkpoint(ctx: WorkerContext, job: Job, step: int, dest: Path) -> Path:
    """Rebuild ``checkpoints/step-N/`` (state plus weights) of this job from the job_store."""
    root = dest / f"step-{step}"
    with ctx.db.session() as s:
        parts = [c for c in job_store.list_checkpoints(s, job.id) if c.step == step and not c.final]
    for c in parts:
        _fetch_archive(ctx, c.blob_key, root)
    return root


def _train_config(job: Job, model_dir: Path, train_path: Path, file_type: str, val_path: Path | None,
                  init_from: str | None, resume_from: str | None, out: Path, secrets: dict[str, Any],
                  template: Path | None = None) -> TrainConfig:
    p = job.params
    tt, tm, sched = p["training_type"], p["training_method"], p["lr_scheduler"]
    lora = None
    if tt["type"] == "Lora":
        modules = tt["lora_trainable_modules"]
        lora = LoraSettings(r=tt["lora_r"], alpha=tt["lora_alpha"], dropout=tt["lora_dropout"],
                            target_modules="all-linear" if modules == "all-linear"
                            else [m.strip() for m in modules.split(",")])
    dpo = {k: tm[k] for k in ("dpo_beta", "rpo_alpha", "simpo_gamma", "dpo_normalize_logratios_by_length",
                              "dpo_reference_free") if k in tm}
    return TrainConfig(
        job_id=job.id, method=tm["method"], base_model_dir=str(model_dir), base_model_name=job.model,
        init_from=init_from, resume_from=resume_from, train_file=str(train_path),
        validation_file=str(val_path) if val_path else None, file_type=file_type,  # type: ignore[arg-type]  # TrainConfig validates it
        output_dir=str(out), lora=lora,
        n_epochs=p["n_epochs"], learning_rate=p["learning_rate"], lr_scheduler_type=sched["lr_scheduler_type"],
        min_lr_ratio=sched["lr_scheduler_args"].get("min_lr_ratio", 0.0),
        num_cycles=sched["lr_scheduler_args"].get("num_cycles", 0.5), warmup_ratio=p["warmup_ratio"],
        max_grad_norm=p["max_grad_norm"], weight_decay=p["weight_decay"], batch_size=p["batch_size"],
        gradient_accumulation_steps=p["gradient_accumulation_steps"], max_seq_length=p["max_seq_length"],
        packing=p["packing"], train_on_inputs=tm.get("train_on_inputs", "auto"), n_checkpoints=p["n_checkpoints"],
        n_evals=p["n_evals"], seed=p["random_seed"],
        early_stopping_enabled=p["early_stopping_enabled"], early_stopping_patience=p["early_stopping_patience"],
        early_stopping_min_delta=p["early_stopping_min_delta"],
        early_stopping_warmup_evals=p["early_stopping_warmup_evals"], **dpo,
        wandb_api_key=secrets.get("wandb_key"), wandb_base_url=p.get("wandb_base_url"),
        wandb_project_name=p.get("wandb_project_name"), wandb_name=p.get("wandb_name"),
        wandb_entity=p.get("wandb_entity"), hf_api_token=secrets.get("hf_api_token"),
        hf_output_repo_name=p.get("hf_output_repo_name"), from_hf_model=p.get("from_hf_model"),
        hf_model_revision=p.get("hf_model_revision"), template_model_dir=str(template) if template else None,
    )


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


# Resolved up front: between fork and exec (in a threaded worker) the child must not load libraries.
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the worker dies, however it dies, so a killed
    worker never leaves an orphan training on (Linux; elsewhere the heartbeat still requeues).
    Linux sends it when the forking *thread* ends; that is the job's thread, which outlives the
    child."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def train(ctx: WorkerContext, running: Running, config: TrainConfig,
          scratch: Path) -> tuple[Relay, int, str | None]:
    """Run the training child to its exit, relaying its reports. Returns the relay, the exit code
    and why it was asked to stop ("cancel", "shutdown" or None)."""
    job_id, beat = running.job_id, running.heartbeat
    report = scratch / "report.jsonl"
    relay = Relay(ctx.db, ctx.blobs, job_id, ctx.worker_id, report, ctx.pause)
    cmd = training_command(config, scratch / "config.json", report, ctx.settings.processes_per_job,
                           ctx.settings.recipe_module)
    with open(scratch / "train.log", "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                env=child_env(ctx.settings, running.devices), start_new_session=True,
                                preexec_fn=_die_with_parent)
    stop_reason: str | None = None
    paused = False
    try:
        while proc.poll() is None:
            relay.pump()
            beat.check()
            if beat.cancel_requested.is_set() and stop_reason is None:
                stop_reason = "cancel"
                proc.send_signal(signal.SIGTERM)
            if ctx.stopping.is_set() and stop_reason is None:
                stop_reason = "shutdown"
                proc.send_signal(signal.SIGTERM)
            if not paused and relay.listed_steps:  # the test seam: killed mid-training, resumable
                paused = True
                ctx.pause("training")
            time.sleep(0.1)
        relay.drain()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (scratch / "config.json").unlink(missing_ok=True)
    return relay, proc.returncode, stop_reason


# -- finishing ------------------------------------------------------------------------------------

def _cancel_if_requested(ctx: WorkerContext, job_id: str, step: int | None = None) -> bool:
    with ctx.db.session() as s:
        job = job_store.get_job(s, job_id)
        if job.status != JobStatus.CANCEL_REQUESTED or job.worker_id != ctx.worker_id:
            return False
        where = f" at step {step}" if step else ""
        transition(s, job_id, JobStatus.CANCELLED, event_type="job_stopped", message=f"Job cancelled{where}",
                   worker_id=None, owned_by=ctx.worker_id)
    return True


def _advance(ctx: WorkerContext, job_id: str, to: JobStatus, event_type: str, message: str,
             **columns: Any) -> None:
    """Move on to the next packaging stage, unless the user cancelled meanwhile."""
    try:
        with ctx.db.session() as s:
            transition(s, job_id, to, event_type=event_type, message=message, owned_by=ctx.worker_id, **columns)
    except IllegalTransition:
        if _cancel_if_requested(ctx, job_id):
            raise JobCancelled(job_id) from None
        with ctx.db.session() as s:
            if job_store.get_job(s, job_id).worker_id != ctx.worker_id:
                raise JobLost(job_id) from None
        raise


def finish(ctx: WorkerContext, running: Running, relay: Relay, code: int, stop_reason: str | None,
           scratch: Path) -> None:
    job_id = running.job_id
    running.heartbeat.check()
    if code == EXIT_STOPPED or (stop_reason and code != EXIT_OK):
        if stop_reason == "shutdown":
            try:
                with ctx.db.session() as s:
                    transition(s, job_id, JobStatus.QUEUED, event_type="job_restarted", level="warning",
                               message=f"Worker {ctx.worker_id} shut down at step {relay.last_step}; the job was "
                                       "requeued and resumes from its last checkpoint", worker_id=None,
                               heartbeat_at=None, owned_by=ctx.worker_id)
            except IllegalTransition:  # cancelled meanwhile, or no longer ours
                if not _cancel_if_requested(ctx, job_id, relay.last_step):
                    raise JobLost(job_id) from None
        elif not _cancel_if_requested(ctx, job_id, relay.last_step):
            raise TrainingFailed(f"training stopped unexpectedly at step {relay.last_step}")
        return
    if code != EXIT_OK:
        message = relay.error_message or _log_tail(scratch / "train.log")
        raise TrainingFailed(message, user_error=code == EXIT_USER_ERROR or relay.error_is_users)
    if relay.final_path is None:
        raise TrainingFailed("training ended without writing a final model")
    package_and_complete(ctx, running, relay)


def package_and_complete(ctx: WorkerContext, running: Running, relay: Relay) -> None:
    """Pack the final model, upload it, and then — in one transaction — list it and complete the
    job, so a completed job always has its model and a listed model always belongs to a job that
    completed (a worker killed before that commit leaves nothing listed; the rerun uploads anew)."""
    assert relay.final_path is not None
    job_id, beat = running.job_id, running.heartbeat
    _advance(ctx, job_id, JobStatus.COMPRESSING, "model_compressing", "Compressing the trained model")
    packed = pack_parts(ctx.blobs, job_id, relay.final_step, relay.final_path, ("model", "adapter"),
                        ctx.pause, "compressing")
    _event(ctx, job_id, "model_compression_complete", "Model compressed")
    _advance(ctx, job_id, JobStatus.UPLOADING, "model_uploading", "Uploading the trained model")
    stored = store_parts(ctx.blobs, job_id, relay.final_step, packed, final=True, pause=ctx.pause, phase="uploading")
    try:
        push_to_hub(ctx, job_id, relay.final_path)
        beat.check()
        with ctx.db.session() as s:
            list_parts(s, job_id, ctx.worker_id, relay.final_step, stored, final=True)
            job = job_store.get_job(s, job_id)
            price = int(job.token_count * ctx.settings.price_per_million_tokens * 1000)  # nanodollars
            job.params = {**job.params, "total_price_nanodollars": price}
            job_store.add_event(s, job_id, "model_upload_complete",
                            f"Model uploaded ({', '.join(p.part for p in stored)})",
                            fields={"model_path": f"jobs/{job_id}/final"})
            transition(s, job_id, JobStatus.COMPLETED, event_type="job_complete", message="Fine-tuning job completed",
                       worker_id=None, owned_by=ctx.worker_id)
    except IllegalTransition:
        discard(ctx.blobs, stored)
        if _cancel_if_requested(ctx, job_id):
            raise JobCancelled(job_id) from None
        raise JobLost(job_id) from None
    except BaseException:
        discard(ctx.blobs, stored)
        raise


def push_to_hub(ctx: WorkerContext, job_id: str, final_dir: Path) -> None:
    """Upload the model to the job's ``hf_output_repo_name``, if it has one. A refusal does not fail
    the job: the model stays downloadable here, and an error-level warning event says what went wrong."""
    with ctx.db.session() as s:
        job = job_store.get_job(s, job_id)
        repo, token = job.params.get("hf_output_repo_name"), ctx.secrets.open(job.secrets).get("hf_api_token")
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
