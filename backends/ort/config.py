"""Settings of the ONNX Runtime (onnxruntime-genai) backend; no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIME = "ort"
GENAI_CONFIG = "genai_config.json"

# The CUDA builds install the same import names as the CPU ones (onnxruntime, onnxruntime_genai), so
# they replace them: remove the CPU packages first, or their files would shadow the GPU build's.
CUDA_INSTALL = ("pip uninstall -y onnxruntime onnxruntime-genai && "
                "pip install --force-reinstall onnxruntime-gpu onnxruntime-genai-cuda")


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
