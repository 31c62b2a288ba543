"""The family of variants made from one source, built once into a content-addressed cache.

Cache layout: ``<cache>/<model>-<sha256[:16]>/<variant>/manifest.json`` next to
the variant's files. Each variant is written under ``.tmp-<variant>-<pid>`` and
renamed into place only when complete, so a variant directory that exists is a
finished one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

import psutil

from harness import build_gguf, build_ort, build_torch
from harness.environment import package_version, thread_count
from harness.errors import UserError, one_line
from harness.manifest import MANIFEST_NAME, Variant
from harness.paths import cache_dir
from harness.sources import Source

TMP_PREFIX = ".tmp-"
SOURCE_TYPE_NAME = "source-file-type"  # the source GGUF's file type, e.g. q4_1 (it names a variant)
# Free space under which a failed build is put down to a full disk (native writers do not say ENOSPC).
NEARLY_FULL_BYTES = 16 * 2**20

# Full-precision variants (all hold the source's weights unchanged) in the order one becomes the
# reference when none is named: the first whose runtime imports and that this run has. The reference
# is scored once, first, and its logits are recorded for the others (harness.reference_record), so
# the fastest of them goes first.
REFERENCE_ORDER = ("llamacpp-f32", "ort-fp32", "torch-fp32")
NO_REFERENCE = "none"  # the reference setting that compares against nothing

# What a build raises when this runtime cannot take this model (a skip, not a bug in the harness):
# - build_torch.UnsupportedArchitecture: transformers cannot read the GGUF's architecture;
# - RuntimeError: the ONNX builder's child failed, llama.cpp's quantizer returned an error, weights
#   do not fit the config, a gguf dequantizer has no kernel (NotImplementedError), torch ran out of memory;
# - ValueError: transformers or gguf refuse the model's config or tensors;
# - OSError: a model file the converter needs is missing or unreadable;
# - ImportError: the runtime a variant needs (llama_cpp, transformers, torch) is not installed.
# Anything else (TypeError, KeyError, AttributeError, ...) is a bug in the harness and propagates.
EXPECTED_BUILD_FAILURES = (build_torch.UnsupportedArchitecture, RuntimeError, ValueError, OSError, ImportError)


@dataclass(frozen=True)
class VariantSpec:
    """How to make one variant: its runtime and precision, and the variant it is made from."""

    name: str
    runtime: str
    precision: str
    made_from: str | None  # None: made from the source itself


# Every source's variants, each after the one it is made from.
_ANY_SOURCE = (
    VariantSpec("torch-fp32", "torch", "fp32", None),
    VariantSpec("torch-bf16", "torch", "bf16", "torch-fp32"),
    VariantSpec("ort-fp32", "ort", "fp32", "torch-fp32"),
    VariantSpec("ort-int4", "ort", "int4", "torch-fp32"),
)
# A GGUF source's llama.cpp family (plus, in ``catalogue``, the source file itself under its own type).
_GGUF_SOURCE = (
    VariantSpec("llamacpp-f32", "llamacpp", "f32", None),
    *(VariantSpec(f"llamacpp-{q}", "llamacpp", q, "llamacpp-f32") for q in build_gguf.QUANT_TYPES),
)
_FIXED_SPECS = {s.name: s for s in (*_ANY_SOURCE, *_GGUF_SOURCE)}


def catalogue(source: Source, source_type: str | None) -> list[VariantSpec]:
    """Every variant of ``source``, each after the one it is made from.

    ``source_type`` is a GGUF source's own file type (``build_gguf.file_type_name``); it
    adds the source file itself as a variant when no quantization makes that type.
    """
    specs = list(_ANY_SOURCE)
    if source.kind == "gguf":
        specs += _GGUF_SOURCE
        if source_type and f"llamacpp-{source_type}" not in _FIXED_SPECS:
            specs.append(VariantSpec(f"llamacpp-{source_type}", "llamacpp", source_type, None))
    return specs


# ---- the reference every variant is compared against ----------------------------------


def with_reference(names: list[str] | None, reference: str | None, source: Source | None = None) -> list[str] | None:
    """The variants to prepare: the requested ones plus the reference (None: every variant).

    Without a named ``reference`` the fallback is the first of ``REFERENCE_ORDER`` whose
    runtime imports, among ``source``'s variants when ``source`` is given (a transformers
    directory has no llama.cpp variants).
    """
    if names is None or reference == NO_REFERENCE:
        return names
    if not reference:
        candidates = [s.name for s in catalogue(source, None)] if source is not None else REFERENCE_ORDER
        reference = _fallback_reference(candidates)
    return names if reference is None or reference in names else [*names, reference]


def choose_reference(requested: str | None, variants: Sequence[Variant]) -> Variant | None:
    """The variant the others are compared against: ``requested``, else the fallback among ``variants``.

    None when ``requested`` is ``NO_REFERENCE`` or no full-precision variant can run here.
    """
    if requested == NO_REFERENCE:
        return None
    by_name = {v.name: v for v in variants}
    if requested:
        if requested not in by_name:
            raise UserError(f"not a variant of this run; choose from {', '.join([*by_name, NO_REFERENCE])}",
                            setting="reference", value=requested)
        return by_name[requested]
    name = _fallback_reference(by_name)
    return by_name[name] if name else None


def _fallback_reference(candidates: Collection[str]) -> str | None:
    """The first of ``REFERENCE_ORDER`` among ``candidates`` whose runtime imports here."""
    from harness.backends import runtime_unavailable_reason

    for name in REFERENCE_ORDER:
        if name in candidates and runtime_unavailable_reason(_FIXED_SPECS[name].runtime) is None:
            return name
    return None


# ---- building ----------------------------------------------------------------------------


@dataclass
class PrepareResult:
    """What ``prepare`` found and made in ``model_dir``."""

    model_dir: Path
    specs: dict[str, VariantSpec] = field(default_factory=dict)  # the whole catalogue, in order
    variants: dict[str, Variant] = field(default_factory=dict)  # finished, in catalogue order
    built: list[str] = field(default_factory=list)  # built by this call
    skipped: dict[str, str] = field(default_factory=dict)  # name -> one-line reason


def prepare(
    source: Source,
    names: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    threads: int | None = None,
    on_event: Callable[[str, str], None] | None = None,
) -> PrepareResult:
    """Build the requested variants (default: all) and whatever they are made from.

    ``on_event(variant, state)`` is called with state "cached", "building",
    "built" or "skipped: <reason>", for progress display. A variant whose runtime
    cannot take this model (``EXPECTED_BUILD_FAILURES``) is skipped with its reason,
    and so is every variant made from it; the others are built all the same.
    """
    on_event = on_event or (lambda name, state: None)
    threads = thread_count(threads)
    model_dir = cache_dir(cache) / source.cache_key
    reader, source_type = _source_type(source, model_dir)
    specs = catalogue(source, source_type)
    result = PrepareResult(model_dir, specs={s.name: s for s in specs})
    wanted = _with_dependencies(list(names or result.specs), result.specs)
    _make_model_dir(model_dir)
    if source_type is not None:
        _keep_source_type(model_dir, source_type)

    for spec in (s for s in specs if s.name in wanted):
        final = model_dir / spec.name
        if (final / MANIFEST_NAME).is_file():
            result.variants[spec.name] = Variant.load(final)
            on_event(spec.name, "cached")
            continue
        if spec.made_from in result.skipped:
            _skip(result, spec.name, f"needs {spec.made_from}, which was skipped", on_event)
            continue
        on_event(spec.name, "building")
        if source.kind == "gguf" and reader is None:
            reader = build_gguf.read_gguf(source.path)
        try:
            variant = _build_atomically(spec, source, reader, model_dir, result.variants, threads)
        except EXPECTED_BUILD_FAILURES as exc:  # this runtime cannot take this model: skip it, build the rest
            _skip(result, spec.name, one_line(exc), on_event)
            continue
        result.variants[spec.name] = variant
        result.built.append(spec.name)
        on_event(spec.name, "built")
    return result


def _skip(result: PrepareResult, name: str, reason: str, on_event: Callable[[str, str], None]) -> None:
    result.skipped[name] = reason
    on_event(name, f"skipped: {reason}")


def _source_type(source: Source, model_dir: Path):
    """A GGUF source's reader (None unless it had to be read) and file type (None for a transformers source).

    Parsing the source GGUF takes seconds, so its file type is kept beside its variants and it is read
    again only to build one; a new or damaged file has another hash, hence no cache yet, and is read
    (and checked) now.
    """
    if source.kind != "gguf":
        return None, None
    source_type = _cached_source_type(model_dir)
    if source_type is not None:
        return None, source_type
    reader = build_gguf.read_gguf(source.path)
    return reader, build_gguf.file_type_name(reader)


def _make_model_dir(model_dir: Path) -> None:
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {model_dir} ({exc.strerror}); give a writable folder",
                        setting="cache_dir", value=model_dir.parent) from None
    _remove_stale_tmp(model_dir)


def _cached_source_type(model_dir: Path) -> str | None:
    path = model_dir / SOURCE_TYPE_NAME
    return (path.read_text().strip() or None) if path.is_file() else None


def _keep_source_type(model_dir: Path, source_type: str) -> None:
    path = model_dir / SOURCE_TYPE_NAME
    if not path.is_file():
        tmp = model_dir / f"{TMP_PREFIX}{SOURCE_TYPE_NAME}-{os.getpid()}"
        tmp.write_text(source_type + "\n")
        os.replace(tmp, path)


def load_prepared(source: Source, cache: str | os.PathLike | None = None) -> dict[str, Variant]:
    """The finished variants of ``source`` in the cache, without building anything."""
    model_dir = cache_dir(cache) / source.cache_key
    found = {}
    for manifest in sorted(model_dir.glob(f"*/{MANIFEST_NAME}")):
        if not manifest.parent.name.startswith(TMP_PREFIX):
            variant = Variant.load(manifest.parent)
            found[variant.name] = variant
    return found


def _with_dependencies(names: list[str], by_name: dict[str, VariantSpec]) -> set[str]:
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UserError(f"unknown variant; choose from {', '.join(by_name)}", setting="variants",
                        value=",".join(unknown))
    wanted: set[str] = set()
    for name in names:
        while name and name not in wanted:
            wanted.add(name)
            name = by_name[name].made_from
    wanted.add("torch-fp32")  # it holds the tokenizer every variant shares
    return wanted & set(by_name)


def _build_atomically(spec, source, reader, model_dir: Path, done: dict[str, Variant], threads: int) -> Variant:
    tmp = model_dir / f"{TMP_PREFIX}{spec.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = _build_files(spec, source, reader, tmp, done, threads)
        variant = _manifest(spec, source, model_dir, tmp, weights, done)
        (tmp / MANIFEST_NAME).write_text(json.dumps(variant.to_dict(), indent=2))
        _fsync_tree(tmp)
        os.rename(tmp, model_dir / spec.name)
        return variant
    except Exception as exc:  # re-raised, as a UserError when the disk is full
        if _disk_full(exc, model_dir):
            raise UserError(f"disk full while building {spec.name} in {model_dir}; free space or give another folder",
                            setting="cache_dir", value=model_dir.parent) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_files(spec, source, reader, tmp: Path, done: dict[str, Variant], threads: int) -> list[Path]:
    """Write the variant's files into ``tmp``; return the files that hold its weights."""
    if spec.name == "torch-fp32":
        if source.kind == "gguf":
            build_torch.fp32_from_gguf(source.path, tmp)
        else:
            build_torch.fp32_from_hf(source.path, tmp)
        return sorted(tmp.glob("*.safetensors"))
    if spec.runtime == "torch":
        build_torch.bf16_copy(Path(done["torch-fp32"].path), tmp)
        return sorted(tmp.glob("*.safetensors"))
    if spec.runtime == "ort":
        build_ort.build_ort(Path(done["torch-fp32"].path), tmp, spec.precision, tmp / "_builder_cache")
        shutil.rmtree(tmp / "_builder_cache", ignore_errors=True)
        return sorted(tmp.glob("*.onnx")) + sorted(tmp.glob("*.onnx.data"))
    dest = tmp / "model.gguf"
    if spec.made_from is None and spec.precision == "f32":
        build_gguf.write_f32_gguf(reader, dest)
    elif spec.made_from is None:
        _link_or_copy(source.path, dest)
    else:
        build_gguf.quantize(Path(done[spec.made_from].path), dest, spec.precision, threads)
    return [dest]


def _manifest(spec, source, model_dir: Path, tmp: Path, weights: list[Path], done) -> Variant:
    final = model_dir / spec.name
    path = final / "model.gguf" if spec.runtime == "llamacpp" else final
    size = sum(p.stat().st_size for p in weights)
    base = done.get("torch-fp32")  # the transformers copy of the source: its parameters and tokenizer
    if base:
        n_params = base.n_params
    elif spec.name == "torch-fp32":
        n_params = build_torch.parameter_count(tmp)
    else:  # transformers cannot read this model: count the GGUF's own tensors
        n_params = sum(int(t.n_elements) for t in build_gguf.read_gguf(weights[0]).tensors)
    tokenizer = Path(base.path) if base else final
    return Variant(
        name=spec.name,
        runtime=spec.runtime,
        precision=spec.precision,
        path=str(path),
        tokenizer_path=str(tokenizer),
        source_sha256=source.sha256,
        size_bytes=size,
        n_params=n_params,
        bits_per_weight=round(8 * size / n_params, 3),
        tools=_tool_versions(spec.runtime),
    )


# The packages whose versions made each runtime's variants.
_TOOLS = {
    "torch": ("transformers", "torch", "gguf"),
    "ort": ("onnxruntime-genai", "onnxruntime", "transformers"),
    "llamacpp": ("llama-cpp-python", "gguf"),
}


def _tool_versions(runtime: str) -> dict[str, str]:
    versions = {package: package_version(package) for package in ("harness", *_TOOLS[runtime])}
    return {package: v for package, v in versions.items() if v is not None}


def _disk_full(exc: BaseException, model_dir: Path) -> bool:
    # Native writers (safetensors, llama.cpp) do not raise OSError(ENOSPC): match
    # their message, and count a failed build on a nearly full file system too.
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if os.strerror(errno.ENOSPC) in str(exc):  # e.g. safetensors: "I/O error: No space left on device"
        return True
    return shutil.disk_usage(model_dir).free < NEARLY_FULL_BYTES


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_tmp(model_dir: Path) -> None:
    """Remove half-written variants of builds that are no longer running."""
    for tmp in model_dir.glob(f"{TMP_PREFIX}*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and psutil.pid_exists(int(pid)) and int(pid) != os.getpid()):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
