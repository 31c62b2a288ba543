"""ONNX Runtime variants made by the onnxruntime-genai model builder from the transformers copy of the source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def build_ort(base_dir: Path, dest: Path, precision: str, work_dir: Path) -> None:
    """Run the builder in a child process (it is a script, and it holds a lot of memory).

    ``precision`` is the variant's and the builder's name for it ("fp32", "int4").
    Raises RuntimeError with the builder's last line when it fails.
    """
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(base_dir),
        "-o", str(dest),
        "-p", precision,
        # Always the CPU provider's graph, whatever the device: one cached build serves every
        # device (the ORT backend adds the CUDA provider at load), and its activations are float32,
        # where the builder's CUDA int4 graph computes in float16, which would be another variant.
        "-e", "cpu",
        "-c", str(work_dir),
    ]
    # The builder reads only the local directory; it must never reach a model hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"onnxruntime-genai builder failed ({proc.returncode}): {tail[0]}")
