#!/usr/bin/env bash
# Build llama-bench, llama-batched-bench and llama-perplexity from the llama.cpp sources that ship inside the
# llama-cpp-python sdist of the installed version, outside the repository, so the
# benchmark compares the harness with llama.cpp's own tools on the very same code.
#
# Usage: benchmarks/build_llama_tools.sh [DEST]   (DEST default: ~/.cache/harness-tools/llama.cpp-<ver>)
# Env:   JOBS (default 2), PYTHON (default python), CFLAGS/CXXFLAGS (passed to the compiler).
#
# The tools must run the same kernels as the installed library: where the installed
# llama-cpp-python was built without AMX (its system info lacks "AMX_INT8 = 1") on a
# CPU that has it, AMX is switched off here too (-mno-amx-*, which GCC applies over
# -march=native), or llama-bench's prefill would use int8 tiles the harness cannot.
# Prints the directory holding the three binaries on its last line.
set -euo pipefail

PYTHON=${PYTHON:-python}
JOBS=${JOBS:-2}
VERSION=$("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)')
DEST=${1:-"$HOME/.cache/harness-tools/llama.cpp-$VERSION"}
BIN="$DEST/build/bin"

SYSTEM_INFO=$("$PYTHON" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())')
if grep -q amx_int8 /proc/cpuinfo 2>/dev/null && [[ "$SYSTEM_INFO" != *"AMX_INT8 = 1"* ]]; then
    export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    export CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi

FLAGS=$(printf 'installed library: %s\nCFLAGS=%s\nCXXFLAGS=%s\n' "$SYSTEM_INFO" "${CFLAGS:-}" "${CXXFLAGS:-}")
if [[ -x "$BIN/llama-bench" && -x "$BIN/llama-batched-bench" && -x "$BIN/llama-perplexity" && "$(cat "$DEST/build-flags.txt" 2>/dev/null)" == "$FLAGS" ]]; then
    echo "$BIN"  # already built with these flags
    exit 0
fi
mkdir -p "$DEST"
rm -f "$DEST/build-flags.txt"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/llama-sdist.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --dest "$WORK" "llama-cpp-python==$VERSION"
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
[[ -f "$SRC/CMakeLists.txt" ]] || { echo "no llama.cpp sources in the sdist at $SRC" >&2; exit 1; }

# Keep the sources next to the build: llama-bench prints the commit it was built from.
rm -rf "$DEST/src" "$DEST/build"  # a fresh configure, so changed flags take effect
cp -a "$SRC" "$DEST/src"

cmake -S "$DEST/src" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DBUILD_SHARED_LIBS=OFF >"$DEST/cmake-configure.log"
cmake --build "$DEST/build" --target llama-bench llama-batched-bench llama-perplexity -j "$JOBS" >"$DEST/cmake-build.log"

"$BIN/llama-bench" --help >/dev/null
printf '%s\n' "$FLAGS" >"$DEST/build-flags.txt"
"$BIN/llama-perplexity" --help >/dev/null 2>&1 || true
echo "$BIN"
