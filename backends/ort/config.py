"""Settings of the ONNX Runtime (onnxruntime-genai) backend; no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIME = "ort"
GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class OrtSettings:
    """How onnxruntime-genai runs a variant."""

    provider: str | None = field(
        default=None, metadata={"help": "execution provider, e.g. cpu or cuda (default: cuda on a cuda device, else cpu)", "metavar": "NAME"}
    )

    def __post_init__(self) -> None:
        """Validates only: which providers exist depends on the installed onnxruntime-genai build."""
        if self.provider is not None and (not isinstance(self.provider, str) or not self.provider.strip()):
            raise ValueError(f"provider={self.provider!r}: pass a provider name such as cpu or cuda, or None")
