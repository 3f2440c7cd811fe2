"""Where a run's base model came from, in a form that tools outside the studio understand.

The run file may name the base as ``bundled:SmolLM2-135M-Instruct``, a ``.gguf`` file inside a virtualenv, a
folder in the Hugging Face cache or a Hub id. PEFT, vLLM, LM Studio and the Hub's model tree only understand a
Hub id (optionally with a revision) or a folder they can open. :func:`identify_base` finds the most portable
identity it can prove:

* a Hub id given in the run file, with the commit of the cached snapshot when it is cached;
* a folder inside the Hugging Face cache (``models--org--name/snapshots/<sha>``): that id and commit;
* the bundled model: the Hub repository its GGUF file was converted from;
* a GGUF file whose metadata names its source repository (``general.source.huggingface.repository`` or a
  ``huggingface.co`` ``general.source.url`` / ``general.repo_url``);
* anything else: the absolute local path (folder or file), and no Hub id.

Training writes the result to ``<output_dir>/base_model.json`` when it starts, so a later export does not
depend on what the cache holds by then. Standard library only at import time; ``huggingface_hub`` and ``gguf``
are imported lazily.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "base_model.json"

# bundled model name -> the Hub repository its file was converted from
BUNDLED_HUB_IDS = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_HF_URL = re.compile(r"^https?://(?:www\.)?huggingface\.co/(?!datasets/|spaces/)([\w.-]+/[\w.-]+?)(?:\.git)?/?$")
_SNAPSHOT = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]([0-9a-f]{40})")


@dataclass(frozen=True)
class BaseIdentity:
    """The base model of a run, as portable as can be shown."""

    spec: str  # what the run file says
    hub_id: str | None = None  # "org/name" when known
    revision: str | None = None  # the Hub commit when known
    local_path: str | None = None  # absolute folder, or the .gguf file, the studio loaded
    gguf_file: str | None = None  # file name when the base is a GGUF file
    quantization: str | None = None  # e.g. "Q4_1" for a GGUF base (dequantised for training)
    found_by: str = "run file"  # how hub_id was established

    @property
    def loadable(self) -> str:
        """What ``from_pretrained`` outside the studio should be given: the Hub id, else the local folder."""
        return self.hub_id or self.local_path or self.spec

    @property
    def exact(self) -> bool:
        """False when the studio trained on a dequantised GGUF copy: the Hub weights then differ slightly."""
        return self.gguf_file is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [self.hub_id or self.local_path or self.spec]
        if self.revision:
            parts.append(f"@ {self.revision[:12]}")
        if self.gguf_file:
            parts.append(f"(trained on the GGUF file {self.gguf_file}"
                         f"{', ' + self.quantization if self.quantization else ''}, dequantised)")
        return " ".join(parts)


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "/", "~")) and not text.endswith(".gguf")


def identify_base(spec: str, base_dir: str | os.PathLike[str] | None = None) -> BaseIdentity:
    """The identity of ``model.name_or_path`` (resolved as training resolves it; never downloads anything)."""
    from core.training.models import ModelError, resolve_model_source

    try:
        source = resolve_model_source(spec, base_dir)
    except ModelError:
        return BaseIdentity(spec, hub_id=spec if looks_like_hub_id(spec) else None)
    if source.gguf_file:
        file = (Path(source.path) / source.gguf_file).resolve()
        meta = _gguf_source(file)
        hub_id, found_by = meta.get("hub_id"), "GGUF metadata"
        if spec.startswith("bundled:"):
            hub_id, found_by = BUNDLED_HUB_IDS.get(spec.removeprefix("bundled:"), hub_id), "bundled model"
        return BaseIdentity(spec, hub_id, None, str(file), file.name, meta.get("quantization"),
                            found_by if hub_id else "local file")
    path = Path(source.path)
    if path.exists():
        folder = path.resolve()
        match = _SNAPSHOT.search(str(folder))
        if match:
            return BaseIdentity(spec, f"{match.group(1)}/{match.group(2)}", match.group(3), str(folder),
                                found_by="Hugging Face cache folder")
        return BaseIdentity(spec, None, None, str(folder), found_by="local folder")
    return BaseIdentity(spec, spec, _cached_revision(spec), None, found_by="run file")


def _cached_revision(repo_id: str) -> str | None:
    """The commit of the cached snapshot of ``repo_id`` (main), or None; offline and without downloading."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - no cache, odd id: the revision is simply unknown
        return None
    match = _SNAPSHOT.search(str(found)) if isinstance(found, str) else None
    return match.group(3) if match else None


def _gguf_source(file: Path) -> dict[str, str]:
    """``hub_id`` (from the source keys llama.cpp's converter writes) and ``quantization`` of a GGUF file, read with
    the library's fast header reader (the vocabulary is skipped, not decoded)."""
    from core.gguf_header import GGUFHeaderError, quantization_name, read_gguf_header

    out: dict[str, str] = {}
    try:
        header = read_gguf_header(file)
    except (GGUFHeaderError, OSError):  # an unreadable header: training reports that; here it is just unknown
        return out
    for key in ("general.source.huggingface.repository", "general.source.url", "general.repo_url"):
        text = header.get(key)
        if not isinstance(text, str):
            continue
        match = _HF_URL.match(text.strip())
        candidate = match.group(1) if match else text.strip()
        if looks_like_hub_id(candidate):
            out["hub_id"] = candidate
            break
    quantization = quantization_name(header)
    if quantization:
        out["quantization"] = quantization
    return out


def record_base(identity: BaseIdentity, output_dir: str | os.PathLike[str]) -> Path:
    """Write ``base_model.json`` into the run directory (atomically)."""
    path = Path(output_dir) / PROVENANCE_FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(identity.as_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_base(run_dir: str | os.PathLike[str], spec: str, base_dir: str | os.PathLike[str] | None = None) -> BaseIdentity:
    """The identity recorded when the run trained; identified afresh for runs older than that record."""
    path = Path(run_dir) / PROVENANCE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: data.get(k) for k in BaseIdentity.__dataclass_fields__}
        if known.get("spec") == spec:
            return BaseIdentity(**known)
    except (OSError, ValueError, TypeError):
        pass
    return identify_base(spec, base_dir)


def point_adapter_at_base(adapter_dir: str | os.PathLike[str], identity: BaseIdentity) -> None:
    """Make ``adapter_config.json`` name the portable base (``base_model_name_or_path`` and ``revision``), so
    ``AutoPeftModelForCausalLM``, vLLM and the Hub resolve it; rewritten atomically."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = identity.loadable
    if identity.hub_id and identity.revision:
        config["revision"] = identity.revision
    elif "revision" in config and not identity.hub_id:
        config["revision"] = None
    tmp = config_path.with_name(f".{config_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, config_path)
