"""What the benchmarks share: finding variants, loading a harness backend, printing medians."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from harness.manifest import MANIFEST_NAME, Variant

# The variant each runtime is benchmarked on unless --variant-dir says otherwise.
DEFAULT_VARIANTS = {"llamacpp": "llamacpp-q8_0", "ort": "ort-int4", "torch": "torch-fp32"}


def prepared_variants() -> dict[str, Variant]:
    """The default model's variants already in the cache (``python -m harness prepare`` makes them)."""
    from harness.build.sources import resolve_source
    from harness.build.variants import load_prepared

    return load_prepared(resolve_source(None))


def variant_from_dir(path: str | Path) -> Variant:
    path = Path(path)
    if not (path / MANIFEST_NAME).is_file():
        sys.exit(f"--variant-dir {path}: no {MANIFEST_NAME} there; pass a variant directory from the harness cache")
    return Variant.load(path)


def variant_from_gguf(path: str | Path) -> Variant:
    """The variant of a GGUF file: its manifest when it lies in the cache, else one made up from the file."""
    path = Path(path).resolve()
    if (path.parent / MANIFEST_NAME).is_file():
        return Variant.load(path.parent)
    return Variant(
        name=f"llamacpp-{path.stem}",
        runtime="llamacpp",
        precision=path.stem,
        path=str(path),
        tokenizer_path=str(path),  # the GGUF's own vocabulary gives the speed prompts' ids
        source_sha256="",
        size_bytes=path.stat().st_size,
        n_params=0,
        bits_per_weight=float("nan"),
    )


def loaded_backend(variant: Variant, threads: int):
    """A loaded harness backend, or exit saying why the runtime cannot run."""
    from harness.backends import open_backend, runtime_unavailable_reason

    reason = runtime_unavailable_reason(variant.runtime)
    if reason:
        raise RuntimeError(f"the harness backend is not available: {reason}")
    backend = open_backend(variant, threads=threads)
    backend.load()
    return backend


def summary(values: list[float]) -> dict[str, float | list[float]]:
    return {"median": float(np.median(values)), "spread": [float(min(values)), float(max(values))], "n": len(values)}
