"""ONNX Runtime variants made by the onnxruntime-genai model builder from the reference directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Variant precision -> the builder's -p value.
ORT_PRECISIONS = {"fp32": "fp32", "int4": "int4"}


def build_ort(reference_dir: Path, dest: Path, precision: str, work_dir: Path) -> None:
    """Run the builder in a child process (it is a script, and it holds a lot of memory)."""
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(reference_dir),
        "-o", str(dest),
        "-p", ORT_PRECISIONS[precision],
        "-e", "cpu",
        "-c", str(work_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"onnxruntime-genai builder failed ({proc.returncode}): {tail[0]}")
