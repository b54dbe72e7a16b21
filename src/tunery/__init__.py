"""tunery: the Together AI fine-tuning API, self-hosted, that really trains."""

__version__ = "0.1.0"
