"""``python -m harness compare``: resolve the inputs, prepare, measure each variant in its own child, report.

``run_compare`` reads as the pipeline it is: resolve inputs -> prepare -> one
frozen ``MeasureInputs`` for every job -> run -> record -> write, store, print.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import CompareConfig, same_named
from harness.errors import UserError
from harness.results import CorpusInfo, ModelInfo, RunRecord, RunSettings, VariantRow

if TYPE_CHECKING:  # light modules all, but the command keeps its imports lazy
    from harness.build.sources import Source
    from harness.build.variants import PrepareResult
    from harness.manifest import Variant
    from harness.measure.variant import MeasureInputs
    from harness.run.local import VariantJob
    from harness.text.corpus import Corpus
    from harness.text.protocols import Window
    from harness.text.tokenizer import ModelTokenizer, TokenizedText

RESULTS_ROOT = Path("harness-results")
RESULTS_NAME = "results.jsonl"
RUN_ID_NAME = "run_id"
LOGS_NAME = "logs"  # one file per variant: its child's output, the runtimes' native log lines included


@dataclass(frozen=True)
class _Inputs:
    """What the command line resolves to before anything is built."""

    sources: tuple[Source, ...]
    corpus: Corpus
    store_path: Path


@dataclass(frozen=True)
class _Model:
    """One model of the run, prepared and tokenized: its variants, its reference and the windows it scores."""

    name: str  # unique within the run (``ModelInfo.name``, ``VariantRow.model``)
    source: Source
    prepared: PrepareResult
    variants: tuple[Variant, ...]
    reference: Variant | None
    tokenizer: ModelTokenizer
    text: TokenizedText
    windows: tuple[Window, ...]
    kv_settings: dict = field(default_factory=dict)  # --sweep's llama.cpp KV-type rows -> their settings

    @property
    def tokens_scored(self) -> int:
        return sum(w.n_scored for w in self.windows)


def run_compare(config: CompareConfig) -> int:
    """Run the comparison ``config`` describes; the exit status is 0 when every variant is ok, else 1."""
    from harness.machine.nvml import check_cuda_device

    started = time.perf_counter()
    config = _resolved(config)
    if config.ray:  # an address where no cluster answers stops the run before anything is built or tokenized
        from harness.run.cluster import check_answers

        check_answers(config.ray)  # the nodes' GPUs and files are checked once the variants are known
    else:
        check_cuda_device(config.device)  # a GPU this machine lacks stops the run here, before anything is built
    inputs = _resolve_inputs(config)
    models, text_bytes = _prepare_models(config, inputs)
    points = _points(config, models)
    out_dir, run_id = _out_dir_and_run_id(config)  # only once every input has been checked

    with tempfile.TemporaryDirectory(prefix="harness-reference-") as record_root:
        jobs, point_jobs = [], []
        for model in models:
            record_dir = Path(record_root, model.name)
            record_dir.mkdir()
            measure_inputs = _measure_inputs(config, model)
            jobs += _jobs(model, measure_inputs, str(record_dir), out_dir, len(models) > 1)
            point_jobs += _point_jobs(model, measure_inputs, points, out_dir, len(models) > 1)
            print(f"{model.name}: scoring {model.tokens_scored} tokens of {model.text.corpus_name} "
                  f"({len(model.windows)} windows of {config.ctx}, {config.protocol}) per variant; "
                  f"reference {model.reference.name if model.reference else 'none'}", file=sys.stderr)
        if point_jobs:
            print(f"sweep: {_sweep_size(point_jobs)}, measured after the variants' own point", file=sys.stderr)
        by_key = {row.key: row for row in _measure(jobs, out_dir, config)}
        if point_jobs:
            _print_sweep_size(point_jobs, by_key, config)
            point_rows = _measure(point_jobs, out_dir, config, resume=True)  # after the variants' own rows
        else:
            point_rows = []
    rows = [by_key[model.name, v.name, None] for model in models for v in model.variants]  # catalogue order
    rows += [row for model in models for row in _not_built_rows(model)]

    run = RunRecord(
        run_id=run_id,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        models=tuple(_model_info(model) for model in models),
        corpus=CorpusInfo(inputs.corpus.name, inputs.corpus.source, config.protocol, config.ctx, text_bytes),
        environment=_environment(config.threads),
        settings=_run_settings(config),
        wall_s=round(time.perf_counter() - started, 1),
        results=tuple(rows),
        points=tuple(point_rows),
    )
    _deliver(run, out_dir, inputs.store_path, config.json)
    return 0 if all(row.ok for row in run.results + run.points) else 1


def _resolved(config: CompareConfig) -> CompareConfig:
    """The configuration with its machine-dependent default (the thread count) filled in."""
    from harness.machine.environment import thread_count

    return replace(config, threads=thread_count(config.threads))


def _resolve_inputs(config: CompareConfig) -> _Inputs:
    """The models, the text and the results store, each checked before any work is done."""
    from harness import store
    from harness.build.sources import resolve_source
    from harness.text.corpus import load_corpus

    sources = tuple(resolve_source(model) for model in config.sources)
    seen: dict[str, str] = {}
    for given, source in zip(config.sources, sources):
        if source.sha256 in seen:
            raise UserError(f"the same model as --model {seen[source.sha256]}; give each model once",
                            setting="model", value=given or source.name)
        seen[source.sha256] = given or source.name
    corpus = load_corpus(text=config.text, dataset=config.dataset, text_field=config.text_field)
    if config.tasks:  # every task loads here, its documents included
        from harness.measure.tasks import check_tasks

        check_tasks(_task_spec(config))
    return _Inputs(sources, corpus, store.check(config.store))


def _prepare_models(config: CompareConfig, inputs: _Inputs) -> tuple[list[_Model], int]:
    """Each model prepared and tokenized; with several, every one scores the same text, cut at the same byte.

    The cut is where the first model's token budget ends (``--max-tokens``, or
    ``--max-chunks`` windows); every model then windows all of the cut text, so
    bits per byte compare across tokenizers. Returns the models and the cut.
    """
    names = _unique_names(inputs.sources)
    prepared = [_prepare(config, source) for source in inputs.sources]  # (result, names to measure)
    corpus = inputs.corpus
    first = _tokenized(config, inputs.sources[0], prepared[0][0], corpus)
    text_bytes = _budget_bytes(config, first[1])
    if len(inputs.sources) == 1:
        return [_model(config, names[0], inputs.sources[0], prepared[0], *first, config.token_budget)], text_bytes
    cut = replace(corpus, text=corpus.text.encode("utf-8")[:text_bytes].decode("utf-8", errors="ignore"))
    return [_model(config, name, source, result, *_tokenized(config, source, result[0], cut), None)
            for name, source, result in zip(names, inputs.sources, prepared)], text_bytes


def _unique_names(sources) -> list[str]:
    """Each source's name, with its hash prefix where two share one (two files both called model.gguf)."""
    names = [s.name for s in sources]
    return [f"{s.name}-{s.sha256[:8]}" if names.count(s.name) > 1 else s.name for s in sources]


def _prepare(config: CompareConfig, source: Source) -> tuple[PrepareResult, list[str] | None]:
    """The model's variants, built if missing, and the names to measure (None: all).

    An unknown --reference is named as such, not as a variant.
    """
    from harness.build.reference_policy import with_reference
    from harness.prepare import prepare_with_progress

    names = with_reference(list(config.variants) if config.variants else None, config.reference, source, config.device)
    try:
        result = prepare_with_progress(source, names, config.cache_dir, config.threads, config.device)
    except UserError as exc:
        unknown = str(exc.value).split(",") if exc.setting == "variants" else []
        if config.reference and config.reference in unknown and config.reference not in (config.variants or ()):
            raise UserError(exc.problem + " or none", setting="reference", value=config.reference) from None
        raise
    if config.tasks and _hf_dir(result) is None:
        raise UserError("lm-eval's tasks are tokenized by the model's transformers tokenizer, and this model has no "
                        "torch-fp32 copy to take it from; compare it without --tasks", setting="model",
                        value=source.name)
    return result, names


def _tokenized(config: CompareConfig, source: Source, prepared: PrepareResult, corpus: Corpus):
    """The model's one tokenizer and the corpus in its token ids."""
    from harness.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(source.kind, source.path, _hf_dir(prepared))
    return tokenizer, tokenizer.tokenize_corpus(corpus)


def _budget_bytes(config: CompareConfig, text: TokenizedText) -> int:
    """UTF-8 bytes of the text the token budget (or ``--max-chunks`` windows) covers, in the first model's tokens."""
    budget = config.token_budget or (config.max_chunks * config.ctx if config.max_chunks else None)
    return int(text.token_bytes[:budget].sum())


def _model(config: CompareConfig, name: str, source: Source, prepared: tuple[PrepareResult, list[str] | None],
           tokenizer: ModelTokenizer, text: TokenizedText, token_budget: int | None) -> _Model:
    """A prepared model with the variants to measure, its reference and the windows of its tokens it scores."""
    from harness.build.reference_policy import choose_reference
    from harness.text.protocols import build_windows

    windows = build_windows(text.token_ids, config.protocol, config.ctx, config.stride, tokenizer.bos_id,
                            token_budget, config.max_chunks, text_name=text.corpus_name)
    result, names = prepared
    variants = tuple(v for v in result.variants.values() if names is None or v.name in names)
    reference = choose_reference(config.reference, variants, config.device)
    variants, kv_settings = _with_kv_variants(config, variants)
    return _Model(name, source, result, variants, reference, tokenizer, text, tuple(windows), kv_settings)


def _with_kv_variants(config: CompareConfig, variants: tuple[Variant, ...]):
    """The variants, each llama.cpp one followed by one row per other KV-cache type ``--sweep`` gives, and
    the settings of those rows by name."""
    from harness.sweep import kv_variant_name

    combinations = config.sweep_axes.setting_combinations(config.llamacpp)
    out, settings = [], {}
    for variant in variants:
        out.append(variant)
        if variant.runtime != "llamacpp":
            continue
        for combination in combinations:
            row = replace(variant, name=kv_variant_name(variant.name, combination))
            out.append(row)
            settings[row.name] = replace(config.llamacpp, **combination)
    return tuple(out), settings


def _points(config: CompareConfig, models: list[_Model]):
    """The operating points of ``--sweep``, each checked against every model's trained context."""
    from harness.build.sources import trained_context
    from harness.machine.environment import thread_count
    from harness.sweep import check_fits

    sweep = config.sweep_axes
    points = sweep.points(config.threads, config.prompt_tokens, config.gen_tokens)
    for model in models:
        check_fits(sweep, points, trained_context(model.variants), thread_count(None), model.name)
    return points


def _hf_dir(prepared: PrepareResult) -> Path | None:
    return Path(prepared.variants["torch-fp32"].path) if "torch-fp32" in prepared.variants else None


def _model_info(model: _Model) -> ModelInfo:
    return ModelInfo(model.name, str(model.source.path), model.source.sha256,
                     model.reference.name if model.reference else None, model.tokenizer.kind, model.tokens_scored,
                     len(model.windows))


def _not_built_rows(model: _Model) -> list[VariantRow]:
    """Unavailable rows where a runtime cannot take the model, failed rows where a build failed."""
    specs = model.prepared.specs
    unavailable = [VariantRow.unavailable(name, specs[name].runtime, specs[name].precision, reason)
                   for name, reason in model.prepared.unavailable.items()]
    failed = [VariantRow.failed(name, specs[name].runtime, specs[name].precision, f"not built: {reason}")
              for name, reason in model.prepared.skipped.items()]
    return [replace(row, model=model.name) for row in unavailable + failed]


def _measure_inputs(config: CompareConfig, model: _Model) -> MeasureInputs:
    """The one frozen object every variant's child of ``model`` is measured with."""
    from harness.measure.accuracy import DEFAULT_PROMPTS
    from harness.measure.variant import MeasureInputs
    from harness.text.tokenizer import speed_token_pool

    return same_named(
        MeasureInputs, config,
        reference=model.reference,
        windows=model.windows,
        text=model.text,
        prompts=[model.tokenizer.encode(p) for p in DEFAULT_PROMPTS],
        token_pool=speed_token_pool(_hf_dir(model.prepared) or model.source.path),  # the variants share the vocabulary
        runtime_settings=config.runtime_settings(),
        variant_settings=model.kv_settings,
        tasks=_task_spec(config, _hf_dir(model.prepared)) if config.tasks else None,
    )


def _task_spec(config: CompareConfig, tokenizer: Path | None = None):
    """The lm-eval tasks every variant scores, on the same documents with the same few-shot examples,
    tokenized by the model's transformers tokenizer."""
    from harness.measure.tasks import TaskSpec

    return TaskSpec(tuple(config.tasks), config.task_limit, config.num_fewshot, config.task_seed,
                    tokenizer=None if tokenizer is None else str(tokenizer))


def _jobs(model: _Model, inputs: MeasureInputs, record_dir: str, out_dir: Path, several: bool) -> list[VariantJob]:
    """The model's variants as jobs, its reference first (it records its logits in ``record_dir`` for the others)."""
    from harness.measure.reference_record import RECORD_FILES
    from harness.measure.variant import measure_variant
    from harness.run.local import VariantJob

    logs = out_dir / LOGS_NAME / (model.name if several else "")
    logs.mkdir(parents=True, exist_ok=True)
    order = sorted(model.variants, key=lambda v: v is not model.reference)
    reference = model.reference
    return [VariantJob(v.name, v.runtime, v.precision, measure_variant, (v, inputs),
                       log_path=str(logs / f"{v.name}.log"), model=model.name, device=inputs.device,
                       loads=(v,) if reference in (None, v) else (v, reference),
                       record_dir=record_dir if reference is not None else None, writes_record=v is reference,
                       record_files=RECORD_FILES)
            for v in order]


def _point_jobs(model: _Model, inputs: MeasureInputs, points, out_dir: Path, several: bool) -> list[VariantJob]:
    """One speed-only job per (variant, operating point), each in a child of its own, on the point's threads."""
    from harness.measure.variant import measure_point_row
    from harness.run.local import VariantJob

    logs = out_dir / LOGS_NAME / (model.name if several else "")
    return [VariantJob(v.name, v.runtime, v.precision, measure_point_row, (v, inputs, point),
                       log_path=str(logs / f"{v.name}@{point.key.replace('/', '_')}.log"), model=model.name,
                       device=inputs.device, loads=(v,), point=point)
            for v in model.variants for point in points]


def _sweep_size(point_jobs: list[VariantJob]) -> str:
    variants, points = len({(j.model, j.variant) for j in point_jobs}), len({j.point.key for j in point_jobs})
    return f"{variants} variants x {points} points = {len(point_jobs)} measurements"


def _print_sweep_size(point_jobs: list[VariantJob], rows: dict, config: CompareConfig) -> None:
    """The sweep's size and an estimate of its time from each variant's own point (its load, prefill and decode)."""
    total = 0.0
    for job in point_jobs:
        own = rows.get((job.model, job.variant, None))
        total += _point_estimate_s(job.point, own.efficiency if own and own.ok else None, config)
    estimate = f"{total / 60:.0f} min" if total >= 120 else f"{total:.0f} s"
    print(f"sweep: {_sweep_size(point_jobs)}, about {estimate} (estimated from each variant's own point)",
          file=sys.stderr, flush=True)


def _point_estimate_s(point, own, config: CompareConfig) -> float:
    """Load + the untimed fill of the depth + the warm-ups and minimum repetitions, at least the speed budget."""
    if own is None or not own.prefill_tok_s or not own.decode_tok_s:
        return float(config.speed_budget_s)
    prefill_s = point.batch * point.prompt / own.prefill_tok_s
    decode_s = point.gen / own.decode_tok_s  # a batch decodes its sequences together, at about one's cost or more
    tests_s = (config.warmup + config.repetitions) * (prefill_s + decode_s)
    return (own.load_s or 0.0) + point.batch * point.depth / own.prefill_tok_s + max(float(config.speed_budget_s), tests_s)


def _measure(jobs: list[VariantJob], out_dir: Path, config: CompareConfig, resume: bool | None = None) -> list[VariantRow]:
    """Each job in its own child, here or as a Ray task; rows in job order. ``resume`` keeps the rows the
    results file already holds (default: ``--resume``)."""
    if config.ray:  # the same jobs as Ray tasks (harness.run.on_ray): one measurement per node at a time
        from harness.run.on_ray import run_variants_on_ray as run_variants
    else:
        from harness.run.local import run_variants
    return run_variants(jobs, out_dir / RESULTS_NAME, timeout_s=config.timeout_s,
                        resume=config.resume if resume is None else resume,
                        on_row=_progress_line(len(jobs), several=len({j.model for j in jobs}) > 1),
                        **({"address": config.ray} if config.ray else {}))


def _environment(threads: int) -> dict:
    from harness.machine.environment import capture_environment

    return capture_environment(threads)


def _run_settings(config: CompareConfig) -> RunSettings:
    without_tasks = {} if config.tasks else dict(tasks=None, task_limit=None, num_fewshot=None, task_seed=None,
                                                  max_task_drop=None)
    return same_named(RunSettings, config, max_tokens=config.token_budget, runtimes=config.runtime_settings_dicts(),
                      sweep=config.sweep_axes.as_dict() or None, **without_tasks)


def _deliver(run: RunRecord, out_dir: Path, store_path: Path, json_path: str | None) -> None:
    """Write the files, store the run, print the answer."""
    from harness import report, store
    from harness.report import files as report_files

    report_files.write_report(run, out_dir)
    store.save(run, store_path)
    table = report.render_text(run)
    if json_path == "-":
        print(table, file=sys.stderr)
        print(report_files.report_json(run))
    else:
        print(table)
        if json_path:
            report_files.write_atomic(Path(json_path), report_files.report_json(run).encode())
    print(f"files: {out_dir}  (run {run.run_id}, {run.wall_s:.0f} s)", file=sys.stderr)


def _out_dir_and_run_id(config: CompareConfig) -> tuple[Path, str]:
    if config.resume:
        out = Path(config.out) if config.out else _newest_run_dir()
        if not (out / RESULTS_NAME).is_file():
            raise UserError(f"{out} holds no {RESULTS_NAME} to continue; pass --out DIR of an earlier run",
                            setting="resume")
        id_file = out / RUN_ID_NAME
        return out, id_file.read_text().strip() if id_file.is_file() else out.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(config.out) if config.out else RESULTS_ROOT / stamp
    if (out / RESULTS_NAME).exists():
        raise UserError("it already holds a run; pass --resume to continue it or another folder",
                        setting="out", value=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create it ({exc.strerror}); pass a writable folder", setting="out", value=out) from None
    run_id = f"{stamp}-{secrets.token_hex(2)}"
    (out / RUN_ID_NAME).write_text(run_id + "\n")
    return out, run_id


def _newest_run_dir() -> Path:
    runs = sorted(p for p in RESULTS_ROOT.glob("*") if (p / RESULTS_NAME).is_file())
    if not runs:
        raise UserError(f"no earlier run under {RESULTS_ROOT}/; pass --out DIR of the run to continue",
                        setting="resume")
    return runs[-1]


def _progress_line(total: int, several: bool):
    done = 0

    def on_row(row: VariantRow) -> None:
        nonlocal done
        done += 1
        name = f"{row.model}/{row.variant}" if several else row.variant
        ppl, decode, prefill = row.metric("ppl"), row.metric("decode_tok_s"), row.metric("prefill_tok_s")
        if row.point is not None:
            name += f" {row.point.label}"
            detail = f"prefill {prefill or float('nan'):.0f}, decode {decode or float('nan'):.0f} tok/s"
        else:
            detail = (f"PPL {ppl if ppl is not None else float('nan'):.3f}, "
                      f"decode {decode if decode is not None else float('nan'):.0f} tok/s")
        detail = detail if row.ok else row.error
        print(f"[{done}/{total}] {name}: {row.status} ({detail})", file=sys.stderr, flush=True)

    return on_row
