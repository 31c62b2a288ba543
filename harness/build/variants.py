"""The family of variants made from one source, built once into a content-addressed cache.

Cache layout: ``<cache>/<model>-<sha256[:16]>/<variant>/manifest.json`` next to
the variant's files. Each variant is written under ``.tmp-<variant>-<pid>`` and
renamed into place only when complete, so a variant directory that exists is a
finished one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import psutil

from harness.build import convert_hf, llamacpp, ort, pytorch
from harness.build.sources import Source, UnsupportedModel
from harness.errors import UserError, one_line
from harness.machine.environment import package_version, thread_count
from harness.manifest import MANIFEST_NAME, Variant
from harness.paths import cache_dir

TMP_PREFIX = ".tmp-"
SOURCE_TYPE_NAME = "source-file-type"  # the source GGUF's file type, e.g. q4_1 (it names a variant)
# Free space under which a failed build is put down to a full disk (native writers do not say ENOSPC).
NEARLY_FULL_BYTES = 16 * 2**20

# What a build raises when this runtime cannot take this model: an UnsupportedModel (transformers or
# llama.cpp's converter does not know the architecture, the ONNX builder refuses it) makes the variant,
# and those made from it, unavailable. The others make it skipped (a failure, not a bug in the harness):
# - RuntimeError: the ONNX builder's child failed, llama.cpp's quantizer returned an error, weights
#   do not fit the config, a gguf dequantizer has no kernel (NotImplementedError), torch ran out of memory;
# - ValueError: transformers or gguf refuse the model's config or tensors;
# - OSError: a model file the converter needs is missing or unreadable;
# - ImportError: the runtime a variant needs (llama_cpp, transformers, torch) is not installed.
# Anything else (TypeError, KeyError, AttributeError, ...) is a bug in the harness and propagates.
EXPECTED_BUILD_FAILURES = (UnsupportedModel, RuntimeError, ValueError, OSError, ImportError)


@dataclass(frozen=True)
class VariantSpec:
    """How to make one variant: its runtime and precision, and the variant it is made from."""

    name: str
    runtime: str
    precision: str
    made_from: str | None  # None: made from the source itself
    target: str = "cpu"  # the device its files are built for (the ONNX builder's -e); cpu: files every device runs


# Every source's variants, each after the one it is made from.
_ANY_SOURCE = (
    VariantSpec("torch-fp32", "torch", "fp32", None),
    VariantSpec("torch-bf16", "torch", "bf16", "torch-fp32"),
    VariantSpec("ort-fp32", "ort", "fp32", "torch-fp32"),
    VariantSpec("ort-int4", "ort", "int4", "torch-fp32"),
)
# The llama.cpp family: llamacpp-f32 is a GGUF source dequantized, or a transformers directory through
# llama.cpp's converter (harness.build.convert_hf); in ``catalogue`` a GGUF source adds itself under its own type.
_GGUF_SOURCE = (
    VariantSpec("llamacpp-f32", "llamacpp", "f32", None),
    *(VariantSpec(f"llamacpp-{q}", "llamacpp", q, "llamacpp-f32") for q in llamacpp.QUANT_TYPES),
)
# On a GPU the ONNX variants are the builder's CUDA graphs (-e cuda: fp16 activations, GPU attention
# ops), cached apart from the CPU ones under their own names; torch and GGUF variants serve every device.
_CUDA_ORT = (
    VariantSpec("ort-cuda-fp16", "ort", "fp16", "torch-fp32", target="cuda"),
    VariantSpec("ort-cuda-int4", "ort", "int4", "torch-fp32", target="cuda"),
)
FIXED_SPECS = {s.name: s for s in (*_ANY_SOURCE, *_GGUF_SOURCE, *_CUDA_ORT)}


def catalogue(source: Source, source_type: str | None, device: str = "cpu") -> list[VariantSpec]:
    """Every variant of ``source`` that runs on ``device`` (cpu, cuda, cuda:N), each after the one it is made from.

    ``source_type`` is a GGUF source's own file type (``llamacpp.file_type_name``); it
    adds the source file itself as a variant when no quantization makes that type.
    """
    specs = list(_ANY_SOURCE)
    if device.startswith("cuda"):
        specs = [s for s in specs if s.runtime != "ort"] + list(_CUDA_ORT)
    specs += _GGUF_SOURCE
    if source.kind == "gguf" and source_type and f"llamacpp-{source_type}" not in FIXED_SPECS:
        specs.append(VariantSpec(f"llamacpp-{source_type}", "llamacpp", source_type, None))
    return specs


# ---- building ----------------------------------------------------------------------------


@dataclass
class PrepareResult:
    """What ``prepare`` found and made in ``model_dir``."""

    model_dir: Path
    specs: dict[str, VariantSpec] = field(default_factory=dict)  # the whole catalogue, in order
    variants: dict[str, Variant] = field(default_factory=dict)  # finished, in catalogue order
    built: list[str] = field(default_factory=list)  # built by this call
    skipped: dict[str, str] = field(default_factory=dict)  # name -> one-line reason: its build failed
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> the runtime's reason it cannot take the model


def prepare(
    source: Source,
    names: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    threads: int | None = None,
    on_event: Callable[[str, str], None] | None = None,
    device: str = "cpu",
) -> PrepareResult:
    """Build the requested variants (default: all) and whatever they are made from.

    ``on_event(variant, state)`` is called with state "cached", "building", "built",
    "unavailable: <reason>" or "skipped: <reason>", for progress display. A variant whose
    runtime cannot take this model (``UnsupportedModel``) is unavailable with the runtime's
    reason, one whose build fails otherwise (``EXPECTED_BUILD_FAILURES``) is skipped with
    its reason, and so is every variant made from either; the others are built all the same.
    When every variant asked for is unavailable, no runtime can take the model: a UserError.
    ``device`` picks the catalogue (``catalogue``): a GPU has its own ONNX variants.
    """
    on_event = on_event or (lambda name, state: None)
    threads = thread_count(threads)
    model_dir = cache_dir(cache) / source.cache_key
    reader, source_type = _source_type(source, model_dir)
    specs = catalogue(source, source_type, device)
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
        if spec.made_from in result.unavailable:
            _set_aside(result.unavailable, spec.name, f"made from {spec.made_from}, which is unavailable: "
                       f"{result.unavailable[spec.made_from]}", "unavailable", on_event)
            continue
        if spec.made_from in result.skipped:
            _set_aside(result.skipped, spec.name, f"needs {spec.made_from}, which was skipped", "skipped", on_event)
            continue
        on_event(spec.name, "building")
        if source.kind == "gguf" and reader is None:
            reader = llamacpp.read_gguf(source.path)
        try:
            variant = _build_atomically(spec, source, reader, model_dir, result.variants, threads)
        except UnsupportedModel as exc:  # this runtime cannot take this model: the others still can
            _set_aside(result.unavailable, spec.name, " ".join(str(exc).split()), "unavailable", on_event)
            continue
        except EXPECTED_BUILD_FAILURES as exc:  # this variant's build failed: skip it, build the rest
            _set_aside(result.skipped, spec.name, one_line(exc), "skipped", on_event)
            continue
        result.variants[spec.name] = variant
        result.built.append(spec.name)
        on_event(spec.name, "built")
    _refuse_a_model_no_runtime_takes(result, source)
    return result


def _set_aside(where: dict[str, str], name: str, reason: str, state: str,
               on_event: Callable[[str, str], None]) -> None:
    """Record a variant that is not built (``where``: the result's skipped or unavailable) and say so."""
    where[name] = reason
    on_event(name, f"{state}: {reason}")


def _refuse_a_model_no_runtime_takes(result: PrepareResult, source: Source) -> None:
    """A UserError when every variant asked for is unavailable; the model's empty folder is removed."""
    if result.variants or result.skipped or not result.unavailable:
        return
    with contextlib.suppress(OSError):
        result.model_dir.rmdir()  # only when empty: nothing was written
    reasons = "; ".join(reason for name, reason in result.unavailable.items() if result.specs[name].made_from is None)
    raise UserError(f"no runtime can take it ({reasons}); give a model of an architecture they support",
                    setting="model", value=source.path)


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
    reader = llamacpp.read_gguf(source.path)
    llamacpp.check_llamacpp_reads(source.path)
    return reader, llamacpp.file_type_name(reader)


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
            pytorch.fp32_from_gguf(source.path, tmp)
        else:
            pytorch.fp32_from_hf(source.path, tmp)
        return sorted(tmp.glob("*.safetensors"))
    if spec.runtime == "torch":
        pytorch.bf16_copy(Path(done["torch-fp32"].path), tmp)
        return sorted(tmp.glob("*.safetensors"))
    if spec.runtime == "ort":
        with _builder_refusal_as_unsupported():
            ort.build_ort(Path(done["torch-fp32"].path), tmp, spec.precision, tmp / "_builder_cache",
                                spec.target)
        shutil.rmtree(tmp / "_builder_cache", ignore_errors=True)
        return sorted(tmp.glob("*.onnx")) + sorted(tmp.glob("*.onnx.data"))
    dest = tmp / "model.gguf"
    if spec.made_from is None and spec.precision == "f32" and source.kind == "hf":
        convert_hf.convert(source.path, dest)
    elif spec.made_from is None and spec.precision == "f32":
        llamacpp.write_f32_gguf(reader, dest)
    elif spec.made_from is None:
        _link_or_copy(source.path, dest)
    else:
        llamacpp.quantize(Path(done[spec.made_from].path), dest, spec.precision, threads)
    return [dest]


# The ONNX builder's last line when it cannot take a model: "NotImplementedError: The X model is not
# currently supported.", or a config it does not read (a KeyError such as 'rope_type', which it said of
# Gemma 3's per-layer-type rope_parameters before harness.build.ort.builder_input). Anything else (killed,
# MemoryError, a full disk) is a failed build.
_BUILDER_REFUSALS = ("NotImplementedError", "KeyError", "AttributeError", "ValueError", "TypeError", "AssertionError")


@contextlib.contextmanager
def _builder_refusal_as_unsupported():
    """The ONNX builder refusing the model (``_BUILDER_REFUSALS``, its last line in build_ort's RuntimeError)
    is UnsupportedModel: the ONNX variants are unavailable, with the builder's reason."""
    try:
        yield
    except RuntimeError as exc:
        said = str(exc).split("): ", 1)[-1]  # "onnxruntime-genai builder failed (1): KeyError: 'rope_type'"
        if not said.startswith(_BUILDER_REFUSALS):
            raise
        raise UnsupportedModel(f"the onnxruntime-genai builder cannot take it: {said}") from None


def _manifest(spec, source, model_dir: Path, tmp: Path, weights: list[Path], done) -> Variant:
    final = model_dir / spec.name
    path = final / "model.gguf" if spec.runtime == "llamacpp" else final
    size = sum(p.stat().st_size for p in weights)
    base = done.get("torch-fp32")  # the transformers copy of the source: its parameters and tokenizer
    if base:
        n_params = base.n_params
    elif spec.name == "torch-fp32":
        n_params = pytorch.parameter_count(tmp)
    else:  # transformers cannot read this model: count the GGUF's own tensors
        n_params = sum(int(t.n_elements) for t in llamacpp.read_gguf(weights[0]).tensors)
    # Without a transformers copy: a directory source's own tokenizer, else the variant's own files (the GGUF,
    # whose vocabulary llama.cpp reads; torch-fp32's folder, where transformers saved its tokenizer).
    tokenizer = Path(base.path) if base else source.path if source.kind == "hf" else path
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
