"""One prepared variant as it lies in the cache: what it is, where, and who made it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Variant:
    """A deployable form of the source model, e.g. ``llamacpp-q4_k_m``.

    ``path`` is the file or directory the runtime loads: a GGUF file for
    llama.cpp, a transformers directory for torch, an onnxruntime-genai
    directory for ort. ``tokenizer_path`` is the one tokenizer every variant
    of a model shares, so all runtimes see the same token ids.
    """

    name: str
    runtime: str  # "torch" | "ort" | "llamacpp"
    precision: str  # "fp32", "bf16", "int4", "f32", "q8_0", ...
    path: str
    tokenizer_path: str
    source_sha256: str
    size_bytes: int
    n_params: int
    bits_per_weight: float
    tools: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Variant":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def load(cls, variant_dir: str | Path) -> "Variant":
        return cls.from_dict(json.loads(Path(variant_dir, MANIFEST_NAME).read_text()))
