"""What a command runs with, as frozen values: the one place every default is written.

``harness.cli`` derives each flag from these fields (the name, the default,
and the ``help`` metadata), so a default changed here changes the command
line, the measurement and the README's ``--help`` excerpt together.
``__post_init__`` validates only; resolving a default that depends on the
machine (the thread count) happens in the command, through
``harness.machine.environment.thread_count``.

Field metadata: ``help``; ``group`` (the --help section); ``parse`` (how the
CLI reads the text: ``positive_int``, ``count``, ``percent``, ``size_mb``,
``names``); ``choices``; ``metavar``; ``repeat`` (the flag may be given several times: a tuple).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from harness import defaults
from harness.backends.llamacpp.config import LlamaCppSettings
from harness.backends.ort.config import OrtSettings
from harness.backends.pytorch.config import TorchSettings
from harness.errors import UserError
from harness.sweep import Sweep, parse_sweep
from harness.text.protocols import PROTOCOLS

DEFAULT_MAX_TOKENS = defaults.MAX_TOKENS
DATASET_CHOICES = ("wikitext-2",)
DEVICE_CHOICES = ("cpu", "cuda")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")  # a choice, or cuda:N (whether that GPU exists: harness.machine.nvml)


def _field(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


def _settings(factory: type, help: str) -> Any:
    return field(default_factory=factory, metadata={"help": help, "runtime_settings": True})


@dataclass(frozen=True)
class ModelConfig:
    """Which model, which of its variants, where they are cached, and how many threads build and run them."""

    model: tuple[str, ...] | None = _field(
        None, "smollm2-135m (default), a local GGUF file, or a transformers model directory; repeat it to compare "
              "several models in one table", metavar="MODEL", repeat=True)
    variants: tuple[str, ...] | None = _field(
        None, "comma-separated variant names (default: all), e.g. llamacpp-q8_0,ort-int4", parse="names", metavar="A,B")
    cache_dir: str | None = _field(
        None, "where variants are built and kept (default: $HARNESS_CACHE_DIR or ~/.cache/harness)", metavar="DIR")
    threads: int | None = _field(
        None, "CPU threads for every runtime, the quantizer and the scoring kernels (default: every usable core)",
        parse="positive_int", metavar="N")

    def __post_init__(self) -> None:
        _at_least(self, "threads", 1)
        if isinstance(self.model, str):
            raise TypeError("model is a tuple of models: pass (model,)")
        if self.variants is not None and not self.variants:
            raise UserError("give at least one variant name, comma-separated", setting="variants", value="")

    @property
    def sources(self) -> tuple[str | None, ...]:
        """The models to prepare or compare: those given, else the default (None)."""
        return self.model or (None,)


@dataclass(frozen=True)
class PrepareConfig(ModelConfig):
    """``python -m harness prepare``."""

    json: bool = _field(False, "print the manifests as JSON instead of a table")


@dataclass(frozen=True)
class CompareConfig(ModelConfig):
    """``python -m harness compare``: what is scored, how speed is timed, and how the answer is chosen."""

    # text scored for accuracy
    text: str | None = _field(None, "a UTF-8 text file, a WikiText raw file (wiki.*.raw) or JSONL", group="text",
                              metavar="FILE")
    text_field: str = _field("text", "the JSONL field holding the text", group="text", metavar="NAME")
    dataset: str | None = _field(None, "a named corpus: a local copy (or $HARNESS_WIKITEXT2), else the datasets library",
                                 group="text", choices=DATASET_CHOICES)
    protocol: str = _field("chunked", "chunked: llama-perplexity's windows; strided: sliding windows", group="text",
                           choices=PROTOCOLS)
    ctx: int = _field(defaults.CTX, "tokens per window", group="text", parse="positive_int", metavar="N")
    stride: int | None = _field(None, "strided protocol step (default ctx/2)", group="text", parse="positive_int",
                                metavar="S")
    max_tokens: int | None = _field(
        None, f"score at most the first N tokens of the text (default {DEFAULT_MAX_TOKENS} when neither "
              "--max-chunks nor --full is given)", group="text", parse="positive_int", metavar="N")
    max_chunks: int | None = _field(None, "score at most N windows", group="text", parse="positive_int", metavar="N")
    full: bool = _field(False, "score the whole text (no token budget)", group="text")
    # speed
    prompt_tokens: int = _field(defaults.PROMPT_TOKENS, "prefill prompt length", group="speed", parse="positive_int", metavar="N")
    gen_tokens: int = _field(defaults.GEN_TOKENS, "tokens generated per decode run", group="speed", parse="positive_int", metavar="N")
    repetitions: int = _field(defaults.REPETITIONS, "measured repetitions of each speed test at least; more run until the precision "
                              "target is met, the speed budget ends or --max-repetitions", group="speed",
                              parse="positive_int", metavar="N")
    max_repetitions: int = _field(defaults.MAX_REPETITIONS, "measured repetitions of each speed test at most", group="speed",
                                  parse="positive_int", metavar="N")
    precision_target_pct: float = _field(
        defaults.PRECISION_TARGET_PCT, "stop repeating a speed test once its 95% interval's half-width is within PCT% of its median",
        group="speed", parse="percent", metavar="PCT")
    speed_budget_s: int = _field(
        defaults.SPEED_BUDGET_S, "seconds per variant for the speed tests, warm-ups included; past the minimum a round starts only "
            "when it is expected to end within them", group="speed", parse="positive_int", metavar="S")
    warmup: int = _field(defaults.WARMUP, "discarded warm-up runs", group="speed", parse="count", metavar="N")
    agreement_tokens: int = _field(defaults.AGREEMENT_TOKENS, "greedy tokens per prompt for generation agreement with the reference",
                                   group="speed", parse="positive_int", metavar="N")
    device: str = _field(defaults.DEVICE, "where the runtimes run: cpu, or cuda / cuda:N (the Nth GPU CUDA sees)", group="speed",
                         metavar="cpu|cuda[:N]")
    timeout_s: int = _field(defaults.TIMEOUT_S, "seconds one variant may take before it counts as failed", group="speed",
                          parse="positive_int", metavar="S")
    sweep: tuple[str, ...] | None = _field(
        None, "also time every variant at each operating point of the product of the axes given, e.g. depth=0,4096 "
              "(tokens in the cache first, llama-bench's -d), batch=1,8 (sequences decoded together), threads=1,2, "
              "prompt=N,.., gen=N,..; llamacpp-type-k=f16,q8_0 (and llamacpp-type-v) add llama.cpp rows with those "
              "KV-cache types, accuracy included; repeat it for more axes", group="sweep", metavar="AXIS=V1,V2",
        repeat=True)
    # lm-eval's tasks, scored on every variant
    tasks: tuple[str, ...] | None = _field(
        None, "lm-evaluation-harness tasks to score every variant on, comma-separated: task or group names, or paths "
              "to task YAML files or folders (needs the tasks extra: pip install -e '.[tasks]')", group="tasks",
        parse="names", metavar="A,B")
    task_limit: int = _field(defaults.TASK_LIMIT, "documents per task, the same ones for every variant (the first N)",
                             group="tasks", parse="positive_int", metavar="N")
    num_fewshot: int | None = _field(None, "few-shot examples per document (default: each task's own)", group="tasks",
                                     parse="count", metavar="N")
    task_seed: int = _field(defaults.TASK_SEED, "seed of the few-shot examples' sampling", group="tasks", parse="count",
                            metavar="N")
    # the answer
    reference: str | None = _field(
        None, "variant that KLD and ΔPPL are measured against, added to the run when missing (default: llamacpp-f32, "
              "else ort-fp32, else torch-fp32); `none`: PPL only", group="answer", metavar="NAME")
    max_ppl_increase_pct: float = _field(
        defaults.MAX_PPL_INCREASE_PCT, "PPL increase over the reference, in %, a recommendation may accept",
        group="answer", parse="percent", metavar="PCT")
    rank_by: str | None = _field(
        None, "also answer on an lm-eval task metric, TASK/METRIC (e.g. hellaswag/acc_norm): the fastest and smallest "
              "variant within --max-task-drop of the reference on it", group="answer", metavar="TASK/METRIC")
    max_task_drop: float = _field(
        defaults.MAX_TASK_DROP, "drop from the reference on --rank-by a recommendation may accept (95% bound), in "
        "points for accuracies", group="answer", parse="percent", metavar="PTS")
    memory_budget_mb: float | None = _field(
        None, "peak memory in MB allowed for the most-accurate recommendation, e.g. 800MB or 2GB", group="answer",
        parse="size_mb", metavar="SIZE")
    # output
    out: str | None = _field(None, "output folder (default ./harness-results/<timestamp>)", group="output", metavar="DIR")
    json: str | None = _field(None, "also write report.json to PATH (- for stdout)", group="output", metavar="PATH")
    resume: bool = _field(False, "continue the run in --out (default: the newest in ./harness-results) without "
                                 "redoing finished variants", group="output")
    store: str | None = _field(None, "results store (default: $HARNESS_STORE, else harness.sqlite in the user data dir)",
                               group="output", metavar="FILE")
    # where the measurements run
    ray: str | None = _field(
        None, "measure each variant as a task on a Ray cluster, one at a time per node: its ADDRESS (host:port), "
              "auto ($RAY_ADDRESS or the running local cluster) or local (a private cluster for this run)",
        group="cluster", metavar="ADDRESS")
    # each runtime's own knobs, as --<runtime>-<setting>
    llamacpp: LlamaCppSettings = _settings(LlamaCppSettings, "llama.cpp")
    ort: OrtSettings = _settings(OrtSettings, "ONNX Runtime GenAI")
    torch: TorchSettings = _settings(TorchSettings, "PyTorch (transformers)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("ctx", "stride", "max_tokens", "max_chunks", "prompt_tokens", "gen_tokens", "repetitions",
                     "max_repetitions", "speed_budget_s", "agreement_tokens", "timeout_s"):
            _at_least(self, name, 1)
        if self.max_repetitions < self.repetitions:
            raise UserError(f"must be at least the minimum, repetitions={self.repetitions}; raise the maximum too",
                            setting="max_repetitions", value=self.max_repetitions)
        if self.precision_target_pct < 0:
            raise UserError("must be 0 or more", setting="precision_target_pct", value=self.precision_target_pct)
        _at_least(self, "warmup", 0)
        if self.ctx < 2:
            raise UserError("a window needs at least 2 tokens; pass 2 or more", setting="ctx", value=self.ctx)
        if not _DEVICE.match(self.device):
            raise UserError(f"pass one of {', '.join(DEVICE_CHOICES)} or cuda:N (N = 0, 1, ...)", setting="device",
                            value=self.device)
        if self.max_ppl_increase_pct < 0:
            raise UserError("must be 0 or more", setting="max_ppl_increase_pct", value=self.max_ppl_increase_pct)
        if self.rank_by is not None and (not self.tasks or "/" not in self.rank_by.strip("/")):
            raise UserError("give TASK/METRIC of a task in --tasks, e.g. hellaswag/acc_norm", setting="rank_by",
                            value=self.rank_by)
        if self.memory_budget_mb is not None and self.memory_budget_mb <= 0:
            raise UserError("must be more than 0", setting="memory_budget_mb", value=self.memory_budget_mb)
        parse_sweep(self.sweep)  # each mistake is one line before anything is built

    @property
    def sweep_axes(self) -> Sweep:
        return parse_sweep(self.sweep)

    @property
    def token_budget(self) -> int | None:
        """The text's first N tokens to window: max_tokens, else the default unless max_chunks or full is set."""
        if self.max_tokens:
            return self.max_tokens
        return None if self.full or self.max_chunks else DEFAULT_MAX_TOKENS

    def runtime_settings(self) -> dict[str, Any]:
        """runtime name -> that runtime's settings object."""
        return {"llamacpp": self.llamacpp, "ort": self.ort, "torch": self.torch}

    def runtime_settings_dicts(self) -> dict[str, dict[str, Any]]:
        return {runtime: asdict(settings) for runtime, settings in self.runtime_settings().items()}


def same_named(cls: type, config: Any, **given: Any) -> Any:
    """A ``cls`` (a dataclass) whose fields come from ``config``'s fields of the same name, ``given`` for the rest.

    The one mapping from the command's configuration to what it hands on
    (``MeasureInputs``, ``RunSettings``): a field keeps its name, unit included, on every side.
    """
    shared = {f.name for f in fields(cls)} & {f.name for f in fields(config)}
    return cls(**{name: getattr(config, name) for name in shared - set(given)}, **given)


def _at_least(config: Any, name: str, low: int) -> None:
    value = getattr(config, name)
    if value is not None and value < low:
        raise UserError(f"must be at least {low}", setting=name, value=value)
