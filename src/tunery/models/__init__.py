"""Base models: the built-in tiny models, the name → directory registry and per-model limits."""
