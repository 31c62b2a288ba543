"""transformers variants: the full-precision copy of the source (torch-fp32), and its bf16 copy.

torch-fp32 is also the base the ONNX variants are built from and holds the
tokenizer every variant shares. Every load reads local files only: a build never
reaches a model hub.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


class UnsupportedArchitecture(Exception):
    """transformers cannot read this architecture from GGUF: the torch and ort variants are skipped."""


def fp32_from_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantize a GGUF into a transformers directory: fp32 safetensors, config, tokenizer.

    transformers reads GGUF through the ``gguf`` library (dequantize, then undo
    llama.cpp's q/k row permutation) but refuses ``save_pretrained`` on such a
    model, so its state dict goes into a fresh model built from the config.
    """
    from transformers.utils import logging

    logging.disable_progress_bar()  # its per-tensor bar would drown the harness's own
    try:
        # Its GGUF reader draws a bare tqdm bar per tensor that the switch above misses.
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            loaded = _load_fp32(gguf_path.parent, gguf_file=gguf_path.name)
    except ValueError as exc:
        if "not supported" not in str(exc):
            raise
        # transformers: "GGUF model with architecture X is not supported yet."
        raise UnsupportedArchitecture(f"transformers cannot read it: {str(exc).splitlines()[0]}") from None
    _save_fresh(*loaded, dest, "float32")


def fp32_from_hf(model_dir: Path, dest: Path) -> None:
    """Copy a transformers directory as fp32 safetensors with its tokenizer."""
    _save_fresh(*_load_fp32(model_dir), dest, "float32")


def bf16_copy(fp32_dir: Path, dest: Path) -> None:
    """The torch-fp32 directory with its weights rounded to bfloat16."""
    _save_fresh(*_load_fp32(fp32_dir), dest, "bfloat16")


def _load_fp32(folder: Path, **source):
    """Config, float32 state dict and tokenizer of a local transformers directory (or GGUF, ``gguf_file=``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, local_files_only=True, **source)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True, **source)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **source)
    return config, model.state_dict(), tokenizer


def _save_fresh(config, state_dict, tokenizer, dest: Path, dtype_name: str) -> None:
    """Save ``state_dict`` as a fresh model of ``config`` in ``torch.<dtype_name>``, with the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    if hasattr(config, "quantization_config"):
        # A GGUF-derived config may carry one (even null); the ONNX builder chokes on it.
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # Tied output embeddings are absent from a GGUF; anything else missing is a real gap.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(dtype).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    _drop_null_quantization_config(dest / "config.json")


def _drop_null_quantization_config(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    if "quantization_config" in config:
        del config["quantization_config"]
        config_path.write_text(json.dumps(config, indent=2))


def parameter_count(model_dir: Path) -> int:
    """Parameters in the safetensors of ``model_dir`` (tied weights are stored, and counted, once)."""
    import math

    from safetensors import safe_open

    total = 0
    for file in model_dir.glob("*.safetensors"):
        with safe_open(file, "np") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total

