"""What one child process does for one variant: efficiency first, then accuracy against the reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from harness import backends, defaults
from harness.kernels import set_num_threads
from harness.manifest import Variant
from harness.measure.accuracy import score_variant
from harness.measure.efficiency import load_seconds, measure_efficiency, measure_point
from harness.measure.reference_record import (
    LogitRecorder,
    RecordedReference,
    record_limit,
)
from harness.measure.tasks import TaskSpec, backend_lm, score_tasks
from harness.results import Point, TaskScores, VariantRow
from harness.text.protocols import Window
from harness.text.tokenizer import TokenizedText


@dataclass(frozen=True)
class MeasureInputs:
    """Everything every variant's child is measured with: one object, shared by all the jobs of a run.

    ``token_pool`` is the ids speed prompts are drawn from
    (``harness.text.tokenizer.speed_token_pool``), read once by the parent: from a
    GGUF it takes seconds.
    """

    reference: Variant | None
    windows: Sequence[Window]
    text: TokenizedText | None
    prompts: Sequence[Sequence[int]]  # token ids of the generation-agreement prompts
    token_pool: np.ndarray | None
    threads: int
    device: str
    prompt_tokens: int
    gen_tokens: int
    warmup: int
    repetitions: int
    agreement_tokens: int  # greedy tokens per prompt for generation agreement
    runtime_settings: dict[str, Any] = field(default_factory=dict)  # runtime -> its settings object
    max_repetitions: int = defaults.MAX_REPETITIONS  # repetitions is the minimum (harness.measure.efficiency)
    precision_target_pct: float = defaults.PRECISION_TARGET_PCT
    speed_budget_s: float = defaults.SPEED_BUDGET_S
    tasks: TaskSpec | None = None  # lm-eval's tasks, scored after the accuracy pass
    variant_settings: dict[str, Any] = field(default_factory=dict)  # variant -> its own runtime settings (--sweep KV types)

    def settings_for(self, variant: Variant) -> Any:
        """The runtime settings ``variant`` runs with: its own, else its runtime's."""
        return self.variant_settings.get(variant.name, self.runtime_settings.get(variant.runtime))


def measure_variant(variant: Variant, inputs: MeasureInputs, record_dir: str | None = None) -> dict[str, Any]:
    """The result row of ``variant`` as a plain dict (run in a fresh child, so load time and peak RSS are its own).

    Speed and memory are measured with only this variant loaded; the reference
    is loaded afterwards for the accuracy pass, so it never inflates peak RSS.
    The reference's own child records its logits in ``record_dir``
    (``harness.measure.reference_record``); a variant's child reads them when the
    record is complete, else (or without a ``record_dir``) it runs the
    reference beside it.
    """
    identity = (variant.name, variant.runtime, variant.precision)
    try:
        backend = _open(variant, inputs)
    except backends.RuntimeUnavailable as exc:
        return VariantRow.unavailable(*identity, str(exc)).to_dict()
    set_num_threads(inputs.threads)
    try:
        load_s = load_seconds(backend)  # loads it: cold, in this fresh process
        described = backend.describe()
        efficiency = measure_efficiency(
            backend, inputs.prompt_tokens, inputs.gen_tokens, inputs.warmup, inputs.repetitions,
            max_repetitions=inputs.max_repetitions, precision_target_pct=inputs.precision_target_pct,
            budget_s=inputs.speed_budget_s, load_s=load_s, token_pool=inputs.token_pool,
        )
        accuracy = _score(backend, variant, inputs, record_dir)
        tasks = _score_tasks(backend, variant, inputs.tasks) if inputs.tasks else None
    finally:
        backend.close()
    return VariantRow(*identity, backend=described, accuracy=accuracy, efficiency=efficiency, tasks=tasks).to_dict()


def _score_tasks(backend, variant: Variant, spec: TaskSpec) -> dict[str, TaskScores]:
    """lm-eval's tasks on the loaded ``backend``, tokenized by the model's one transformers tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or variant.tokenizer_path)
    scored = score_tasks(backend_lm(backend, tokenizer, spec.max_length), spec)
    return {task: TaskScores.from_dict(scores) for task, scores in scored.items()}


def _open(variant: Variant, inputs: MeasureInputs, threads: int | None = None):
    return backends.open_backend(variant, threads=threads or inputs.threads, device=inputs.device,
                                 settings=inputs.settings_for(variant))


def measure_point_row(variant: Variant, inputs: MeasureInputs, point: Point) -> dict[str, Any]:
    """The speed of ``variant`` at ``point``, as a row of its own (run in a fresh child, on ``point.threads``).

    A runtime that cannot run the point (onnxruntime-genai with a filled cache of several sequences) gives an
    unavailable row that says why.
    """
    identity = (variant.name, variant.runtime, variant.precision)
    try:
        backend = _open(variant, inputs, point.threads)
    except backends.RuntimeUnavailable as exc:
        return VariantRow.unavailable(*identity, str(exc)).to_dict()
    set_num_threads(point.threads)
    try:
        load_s = load_seconds(backend)
        described = backend.describe()
        efficiency = measure_point(
            backend, point, inputs.warmup, inputs.repetitions, max_repetitions=inputs.max_repetitions,
            precision_target_pct=inputs.precision_target_pct, budget_s=inputs.speed_budget_s, load_s=load_s,
            token_pool=inputs.token_pool,
        )
    except NotImplementedError as exc:
        return VariantRow.unavailable(*identity, str(exc)).to_dict()
    finally:
        backend.close()
    return VariantRow(*identity, backend=described, efficiency=efficiency).to_dict()


def _score(backend, variant: Variant, inputs: MeasureInputs, record_dir: str | None):
    """The accuracy of the loaded ``backend``: against the record, the live reference, or none."""

    common = dict(text=inputs.text, prompts=inputs.prompts, max_new_tokens=inputs.agreement_tokens)
    reference = inputs.reference
    if reference is None or reference.name == variant.name:
        if reference is None or record_dir is None:
            return score_variant(backend, inputs.windows, None, **common)
        with LogitRecorder(record_dir, record_limit(record_dir)) as recorder:
            return score_variant(backend, inputs.windows, None, record=recorder, **common)
    recorded = RecordedReference.open_if_complete(record_dir, inputs.windows)
    if recorded is not None:
        return score_variant(backend, inputs.windows, recorded, **common)
    with _open(reference, inputs) as ref_backend:
        return score_variant(backend, inputs.windows, ref_backend, **common)
