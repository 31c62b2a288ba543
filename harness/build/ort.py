"""ONNX Runtime variants made by the onnxruntime-genai model builder from the transformers copy of the source."""

from __future__ import annotations

import json
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
        "-i", str(builder_input(base_dir, work_dir).resolve()),
        "-o", str(dest.resolve()),
        "-p", precision,
        # The graphs differ per target (the CUDA int4 graph computes in float16, with GPU attention
        # ops), so each target's variants have names and cache folders of their own (harness.build.variants).
        "-e", target,
        "-c", str(work_dir.resolve()),
    ]
    # The builder reads only the local directory; it must never reach a model hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # Run from the work folder: `python -m` puts the working folder first on sys.path, and a checkout's
    # kernels/ there would shadow the `kernels` package transformers imports.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work_dir)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"onnxruntime-genai builder failed ({proc.returncode}): {tail[0]}")


def builder_input(base_dir: Path, work_dir: Path) -> Path:
    """``base_dir`` as the builder reads it: the same files, with a config in the builder's keys.

    transformers 5 writes a model whose layer types have RoPE bases of their own (Gemma 3: global and
    sliding-window layers) as ``rope_parameters`` per layer type, where the builder (onnxruntime-genai
    0.18) reads one flat ``rope_parameters`` with ``rope_type`` and the sliding layers' base as
    ``rope_local_base_freq`` (``KeyError: 'rope_type'`` otherwise). For such a config the builder gets a
    folder of links to ``base_dir``'s files beside a config with those keys, derived from the new ones,
    also at the top level, where transformers reads them back to the same per-layer-type parameters.
    Any other config is ``base_dir`` itself.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((base_dir / "config.json").read_text())
    legacy = legacy_rope(config.get("rope_parameters"))
    if legacy is None:
        return base_dir
    view = work_dir / "builder_input"
    view.mkdir(parents=True, exist_ok=True)
    for path in base_dir.iterdir():
        if path.name != "config.json" and not (view / path.name).exists():
            (view / path.name).symlink_to(path.resolve())
    top_level = {key: legacy[key] for key in ("rope_theta", "rope_local_base_freq") if key in legacy}
    (view / "config.json").write_text(json.dumps({**config, **top_level, "rope_parameters": legacy}, indent=2))
    return view


def legacy_rope(rope_parameters) -> dict | None:
    """One flat ``rope_parameters`` from per-layer-type ones (the full-attention layers' own, with the
    sliding-window layers' base as ``rope_local_base_freq``); None when they are flat already."""
    if not isinstance(rope_parameters, dict) or not isinstance(rope_parameters.get("full_attention"), dict):
        return None
    flat = dict(rope_parameters["full_attention"])
    sliding = rope_parameters.get("sliding_attention")
    if isinstance(sliding, dict) and "rope_theta" in sliding:
        flat["rope_local_base_freq"] = sliding["rope_theta"]
    return flat
