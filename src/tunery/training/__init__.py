"""The training engine: configs, data path, model loading, checkpoints and the recipes.

Never imports tunery.api, tunery.store, tunery.queue or tunery.worker: a recipe runs as a plain
script (``python -m tunery.training.recipes.sft --config job.json --report report.jsonl``).
"""

import os

# PyTorch's OpenMP threads spin while they wait for work by default. On a CPU shared with other
# processes (a worker running several jobs, other users) a spinning thread takes the core its
# partner needs to finish the op, and every op waits for the slower of the two: one LoRA step on
# the 2-core dev box took 3.9 s with 2 threads against 0.5 s with 1. Passive waiting made 2 threads
# as fast as 1 under that load (0.58 s). libgomp reads this once, when torch is first imported, so it
# is set here, before any engine module imports torch; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
