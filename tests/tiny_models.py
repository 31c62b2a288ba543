"""Tiny random-weight models of several architecture families, made from transformers configs at test time.

Each is a transformers folder (config.json, model.safetensors, tokenizer files) of
2 layers and width 64 with the default model's own tokenizer: a real byte-level
BPE whose pre-tokenizer llama.cpp's converter knows by its hash ("smollm"), so the
vocabulary stays 49,152 tokens. A BPE trained here (``write_trained_tokenizer``)
has a small vocabulary but a pre-tokenizer hash llama.cpp's converter does not
know, so it refuses it. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

# Shared by every family: tiny, but wide enough logits (initializer_range) that a
# mistake in a runtime's reading of the weights moves the mean NLL by far more than 1e-4.
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.1)

# family -> (transformers model_type, its own settings). Where a family fixes a
# hyperparameter that GGUF readers take for granted, the tiny model keeps the real value.
FAMILIES = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    # Qwen3's head_dim is 128 whatever the width; transformers' GGUF reader does not read it and assumes 128.
    "qwen3": ("qwen3", {"head_dim": 128}),
    # Gemma 3: head_dim 256 with the attention scaled by it (query_pre_attn_scalar), as in its 1B to 12B
    # models (transformers' GGUF reader assumes 256); a sliding window shorter than a scoring window.
    "gemma3": ("gemma3_text", {"head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 64}),
    # Phi-3's architecture with a GPT-2 style tokenizer, as Phi-4 has (llama.cpp's converter reads
    # Phi-3's own vocabulary from a SentencePiece tokenizer.model, which the tests have none of).
    "phi3": ("phi3", {"original_max_position_embeddings": 4096}),
}
# llama.cpp picks token attributes by the model's name, and a name holding "phi3" needs a "</s>" token
# that this vocabulary lacks: the Phi-3 architecture goes by Phi-4's name, whose vocabulary has none either.
FOLDER_NAMES = {"phi3": "tiny-phi4"}
TOKENIZER_CLASSES = {"phi3": "GPT2Tokenizer"}  # what llama.cpp's Phi-3 converter takes for a BPE vocabulary


def write_tokenizer(default_torch_fp32: Path, dest: Path) -> Path:
    """The default model's tokenizer with SmolLM2's own pre-tokenizer (digits one by one, then byte-level).

    The torch-fp32 copy of the default model holds transformers' reading of its GGUF
    tokenizer, which drops the digit split; llama.cpp's "smollm" pre-tokenizer has it.
    """
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(default_torch_fp32).save_pretrained(dest)
    path = dest / "tokenizer.json"
    spec = json.loads(path.read_text())
    byte_level = spec["pre_tokenizer"]
    assert byte_level["type"] == "ByteLevel", byte_level
    spec["pre_tokenizer"] = {"type": "Sequence",
                             "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return dest


def build(family: str, root: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random ``family`` model with the tokenizer of ``tokenizer_dir`` under ``root``; its folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_type, settings = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                                  **COMMON, **settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dest = root / FOLDER_NAMES.get(family, f"tiny-{family}")
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    if family in TOKENIZER_CLASSES:
        settings_path = dest / "tokenizer_config.json"
        tokenizer_config = json.loads(settings_path.read_text())
        tokenizer_config["tokenizer_class"] = TOKENIZER_CLASSES[family]
        settings_path.write_text(json.dumps(tokenizer_config, indent=2))
    return dest


def write_trained_tokenizer(dest: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE of ``vocab_size`` tokens trained on the default corpus, saved for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from harness.text.corpus import pydoc_topics_corpus

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([pydoc_topics_corpus().text[:50_000]], trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>").save_pretrained(dest)
    return dest
