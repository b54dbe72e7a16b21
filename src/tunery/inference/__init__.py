"""Inference: generate text with base models and fine-tuned ones, many requests at once.

Two layers, usable apart:

- the **core** (``scheduler.py`` with ``batch.py``, ``sampling.py``, ``detokenize.py``): continuous
  batching over one model object that the caller already holds. Requests join and leave the running
  batch between decode steps and share one left-padded KV cache. A training child (RL sampling with the
  policy's current weights) uses it in-process: ``tunery.inference.scheduler.generate(model, prompts, params)``.
- the **engine** (``engine.py``, ``pool.py``, ``server.py``): a process of its own that keeps models warm
  (base models, full fine-tunes, LoRA adapters over one loaded base), turns chat requests into prompts,
  and serves the API over loopback HTTP. ``supervisor.py`` starts and restarts it for ``tunery serve``;
  ``client.py`` is what the API forwards through.

Never imports tunery.api or tunery.store (the API resolves model names and passes plain references).
"""

import os

# As in tunery.training: spinning OpenMP threads make small ops many times slower on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
