"""The harness's KL divergence statistics next to llama.cpp's own ``llama-perplexity --kl-divergence``.

On the default model's llama.cpp variants, the same text and the same chunks:

1. the harness's text (``--text FILE``, else ``compare``'s default corpus) is written to a temporary
   file; ``llama-perplexity -m llamacpp-f32 -f FILE -c CTX --chunks N --kl-divergence-base BASE``
   stores the reference's log-probabilities (16-bit, floored at max - 16) and the tokens it scored;
2. ``llama-perplexity -m VARIANT --kl-divergence-base BASE --kl-divergence`` prints, per quantized
   GGUF, its "====== Perplexity / KL divergence / Token probability statistics ======" blocks;
3. the harness tokenizes the same text (``load_tokenizer``), windows it as ``compare`` does
   (``build_windows``, chunked, CTX, N chunks), checks the token ids equal those in BASE, records the
   reference's logits once (``LogitRecorder``) and scores each variant against them (``score_variant``).

The table sets both side by side: mean KLD with the relative difference, same top p with the
difference in points, ln(PPL(Q)/PPL(base)) and RMS Δp. llama.cpp keeps the base as 16-bit log-probs
floored at max - 16 and drops tokens below exp(-16), so the two differ by that rounding, not by
definition. Needs ``benchmarks/build_llama_tools.sh`` (it builds llama-perplexity).

    python benchmarks/bench_kld.py                      # 2 chunks of 512: the default compare budget
    python benchmarks/bench_kld.py --chunks 20 --json   # tighter, as JSON
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import loaded_backend, prepared_variants

from harness.config import DEFAULT_MAX_TOKENS, CompareConfig
from harness.kernels import set_num_threads
from harness.machine.environment import usable_cpus
from harness.measure.accuracy import score_variant

REFERENCE = "llamacpp-f32"
DEFAULT_CHUNKS = DEFAULT_MAX_TOKENS // CompareConfig.ctx  # compare's default budget: 1,024 tokens
# A statistics line: "Mean    KLD:   0.003835 ±   0.000140", "Cor(...): 99.93%", "Same top p: 96.667 ± 0.795 %"
STAT_LINE = re.compile(r"^(?P<label>[^:]+?)\s*:\s*(?P<value>-?[\d.]+|-?nan|-?inf)\s*%?"
                       r"(?:\s*±\s*(?P<error>-?[\d.]+|-?nan|-?inf))?\s*%?\s*$")


def default_llama_perplexity() -> Path:
    """Where build_llama_tools.sh puts llama-perplexity for the installed llama-cpp-python."""
    import llama_cpp

    tools = Path.home() / ".cache" / "harness-tools" / f"llama.cpp-{llama_cpp.__version__}"
    return tools / "build" / "bin" / "llama-perplexity"


def run_tool(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout + done.stderr


def parse_statistics(output: str) -> dict[str, tuple[float, float | None]]:
    """``label -> (value, ±)`` for every line of llama-perplexity's closing statistics blocks."""
    start = output.find("====== Perplexity statistics ======")
    if start < 0:
        raise RuntimeError("llama-perplexity printed no statistics (it needs at least 100 scored tokens)")
    stats = {}
    for line in output[start:].splitlines():
        found = STAT_LINE.match(line.strip())
        if found:
            error = found.group("error")
            stats[found.group("label").strip()] = (float(found.group("value")), None if error is None else float(error))
    return stats


def read_base_tokens(path: Path) -> np.ndarray:
    """The token ids llama-perplexity scored, from its --kl-divergence-base file: (n_chunk, n_ctx)."""
    with open(path, "rb") as f:
        if f.read(8) != b"_logits_":
            raise RuntimeError(f"{path} is not a llama-perplexity --kl-divergence-base file")
        n_ctx = int(np.frombuffer(f.read(4), dtype=np.uint32)[0])
        _n_vocab, n_chunk = np.frombuffer(f.read(8), dtype=np.int32)
        return np.frombuffer(f.read(4 * n_ctx * int(n_chunk)), dtype=np.int32).reshape(int(n_chunk), n_ctx)


def llama_side(binary: Path, variants: dict, names: list[str], text_path: Path, base: Path, args) -> dict:
    common = ["-c", str(args.ctx), "-b", str(args.ctx), "-t", str(args.threads)]
    run_tool([str(binary), "-m", variants[REFERENCE].path, "-f", str(text_path), "--chunks", str(args.chunks),
              "--kl-divergence-base", str(base), *common])
    out = {}
    for name in names:
        t0 = time.perf_counter()
        output = run_tool([str(binary), "-m", variants[name].path, "--kl-divergence-base", str(base),
                           "--kl-divergence", *common])
        out[name] = {"stats": parse_statistics(output), "wall_s": time.perf_counter() - t0}
        print(f"llama-perplexity {name}: {out[name]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return out


def llama_base_rounding(ref_logits: np.ndarray, test_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row KLD and same-top as llama-perplexity gets them: the base stored as 16-bit log-probs.

    Its ``log_softmax(..., uint16_t * log_prob, ...)`` and ``log_softmax(..., base_log_prob, ..., kld)``
    in numpy: base log-probs quantized on [max - 16, max] in 65,535 steps, terms with a base log-prob
    at or below -16 dropped, the sum not renormalized; top-1 of the quantized base, first among ties.
    """
    ref = ref_logits.astype(np.float32)  # (N, V)
    top = ref.max(axis=1, keepdims=True)
    floor = np.maximum(ref.min(axis=1, keepdims=True), top - np.float32(16))
    lse = np.log(np.exp(ref - top).sum(axis=1, dtype=np.float64, keepdims=True)).astype(np.float32)
    min_log_prob = floor - top - lse
    scale = (top - floor) / np.float32(65535)
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(ref > floor, np.rint((ref - floor) / scale), 0).astype(np.float32)
    log_p_base = scale * steps + min_log_prob  # (N, V)
    test = test_logits.astype(np.float32)
    test_top = test.max(axis=1, keepdims=True)
    test_lse = test_top + np.log(np.exp(test - test_top).sum(axis=1, dtype=np.float64, keepdims=True))
    kept = log_p_base > -16
    terms = np.where(kept, np.exp(log_p_base, dtype=np.float64) * (log_p_base - (test - test_lse)), 0.0)
    return terms.sum(axis=1), log_p_base.argmax(axis=1) == test.argmax(axis=1)


def with_llama_rounding(backend, reference, windows) -> dict:
    """Mean KLD and same-top % of ``backend`` against the recorded reference, rounded as llama-perplexity does."""
    from harness.backends.base import DEFAULT_BLOCK_ROWS
    from harness.measure.accuracy import aligned_rows

    kld, same = [], []
    # score_variant's blocks and packing: with flash attention llama.cpp's logits depend on how a window is cut.
    packed = backend.window_logit_blocks([(w.token_ids, w.score_start) for w in windows], DEFAULT_BLOCK_ROWS)
    for index, blocks in enumerate(packed):
        for ref_logits, test_logits, _ in aligned_rows(reference.window_blocks(index, DEFAULT_BLOCK_ROWS), blocks):
            for row in range(0, len(ref_logits), 32):  # float64 temporaries of 32 rows at a time
                row_kld, row_same = llama_base_rounding(ref_logits[row:row + 32], test_logits[row:row + 32])
                kld.append(row_kld)
                same.append(row_same)
    return {"kld_mean": float(np.concatenate(kld).mean()), "top1_agreement": 100 * float(np.concatenate(same).mean())}


def harness_side(variants: dict, names: list[str], corpus, base_tokens: np.ndarray, record_dir: Path, args) -> dict:
    from harness.build.sources import resolve_source
    from harness.measure.reference_record import LogitRecorder, RecordedReference
    from harness.text.protocols import build_windows
    from harness.text.tokenizer import load_tokenizer

    source = resolve_source(None)
    tokenizer = load_tokenizer(source.kind, source.path, Path(variants["torch-fp32"].path))
    text = tokenizer.tokenize_corpus(corpus)
    windows = build_windows(text.token_ids, "chunked", args.ctx, None, tokenizer.bos_id, max_chunks=args.chunks)
    ours = np.array([w.token_ids for w in windows])
    theirs = base_tokens.astype(np.int64).copy()
    if tokenizer.bos_id is not None:
        theirs[:, 0] = tokenizer.bos_id  # llama-perplexity puts BOS over each chunk's first token when it evaluates
    if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        raise RuntimeError(f"the harness's windows {ours.shape} differ from llama-perplexity's tokens {theirs.shape}")
    set_num_threads(args.threads)
    with loaded_backend(variants[REFERENCE], args.threads) as ref, LogitRecorder(record_dir, 1 << 32) as recorder:
        score_variant(ref, windows, None, text=text, record=recorder)
    reference = RecordedReference(record_dir, windows)
    out = {}
    for name in names:
        t0 = time.perf_counter()
        with loaded_backend(variants[name], args.threads) as backend:
            out[name] = {"accuracy": score_variant(backend, windows, reference, text=text).to_dict(),
                         "wall_s": time.perf_counter() - t0,
                         "llama_rounding": with_llama_rounding(backend, reference, windows)}
        print(f"harness {name}: {out[name]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return {"tokens_identical": True, "tokens_scored": sum(w.n_scored for w in windows), "variants": out}


def side_by_side(llama: dict, ours: dict) -> dict:
    """Per variant: each figure from both, the relative KLD difference and the same-top-p difference."""
    rows = {}
    for name, theirs in llama.items():
        s, a = theirs["stats"], ours["variants"][name]["accuracy"]
        kld_llama, kld_ours = s["Mean    KLD"][0], a["kld_mean"]
        rounded = ours["variants"][name]["llama_rounding"]
        rows[name] = {
            "kld_llama": kld_llama, "kld_ours": kld_ours, "kld_rel_diff_pct": 100 * (kld_ours / kld_llama - 1),
            "kld_ours_16bit_base": rounded["kld_mean"], "same_top_ours_16bit_base": rounded["top1_agreement"],
            "same_top_llama": s["Same top p"][0], "same_top_ours": a["top1_agreement"],
            "same_top_diff_pts": a["top1_agreement"] - s["Same top p"][0],
            "ln_ratio_llama": s["Mean ln(PPL(Q)/PPL(base))"], "ln_ratio_ours": [a["delta_nll_mean"],
                                                                                a["delta_nll_stderr"]],
            "kld_p99_llama": s["99.0%   KLD"][0], "kld_p99_ours": a["kld_p99"],
            "rms_dp_pct_llama": s["RMS Δp"][0], "rms_dp_pct_ours": 100 * a["delta_p_rms"],
            "cor_pct_llama": s["Cor(ln(PPL(Q)), ln(PPL(base)))"][0], "cor_pct_ours": 100 * a["nll_correlation"],
        }
    return rows


def render(rows: dict) -> str:
    from tabulate import tabulate

    table = [[name, f"{r['kld_llama']:.6f}", f"{r['kld_ours']:.7f}", f"{r['kld_rel_diff_pct']:+.2f}",
              f"{r['kld_ours_16bit_base']:.7f}",
              f"{r['same_top_llama']:.3f}", f"{r['same_top_ours']:.3f}", f"{r['same_top_diff_pts']:+.3f}",
              f"{r['ln_ratio_llama'][0]:.5f} ± {r['ln_ratio_llama'][1]:.5f}",
              f"{r['ln_ratio_ours'][0]:.5f} ± {r['ln_ratio_ours'][1]:.5f}",
              f"{r['kld_p99_llama']:.5f}", f"{r['kld_p99_ours']:.5f}",
              f"{r['rms_dp_pct_llama']:.3f}", f"{r['rms_dp_pct_ours']:.3f}",
              f"{r['cor_pct_llama']:.2f}", f"{r['cor_pct_ours']:.2f}"] for name, r in rows.items()]
    headers = ["variant", "KLD llama", "KLD ours", "Δ rel %", "ours, 16-bit base", "same top % llama", "ours",
               "Δ pts", "ln(PPL/base) llama", "ours", "p99 KLD llama", "ours", "RMS Δp % llama", "ours",
               "cor % llama", "ours"]
    return tabulate(table, headers=headers, disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    from harness.text.corpus import load_corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=None, help="a text file (default: compare's default corpus)")
    parser.add_argument("--ctx", type=int, default=CompareConfig.ctx)
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, help=f"chunks of CTX (default {DEFAULT_CHUNKS})")
    parser.add_argument("--variants", default=None, help="comma-separated (default: every llama.cpp variant but f32)")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--llama-perplexity", type=Path, default=None,
                        help="the binary (default: build_llama_tools.sh's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    binary = args.llama_perplexity or default_llama_perplexity()
    if not binary.is_file():
        sys.exit(f"{binary}: no llama-perplexity there; build it with benchmarks/build_llama_tools.sh")
    variants = prepared_variants()
    names = ([n.strip() for n in args.variants.split(",") if n.strip()] if args.variants else
             [n for n, v in variants.items() if v.runtime == "llamacpp" and n != REFERENCE])
    missing = [n for n in [REFERENCE, *names] if n not in variants]
    if missing:
        sys.exit(f"--variants: {', '.join(missing)} not prepared; run `python -m harness prepare`")
    corpus = load_corpus(args.text)
    with tempfile.TemporaryDirectory(prefix="bench-kld-") as tmp:
        text_path, base = Path(tmp) / "text.txt", Path(tmp) / "base.kld"
        text_path.write_text(corpus.text, encoding="utf-8")
        llama = llama_side(binary, variants, names, text_path, base, args)
        record_dir = Path(tmp) / "record"
        record_dir.mkdir()
        ours = harness_side(variants, names, corpus, read_base_tokens(base), record_dir, args)
    rows = side_by_side(llama, ours)
    if args.json:
        print(json.dumps({"corpus": corpus.name, "ctx": args.ctx, "chunks": args.chunks,
                          "tokens_scored": ours["tokens_scored"], "rows": rows}, indent=2))
        return 0
    print(f"{corpus.name}: {args.chunks} chunks of {args.ctx}, {ours['tokens_scored']} tokens scored per variant, "
          f"token ids identical to llama-perplexity's; reference {REFERENCE}; threads {args.threads}")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
