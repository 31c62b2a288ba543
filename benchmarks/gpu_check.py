"""The Python steps of benchmarks/gpu_check.sh: a model to run, the GPU-vs-CPU parity check, and the summary.

    python benchmarks/gpu_check.py assets DIR                      # copy a model's config and tokenizer (here)
    python benchmarks/gpu_check.py model ASSETS DIR [--tiny]       # random weights of that shape (there)
    python benchmarks/gpu_check.py parity MODEL_DIR --cache DIR [--device cuda] [--threads N]
    python benchmarks/gpu_check.py summary RESULTS_JSONL [--device cuda]

Nothing can be downloaded on the GPU machines and their files must travel in
64 MiB, so the model there is SmolLM2-135M's architecture, config and
tokenizer (3.5 MB, copied from the harness's cache here by ``assets``) with
seeded random weights: its speed, memory and energy are those of
SmolLM2-135M, and the parity check compares one set of weights on two devices,
which is all it needs. The weights are drawn with a wider spread than the
usual initialisation so that the next-token distributions are peaked enough
for greedy decoding to have clear winners (tied logits would make the
comparison of continuations a coin toss).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

# Files of a transformers directory that hold no weights: enough to rebuild the model from its config.
ASSET_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")
INIT_STD = 0.08  # weights' standard deviation (the config's 0.02 gives near-uniform next-token distributions)
PARITY_WINDOWS, PARITY_CTX = 2, 512  # compare's default budget: 2 windows of 512
PARITY_NLL_RTOL = 1e-4
GREEDY_TOKENS = 16


def copy_assets(dest: Path) -> None:
    """The default model's config and tokenizer files from its torch-fp32 variant (built if missing)."""
    from harness.build.sources import resolve_source
    from harness.build.variants import prepare

    variant = prepare(resolve_source(None), ["torch-fp32"]).variants["torch-fp32"]
    dest.mkdir(parents=True, exist_ok=True)
    for name in ASSET_FILES:
        if Path(variant.path, name).is_file():
            shutil.copy2(Path(variant.path, name), dest / name)
    print(f"assets: {', '.join(sorted(p.name for p in dest.iterdir()))} in {dest}")


def make_model(assets: Path, dest: Path, tiny: bool) -> None:
    """A transformers directory with the assets' config and tokenizer and seeded random fp32 weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(assets)
    config.initializer_range = INIT_STD
    if tiny:  # the CPU dry run: the same vocabulary, a few small layers
        config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 64, 128
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    for name in ASSET_FILES:
        if name != "config.json" and (assets / name).is_file():
            shutil.copy2(assets / name, dest / name)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f} M parameters, {config.num_hidden_layers} layers, random weights "
          f"(std {INIT_STD}, seed 0) in {dest}")


def _nll_and_greedy(variant, device: str, threads: int, windows, prompts):
    """(mean NLL over the windows' scored tokens, greedy continuations, scoring path) of ``variant`` on ``device``."""
    from harness.backends import open_backend
    from harness.kernels import RunningStats, token_nll

    nll = RunningStats()
    with open_backend(variant, threads=threads, device=device) as backend:
        for window in windows:
            for block in backend.logit_blocks(window.token_ids, start=window.score_start):
                nll.add(token_nll(block.logits, block.targets))
        greedy = [backend.generate(p, GREEDY_TOKENS).token_ids for p in prompts]
        scoring = backend.describe().get("scoring", "cpu kernels")
    return nll.mean, greedy, scoring


def parity(model_dir: Path, cache: Path, device: str, threads: int) -> bool:
    """torch-fp32 on ``device`` against the CPU on the same tokens: mean NLL within 1e-4 relative, same greedy tokens."""
    from harness.build.sources import resolve_source
    from harness.build.variants import prepare
    from harness.measure.accuracy import DEFAULT_PROMPTS
    from harness.text.corpus import load_corpus
    from harness.text.protocols import build_windows
    from harness.text.tokenizer import load_tokenizer

    source = resolve_source(str(model_dir))
    variant = prepare(source, ["torch-fp32"], cache, threads).variants["torch-fp32"]
    tokenizer = load_tokenizer(source.kind, source.path, Path(variant.path))
    text = tokenizer.tokenize_corpus(load_corpus())
    windows = build_windows(text.token_ids, "chunked", PARITY_CTX, None, tokenizer.bos_id,
                            PARITY_WINDOWS * PARITY_CTX, None, text_name=text.corpus_name)
    prompts = [tokenizer.encode(p) for p in DEFAULT_PROMPTS]
    started = time.perf_counter()
    cpu_nll, cpu_greedy, _ = _nll_and_greedy(variant, "cpu", threads, windows, prompts)
    gpu_nll, gpu_greedy, scoring = _nll_and_greedy(variant, device, threads, windows, prompts)
    rel = abs(gpu_nll - cpu_nll) / abs(cpu_nll)
    same = sum(a == b for a, b in zip(cpu_greedy, gpu_greedy))
    ok = rel <= PARITY_NLL_RTOL and same == len(prompts)
    n_scored = sum(w.n_scored for w in windows)
    print(f"parity torch-fp32 {device} vs cpu: mean NLL {gpu_nll:.6f} vs {cpu_nll:.6f} over {n_scored} tokens, "
          f"relative difference {rel:.1e} (limit {PARITY_NLL_RTOL:g}); greedy continuations equal {same}/{len(prompts)} "
          f"({GREEDY_TOKENS} tokens each); {device} scored by {scoring}; {time.perf_counter() - started:.0f} s: "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def summary(results_jsonl: Path, device: str) -> None:
    """One line per measured GPU variant, and one per runtime or variant that did not run, with its reason."""
    from harness.backends import RUNTIMES, runtime_unavailable_reason

    rows = [json.loads(line) for line in results_jsonl.read_text().splitlines() if line.strip()] \
        if results_jsonl.is_file() else []
    for row in rows:
        eff = row.get("efficiency") or {}
        if row.get("status") == "ok":
            print(f"{row['variant']:<16} decode {_num(eff.get('decode_tok_s'), '.0f', 'tok/s')}, prefill "
                  f"{_num(eff.get('prefill_tok_s'), '.0f', 'tok/s')}, TTFT {_num(eff.get('ttft_ms'), '.1f', 'ms')}, "
                  f"peak GPU memory {_num(eff.get('gpu_peak_mem_mb'), '.0f', 'MB')}, GPU util "
                  f"{_num(eff.get('gpu_util_pct'), '.0f', '%')}, energy "
                  f"{_num(eff.get('energy_per_token_j'), '.4f', 'J/token')}, peak RSS "
                  f"{_num(eff.get('peak_rss_mb'), '.0f', 'MB')}; PPL {_num((row.get('accuracy') or {}).get('ppl'), '.2f')}")
        else:
            print(f"{row['variant']:<16} {row.get('status')}: {row.get('error')}")
    for runtime in RUNTIMES:
        reason = runtime_unavailable_reason(runtime, device)
        if reason:
            print(f"not run: {reason}")
    if not rows:
        print(f"no rows in {results_jsonl}: compare did not measure anything (see its log above)")


def _num(value, fmt: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "absent"
    return f"{value:{fmt}} {unit}".rstrip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("assets").add_argument("dest", type=Path)
    model = sub.add_parser("model")
    model.add_argument("assets", type=Path)
    model.add_argument("dest", type=Path)
    model.add_argument("--tiny", action="store_true", help="2 small layers, for the CPU dry run")
    par = sub.add_parser("parity")
    par.add_argument("model_dir", type=Path)
    par.add_argument("--cache", type=Path, required=True)
    par.add_argument("--device", default="cuda")
    par.add_argument("--threads", type=int, default=None)
    summ = sub.add_parser("summary")
    summ.add_argument("results", type=Path)
    summ.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.step == "assets":
        copy_assets(args.dest)
    elif args.step == "model":
        make_model(args.assets, args.dest, args.tiny)
    elif args.step == "parity":
        from harness.machine.environment import thread_count

        return 0 if parity(args.model_dir, args.cache, args.device, thread_count(args.threads)) else 1
    else:
        summary(args.results, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
