"""Settings of the PyTorch (transformers) backend; no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIME = "torch"

# Variant precision -> torch dtype name.
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class TorchSettings:
    """How transformers runs a variant."""

    attn_implementation: str = field(default="sdpa", metadata={"help": "transformers attention kernel"})
