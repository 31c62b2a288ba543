"""The result schema in code: a run, its variant rows, and each row's accuracy and efficiency.

A child builds a ``VariantRow`` and sends ``to_dict()`` across the process
boundary; results.jsonl, report.json and the results store hold the same plain
dicts, and every reader turns them back with ``from_dict``. The README's
report.json section lists exactly these fields (``tests/test_results.py``).

Lists stay lists (spreads, ``noisy``, ``generation_divergence``) so a row
round-trips through JSON unchanged. Fields marked optional are left out of
``to_dict`` when unset: the GPU figures are absent on a CPU run, never zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Mapping

import numpy as np

# 4: operating points (RunRecord.points, VariantRow.point); 3: lm-eval task scores (VariantRow.tasks);
# 2: several models per run; 1 to 3 are read as well
SCHEMA_VERSION = 4
OK, FAILED, UNAVAILABLE = "ok", "failed", "unavailable"

_OPTIONAL = {"optional": True}


def json_safe(value):
    """``value`` with numpy scalars made plain and NaN/infinities replaced by None, so the JSON is strict."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class _Record:
    """``to_dict``/``from_dict`` for a frozen dataclass of plain values and nested records."""

    NESTED: ClassVar[dict[str, type]] = {}  # field -> record type
    NESTED_LISTS: ClassVar[dict[str, type]] = {}  # field -> record type of each item
    NESTED_MAPS: ClassVar[dict[str, type]] = {}  # field -> record type of each value of a name -> record map

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            if isinstance(value, _Record):
                value = value.to_dict()
            elif f.name in self.NESTED_LISTS:
                value = [item.to_dict() for item in value]
            elif f.name in self.NESTED_MAPS and value is not None:
                value = {name: item.to_dict() for name, item in value.items()}
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """The record in ``data``; missing keys take their defaults, unknown keys (older runs) are left out."""
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in cls.NESTED and value is not None:
                value = cls.NESTED[f.name].from_dict(value)
            elif f.name in cls.NESTED_LISTS:
                value = tuple(cls.NESTED_LISTS[f.name].from_dict(item) for item in value or ())
            elif f.name in cls.NESTED_MAPS and value is not None:
                value = {name: cls.NESTED_MAPS[f.name].from_dict(item) for name, item in value.items()}
            values[f.name] = value
        return cls(**values)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Accuracy(_Record):
    """How well a variant predicts the text, and (against a reference) how far it moved.

    Definitions, and how each relates to llama-perplexity's printout, are in
    ``harness.measure.accuracy`` and ``harness.measure.divergence_stats``.
    """

    ppl: float | None = None
    ppl_stderr: float | None = None
    nll_mean: float | None = None
    tokens_scored: int = 0
    word_ppl: float | None = None
    byte_ppl: float | None = None
    bits_per_byte: float | None = None
    # Against the reference; None for the reference itself and for a run without one.
    # Paired over the same tokens: d = nll_variant - nll_reference per token.
    delta_nll_mean: float | None = None  # mean d = ln(PPL / PPL_ref)
    delta_nll_stderr: float | None = None  # standard error of mean d
    delta_ppl_pct: float | None = None  # 100 (exp(mean d) - 1)
    delta_ppl_pct_ci: list[float] | None = None  # [low, high], 95 %: 100 (exp(mean d -/+ 1.96 stderr) - 1)
    nll_correlation: float | None = None  # Pearson r of the two runs' per-token NLL
    delta_bits_per_byte: float | None = None  # sum d / ln 2 / bytes
    delta_bits_per_byte_ci: list[float] | None = None  # [low, high], 95 %
    paired_sums: dict[str, float] | None = None  # the streamed sums the paired figures come from
    kld_mean: float | None = None
    kld_stderr: float | None = None
    kld_max: float | None = None
    kld_p999: float | None = None
    kld_p99: float | None = None
    kld_p95: float | None = None
    kld_p90: float | None = None
    kld_p50: float | None = None
    kld_p10: float | None = None
    kld_p05: float | None = None
    kld_p01: float | None = None
    kld_p001: float | None = None
    kld_min: float | None = None
    top1_agreement: float | None = None  # percent
    top1_agreement_stderr: float | None = None  # percent, binomial
    # Δp = p_variant(target) - p_reference(target): a probability (llama.cpp prints it in %).
    delta_p_mean: float | None = None
    delta_p_stderr: float | None = None
    delta_p_max: float | None = None
    delta_p_p999: float | None = None
    delta_p_p99: float | None = None
    delta_p_p95: float | None = None
    delta_p_p90: float | None = None
    delta_p_p75: float | None = None
    delta_p_p50: float | None = None
    delta_p_p25: float | None = None
    delta_p_p10: float | None = None
    delta_p_p05: float | None = None
    delta_p_p01: float | None = None
    delta_p_p001: float | None = None
    delta_p_min: float | None = None
    delta_p_rms: float | None = None
    delta_p_rms_stderr: float | None = None
    generation_divergence: list[int | None] | None = None  # per prompt: first differing position, None if identical
    wall_s: float | None = None


@dataclass(frozen=True)
class Efficiency(_Record):
    """Load, speed, latency and resources of a variant.

    Each repeated figure (``TIMED``, and the energies where measured) is the
    median of its repetitions with its ``_spread`` [min, max] and ``_ci``, the
    95 % interval of the median (``harness.stats``); ``repetition_values``
    keeps the values themselves, so two runs can be compared (``store.diff``).
    Runs stored before the intervals have no ``_ci`` and no values.
    """

    TIMED: ClassVar[tuple[str, ...]] = (
        "prefill_tok_s", "decode_tok_s", "ttft_ms", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms",
    )
    ENERGY: ClassVar[tuple[str, ...]] = ("energy_j", "energy_per_token_j", "cpu_energy_j", "cpu_energy_per_token_j")

    load_s: float | None = None
    size_bytes: int | None = None
    bits_per_weight: float | None = None
    prefill_tok_s: float | None = None
    prefill_tok_s_spread: list[float] | None = None
    prefill_tok_s_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    decode_tok_s: float | None = None
    decode_tok_s_spread: list[float] | None = None
    decode_tok_s_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    ttft_ms: float | None = None
    ttft_ms_spread: list[float] | None = None
    ttft_ms_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    # Inter-token latency: absent when one token is generated (no gap to time).
    itl_p50_ms: float | None = field(default=None, metadata=_OPTIONAL)
    itl_p50_ms_spread: list[float] | None = field(default=None, metadata=_OPTIONAL)
    itl_p50_ms_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    itl_p90_ms: float | None = field(default=None, metadata=_OPTIONAL)
    itl_p90_ms_spread: list[float] | None = field(default=None, metadata=_OPTIONAL)
    itl_p90_ms_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    itl_p99_ms: float | None = field(default=None, metadata=_OPTIONAL)
    itl_p99_ms_spread: list[float] | None = field(default=None, metadata=_OPTIONAL)
    itl_p99_ms_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    # At an operating point of several sequences, prefill_tok_s and decode_tok_s are the aggregates over
    # all of them (llama-batched-bench's S_PP and S_TG); one sequence's share of decode is this.
    decode_seq_tok_s: float | None = field(default=None, metadata=_OPTIONAL)
    kv_cache_mb: float | None = field(default=None, metadata=_OPTIONAL)  # the cache at its fullest, where the runtime says
    peak_rss_mb: float | None = None
    cpu_util_pct: float | None = None  # 100 = one core
    # On an NVIDIA GPU only; energy over the timed decode runs.
    gpu_peak_mem_mb: float | None = field(default=None, metadata=_OPTIONAL)
    gpu_util_pct: float | None = field(default=None, metadata=_OPTIONAL)
    energy_j: float | None = field(default=None, metadata=_OPTIONAL)
    energy_j_spread: list[float] | None = field(default=None, metadata=_OPTIONAL)
    energy_j_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    energy_per_token_j: float | None = field(default=None, metadata=_OPTIONAL)
    energy_per_token_j_spread: list[float] | None = field(default=None, metadata=_OPTIONAL)
    energy_per_token_j_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    # CPU package energy (RAPL) over the timed decode runs, where the machine lets it be read.
    cpu_energy_j: float | None = field(default=None, metadata=_OPTIONAL)
    cpu_energy_j_spread: list[float] | None = field(default=None, metadata=_OPTIONAL)
    cpu_energy_j_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    cpu_energy_per_token_j: float | None = field(default=None, metadata=_OPTIONAL)
    cpu_energy_per_token_j_spread: list[float] | None = field(default=None, metadata=_OPTIONAL)
    cpu_energy_per_token_j_ci: list[float] | None = field(default=None, metadata=_OPTIONAL)
    noisy: list[str] = field(default_factory=list)  # repeated figures whose interval missed the precision target
    precision_target_pct: float | None = field(default=None, metadata=_OPTIONAL)  # interval half-width, % of median
    prompt_tokens: int | None = None
    gen_tokens: int | None = None
    repetitions: int | None = None  # measured rounds; a test within its target sits out the later ones
    speed_wall_s: float | None = field(default=None, metadata=_OPTIONAL)  # the speed tests, warm-ups included
    repetition_values: dict[str, list[float]] | None = field(default=None, metadata=_OPTIONAL)  # figure -> values

    def spread(self, key: str) -> tuple[float, float] | None:
        """``[min, max]`` of a repeated figure over the repetitions, or None."""
        return finite_pair(getattr(self, f"{key}_spread", None))

    def interval(self, key: str) -> tuple[float, float] | None:
        """The 95 % interval of a repeated figure's median, or None (a run stored before intervals)."""
        return finite_pair(getattr(self, f"{key}_ci", None))

    def values(self, key: str) -> list[float] | None:
        """The measured repetitions of a figure, or None (a run stored before they were kept)."""
        values = (self.repetition_values or {}).get(key)
        return [float(v) for v in values] if values else None


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def finite_pair(value: Any) -> tuple[float, float] | None:
    """A stored ``[low, high]`` (a spread or an interval) as two finite floats, else None."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = finite_number(value[0]), finite_number(value[1])
        if low is not None and high is not None:
            return low, high
    return None


@dataclass(frozen=True)
class NodeInfo(_Record):
    """The machine a row was measured on: rows from different hardware must not be compared as equals."""

    host: str | None = None
    cpu: str | None = None
    gpu: str | None = field(default=None, metadata=_OPTIONAL)  # the first NVIDIA GPU's name, absent without one
    ray_node: str | None = field(default=None, metadata=_OPTIONAL)  # the Ray node's id (--ray): two nodes may share a host

    def hardware(self) -> tuple[str | None, str | None]:
        """What makes two rows' speeds comparable: the CPU and GPU, not the host's name."""
        return self.cpu, self.gpu

    @property
    def label(self) -> str:
        """The node as the table names it: its host, and its Ray node id's start where it has one."""
        return "/".join(part for part in (self.host, (self.ray_node or "")[:8]) if part) or "?"


@dataclass(frozen=True)
class Point(_Record):
    """An operating point the speed tests ran at, as llama-bench and llama-batched-bench set one up.

    ``depth`` tokens fill each sequence's cache first (llama-bench's ``-d``); then ``batch`` sequences
    (llama-batched-bench's ``-npl``), each with its own prompt, prefill ``prompt`` tokens together and
    decode ``gen`` tokens together, on ``threads`` threads.
    """

    depth: int = 0
    batch: int = 1
    threads: int | None = None
    prompt: int | None = None
    gen: int | None = None

    AXES: ClassVar[tuple[str, ...]] = ("depth", "batch", "threads", "prompt", "gen")

    @property
    def key(self) -> str:
        """One string per point, stable across runs: what a resumed run matches a point by."""
        return f"d{self.depth}/b{self.batch}/t{self.threads}/pp{self.prompt}/tg{self.gen}"

    @property
    def where(self) -> str:
        """The point after llama-bench's ``@ d4096``: depth, then batch and threads ("d4096, b8, t2")."""
        return f"d{self.depth}, b{self.batch}, t{self.threads}"

    @property
    def label(self) -> str:
        """The point as llama-bench names its tests: "pp512+tg32 @ d4096, b8, t2"."""
        return f"pp{self.prompt}+tg{self.gen} @ {self.where}"

    def coordinate(self, axis: str) -> int | None:
        return getattr(self, axis)


@dataclass(frozen=True)
class TaskScores(_Record):
    """One lm-eval task on one variant: its metrics as lm-eval names them, and each document's outcome.

    ``outcomes`` holds, for every metric lm-eval scores per document, one value per scored document in
    the order of ``doc_ids`` (1/0 for ``acc``, ``acc_norm``, ``exact_match``): what pairs a variant with
    its reference document by document. The prompts are not kept.
    """

    metrics: dict[str, float | None] = field(default_factory=dict)  # "acc", "acc_norm", "exact_match,strict", ...
    stderr: dict[str, float | None] = field(default_factory=dict)  # metric -> lm-eval's standard error
    docs: int = 0  # documents scored
    doc_ids: list[int] = field(default_factory=list)
    outcomes: dict[str, list[float]] = field(default_factory=dict)  # metric -> per document, in doc_ids' order
    seconds: float | None = None  # the task's wall time on this variant

    @property
    def main_metric(self) -> str | None:
        """The metric a table shows: the first of lm-eval's usual headline metrics the task has."""
        for name in MAIN_TASK_METRICS:
            if name in self.metrics:
                return name
        return next(iter(self.metrics), None)


# The metric a task's column shows, in order of preference (lm-eval's headline metrics).
MAIN_TASK_METRICS = ("acc_norm", "acc", "exact_match", "exact_match,strict-match", "f1", "mcc", "word_perplexity")


@dataclass(frozen=True)
class VariantRow(_Record):
    """One variant's result: what it is, whether it ran, and its figures."""

    NESTED: ClassVar[dict[str, type]] = {"accuracy": Accuracy, "efficiency": Efficiency, "node": NodeInfo,
                                         "point": Point}
    NESTED_MAPS: ClassVar[dict[str, type]] = {"tasks": TaskScores}

    variant: str
    runtime: str
    precision: str
    status: str = OK  # ok | failed | unavailable
    error: str | None = None  # why it failed or is unavailable
    backend: dict[str, Any] | None = None  # runtime version, device, threads, dtype, runtime settings
    accuracy: Accuracy | None = None
    efficiency: Efficiency | None = None
    traceback: str | None = field(default=None, metadata=_OPTIONAL)  # a child that raised
    model: str | None = field(default=None, metadata=_OPTIONAL)  # the run's ModelInfo.name it belongs to
    node: NodeInfo | None = field(default=None, metadata=_OPTIONAL)  # where it was measured
    started_unix: float | None = field(default=None, metadata=_OPTIONAL)  # its child's start and end, seconds
    ended_unix: float | None = field(default=None, metadata=_OPTIONAL)  # since the epoch, on that node's clock
    tasks: dict[str, TaskScores] | None = field(default=None, metadata=_OPTIONAL)  # lm-eval task -> its scores
    # A row of RunRecord.points: the operating point its efficiency was measured at (no accuracy: the
    # variant's row in RunRecord.results has it).
    point: Point | None = field(default=None, metadata=_OPTIONAL)

    @classmethod
    def failed(cls, variant: str, runtime: str, precision: str, error: str, traceback: str | None = None) -> "VariantRow":
        """The row of a variant that did not finish: the only place a failed row is made."""
        return cls(variant, runtime, precision, FAILED, error, traceback=traceback)

    @classmethod
    def unavailable(cls, variant: str, runtime: str, precision: str, reason: str) -> "VariantRow":
        """The row of a variant whose runtime is not installed here."""
        return cls(variant, runtime, precision, UNAVAILABLE, reason)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def key(self) -> tuple[str | None, str, str | None]:
        """(model, variant, point key): one per row of a run, a point's rows apart from the variant's own."""
        return self.model, self.variant, self.point.key if self.point else None

    def metric(self, key: str) -> float | None:
        """The finite number under ``key`` in the accuracy or efficiency section, else None."""
        for section in (self.accuracy, self.efficiency):
            value = finite_number(getattr(section, key, None))
            if value is not None:
                return value
        return None

    def is_noisy(self, key: str) -> bool:
        return self.efficiency is not None and key in (self.efficiency.noisy or ())


@dataclass(frozen=True)
class ModelInfo(_Record):
    """One source some of the run's variants were made from, and how its rows were scored."""

    name: str | None = None  # unique within the run; each of its rows names it in ``VariantRow.model``
    source: str | None = None  # its path
    source_sha256: str | None = None
    reference: str | None = None  # its variant that its other variants' KLD and ΔPPL are measured against
    tokenizer: str | None = None  # "llama.cpp" | "transformers"
    tokens_scored: int | None = None  # per variant of this model
    windows: int | None = None


@dataclass(frozen=True)
class CorpusInfo(_Record):
    """The text scored and how it was windowed; every model scored the same text."""

    name: str | None = None
    source: str | None = None
    protocol: str | None = None
    ctx: int | None = None
    text_bytes: int | None = None  # UTF-8 bytes of the text every model tokenized (cut at the same byte)


@dataclass(frozen=True)
class RunSettings(_Record):
    """The budgets and limits a run used (``harness.config.CompareConfig`` resolved)."""

    threads: int | None = None
    device: str | None = None
    max_ppl_increase_pct: float | None = None
    memory_budget_mb: float | None = None
    prompt_tokens: int | None = None
    gen_tokens: int | None = None
    repetitions: int | None = None  # the minimum
    max_repetitions: int | None = None
    precision_target_pct: float | None = None
    speed_budget_s: float | None = None
    warmup: int | None = None
    max_tokens: int | None = None
    max_chunks: int | None = None
    agreement_tokens: int | None = None
    timeout_s: float | None = None
    runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)  # runtime -> its settings
    tasks: list[str] | None = field(default=None, metadata=_OPTIONAL)  # lm-eval tasks, as given
    task_limit: int | None = field(default=None, metadata=_OPTIONAL)  # documents per task
    num_fewshot: int | None = field(default=None, metadata=_OPTIONAL)  # None: each task's own
    task_seed: int | None = field(default=None, metadata=_OPTIONAL)
    rank_by: str | None = field(default=None, metadata=_OPTIONAL)  # TASK/METRIC the answer also ranks on
    max_task_drop: float | None = field(default=None, metadata=_OPTIONAL)
    sweep: dict[str, list] | None = field(default=None, metadata=_OPTIONAL)  # axis -> its values, as given


@dataclass(frozen=True)
class RunRecord(_Record):
    """A finished (or resumed) run: what was measured, on what, with which settings, and one row per variant.

    A run holds one or more models; each row names its model, and accuracy
    against a reference never crosses models. ``for_model`` gives the view of
    one model, which reads like a single-model run.
    """

    NESTED: ClassVar[dict[str, type]] = {"corpus": CorpusInfo, "settings": RunSettings}
    NESTED_LISTS: ClassVar[dict[str, type]] = {"models": ModelInfo, "results": VariantRow, "points": VariantRow}

    schema_version: int = SCHEMA_VERSION
    run_id: str | None = None
    created_utc: str | None = None
    models: tuple[ModelInfo, ...] = ()
    corpus: CorpusInfo = field(default_factory=CorpusInfo)
    environment: dict[str, Any] = field(default_factory=dict)  # harness.machine.environment.capture_environment
    settings: RunSettings = field(default_factory=RunSettings)
    wall_s: float | None = None
    results: tuple[VariantRow, ...] = ()
    points: tuple[VariantRow, ...] = ()  # --sweep: one row per (variant, operating point), speed only

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunRecord":
        return super().from_dict(_upgraded(data))

    @property
    def multi_model(self) -> bool:
        return len(self.models) > 1

    @property
    def title(self) -> str:
        """The models' names, for headings: "smollm2-135m" or "smollm2-135m vs tiny-llama"."""
        return " vs ".join(m.name for m in self.models if m.name)

    @property
    def reference(self) -> str | None:
        """The reference variant of a one-model run (or of a ``for_model`` view); None with several models."""
        return self.models[0].reference if len(self.models) == 1 else None

    def model_info(self, name: str | None) -> ModelInfo:
        return next((m for m in self.models if m.name == name), ModelInfo())

    def for_model(self, name: str | None) -> "RunRecord":
        """This run seen as the run of one of its models: that model's info and rows only."""
        return replace(self, models=(self.model_info(name),), results=tuple(r for r in self.results if r.model == name),
                       points=tuple(r for r in self.points if r.model == name))

    def per_model(self) -> list["RunRecord"]:
        return [self.for_model(m.name) for m in self.models]

    def label(self, row: VariantRow) -> str:
        """How the report names a row: its variant, prefixed with its model when the run has several."""
        return f"{row.model}/{row.variant}" if self.multi_model else row.variant

    def row(self, variant: str, model: str | None = None) -> VariantRow | None:
        """The row of ``variant`` (of ``model`` when given; a "model/variant" label works too)."""
        return next(iter(self.rows_named(variant, model)), None)

    def rows_named(self, variant: str, model: str | None = None) -> list[VariantRow]:
        """Every row ``variant`` names: one per model that has it, unless ``model`` or a "model/variant" label picks one."""
        if model is None and "/" in variant and self.multi_model:
            model, variant = variant.split("/", 1)
        return [r for r in self.results if r.variant == variant and (model is None or r.model == model)]


def _upgraded(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A run stored as schema 1 (one ``model``, one ``reference``, token facts in ``corpus``) in schema 2's shape."""
    if "models" in data:
        return data
    model = dict(data.get("model") or {})
    corpus = dict(data.get("corpus") or {})
    info = {**model, "reference": data.get("reference"),
            **{key: corpus.pop(key) for key in ("tokenizer", "tokens_scored", "windows") if key in corpus}}
    rows = [{**row, "model": row.get("model") or info.get("name")} for row in data.get("results") or ()]
    return {**data, "schema_version": SCHEMA_VERSION, "models": [info], "corpus": corpus, "results": rows}
