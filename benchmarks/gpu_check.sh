#!/usr/bin/env bash
# The GPU check: everything --device cuda does, in one run of at most 8 minutes on an NVIDIA GPU machine.
#
#   bash benchmarks/gpu_check.sh --prepare       # HERE, before the GPU session: wheels and model assets to bring
#   bash benchmarks/gpu_check.sh                 # THERE, from the repository root; outputs under $OUT
#   bash benchmarks/gpu_check.sh --cpu-dry-run   # here: the same steps on the CPU with a tiny model
#
# The GPU machines have Python, torch, transformers, onnx, onnxruntime (CPU), numba and numba-cuda, and
# reach nothing: --prepare puts what they lack into benchmarks/gpu_wheels/ (pure-Python and small wheels,
# ~20 MB; untracked, so they travel with the working tree) and SmolLM2-135M's config and tokenizer into
# benchmarks/gpu_assets/ (3.5 MB). The check prints:
#   1. the GPU; 2. torch-fp32 on the GPU against the CPU on the same tokens (mean NLL within 1e-4
#   relative, greedy continuations equal); 3. per GPU variant: decode and prefill tok/s, TTFT, peak GPU
#   memory, energy per token; 4. the CUDA scoring kernels against torch (NLL and KLD, 2048 x 49,152
#   float32) with their accuracy against float64; 5. one line per runtime or variant it could not run.
# Each step has its own time limit, so a stuck step costs its limit and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --cpu-dry-run) MODE=dry ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--prepare | --cpu-dry-run]" >&2; exit 2 ;;
esac
WHEELS=benchmarks/gpu_wheels
ASSETS=benchmarks/gpu_assets/smollm2-135m
# Small wheels the harness imports that the GPU machines may lack (numpy, torch and friends are there).
BRING="tabulate psutil nvidia-ml-py matplotlib plotly narwhals contourpy cycler fonttools kiwisolver pillow
pyparsing python-dateutil six tqdm gguf wheel setuptools packaging safetensors"
START=$SECONDS
say() { echo "gpu_check [$((SECONDS - START)) s]: $*"; }

if [[ $MODE == prepare ]]; then
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  python -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" $BRING || { say "pip download failed"; exit 1; }
  python benchmarks/gpu_check.py assets "$ASSETS" || exit 1
  say "$(du -sh "$WHEELS" | cut -f1) of wheels in $WHEELS, assets in $ASSETS (both untracked: they travel, never commit them)"
  exit 0
fi

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
WORK=$(mktemp -d)  # the model and its variants: large, and nothing to bring back
DEVICE=cuda
PY=python3
if [[ $MODE == dry ]]; then
  DEVICE=cpu
  PY=python
  [[ -d $ASSETS ]] || python benchmarks/gpu_check.py assets "$ASSETS" >/dev/null || exit 1
fi

# 1. the GPU
if [[ $MODE == gpu ]]; then
  if ! nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv,noheader; then
    say "no NVIDIA GPU here (nvidia-smi failed): nothing to check; run it on a GPU machine, or pass --cpu-dry-run"
    exit 2
  fi
  # Install what was brought, into a venv that sees the machine's own packages (no network, no builds).
  if $PY -m venv --system-site-packages "$WORK/venv" 2>/dev/null; then
    PY="$WORK/venv/bin/python"
    PIP=("$PY" -m pip)
  elif $PY -m venv --system-site-packages --without-pip "$WORK/venv" 2>/dev/null; then
    PIP=(python3 -m pip --python "$WORK/venv/bin/python")
    PY="$WORK/venv/bin/python"
  else
    PIP=(python3 -m pip --break-system-packages)
  fi
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    # Only what is missing: never replace a package the machine already has.
    missing=$("$PY" - "$WHEELS" <<'EOF'
import importlib.metadata as md, pathlib, re, sys
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
EOF
)
    # shellcheck disable=SC2086
    [[ -z $missing ]] || timeout 120 "${PIP[@]}" install --quiet --no-index --no-deps $missing \
      || say "installing the brought wheels failed; going on with what is there"
  else
    say "no wheels in $WHEELS (run --prepare before the GPU session); going on with what is installed"
  fi
  timeout 120 "${PIP[@]}" install --quiet --no-index --no-deps --no-build-isolation -e . \
    || { say "cannot install the harness (pip install -e . failed)"; exit 1; }
fi
"$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
EOF
if [[ $MODE == dry ]]; then  # what a GPU-less machine says to --device cuda
  "$PY" -m harness compare --device cuda --out "$WORK/refused" 2>&1 | head -3
fi

# 2. the model: SmolLM2-135M's shape with seeded random weights (tiny in the dry run)
TINY=$([[ $MODE == dry ]] && echo --tiny)
# shellcheck disable=SC2086
timeout 120 "$PY" benchmarks/gpu_check.py model "$ASSETS" "$WORK/model" $TINY 2>&1 | grep -v "shards\|Loading weights" \
  || { say "could not make the model"; exit 1; }

# 3. parity: torch-fp32 on the GPU against the CPU, on the same tokens
say "parity"
timeout 150 "$PY" benchmarks/gpu_check.py parity "$WORK/model" --cache "$WORK/cache" --device "$DEVICE" 2>&1 \
  | grep -v "shards\|Loading weights" | tee "$OUT/parity.txt"

# 4. compare on the device: every variant it can build and run (ONNX CUDA variants need onnxruntime-genai)
say "compare --device $DEVICE"
VARIANTS=torch-fp32,torch-bf16,ort-cuda-fp16,ort-cuda-int4
[[ $MODE == dry ]] && VARIANTS=torch-fp32,torch-bf16
timeout 270 "$PY" -m harness compare --model "$WORK/model" --device "$DEVICE" --variants "$VARIANTS" \
  --reference torch-fp32 --cache-dir "$WORK/cache" --out "$OUT/compare" --store "$OUT/harness.sqlite" \
  --json "$OUT/report.json" > "$OUT/compare.txt" 2> "$OUT/compare.log"
say "compare exit status $? (table in compare.txt, its log in compare.log)"
tail -n 40 "$OUT/compare.txt"
"$PY" benchmarks/gpu_check.py summary "$OUT/compare/results.jsonl" --device "$DEVICE" | tee "$OUT/summary.txt"

# 5. the CUDA scoring kernels against torch on the same GPU
say "bench_cuda_kernels"
timeout 150 "$PY" benchmarks/bench_cuda_kernels.py --threads-per-row 128,256,512,1024 --json \
  > "$OUT/bench_cuda_kernels.json" \
  && "$PY" - "$OUT/bench_cuda_kernels.json" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
from bench_cuda_kernels import _print_table
_print_table(json.load(open(sys.argv[1])))
EOF
[[ -s $OUT/bench_cuda_kernels.json ]] && head -c 200 "$OUT/bench_cuda_kernels.json" | grep -q "no GPU" \
  && cat "$OUT/bench_cuda_kernels.json"

rm -rf "$WORK"
say "done; outputs in $OUT"
