"""transformers variants: the full-precision reference directory and its bf16 copy."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path



def reference_from_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantize a GGUF into a transformers directory: fp32 safetensors, config, tokenizer.

    transformers reads GGUF through the ``gguf`` library (dequantize, then undo
    llama.cpp's q/k row permutation) but refuses ``save_pretrained`` on such a
    model, so its state dict goes into a fresh model built from the config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # its per-tensor bar would drown the harness's own
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        # Its GGUF reader draws a bare tqdm bar per tensor that the switch above misses.
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ValueError as exc:
        if "not supported" not in str(exc):
            raise
        # transformers: "GGUF model with architecture X is not supported yet."
        raise UnsupportedArchitecture(f"transformers cannot read it: {str(exc).splitlines()[0]}") from None
    _save_fresh(config, loaded.state_dict(), tokenizer, dest, torch.float32)


def reference_from_hf(model_dir: Path, dest: Path) -> None:
    """Copy a transformers directory as fp32 safetensors with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _save_fresh(config, loaded.state_dict(), tokenizer, dest, torch.float32)


def bf16_copy(reference_dir: Path, dest: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(reference_dir)
    loaded = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32)
    _save_fresh(config, loaded.state_dict(), AutoTokenizer.from_pretrained(reference_dir), dest, torch.bfloat16)


def _save_fresh(config, state_dict, tokenizer, dest: Path, dtype) -> None:
    from transformers import AutoModelForCausalLM

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


class UnsupportedArchitecture(Exception):
    """transformers cannot read this architecture from GGUF: torch and ort variants are skipped."""
