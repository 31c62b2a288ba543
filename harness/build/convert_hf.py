"""A transformers directory to an F32 GGUF, with llama.cpp's own converter (``convert_hf_to_gguf.py``).

The converter is the one inside the llama-cpp-python sdist of the installed
version, so the GGUF it writes is what the installed llama.cpp reads (its
architectures, metadata keys and pre-tokenizer names). It is fetched with pip the
first time a directory needs it, kept under ``$HARNESS_TOOLS_DIR`` (default
``~/.cache/harness-tools``; three folders, 2 MB: the script, its ``conversion``
package and its own ``gguf-py``), and run as a child process: it puts its own
``gguf-py`` first on its path, which may differ from the ``gguf`` the harness imports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from harness.build.sources import UnsupportedModel

TOOLS_ENV = "HARNESS_TOOLS_DIR"
LLAMA_CPP_DIST = "llama-cpp-python"
SCRIPT = "convert_hf_to_gguf.py"
# What the converter needs of the sdist's llama.cpp tree (vendor/llama.cpp/...), and its licence.
CONVERTER_PATHS = (SCRIPT, "conversion/", "gguf-py/gguf/", "LICENSE")
FETCH_TIMEOUT_S = 600
# The converter's own last words: a Python exception, or its logger's "ERROR:hf-to-gguf:..." before sys.exit(1).
_ERROR_LINE = re.compile(r"^(ERROR:[\w-]+:|[A-Za-z_][\w.]*(Error|Exception|Exit)\b)")


class ConverterUnavailable(UnsupportedModel):
    """llama.cpp's converter cannot be had here, or refuses this model: the llama.cpp variants are unavailable."""


def convert(model_dir: Path, dest: Path) -> None:
    """Write ``model_dir`` as an F32 GGUF at ``dest`` with llama.cpp's converter.

    F32 holds every weight of an fp32, fp16 or bf16 directory exactly. Raises
    ConverterUnavailable with the converter's own last line when it refuses the
    model (an architecture or a pre-tokenizer it does not know, a tensor it cannot
    map), and RuntimeError when it dies without one (killed, out of memory).
    """
    script = converter_dir() / SCRIPT
    env = {key: value for key, value in os.environ.items() if key != "NO_LOCAL_GGUF"}  # its gguf-py, not ours
    env["HF_HUB_OFFLINE"] = "1"  # it reads the local directory only
    proc = subprocess.run([sys.executable, str(script), str(model_dir), "--outfile", str(dest), "--outtype", "f32"],
                          capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        return
    reason = _last_error_line(proc.stderr + proc.stdout)
    if proc.returncode < 0 or reason is None:
        raise RuntimeError(f"llama.cpp's converter ended with status {proc.returncode} and no error of its own")
    raise ConverterUnavailable(f"llama.cpp's converter cannot take it: {reason}")


def _last_error_line(output: str) -> str | None:
    lines = [line.strip() for line in output.splitlines() if _ERROR_LINE.match(line.strip())]
    return lines[-1].removeprefix("ERROR:hf-to-gguf:") if lines else None


def tools_dir() -> Path:
    """Where fetched tools are kept: ``$HARNESS_TOOLS_DIR``, else ``$XDG_CACHE_HOME/harness-tools`` or ~/.cache."""
    if os.environ.get(TOOLS_ENV):
        return Path(os.environ[TOOLS_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "harness-tools").resolve()


def converter_dir() -> Path:
    """The folder holding the installed llama.cpp's converter, fetched into ``tools_dir()`` the first time."""
    version = _installed_version()
    final = tools_dir() / f"convert-hf-to-gguf-{version}"
    if (final / SCRIPT).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-converter-", dir=final.parent) as work:
        sdist = _download_sdist(version, Path(work))
        staged = Path(work, "converter")
        _extract_converter(sdist, staged)
        try:
            os.rename(staged, final)
        except OSError:  # another process put it there first: theirs is the same
            if not (final / SCRIPT).is_file():
                raise
    return final


def _installed_version() -> str:
    try:
        return metadata.version(LLAMA_CPP_DIST)
    except metadata.PackageNotFoundError:
        raise ConverterUnavailable(f"{LLAMA_CPP_DIST} is not installed; install it (pip install -e .)") from None


def _download_sdist(version: str, work: Path) -> Path:
    """The sdist of ``llama-cpp-python==version`` through pip (its index settings and its cache)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--dest", str(work), f"{LLAMA_CPP_DIST}=={version}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc = None
    found = sorted(work.glob("*.tar.gz"))
    if proc is None or proc.returncode != 0 or not found:
        said = _last_line(proc.stderr if proc else f"no answer in {FETCH_TIMEOUT_S} s")
        raise ConverterUnavailable(
            f"llama.cpp's converter is not in {tools_dir()} and `pip download {LLAMA_CPP_DIST}=={version}` "
            f"failed ({said}); run once where PyPI is reachable, or give the model as a GGUF file")
    return found[0]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _extract_converter(sdist: Path, dest: Path) -> None:
    """Copy ``CONVERTER_PATHS`` of the sdist's ``vendor/llama.cpp`` into ``dest`` (regular files only)."""
    with tarfile.open(sdist) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or parts[1:3] != ["vendor", "llama.cpp"] or ".." in parts:
                continue
            relative = "/".join(parts[3:])
            if not any(relative == p or (p.endswith("/") and relative.startswith(p)) for p in CONVERTER_PATHS):
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    if not (dest / SCRIPT).is_file():
        raise ConverterUnavailable(f"{sdist.name} holds no vendor/llama.cpp/{SCRIPT}; give the model as a GGUF file")
