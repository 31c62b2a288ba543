"""harness: one model, every runtime and precision, accuracy next to efficiency."""

__version__ = "0.1.0"
