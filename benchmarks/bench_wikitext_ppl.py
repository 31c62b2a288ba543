"""Perplexity of whole texts per variant, and the same figure from llama.cpp's own ``llama-perplexity``.

Tokenizes the text once (the model's one tokenizer), scores every variant on
the same ``chunked`` windows (llama-perplexity's protocol) and prints PPL ±,
tokens scored and the wall time of each. With ``--llama-perplexity`` each
llama.cpp variant is also run through ``llama-perplexity -f TEXT -c CTX`` (built by
``build_llama_tools.sh``) on the same chunks, and both numbers are printed side by side.
llama-perplexity packs ``-b / -c`` chunks into one batch (its default ``-b 2048``: 4 chunks of 512); it
runs with the harness's ``score_batch`` (2048 by default), so both pack alike. ``--rounds N`` alternates
the two N times per variant and prints the median wall times, their spreads and the ratio
harness / llama-perplexity; the harness's time is its load plus its scoring (the text is tokenized
once, before), llama-perplexity's is its whole process (its load and its tokenization of the whole file
included).

    python benchmarks/bench_wikitext_ppl.py                                  # wiki.test.raw, the 5 variants below
    python benchmarks/bench_wikitext_ppl.py --variants llamacpp-f32 --max-chunks 100 --llama-perplexity --rounds 3
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import loaded_backend, prepared_variants

from harness.kernels import set_num_threads
from harness.machine.environment import usable_cpus
from harness.measure.accuracy import score_variant

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
DEFAULT_VARIANTS = "llamacpp-f32,llamacpp-q8_0,llamacpp-q4_k_m,ort-fp32,torch-fp32"
# llama-perplexity's last line: "Final estimate: PPL = 12.3456 +/- 0.12345"
FINAL_ESTIMATE = re.compile(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)")


def llama_perplexity(binary: Path, gguf: str, text: Path, ctx: int, threads: int, chunks: int | None,
                     batch: int) -> dict:
    command = [str(binary), "-m", gguf, "-f", str(text), "-c", str(ctx), "-b", str(batch), "-t", str(threads)]
    if chunks:
        command += ["--chunks", str(chunks)]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - t0
    found = FINAL_ESTIMATE.search(done.stdout + done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return {"ppl": float(found.group(1)), "ppl_stderr": float(found.group(2)), "wall_s": wall_s}


def main(argv: list[str] | None = None) -> int:
    from harness.build.sources import resolve_source
    from harness.text.corpus import load_text_file
    from harness.text.protocols import build_windows
    from harness.text.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default {DEFAULT_VARIANTS})")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--max-chunks", type=int, default=None, help="score the first N chunks (default: all)")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--llama-perplexity", nargs="?", const="default", default=None,
                        help="also run llama-perplexity (optionally its path) on each llama.cpp variant")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the harness and llama-perplexity")
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by variant")
    args = parser.parse_args(argv)

    source = resolve_source(None)
    variants = prepared_variants()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    missing = [n for n in names if n not in variants]
    if missing:
        sys.exit(f"--variants: {', '.join(missing)} not prepared; run `python -m harness prepare`")
    binary = None
    if args.llama_perplexity:
        from bench_llama_bench import default_llama_bench

        binary = (default_llama_bench().with_name("llama-perplexity") if args.llama_perplexity == "default"
                  else Path(args.llama_perplexity))
        if not binary.is_file():
            sys.exit(f"{binary}: no llama-perplexity there; build it with benchmarks/build_llama_tools.sh")

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(source.kind, source.path, Path(variants["torch-fp32"].path))
    text = tokenizer.tokenize_corpus(load_text_file(args.text))
    windows = build_windows(text.token_ids, "chunked", args.ctx, None, tokenizer.bos_id,
                            max_chunks=args.max_chunks, text_name=str(args.text))
    print(f"{args.text}: {len(text.token_ids)} tokens ({time.perf_counter() - t0:.1f} s to tokenize), "
          f"{len(windows)} chunks of {args.ctx}, threads {args.threads}", file=sys.stderr, flush=True)

    set_num_threads(args.threads)
    results = {}
    for name in names:
        walls, peers = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            backend = loaded_backend(variants[name], args.threads)
            try:
                accuracy = score_variant(backend, windows, None, text=text)
                walls.append(time.perf_counter() - t0)
                score_batch = getattr(backend.settings, "score_batch", 2048)
            finally:
                backend.close()
            if binary is not None and variants[name].runtime == "llamacpp":
                peers.append(llama_perplexity(binary, variants[name].path, args.text, args.ctx, args.threads,
                                              args.max_chunks, score_batch))
        row = {key: getattr(accuracy, key) for key in ("ppl", "ppl_stderr", "nll_mean", "tokens_scored", "word_ppl",
                                              "bits_per_byte")}
        row["wall_s"], row["wall_s_spread"] = float(np.median(walls)), [min(walls), max(walls)]
        if peers:
            peer_walls = [p["wall_s"] for p in peers]
            row["llama_perplexity"] = {**peers[-1], "wall_s": float(np.median(peer_walls)),
                                       "wall_s_spread": [min(peer_walls), max(peer_walls)]}
            row["time_ratio"] = row["wall_s"] / row["llama_perplexity"]["wall_s"]
        results[name] = row
        print(f"{name}: PPL {row['ppl']:.4f} ± {row['ppl_stderr']:.4f}, {row['tokens_scored']} tokens, "
              f"{row['wall_s']:.1f} s", file=sys.stderr, flush=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    from tabulate import tabulate

    rows = []
    for name, r in results.items():
        peer = r.get("llama_perplexity")
        spread = "[{:.1f}-{:.1f}]"
        rows.append([name, f"{r['ppl']:.4f} ± {r['ppl_stderr']:.4f}", r["tokens_scored"],
                     f"{r['wall_s']:.1f} " + spread.format(*r["wall_s_spread"]),
                     f"{peer['ppl']:.4f} ± {peer['ppl_stderr']:.4f}" if peer else "",
                     f"{peer['wall_s']:.1f} " + spread.format(*peer["wall_s_spread"]) if peer else "",
                     f"{r['time_ratio']:.3f}" if peer else ""])
    print(f"{args.rounds} round(s), median wall s [min-max]; harness: load + scoring, llama-perplexity: its process")
    print(tabulate(rows, headers=["variant", "PPL ±", "tokens scored", "wall s", "llama-perplexity PPL ±",
                                  "its wall s", "harness/llama-perplexity"], disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
