"""Runtime registry: runtime name -> lazy "module:Class", so the CLI never imports torch to print --help."""

from __future__ import annotations

import importlib

from harness.manifest import Variant

RUNTIMES: dict[str, str] = {
    "torch": "harness.backends.pytorch.backend:TorchBackend",
    "ort": "harness.backends.ort.backend:OrtBackend",
    "llamacpp": "harness.backends.llamacpp.backend:LlamaCppBackend",
}


class RuntimeUnavailable(Exception):
    """The runtime's package is missing or fails to import; the message says why."""


def backend_class(runtime: str):
    if runtime not in RUNTIMES:
        raise KeyError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    module_name, class_name = RUNTIMES[runtime].split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or a broken native library
        raise RuntimeUnavailable(f"{runtime}: {type(exc).__name__}: {exc}") from exc
    return getattr(module, class_name)


def runtime_unavailable_reason(runtime: str) -> str | None:
    """None when the runtime imports, else the reason it does not."""
    try:
        backend_class(runtime)
    except RuntimeUnavailable as exc:
        return str(exc)
    return None


def open_backend(variant: Variant, threads: int | None = None, device: str = "cpu"):
    """An unloaded backend for ``variant``; use it as a context manager."""
    return backend_class(variant.runtime)(variant, threads=threads, device=device)
