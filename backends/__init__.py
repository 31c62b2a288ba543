"""Installed as ``harness.backends`` (pyproject's ``package-dir`` maps this folder): the runtime registry.

Runtime name -> lazy ``"module:Class"``, so the CLI never imports torch to
print --help. Each runtime folder has a light ``config.py`` (its name and
settings class, imported here) and a heavy ``backend.py``, imported only when
a backend of that runtime is opened.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness.manifest import Variant

from .llamacpp.config import RUNTIME as LLAMACPP
from .llamacpp.config import LlamaCppSettings
from .ort.config import RUNTIME as ORT
from .ort.config import OrtSettings
from .pytorch.config import RUNTIME as TORCH
from .pytorch.config import TorchSettings

# Relative to this package, so the registry reads the same from the folder as from the installed name.
RUNTIMES: dict[str, str] = {
    TORCH: ".pytorch.backend:TorchBackend",
    ORT: ".ort.backend:OrtBackend",
    LLAMACPP: ".llamacpp.backend:LlamaCppBackend",
}

# Runtime name -> its settings class; light, for code that builds settings without loading a runtime.
SETTINGS_CLASSES: dict[str, type] = {LLAMACPP: LlamaCppSettings, ORT: OrtSettings, TORCH: TorchSettings}


class RuntimeUnavailable(Exception):
    """The runtime's package is missing or fails to import; the message says why."""


def backend_class(runtime: str):
    """The backend class of ``runtime``, importing its runtime package; RuntimeUnavailable when that fails."""
    if runtime not in RUNTIMES:
        raise KeyError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    module_name, class_name = RUNTIMES[runtime].split(":")
    try:
        module = importlib.import_module(module_name, __name__)
    except Exception as exc:  # an ImportError, or a broken native library
        raise RuntimeUnavailable(f"{runtime}: {type(exc).__name__}: {exc}") from exc
    return getattr(module, class_name)


def runtime_unavailable_reason(runtime: str, device: str = "cpu") -> str | None:
    """None when the runtime imports and its installed build runs on ``device``, else the reason it does not."""
    try:
        cls = backend_class(runtime)
    except RuntimeUnavailable as exc:
        return str(exc)
    reason = cls.device_unavailable_reason(device)
    return f"{runtime} on {device}: {reason}" if reason else None


def open_backend(variant: Variant, threads: int | None = None, device: str = "cpu", settings: Any = None):
    """An unloaded backend for ``variant``; use it as a context manager.

    ``threads``: None means every usable CPU (``harness.machine.environment.thread_count``).
    ``settings``: the variant's runtime's settings object (``SETTINGS_CLASSES[variant.runtime]``),
    None for its defaults; one of another runtime is a TypeError, raised before the runtime is imported.
    RuntimeUnavailable when the runtime does not import, or its installed build cannot run on ``device``
    (a CPU-only build asked for ``cuda``): the message says why and what to install.
    """
    expected = SETTINGS_CLASSES.get(variant.runtime)
    if settings is not None and expected is not None and not isinstance(settings, expected):
        raise TypeError(
            f"{variant.name}: runtime {variant.runtime!r} takes {expected.__name__} settings "
            f"(or None for its defaults), got {type(settings).__name__}"
        )
    cls = backend_class(variant.runtime)
    reason = cls.device_unavailable_reason(device)
    if reason:
        raise RuntimeUnavailable(f"{variant.runtime} on {device}: {reason}")
    return cls(variant, threads=threads, device=device, settings=settings)
