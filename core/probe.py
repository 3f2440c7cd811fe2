"""``python -m core.probe [--config RUN.yaml]``: what the GUI must not find out in its own process.

Prints one JSON object on stdout: the training device (CUDA name and memory / MPS / CPU), the model's
architecture and parameter counts, whether it ships a chat template, and the memory fit estimate for the
run file. The desktop app runs this as a child so that its own process never imports torch or initialises
CUDA (DESIGN.md §2). Every part that fails is reported under ``errors`` instead of failing the whole probe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def probe(config_path: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Device, model and memory facts for ``config_path`` (defaults when None)."""
    from core.config import RunConfig, load_run_config

    out: dict[str, Any] = {"device": None, "model": None, "estimate": None, "errors": {}}
    cfg = load_run_config(config_path) if config_path else RunConfig()
    try:
        from core.training.devices import detect_device

        info = detect_device("auto" if device is None else device)
        out["device"] = {**info.as_dict(), "description": info.describe()}
    except Exception as exc:  # noqa: BLE001 - report, never crash the probe
        out["errors"]["device"] = f"{type(exc).__name__}: {exc}"
        info = None
    try:
        out["model"] = _model_facts(cfg)
    except Exception as exc:  # noqa: BLE001
        out["errors"]["model"] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    try:
        est, auto = fit_estimate(cfg, info)
        out["estimate"] = {
            "breakdown": est.breakdown(),
            "total": est.total,
            "peak_allocated": est.peak_allocated,
            "device_total": est.device_total,
            "verdict": est.verdict,
            "suggestions": list(est.suggestions),
            "summary": est.summary(),
            "assumptions": est.assumptions,
            "auto_choices": auto,
            "params": {"total": est.params.total, "trainable": est.params.trainable},
        }
    except Exception as exc:  # noqa: BLE001
        out["errors"]["estimate"] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return out


def fit_estimate(cfg: Any, info: Any, *, suggest: bool = True) -> tuple[Any, list[str]]:
    """The fit check's memory estimate of run ``cfg`` on device ``info`` (a DeviceInfo, or None when unknown) and
    the automatic choices it assumes. The model library's fit badges call this too, so both always agree."""
    from core.training.memory import estimate_memory

    kind = info.kind if info is not None else "cuda"
    budget = info.total_memory if info is not None else None
    if kind == "cpu" and budget is None:
        budget = _system_memory()  # the CPU trains in system RAM
    if info is not None and info.kind != "cpu" and budget:
        # what training will do here: the automatic choices (padding-free, attention, checkpointing, compiled
        # layers, micro-batch) with the worst-case micro-batch of max_length rows
        from core.training.performance import tuned_settings

        tuned = tuned_settings(cfg, info)
        if tuned.estimate_kwargs:
            return estimate_memory(cfg, budget, suggest=suggest, **tuned.estimate_kwargs), tuned.reasons
    return estimate_memory(cfg, budget, device_kind=kind, suggest=suggest), []


def _system_memory() -> int | None:
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _model_facts(cfg: Any) -> dict[str, Any]:
    from core.training.memory import load_model_config, model_shape
    from core.training.models import resolve_model_source

    source = resolve_model_source(cfg.model.name_or_path)
    model_config = load_model_config(cfg.model.name_or_path)
    shape = model_shape(model_config)
    archs = getattr(model_config, "architectures", None) or [shape.model_type]
    has_template = None
    folder = Path(source.path)
    if source.gguf_file:
        try:  # read once with the config and cached (parsing the header takes seconds)
            from core.training.memory import gguf_facts

            has_template = bool(gguf_facts(folder / source.gguf_file).get("chat_template"))
        except Exception:  # noqa: BLE001 - an unreadable header only means "unknown" here
            has_template = None
    elif folder.is_dir():
        has_template = (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file()
        tok_cfg = folder / "tokenizer_config.json"
        if not has_template and tok_cfg.is_file():
            try:
                has_template = bool(json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template"))
            except (OSError, ValueError):
                has_template = None
    return {
        "source": source.description,
        "architecture": archs[0],
        "model_type": shape.model_type,
        "layers": shape.layers,
        "hidden": shape.hidden,
        "vocab": shape.vocab,
        "chat_template": has_template,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", metavar="RUN.yaml")
    parser.add_argument("--device", default=None, help="auto | cuda | mps | cpu (default: auto)")
    args = parser.parse_args(argv)
    try:
        result = probe(args.config, args.device)
    except Exception as exc:  # noqa: BLE001 - an unreadable run file
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
