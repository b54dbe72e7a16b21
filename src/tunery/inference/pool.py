"""The models the engine keeps warm, within a memory budget.

A base model is loaded once and serves its plain requests and every LoRA adapter over it: the first
adapter turns it into a ``peft`` model, later ones are added by name, and each request's rows name
theirs (``adapter_names``), so one batch mixes adapters. A full fine-tune is a model of its own.
Loading happens on a request's first use (its wait, not an error). When weights would pass the budget,
the least recently used adapters and models that no request is using are unloaded first; if all are
in use the load waits for one to be released.

Every change to a loaded model (adding or removing an adapter) happens under that model's ``lock``,
which the engine's stepping thread also holds while it runs a step on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunery.errors import InvalidRequest, TuneryError
from tunery.inference.images import VisionChat
from tunery.inference.protocol import ModelRef
from tunery.inference.scheduler import Scheduler

log = logging.getLogger("tunery.inference")

# Sampling defaults a model's generation_config.json may set (vLLM's "generation config" behaviour).
DEFAULTED = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class ModelBusy(TuneryError):
    """Every loaded model is in use and no room is left for another one; retry shortly."""

    status_code = 503
    error_type = "server_error"


@dataclass(eq=False)
class AdapterEntry:
    name: str
    nbytes: int
    tokenizer: Any
    users: int = 0


@dataclass(eq=False)
class ModelEntry:
    key: str
    model: Any
    tokenizer: Any
    scheduler: Scheduler
    nbytes: int
    defaults: dict[str, Any]
    model_dir: Path
    vision: VisionChat | None = None  # a vision-language model's renderer (its processor), for images in chats
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: OrderedDict[str, AdapterEntry] = field(default_factory=OrderedDict)  # least recently used first
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Lease:
    """A request's hold on a loaded model (and adapter); nothing it holds is unloaded until released."""

    entry: ModelEntry
    adapter: str | None  # the peft adapter rows name; None: the base (the scheduler maps it to ``__base__``)
    tokenizer: Any


@dataclass
class PoolOptions:
    budget_bytes: int
    dtype: str  # "auto" (as stored) or a torch dtype name
    device: str  # "cpu" or "cuda"
    max_batch_size: int
    max_batch_tokens: int
    wait_for_room_s: float = 600.0


class ModelPool:
    def __init__(self, options: PoolOptions, locate_base: Callable[[ModelRef], Path],
                 fetch: Callable[[str], Path]):
        self.options = options
        self.locate_base = locate_base  # base model name → local directory
        self.fetch = fetch  # blob key of an archive → its unpacked directory
        self.entries: OrderedDict[str, ModelEntry] = OrderedDict()  # least recently used first
        self._state = threading.Condition()
        self._loading = threading.Lock()  # one load at a time keeps the budget arithmetic simple

    # -- leases -----------------------------------------------------------------------------------

    def lease(self, ref: ModelRef) -> Lease:
        """Load what ``ref`` names (if needed) and hold it; blocks while it loads. The model's use count
        taken in ``_entry`` is this lease's."""
        with self._loading:
            if ref.weights_key:
                entry = self._entry(f"weights:{ref.weights_key}", lambda: self.fetch(str(ref.weights_key)))
            else:
                entry = self._entry(f"base:{ref.base}@{ref.revision or ''}:{ref.base_path or ''}",
                                    lambda: self.locate_base(ref))
            adapter = None
            if ref.adapter_key:
                adapter = self._adapter(entry, ref.adapter_key)
        with self._state:
            entry.last_used = time.monotonic()
            self.entries.move_to_end(entry.key)
            if adapter is not None:
                adapter.users += 1
                entry.adapters.move_to_end(adapter.name)
        if adapter is not None:
            return Lease(entry, adapter.name, adapter.tokenizer)
        return Lease(entry, None, entry.tokenizer)

    def release(self, lease: Lease) -> None:
        with self._state:
            lease.entry.users -= 1
            if lease.adapter:
                lease.entry.adapters[lease.adapter].users -= 1
            self._state.notify_all()

    def models(self) -> list[ModelEntry]:
        """The loaded models now (a copy: loads and unloads happen on other threads)."""
        with self._state:
            return list(self.entries.values())

    def loaded(self) -> list[dict[str, Any]]:
        with self._state:
            return [{"key": e.key, "bytes": e.nbytes, "users": e.users,
                     "adapters": [{"name": a.name, "bytes": a.nbytes, "users": a.users} for a in e.adapters.values()]}
                    for e in self.entries.values()]

    # -- loading ----------------------------------------------------------------------------------

    def _entry(self, key: str, locate: Callable[[], Path]) -> ModelEntry:
        with self._state:
            entry = self.entries.get(key)
            if entry is not None:
                entry.users += 1
                return entry
        model_dir = locate()
        nbytes = _weights_bytes(model_dir)
        self._make_room(nbytes)
        model, tokenizer, vision = self._load(model_dir)
        entry = ModelEntry(key, model, tokenizer, self._scheduler(model, tokenizer), _param_bytes(model),
                           generation_defaults(model_dir), model_dir, vision, users=1)
        with self._state:
            self.entries[key] = entry
        log.info("loaded %s (%.1f MB)", key, entry.nbytes / 1e6)
        return entry

    def _adapter(self, entry: ModelEntry, blob_key: str) -> AdapterEntry:
        name = "a" + hashlib.sha256(blob_key.encode()).hexdigest()[:16]  # a valid module key for peft
        with self._state:
            if name in entry.adapters:
                return entry.adapters[name]
        adapter_dir = self.fetch(blob_key)
        nbytes = sum(p.stat().st_size for p in adapter_dir.glob("adapter_model.*"))
        self._make_room(nbytes, keep=entry)
        # A vision-language model's adapter renders with the base's processor (its tokenizer and template).
        own = (adapter_dir / "tokenizer_config.json").is_file() and entry.vision is None
        tokenizer = _load_tokenizer(adapter_dir) if own else entry.tokenizer
        with entry.lock:
            self._attach(entry, name, adapter_dir)
        adapter = AdapterEntry(name, nbytes, tokenizer)
        with self._state:
            entry.adapters[name] = adapter
        log.info("loaded adapter %s on %s (%.1f MB)", name, entry.key, nbytes / 1e6)
        return adapter

    def _attach(self, entry: ModelEntry, name: str, adapter_dir: Path) -> None:
        from peft import PeftModel

        if isinstance(entry.model, PeftModel):
            entry.model.load_adapter(str(adapter_dir), adapter_name=name)
        else:
            with torch.random.fork_rng(devices=[]):  # peft initialises LoRA weights before loading them
                entry.model = PeftModel.from_pretrained(entry.model, str(adapter_dir), adapter_name=name)
            entry.model.eval()
            entry.scheduler.model = entry.model
            entry.scheduler.use_adapters()

    def _detach(self, entry: ModelEntry, name: str) -> None:
        """Remove adapter ``name``; without adapters left, the model is the plain base again."""
        if len(entry.adapters) == 1:
            entry.model = entry.model.unload()  # peft: the base model, its LoRA layers removed
            entry.scheduler.model = entry.model
            entry.scheduler.use_adapters(False)
            return
        entry.model.delete_adapter(name)
        # peft must always have an active adapter; rows name theirs anyway (adapter_names).
        entry.model.set_adapter(next(n for n in entry.adapters if n != name))

    def _load(self, model_dir: Path) -> tuple[Any, Any, VisionChat | None]:
        """The model (a vision-language one with its image-text-to-text class), its tokenizer, and for a
        vision-language model what renders its chats (its processor, whose tokenizer is the one returned)."""
        from transformers import AutoConfig

        from tunery.models.architecture import auto_model_class
        from tunery.models.processor import load_processor

        dtype: Any = self.options.dtype if self.options.dtype == "auto" else getattr(torch, self.options.dtype)
        auto = auto_model_class(AutoConfig.from_pretrained(model_dir))
        model: Any = auto.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
        model.to(self.options.device).eval()
        processor = load_processor(model_dir)
        if processor is None:
            return model, _load_tokenizer(model_dir), None
        return model, processor.tokenizer, VisionChat(processor, model)

    def _scheduler(self, model: Any, tokenizer: Any) -> Scheduler:
        return Scheduler(model, tokenizer, max_batch_size=self.options.max_batch_size,
                         max_batch_tokens=self.options.max_batch_tokens)

    # -- the budget -------------------------------------------------------------------------------

    def _used(self) -> int:
        return sum(e.nbytes + sum(a.nbytes for a in e.adapters.values()) for e in self.entries.values())

    def _make_room(self, nbytes: int, keep: ModelEntry | None = None) -> None:
        budget = self.options.budget_bytes
        if nbytes > budget:
            raise InvalidRequest(f"this model needs {nbytes / 1e6:.0f} MB, more than the inference memory budget "
                                 f"of {budget / 1e6:.0f} MB (TUNERY_INFERENCE_MEMORY_MB)", param="model")
        deadline = time.monotonic() + self.options.wait_for_room_s
        with self._state:
            while self._used() + nbytes > budget:
                if not self._evict_one(keep) and not self._state.wait(max(0.0, deadline - time.monotonic())):
                    raise ModelBusy()

    def _evict_one(self, keep: ModelEntry | None) -> bool:
        """Unload the least recently used adapter, else model, that nothing uses. Holds ``_state``."""
        for entry in self.entries.values():
            for adapter in entry.adapters.values():
                if adapter.users == 0:
                    with entry.lock:
                        self._detach(entry, adapter.name)
                    del entry.adapters[adapter.name]
                    log.info("unloaded adapter %s from %s", adapter.name, entry.key)
                    return True
        for entry in self.entries.values():
            if entry.users == 0 and entry is not keep and not entry.scheduler.has_work():
                del self.entries[entry.key]
                log.info("unloaded %s", entry.key)
                return True
        return False


def _load_tokenizer(model_dir: Path) -> Any:
    from tunery.training.model import load_tokenizer  # the fallback chat template training used

    return load_tokenizer(model_dir)


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) or \
        sum(p.stat().st_size for p in model_dir.glob("*.bin"))


def _param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def generation_defaults(model_dir: Path) -> dict[str, Any]:
    """The sampling settings the model's generation_config.json sets explicitly."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    return {k: config[k] for k in DEFAULTED if config.get(k) is not None}
