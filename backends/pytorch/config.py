"""Settings of the PyTorch (transformers) backend; no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIME = "torch"

# Variant precision -> torch dtype name.
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# What makes torch run on an NVIDIA GPU where it does not: a CUDA build from PyTorch's own index.
CUDA_INSTALL = "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu128"

# transformers' attention kernels (``attn_implementation``); the flash ones need a GPU.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class TorchSettings:
    """How transformers runs a variant."""

    attn_implementation: str = field(
        default="sdpa", metadata={"help": "transformers attention kernel", "choices": ATTN_IMPLEMENTATIONS}
    )

    def __post_init__(self) -> None:
        """Validates only."""
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={self.attn_implementation!r}: pass one of {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
