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

from harness.build.sources import UnsupportedModel

# transformers' own words when it cannot take a model, and what to say where its words say too little:
# an architecture it does not know (from a config or from a GGUF), and a GGUF whose config it derives
# wrongly (its GGUF reader does not map some hyperparameter, so the tensors do not fit the model it builds).
TRANSFORMERS_REFUSALS = {
    "not supported": None,
    "does not recognize this architecture": None,
    "ignore_mismatched_sizes": "the config its GGUF reader derives does not fit the tensors "
                               "(a hyperparameter it does not read from GGUF)",
}


class UnsupportedArchitecture(UnsupportedModel):
    """transformers cannot take this model: the torch variants, and the ONNX ones made from them, are unavailable."""


def fp32_from_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantize a GGUF into a transformers directory: fp32 safetensors, config, tokenizer.

    transformers reads GGUF through the ``gguf`` library (dequantize, then undo
    llama.cpp's q/k row permutation) but refuses ``save_pretrained`` on such a
    model, so its state dict goes into a fresh model built from the config.
    """
    from transformers.utils import logging

    logging.disable_progress_bar()  # its per-tensor bar would drown the harness's own
    # Its GGUF reader draws a bare tqdm bar per tensor that the switch above misses.
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), _refusals_as_unsupported():
        loaded = _load_fp32(gguf_path.parent, gguf_file=gguf_path.name)
    _save_fresh(*loaded, dest, "float32")


def fp32_from_hf(model_dir: Path, dest: Path) -> None:
    """Copy a transformers directory as fp32 safetensors with its tokenizer."""
    with _refusals_as_unsupported():
        loaded = _load_fp32(model_dir)
    _save_fresh(*loaded, dest, "float32")


@contextlib.contextmanager
def _refusals_as_unsupported():
    """transformers refusing the model (``TRANSFORMERS_REFUSALS``) becomes UnsupportedArchitecture, in its words.

    E.g. "GGUF model with architecture olmo is not supported yet." or "The checkpoint you are trying to
    load has model type `foonet` but Transformers does not recognize this architecture."
    """
    try:
        yield
    except (ValueError, RuntimeError) as exc:
        words = next((w for w in TRANSFORMERS_REFUSALS if w in str(exc)), None)
        if words is None:
            raise
        reason = TRANSFORMERS_REFUSALS[words] or str(exc).strip().splitlines()[0]
        raise UnsupportedArchitecture(f"transformers cannot take it: {reason}") from None


def bf16_copy(fp32_dir: Path, dest: Path) -> None:
    """The torch-fp32 directory with its weights rounded to bfloat16."""
    _save_fresh(*_load_fp32(fp32_dir), dest, "bfloat16")


def _load_fp32(folder: Path, **source):
    """Config, float32 state dict and tokenizer of a local transformers directory (or GGUF, ``gguf_file=``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, local_files_only=True, **source)
    # Given the config, it does not derive it again: reading a GGUF's metadata takes seconds for a large vocabulary.
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32, local_files_only=True,
                                                 **source)
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

