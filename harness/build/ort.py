"""ONNX Runtime variants made by the onnxruntime-genai model builder from the transformers copy of the source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


# The builder's execution targets (-e) a variant can be built for.
TARGETS = ("cpu", "cuda")


def build_ort(base_dir: Path, dest: Path, precision: str, work_dir: Path, target: str = "cpu") -> None:
    """Run the builder in a child process (it is a script, and it holds a lot of memory).

    ``precision`` is the variant's and the builder's name for it ("fp32", "fp16", "int4");
    ``target`` the execution provider the graph is made for, the builder's ``-e``. The
    builder writes a CUDA graph on a machine without a GPU too: it only writes ONNX.
    Raises RuntimeError with the builder's last line when it fails.
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: the ONNX variants are built for one of {', '.join(TARGETS)}")
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(base_dir),
        "-o", str(dest),
        "-p", precision,
        # The graphs differ per target (the CUDA int4 graph computes in float16, with GPU attention
        # ops), so each target's variants have names and cache folders of their own (harness.build.variants).
        "-e", target,
        "-c", str(work_dir),
    ]
    # The builder reads only the local directory; it must never reach a model hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"onnxruntime-genai builder failed ({proc.returncode}): {tail[0]}")
