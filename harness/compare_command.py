"""``python -m harness compare``: resolve the inputs, prepare, measure each variant in its own child, report.

``run_compare`` reads as the pipeline it is: resolve inputs -> prepare -> one
frozen ``MeasureInputs`` for every job -> run -> record -> write, store, print.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import CompareConfig
from harness.errors import UserError
from harness.results import CorpusInfo, ModelInfo, RunRecord, RunSettings, VariantRow

if TYPE_CHECKING:  # both import only light modules, but the command keeps its imports lazy
    from harness.corpus import Corpus
    from harness.sources import Source

RESULTS_ROOT = Path("harness-results")
RESULTS_NAME = "results.jsonl"
RUN_ID_NAME = "run_id"
LOGS_NAME = "logs"  # one file per variant: its child's output, the runtimes' native log lines included


@dataclass(frozen=True)
class _Inputs:
    """What the command line resolves to before anything is built."""

    source: Source
    corpus: Corpus
    store_path: Path


def run_compare(config: CompareConfig) -> int:
    """Run the comparison ``config`` describes; the exit status is 0 when every variant is ok, else 1."""
    from harness.variants import choose_reference, with_reference

    started = time.perf_counter()
    config = _resolved(config)
    inputs = _resolve_inputs(config)
    names = with_reference(list(config.variants) if config.variants else None, config.reference, inputs.source)
    prepared = _prepare(config, inputs, names)
    variants = [v for v in prepared.variants.values() if names is None or v.name in names]
    reference = choose_reference(config.reference, variants)
    tokenizer, text, windows = _tokenize(config, inputs, prepared)
    out_dir, run_id = _out_dir_and_run_id(config)  # only once every input has been checked

    with tempfile.TemporaryDirectory(prefix="harness-reference-") as record_dir:
        measure_inputs = _measure_inputs(config, reference, windows, text, tokenizer, inputs.source, prepared,
                                         record_dir)
        print(f"scoring {sum(w.n_scored for w in windows)} tokens of {text.corpus_name} ({len(windows)} windows of "
              f"{config.ctx}, {config.protocol}) per variant; reference {reference.name if reference else 'none'}",
              file=sys.stderr)
        rows = _measure(variants, measure_inputs, out_dir, config)
    rows += [VariantRow.failed(name, prepared.specs[name].runtime, prepared.specs[name].precision,
                               f"not built: {reason}") for name, reason in prepared.skipped.items()]

    run = RunRecord(
        run_id=run_id,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(inputs.source.name, str(inputs.source.path), inputs.source.sha256),
        corpus=CorpusInfo(text.corpus_name, inputs.corpus.source, config.protocol, config.ctx,
                          sum(w.n_scored for w in windows), len(windows), tokenizer.kind),
        environment=_environment(config.threads),
        reference=reference.name if reference else None,
        settings=_run_settings(config),
        wall_s=round(time.perf_counter() - started, 1),
        results=tuple(rows),
    )
    _deliver(run, out_dir, inputs.store_path, config.json)
    return 0 if all(row.ok for row in run.results) else 1


def _resolved(config: CompareConfig) -> CompareConfig:
    """The configuration with its machine-dependent default (the thread count) filled in."""
    from harness.environment import thread_count

    return replace(config, threads=thread_count(config.threads))


def _resolve_inputs(config: CompareConfig) -> _Inputs:
    """The model, the text and the results store, each checked before any work is done."""
    from harness import store
    from harness.corpus import load_corpus
    from harness.sources import resolve_source

    source = resolve_source(config.model)
    corpus = load_corpus(text=config.text, dataset=config.dataset, text_field=config.text_field)
    return _Inputs(source, corpus, store.check(config.store))


def _prepare(config: CompareConfig, inputs: _Inputs, names: list[str] | None):
    """The variants to measure, built if missing; an unknown --reference is named as such, not as a variant."""
    from harness.prepare_command import prepare_with_progress

    try:
        return prepare_with_progress(inputs.source, names, config.cache_dir, config.threads)
    except UserError as exc:
        unknown = str(exc.value).split(",") if exc.setting == "variants" else []
        if config.reference and config.reference in unknown and config.reference not in (config.variants or ()):
            raise UserError(exc.problem + " or none", setting="reference", value=config.reference) from None
        raise


def _tokenize(config: CompareConfig, inputs: _Inputs, prepared):
    """The model's one tokenizer, the corpus in its token ids, and the windows scored."""
    from harness.protocols import build_windows
    from harness.tokenizer import load_tokenizer

    hf_dir = _hf_dir(prepared)
    tokenizer = load_tokenizer(inputs.source.kind, inputs.source.path, hf_dir)
    text = tokenizer.tokenize_corpus(inputs.corpus)
    windows = build_windows(text.token_ids, config.protocol, config.ctx, config.stride, tokenizer.bos_id,
                            config.token_budget, config.max_chunks, text_name=text.corpus_name)
    return tokenizer, text, windows


def _hf_dir(prepared) -> Path | None:
    return Path(prepared.variants["torch-fp32"].path) if "torch-fp32" in prepared.variants else None


def _measure_inputs(config, reference, windows, text, tokenizer, source, prepared, record_dir: str):
    """The one frozen object every variant's child is measured with."""
    from harness.accuracy import DEFAULT_PROMPTS
    from harness.measure import MeasureInputs
    from harness.reference_record import record_limit
    from harness.tokenizer import speed_token_pool

    return MeasureInputs(
        reference=reference,
        windows=windows,
        text=text,
        prompts=[tokenizer.encode(p) for p in DEFAULT_PROMPTS],
        token_pool=speed_token_pool(_hf_dir(prepared) or source.path),  # every variant shares the vocabulary
        threads=config.threads,
        device=config.device,
        prompt_tokens=config.prompt_tokens,
        gen_tokens=config.gen_tokens,
        warmup=config.warmup,
        repetitions=config.repetitions,
        max_repetitions=config.max_repetitions,
        precision_target_pct=config.precision_target,
        speed_budget_s=config.speed_budget,
        agreement_tokens=config.agreement_tokens,
        runtime_settings=config.runtime_settings(),
        record_dir=record_dir,
        record_limit_bytes=record_limit(record_dir),
    )


def _measure(variants, inputs, out_dir: Path, config: CompareConfig) -> list[VariantRow]:
    """Each variant in its own child, the reference first (it records its logits for the others)."""
    from harness.measure import measure_variant
    from harness.runner import VariantJob, run_variants

    logs = out_dir / LOGS_NAME
    logs.mkdir(exist_ok=True)
    order = sorted(variants, key=lambda v: v is not inputs.reference)
    jobs = [VariantJob(v.name, v.runtime, v.precision, measure_variant, (v, inputs), log_path=str(logs / f"{v.name}.log"))
            for v in order]
    if config.ray:  # the same jobs as Ray tasks (harness.ray_runner): one measurement per node at a time
        from harness.ray_runner import run_variants_on_ray as run_variants  # noqa: F811
    by_name = {row.variant: row for row in run_variants(
        jobs, out_dir / RESULTS_NAME, timeout_s=config.timeout, resume=config.resume,
        on_row=_progress_line(len(jobs)), **({"address": config.ray} if config.ray else {}))}
    return [by_name[v.name] for v in variants]


def _environment(threads: int) -> dict:
    from harness.environment import capture_environment

    return capture_environment(threads)


def _run_settings(config: CompareConfig) -> RunSettings:
    return RunSettings(
        threads=config.threads, device=config.device, max_ppl_increase_pct=config.max_ppl_increase,
        memory_budget_mb=config.memory_budget, prompt_tokens=config.prompt_tokens, gen_tokens=config.gen_tokens,
        repetitions=config.repetitions, max_repetitions=config.max_repetitions,
        precision_target_pct=config.precision_target, speed_budget_s=config.speed_budget,
        warmup=config.warmup, max_tokens=config.token_budget,
        max_chunks=config.max_chunks, agreement_tokens=config.agreement_tokens, timeout_s=config.timeout,
        runtimes=config.runtime_settings_dicts(),
    )


def _deliver(run: RunRecord, out_dir: Path, store_path: Path, json_path: str | None) -> None:
    """Write the files, store the run, print the answer."""
    from harness import report, report_files, store

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


def _progress_line(total: int):
    done = 0

    def on_row(row: VariantRow) -> None:
        nonlocal done
        done += 1
        ppl, decode = row.metric("ppl"), row.metric("decode_tok_s")
        detail = (f"PPL {ppl if ppl is not None else float('nan'):.3f}, "
                  f"decode {decode if decode is not None else float('nan'):.0f} tok/s" if row.ok else row.error)
        print(f"[{done}/{total}] {row.variant}: {row.status} ({detail})", file=sys.stderr, flush=True)

    return on_row
