"""What one child process does for one variant: efficiency first, then accuracy against the reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from harness.manifest import Variant
from harness.protocols import Window


@dataclass(frozen=True)
class MeasureSettings:
    threads: int | None
    device: str
    prompt_tokens: int
    gen_tokens: int
    warmup: int
    repetitions: int
    prompt_new_tokens: int = 16  # greedy tokens per prompt for generation agreement


def measure_variant(
    variant: Variant,
    reference: Variant | None,
    windows: Sequence[Window],
    text: Any,
    prompts: Sequence[Sequence[int]],
    settings: MeasureSettings,
    token_pool: Any = None,
    reference_record: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """The result row of ``variant`` (run in a fresh child, so load time and peak RSS are its own).

    Speed and memory are measured with only this variant loaded; the reference
    is loaded afterwards for the accuracy pass, so it never inflates peak RSS.
    ``token_pool`` is the ids speed prompts are drawn from (``speed_token_pool``),
    read once by the caller: from a GGUF it takes seconds.
    ``reference_record`` is ``(directory, limit_bytes)``: the reference's own
    child records its logits there, and a variant's child reads them when the
    record is complete, else it runs the reference beside it.
    """
    from harness.accuracy import score_variant
    from harness.backends import RuntimeUnavailable, open_backend
    from harness.efficiency import load_seconds, measure_efficiency
    from harness.kernels import set_num_threads
    from harness.reference_record import LogitRecorder, RecordedReference

    row: dict[str, Any] = {"variant": variant.name, "runtime": variant.runtime, "precision": variant.precision}
    try:
        backend = open_backend(variant, threads=settings.threads, device=settings.device)
    except RuntimeUnavailable as exc:
        return {**row, "status": "unavailable", "error": str(exc)}
    if settings.threads:
        set_num_threads(settings.threads)
    try:
        load_s = load_seconds(backend)  # loads it: cold, in this fresh process
        row["backend"] = backend.describe()
        row["efficiency"] = measure_efficiency(
            backend, settings.prompt_tokens, settings.gen_tokens, settings.warmup, settings.repetitions,
            load_s=load_s, token_pool=token_pool,
        )
        record_dir, record_limit = reference_record or (None, 0)
        if reference is None or reference.name == variant.name:
            recorder = LogitRecorder(record_dir, record_limit) if reference is not None and record_dir else None
            try:
                row["accuracy"] = score_variant(backend, windows, None, text=text, prompts=prompts,
                                                max_new_tokens=settings.prompt_new_tokens, record=recorder)
            finally:
                if recorder is not None:
                    recorder.discard()  # a no-op once finished
        elif (recorded := RecordedReference.open_if_complete(record_dir, windows)) is not None:
            row["accuracy"] = score_variant(backend, windows, recorded, text=text, prompts=prompts,
                                            max_new_tokens=settings.prompt_new_tokens)
        else:
            with open_backend(reference, threads=settings.threads, device=settings.device) as ref_backend:
                row["accuracy"] = score_variant(
                    backend, windows, ref_backend, text=text, prompts=prompts,
                    max_new_tokens=settings.prompt_new_tokens,
                )
    finally:
        backend.close()
    return {**row, "status": "ok", "error": None}
