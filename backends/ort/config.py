"""Settings of the ONNX Runtime (onnxruntime-genai) backend; no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIME = "ort"
GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class OrtSettings:
    """How onnxruntime-genai runs a variant."""

    provider: str | None = field(default=None, metadata={"help": "execution provider; None: 'cuda' on a cuda device, else CPU"})
