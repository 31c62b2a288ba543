"""llama.cpp variants: an F32 GGUF holding exactly the source's weights, and llama.cpp's own quantizations of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.errors import UserError, one_line
from harness.machine.native_output import native_stderr_to

# Every llama.cpp variant made by quantizing llamacpp-f32, by llama.cpp's file-type name.
QUANT_TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k")
# What llama.cpp logs before its reason when it cannot load a model file.
LOAD_ERROR = "error loading model:"


def read_gguf(path: Path):
    """A GGUFReader over ``path``, or a one-line UserError when the file is truncated or corrupt."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        size = path.stat().st_size
        for tensor in reader.tensors:
            end = tensor.data_offset + tensor.n_bytes
            if end > size:
                raise ValueError(f"tensor {tensor.name} ends at byte {end} past the end of the file ({size})")
    except Exception as exc:  # gguf raises ValueError, struct/numpy errors on damaged files
        raise UserError(f"a truncated or corrupt GGUF file ({one_line(exc)}); download it again or give another file",
                        setting="model", value=path) from None
    return reader


def check_llamacpp_reads(path: Path) -> None:
    """A one-line UserError when llama.cpp cannot read the GGUF's architecture and vocabulary.

    The harness tokenizes a GGUF source with llama.cpp (``harness.text.tokenizer``), so a GGUF that
    llama.cpp cannot read is no source for any runtime, whatever transformers makes of it.
    """
    import contextlib
    import io
    import tempfile

    import llama_cpp

    # llama.cpp logs its errors through llama-cpp-python's callback (to sys.stderr), the rest to fd 2.
    logged = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="harness-gguf-check-") as tmp:
        with native_stderr_to(Path(tmp, "load.log")) as log, contextlib.redirect_stderr(logged):
            try:
                # verbose: a quiet load silences llama.cpp's reason too; here all of it goes to the logs
                llama_cpp.Llama(str(path), vocab_only=True, verbose=True)
                return
            except ValueError:  # llama-cpp-python: "Failed to load model from file"; llama.cpp said why
                text = logged.getvalue() + log.read_text(errors="replace")
    said = [line for line in text.splitlines() if LOAD_ERROR in line]
    reason = said[-1].split(LOAD_ERROR, 1)[1].strip() if said else "no reason given"
    version = llama_cpp.__version__
    raise UserError(f"llama.cpp {version} cannot read it ({reason}); give a GGUF that it reads (an architecture "
                    "it knows, with its vocabulary), or the model's transformers folder", setting="model", value=path)


def architecture(reader) -> str:
    return _field_value(reader, "general.architecture")


def file_type_name(reader) -> str:
    """The GGUF's own type as llama.cpp names it, lower case: "q4_1", "f16", "q4_k_m"."""
    import gguf

    file_type = _field_value(reader, "general.file_type")
    name = gguf.LlamaFileType(int(file_type)).name  # e.g. MOSTLY_Q4_1, ALL_F32
    return name.split("_", 1)[1].lower()


def _field_value(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise UserError(f"metadata key {key!r} is missing, so this is no model GGUF; give a model's GGUF file",
                        setting="model", value=reader.data.filename)
    return field.contents()


def dequantized_tensors(reader) -> dict[str, np.ndarray]:
    """Each tensor of the GGUF as float32, in GGUF layout (numpy shape = reversed ggml shape)."""
    from gguf.quants import dequantize

    out = {}
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type)
        out[tensor.name] = np.ascontiguousarray(values, dtype=np.float32).reshape(
            tuple(reversed([int(d) for d in tensor.shape]))
        )
    return out


def write_f32_gguf(reader, dest: Path) -> None:
    """Write a GGUF with the source's metadata and every tensor dequantized to F32."""
    import gguf

    arch = architecture(reader)
    writer = gguf.GGUFWriter(dest, arch)
    for key, field in reader.fields.items():
        # GGUF.* are the reader's view of the header; the writer adds its own
        # architecture key; the file type changes to all-F32.
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, values in dequantized_tensors(reader).items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(src: Path, dest: Path, quant: str, threads: int) -> None:
    """Quantize an F32 GGUF with llama.cpp's own quantizer (llama_model_quantize)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = threads
    with native_stderr_to(dest.with_suffix(".log")) as log:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), params)
    if status != 0:
        last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"llama_model_quantize {quant} failed with status {status}: {last}")
    log.unlink()

