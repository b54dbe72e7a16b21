"""The training engine: configs, data path, model loading, checkpoints and the recipes.

Never imports tunery.api, tunery.store, tunery.queue or tunery.worker: a recipe runs as a plain
script (``python -m tunery.training.recipes.sft --config job.json --report report.jsonl``).
"""
