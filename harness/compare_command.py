"""``python -m harness compare``: prepare, measure every variant in its own child, report and store."""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.errors import UserError

RESULTS_ROOT = Path("harness-results")
RESULTS_NAME = "results.jsonl"
RUN_ID_NAME = "run_id"
# The reference is re-run beside every variant, so the fastest full-precision runtime goes first.
REFERENCE_ORDER = ("llamacpp-f32", "ort-fp32", "torch-fp32")
NO_REFERENCE = "none"


def run_compare(args) -> int:
    from harness import report, report_files, store
    from harness.accuracy import DEFAULT_PROMPTS
    from harness.corpus import load_corpus
    from harness.efficiency import speed_token_pool
    from harness.environment import capture_environment, usable_cpus
    from harness.measure import MeasureSettings, measure_variant
    from harness.prepare_command import prepare_with_progress
    from harness.protocols import build_windows
    from harness.reference_record import record_limit
    from harness.runner import VariantJob, run_variants
    from harness.sources import resolve_source
    from harness.tokenizer import load_tokenizer

    started = time.perf_counter()
    threads = args.threads or usable_cpus()  # one explicit count for every runtime and the kernels
    source = resolve_source(args.model)
    corpus = load_corpus(text=args.text, dataset=args.dataset, text_field=args.text_field)
    names = _with_reference(args.variants, args.reference)

    prepared = prepare_with_progress(source, names, args.cache_dir, threads)
    variants = [v for v in prepared.variants.values() if args.variants is None or v.name in names]
    reference = _choose_reference(args.reference, variants)
    hf_dir = Path(prepared.variants["torch-fp32"].path) if "torch-fp32" in prepared.variants else None
    tokenizer = load_tokenizer(source.kind, source.path, hf_dir)
    text = tokenizer.tokenize_corpus(corpus)
    max_tokens = token_budget(args.max_tokens, args.max_chunks, args.full)
    windows = build_windows(text.token_ids, args.protocol, args.ctx, args.stride, tokenizer.bos_id,
                            max_tokens, args.max_chunks, text_name=corpus.name)
    tokens_scored = sum(w.n_scored for w in windows)
    out_dir, run_id = _out_dir_and_run_id(args)  # only once every input has been checked
    prompts = [tokenizer.encode(p) for p in DEFAULT_PROMPTS]
    token_pool = speed_token_pool(hf_dir or source.path)  # every variant shares the model's vocabulary
    settings = MeasureSettings(threads, args.device, args.prompt_tokens, args.gen_tokens,
                               args.warmup, args.repetitions)
    print(f"scoring {tokens_scored} tokens of {corpus.name} ({len(windows)} windows of {args.ctx}, "
          f"{args.protocol}) per variant; reference {reference.name if reference else 'none'}", file=sys.stderr)

    # The reference runs first and records its logits for the others (harness.reference_record).
    order = sorted(variants, key=lambda v: v is not reference)
    with tempfile.TemporaryDirectory(prefix="harness-reference-") as record_dir:
        record = (record_dir, record_limit(record_dir))
        jobs = [VariantJob(v.name, v.runtime, v.precision, measure_variant,
                           (v, reference, windows, text, prompts, settings, token_pool, record)) for v in order]
        by_name = {row["variant"]: row for row in run_variants(
            jobs, out_dir / RESULTS_NAME, timeout_s=args.timeout, resume=args.resume, on_row=_progress_line(len(jobs)))}
    rows = [by_name[v.name] for v in variants]
    rows += [{"variant": name, "runtime": name.split("-")[0], "precision": name.split("-", 1)[1],
              "status": "failed", "error": f"not built: {reason}"} for name, reason in prepared.skipped.items()]

    run = {
        "schema_version": report_files.REPORT_SCHEMA_VERSION,
        "run_id": run_id,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": source.name, "source": str(source.path), "source_sha256": source.sha256},
        "corpus": {"name": corpus.name, "source": corpus.source, "protocol": args.protocol, "ctx": args.ctx,
                   "tokens_scored": tokens_scored, "windows": len(windows), "tokenizer": tokenizer.kind},
        "environment": capture_environment(threads),
        "reference": reference.name if reference else None,
        "settings": {
            "threads": threads, "device": args.device, "max_ppl_increase_pct": args.max_ppl_increase,
            "memory_budget_mb": args.memory_budget, "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens, "repetitions": args.repetitions, "warmup": args.warmup,
            "max_tokens": max_tokens, "max_chunks": args.max_chunks,
        },
        "wall_s": round(time.perf_counter() - started, 1),
        "results": rows,
    }
    report_files.write_report(run, out_dir)
    store.save(run, args.store)
    table = report.render_text(run)
    if args.json == "-":
        print(table, file=sys.stderr)
        print(report_files.report_json(run))
    else:
        print(table)
        if args.json:
            report_files.write_atomic(Path(args.json), report_files.report_json(run).encode())
    print(f"files: {out_dir}  (run {run_id}, {run['wall_s']:.0f} s)", file=sys.stderr)
    return 0


def token_budget(max_tokens: int | None, max_chunks: int | None, full: bool) -> int | None:
    """The text's first N tokens to window: --max-tokens, else the default unless --max-chunks or --full is given."""
    from harness.cli import DEFAULT_MAX_TOKENS

    if max_tokens:
        return max_tokens
    return None if full or max_chunks else DEFAULT_MAX_TOKENS


def _out_dir_and_run_id(args) -> tuple[Path, str]:
    if args.resume:
        out = Path(args.out) if args.out else _newest_run_dir()
        if not (out / RESULTS_NAME).is_file():
            raise UserError(f"--resume: {out} holds no {RESULTS_NAME} to continue; pass --out DIR of an earlier run")
        id_file = out / RUN_ID_NAME
        return out, id_file.read_text().strip() if id_file.is_file() else out.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else RESULTS_ROOT / stamp
    if (out / RESULTS_NAME).exists():
        raise UserError(f"--out {out}: it already holds a run; pass --resume to continue it or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create it ({exc.strerror}); pass a writable folder") from None
    run_id = f"{stamp}-{secrets.token_hex(2)}"
    (out / RUN_ID_NAME).write_text(run_id + "\n")
    return out, run_id


def _newest_run_dir() -> Path:
    runs = sorted(p for p in RESULTS_ROOT.glob("*") if (p / RESULTS_NAME).is_file())
    if not runs:
        raise UserError(f"--resume: no earlier run under {RESULTS_ROOT}/; pass --out DIR of the run to continue")
    return runs[-1]


def _with_reference(names: list[str] | None, reference: str | None) -> list[str] | None:
    """The variants to prepare: the requested ones, plus the reference they are compared against."""
    if names is None or reference == NO_REFERENCE:
        return names
    reference = reference or _default_reference()
    return names if reference is None or reference in names else [*names, reference]


def _default_reference() -> str | None:
    from harness.backends import runtime_unavailable_reason

    return next((n for n in REFERENCE_ORDER if runtime_unavailable_reason(n.split("-")[0]) is None), None)


def _choose_reference(requested: str | None, variants: list):
    from harness.backends import runtime_unavailable_reason

    if requested == NO_REFERENCE:
        return None
    by_name = {v.name: v for v in variants}
    if requested:
        if requested not in by_name:
            raise UserError(f"--reference {requested}: not a variant of this run; choose from "
                            f"{', '.join(by_name)} or none")
        return by_name[requested]
    for name in REFERENCE_ORDER:
        if name in by_name and runtime_unavailable_reason(by_name[name].runtime) is None:
            return by_name[name]
    return None


def _progress_line(total: int):
    done = 0

    def on_row(row: dict) -> None:
        nonlocal done
        done += 1
        acc, eff = row.get("accuracy") or {}, row.get("efficiency") or {}
        detail = (f"PPL {acc.get('ppl', float('nan')):.3f}, decode {eff.get('decode_tok_s', float('nan')):.0f} tok/s"
                  if row.get("status") == "ok" else row.get("error"))
        print(f"[{done}/{total}] {row['variant']}: {row['status']} ({detail})", file=sys.stderr, flush=True)

    return on_row
