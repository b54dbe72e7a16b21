"""One module per training method; each is runnable with ``python -m``."""
