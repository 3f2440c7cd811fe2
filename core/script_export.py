"""Script export ("Save as script", ``sft-studio export RUN_DIR --script OUT``): a folder with a standalone
``train.py`` that trains, with plain TRL + PEFT and no SFT Studio, exactly the tokens the studio trains.

The folder holds::

    train.py             the script (its docstring says how it gets its labels, and why)
    config.yaml          what train.py reads: base model, data files, SFTConfig and LoraConfig arguments
    run.yaml             the studio's run file, for reference (train.py does not read it)
    chat_template.jinja  the chat template the run uses
    data/train.jsonl     the rows to train (data/eval.jsonl when the run has an eval split)
    base/                only for a GGUF base (TRL cannot train a GGUF-quantised model): the dequantised
                         weights as a plain transformers model + the tokenizer, exactly what the studio trains

Two ways to get the labels, chosen per export by a check (:func:`plan_script`):

``trl``
    The rows are written as TRL reads them (``messages`` / ``prompt``+``completion`` / ``text``) and TRL builds
    the labels itself (``assistant_only_loss`` / ``completion_only_loss``). Chosen only when TRL's own dataset
    preparation (``SFTTrainer._prepare_dataset``, run here on the rows as written) gives the studio's labels for
    every row.
``tokens``
    Everywhere else (templates TRL cannot patch such as Llama 3.1/3.2, Mistral, plain ChatML; rows TRL would
    label differently): the studio's own ``input_ids``/``labels`` of every trained row, built by the one masking
    function (:mod:`core.masks`) through the pipeline ``preview`` uses. TRL trains a dataset that already has
    them as it is.

The script writes into its own ``output/`` folder, never into the studio's run folder. This module imports only
the standard library at import time (the GUI reaches it); the work happens in a child process or the CLI.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig

Progress = Callable[[str], None]

SCRIPT_FILE = "train.py"
SETTINGS_FILE = "config.yaml"
RUN_FILE_COPY = "run.yaml"
TEMPLATE_FILE = "chat_template.jinja"
TRAIN_FILE = "data/train.jsonl"
EVAL_FILE = "data/eval.jsonl"
BASE_FOLDER = "base"
MODE_TRL, MODE_TOKENS = "trl", "tokens"
IGNORE_INDEX = -100
FP32_BASE_LIMIT = 1_500_000_000  # GGUF bases up to this many parameters are written in fp32 (exact), larger in bf16


# ------------------------------------------------------------------------------------------------- the plan


@dataclass
class ScriptRow:
    """One trained row: where it comes from, the studio's tokens and labels, and the row as TRL reads it."""

    row: int  # 0-based position in its data file
    input_ids: list[int]
    labels: list[int]
    trl_row: dict | None  # the row in TRL's format, or None when TRL cannot read it as the studio does
    trl_options: tuple[bool, bool] | None  # (assistant_only_loss, completion_only_loss) TRL needs for it
    why_not_trl: str = ""  # when trl_row is None: why TRL cannot build this row's labels


@dataclass
class ScriptPlan:
    """What the export writes and why: the mode, the reason for it, and the rows."""

    mode: str  # MODE_TRL | MODE_TOKENS
    reason: str  # one sentence: why this mode
    train: list[ScriptRow]
    eval: list[ScriptRow]
    dropped: int  # rows the studio does not train (errors, nothing trained within max_length)
    assistant_only_loss: bool = False
    completion_only_loss: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for r in self.train for label in r.labels if label != IGNORE_INDEX)

    @property
    def total_tokens(self) -> int:
        return sum(len(r.input_ids) for r in self.train)


def _selected_rows(run: Any) -> tuple[list[ScriptRow], list[ScriptRow], int]:
    """The train and eval rows exactly as :func:`core.pipeline.build_training_rows` selects and builds them (same
    split, same builder), keeping each row's position and example."""
    from core.data import split_eval
    from core.pipeline import build_rows, open_run

    config = run.config
    train_ids: Sequence[int] = range(len(run.dataset.examples))
    eval_run, eval_ids = None, []
    if config.data.eval_path:
        from resources import resolve_resource_path

        eval_config = copy.deepcopy(config)
        eval_config.data.path = resolve_resource_path(config.data.eval_path)
        eval_config.data.eval_path = None
        eval_run = open_run(eval_config, tokenizer=run.tokenizer)
        eval_ids = range(len(eval_run.dataset.examples))
    elif config.data.eval_fraction > 0:
        train_ids, eval_ids = split_eval(run.dataset, config.data.eval_fraction, config.training.seed)
        eval_run = run
    dropped = 0
    out: tuple[list[ScriptRow], list[ScriptRow]] = ([], [])
    for target, source, ids in ((out[0], run, train_ids), (out[1], eval_run, eval_ids)):
        if source is None:
            continue
        for result in build_rows(source, ids, with_display=False):
            built = result.built
            if result.dropped is not None or built is None:
                dropped += 1
                continue
            example = source.dataset.examples[result.row]
            trl_row, options, why = _as_trl_row(example, built)
            target.append(ScriptRow(result.row, list(built.input_ids), list(built.labels), trl_row, options, why))
    return out[0], out[1], dropped


_NOT_PATCHABLE = ("TRL cannot patch this chat template for assistant-only loss (it raises 'not training-compatible' "
                  "for Llama 3.1/3.2, Mistral, plain ChatML such as SmolLM2's, and custom templates); the studio finds "
                  "the assistant tokens itself by rendering each turn")


def _as_trl_row(example: dict, built: Any) -> tuple[dict | None, tuple[bool, bool] | None, str]:
    """The example in the form TRL reads natively, the loss options that make TRL mask it like the studio, and
    (None, None, why) where TRL has no equivalent."""
    train_on, method = built.train_on, built.method
    if getattr(built, "masked_by", None):
        rules = ", ".join(sorted(built.masked_by))
        return None, None, f"mask rules TRL has no setting for take tokens out of the loss ({rules})"
    if train_on == "last_assistant":  # nothing was masked: a single answer, as train_on: assistant
        train_on = "assistant"
    tools = example.get("tools")
    extra = {"tools": json.dumps(tools, ensure_ascii=False)} if tools else {}  # a JSON string: no schema merging
    if any("tool_calls" in note for note in built.notes):
        return None, None, ("the chat template does not render tool calls, so the studio writes them into the answer "
                            "as JSON (TRL would drop them)")
    if train_on == "assistant" and method not in ("markers", "trl-patched"):
        return None, None, _NOT_PATCHABLE
    if "messages" in example:
        messages = [{k: v for k, v in m.items() if k != "train"} for m in example["messages"]]
        if train_on == "assistant":
            return {"messages": messages, **extra}, (True, False), ""
        if train_on == "all":
            return {"messages": messages, **extra}, (False, False), ""
        # train_on completion: the studio trains the last answer, i.e. TRL's conversational prompt/completion
        last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
        return {"prompt": messages[:last], "completion": messages[last:], **extra}, (False, True), ""
    if "prompt" in example and "completion" in example:
        row = {"prompt": example["prompt"], "completion": example["completion"], **extra}
        options = {"all": (False, False), "completion": (False, True), "assistant": (True, True)}[train_on]
        return row, options, ""
    if "text" in example:
        return {"text": example["text"]}, (False, False), ""
    return None, None, "the rows are in a form TRL does not read"


def plan_script(run: Any, tokenizer: Any = None,
                selected: tuple[list[ScriptRow], list[ScriptRow], int] | None = None) -> ScriptPlan:
    """Decide how the script gets its labels for the opened run (:class:`core.pipeline.RunData`).

    TRL builds them itself only when every trained row has a TRL form with the same loss options *and* TRL's own
    dataset preparation of those rows (with ``tokenizer``, the one the script will load; default the run's)
    gives the studio's ``input_ids`` and ``labels`` row for row. Otherwise the studio's tokens are written.
    ``selected`` reuses rows already built by :func:`_selected_rows`."""
    train, eval_rows, dropped = selected if selected is not None else _selected_rows(run)
    plan = ScriptPlan(MODE_TOKENS, "", train, eval_rows, dropped)
    if not train:
        return plan
    rows = train + eval_rows
    options = {r.trl_options for r in rows}
    if any(r.trl_row is None for r in rows):
        plan.reason = _why_not_trl(rows)
        return plan
    if len(options) != 1:
        plan.reason = "the rows need different TRL loss settings (a mix of formats), which one SFTConfig cannot express"
        return plan
    assistant_only, completion_only = next(iter(options))  # type: ignore[misc]
    try:
        mismatch = _compare_with_trl(run, tokenizer or run.tokenizer, train, eval_rows, assistant_only, completion_only)
    except Exception as exc:  # noqa: BLE001 - TRL refusing the rows (or a changed private API) means: write tokens
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        plan.reason = f"TRL's own preparation of these rows failed ({text})"
        return plan
    if mismatch:
        plan.reason = mismatch
        return plan
    plan.mode = MODE_TRL
    plan.assistant_only_loss, plan.completion_only_loss = assistant_only, completion_only
    what = "assistant turns (assistant_only_loss)" if assistant_only else (
        "completions (completion_only_loss)" if completion_only else "every token")
    plan.reason = (f"TRL builds the same labels itself: the loss is on {what}, and TRL's own preparation of the "
                   f"{len(rows)} rows gave the studio's input_ids and labels for every one of them (checked at export)")
    return plan


def _why_not_trl(rows: list[ScriptRow]) -> str:
    reasons = [r.why_not_trl for r in rows if r.trl_row is None]
    first = reasons[0]
    count = sum(1 for reason in reasons if reason == first)
    return first if count == len(rows) else f"{first} (in {count} of the {len(rows)} rows)"


def _compare_with_trl(run: Any, tokenizer: Any, train: list[ScriptRow], eval_rows: list[ScriptRow],
                      assistant_only: bool, completion_only: bool) -> str | None:
    """Run TRL's own dataset preparation on the rows as the script will load them; None when every row's
    ``input_ids``/``labels`` equal the studio's, else the first difference in words."""
    import types

    import datasets
    from datasets import Dataset
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers
    from trl.trainer.sft_trainer import SFTTrainer

    tok = copy.copy(tokenizer)
    if run.template is not None:
        tok.chat_template = run.template.text
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # What SFTTrainer.__init__ decides before it prepares the data (trl 1.16, sft_trainer.py)
    chat_template = None
    if assistant_only and not has_generation_markers(tok.chat_template):
        chat_template = get_training_chat_template(tok)
    trainer = types.SimpleNamespace(_tokenizer=tok, chat_template=chat_template, completion_only_loss=completion_only)
    args = types.SimpleNamespace(
        dataset_num_proc=None, dataset_text_field="text", assistant_only_loss=assistant_only,
        max_length=run.config.data.max_length, truncation_mode="keep_start", shuffle_dataset=False,
        seed=run.config.training.seed, packing_strategy="bfd",
    )
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for split in (train, eval_rows):
            if not split:
                continue
            # exactly what train.py reads back from the file it is given
            dataset = Dataset.from_list([json.loads(_file_line(r, MODE_TRL)) for r in split])
            prepared = SFTTrainer._prepare_dataset(trainer, dataset, tok, args, False, None, "train")
            got = {r["row"]: (list(r["input_ids"]), list(r["labels"])) for r in prepared}
            difference = _first_difference(split, got)
            if difference:
                return difference
    finally:
        if bars:
            datasets.enable_progress_bars()
    return None


def _first_difference(rows: list[ScriptRow], got: dict[int, tuple[list[int], list[int]]]) -> str | None:
    for r in rows:
        if r.row not in got:
            return f"TRL would drop row {r.row} (no trained token left) where the studio trains it"
        ids, labels = got[r.row]
        if ids != r.input_ids:
            return f"TRL tokenises row {r.row} differently from the studio ({len(ids)} vs {len(r.input_ids)} tokens)"
        if labels != r.labels:
            ours = sum(1 for x in r.labels if x != IGNORE_INDEX)
            theirs = sum(1 for x in labels if x != IGNORE_INDEX)
            return f"TRL would train other tokens of row {r.row} than the studio ({theirs} vs {ours} tokens with loss)"
    return None


def _file_line(row: ScriptRow, mode: str) -> str:
    """A row as one line of data/*.jsonl (``row`` = its position in the studio's data file)."""
    obj = {"row": row.row, **(row.trl_row or {})} if mode == MODE_TRL else \
        {"row": row.row, "input_ids": row.input_ids, "labels": row.labels}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------------ the export


def load_script_config(run: str | os.PathLike[str] | RunConfig) -> tuple[RunConfig, Path]:
    """The run's config and the folder to protect: ``run`` is a run directory holding ``run.yaml``, a run file,
    or a :class:`RunConfig` (the app's current settings; its ``output_dir`` is protected)."""
    from core.config import ConfigError, load_run_config
    from core.export import ExportError

    if isinstance(run, RunConfig):
        return copy.deepcopy(run), Path(run.output_dir).expanduser().resolve()
    path = Path(run).expanduser().resolve()
    file = path / "run.yaml" if path.is_dir() else path
    if not file.is_file() or (path.is_file() and path.suffix.lower() not in (".yaml", ".yml")):
        raise ExportError(f"{path}: not a run directory (no run.yaml); pick the output_dir of a run, or its run file")
    try:
        config = load_run_config(file)
    except ConfigError as exc:
        problems = "; ".join(str(p) for p in exc.problems) or str(exc)
        raise ExportError(f"{file}: {problems}") from None
    return config, file.parent


def export_script(run: str | os.PathLike[str] | RunConfig, dest: str | os.PathLike[str], *, overwrite: bool = False,
                  progress: Progress | None = None) -> Any:
    """Write the script folder for ``run`` (a run directory, a run file or a :class:`RunConfig`) into ``dest``.

    Built in a temporary folder next to ``dest`` and renamed into place (nothing half-written on failure). Raises
    :class:`core.export.ExportError` with a plain message. Returns a :class:`core.export.ExportResult` (kind
    ``script``) whose notes say which labels mode was chosen and why."""
    from core.export import ExportError, ExportResult, RunArtifacts, check_destination, staged_folder

    config, protected = load_script_config(run)
    from resources import resolve_resource_path

    config.data.path = resolve_resource_path(config.data.path)
    target = check_destination(dest, RunArtifacts(protected, config, protected / "adapter", False), overwrite)
    out_dir = Path(config.output_dir).expanduser().resolve()
    if out_dir != protected:  # the app exports from a copy of its settings: keep the real run folder safe too
        check_destination(target, RunArtifacts(out_dir, config, out_dir / "adapter", False), overwrite)
    _say(progress, "reading the data and the tokenizer")
    run_data = _open(config)
    from core.training.models import ModelError, source_for

    try:
        source = source_for(config.model)
    except ModelError as exc:
        raise ExportError(f"cannot use the base model: {exc}") from None
    _say(progress, "building every trained row")
    selected = _selected_rows(run_data)
    if not selected[0]:
        raise ExportError("no row of the data would be trained (every row has an error or no trained token); "
                          "`sft-studio audit --config RUN.yaml` says why")
    with staged_folder(target, overwrite) as tmp:
        base_diff = None
        tokenizer = run_data.tokenizer
        if source.gguf_file:
            _say(progress, "writing a 16/32-bit copy of the GGUF base (TRL cannot train a GGUF-quantised model)")
            base_diff, base_note = _write_base(source, run_data, tmp / BASE_FOLDER)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tmp / BASE_FOLDER))  # what the script will load
            model_ref = "./" + BASE_FOLDER
        else:
            model_ref, base_note = _model_reference(source)
        _say(progress, "checking whether TRL builds the same labels from the rows itself")
        plan = plan_script(run_data, tokenizer, selected)
        _say(progress, f"writing the script ({'TRL builds the labels' if plan.mode == MODE_TRL else 'studio tokens'})")
        _write_data(tmp, plan)
        if run_data.template is not None:
            (tmp / TEMPLATE_FILE).write_text(run_data.template.text, encoding="utf-8")
        from core.config import dump_run_config

        (tmp / RUN_FILE_COPY).write_text(dump_run_config(config), encoding="utf-8")
        settings = script_settings(config, plan, model_ref, run_data.template is not None)
        (tmp / SETTINGS_FILE).write_text(_settings_yaml(settings, config), encoding="utf-8")
        header = _header(config, plan, base_note, protected)
        (tmp / SCRIPT_FILE).write_text(render_script(header), encoding="utf-8")
        (tmp / "README.md").write_text("# " + header.strip() + "\n", encoding="utf-8")
        compile((tmp / SCRIPT_FILE).read_text(encoding="utf-8"), SCRIPT_FILE, "exec")
        from core.export import _check_inside

        files = _check_inside(tmp)
    notes = [
        f"labels: {'TRL builds them' if plan.mode == MODE_TRL else 'the studio tokens in ' + TRAIN_FILE} — {plan.reason}",
        f"{len(plan.train)} training rows ({plan.trained_tokens} of {plan.total_tokens} tokens trained)"
        + (f", {len(plan.eval)} evaluation row{'s' if len(plan.eval) != 1 else ''}" if plan.eval else "")
        + (f"; {plan.dropped} rows not trained (as in the studio)" if plan.dropped else ""),
        base_note,
        f"run it: python {target / SCRIPT_FILE}  (writes {target / 'output'})",
    ]
    result = ExportResult("script", str(target), files, base_diff, notes)
    return result


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _open(config: RunConfig) -> Any:
    from core.data import DataError
    from core.export import ExportError
    from core.pipeline import open_run
    from core.templates import TemplateError
    from core.training.models import ModelError

    try:
        return open_run(config)
    except (DataError, ModelError, TemplateError) as exc:
        raise ExportError(str(exc)) from None


def _model_reference(source: Any) -> tuple[str, str]:
    """What config.yaml names as the base (a Hub id stays a Hub id; a local folder becomes its absolute path)."""
    path = Path(source.path).expanduser()
    if path.exists():
        folder = str(path.resolve())
        return folder, (f"base model: the local folder {folder} (copy it along and change model.name_or_path in "
                        f"{SETTINGS_FILE} when you move the script to another machine)")
    return source.path, f"base model: {source.path} from the Hugging Face Hub"


def _write_base(source: Any, run_data: Any, folder: Path) -> tuple[float, str]:
    """Dequantise the GGUF base exactly as the studio loads it and save it as a plain transformers model (+ the
    tokenizer with the run's chat template); verified by reloading and comparing logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from core.export import ExportError, probe_input_ids
    from core.training.models import ModelError, load_model

    try:
        model = load_model(source, dtype="fp32")
    except ModelError as exc:
        raise ExportError(f"cannot load the GGUF base: {exc}") from None
    n_params = sum(p.numel() for p in model.parameters())
    dtype = "fp32" if n_params <= FP32_BASE_LIMIT else "bf16"
    if dtype == "bf16":
        for param in model.parameters():
            param.data = param.data.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16
    model.eval()
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder))
    tokenizer = copy.copy(run_data.tokenizer)
    if run_data.template is not None:
        tokenizer.chat_template = run_data.template.text
    tokenizer.save_pretrained(str(folder))
    ids = probe_input_ids(tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        diff = float((model.float()(ids).logits - reloaded(ids).logits).abs().max())
    limit = 0.0 if dtype == "fp32" else 0.5
    if diff > limit + 1e-5:
        raise ExportError(f"verification failed: the written base model gives other logits (max |Δ| {diff:.3g})")
    gguf = Path(source.path) / source.gguf_file
    note = (f"base model: {BASE_FOLDER}/ — {gguf.name} dequantised exactly as the studio trains it, saved in {dtype} "
            f"({n_params / 1e6:.0f}M parameters; TRL cannot train a GGUF-quantised model)")
    return diff, note


def _write_data(folder: Path, plan: ScriptPlan) -> None:
    (folder / "data").mkdir()
    for name, rows in ((TRAIN_FILE, plan.train), (EVAL_FILE, plan.eval)):
        if not rows:
            continue
        with (folder / name).open("w", encoding="utf-8", newline="\n") as fh:
            for r in rows:
                fh.write(_file_line(r, plan.mode) + "\n")


# ----------------------------------------------------------------------------------------- settings + script


def script_settings(config: RunConfig, plan: ScriptPlan, model_ref: str, has_template: bool) -> dict:
    """The settings train.py reads (config.yaml), with TRL / PEFT / transformers names, as the studio's
    training session passes them (core.training.session)."""
    m, d, lc, t = config.model, config.data, config.lora, config.training
    attn = m.attn_implementation
    if attn == "sdpa_varlen":  # the studio's own kernel; plain transformers has sdpa
        attn = "sdpa"
    sft: dict[str, Any] = {
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_length": d.max_length,
        "packing": t.packing,
        "seed": t.seed,
        "gradient_checkpointing": t.gradient_checkpointing,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "report_to": list(t.report_to) or "none",
    }
    if plan.eval:
        sft["eval_strategy"] = "steps"
        sft["eval_steps"] = t.eval_steps or t.save_steps
    if plan.mode == MODE_TRL:
        sft["assistant_only_loss"] = plan.assistant_only_loss
        sft["completion_only_loss"] = plan.completion_only_loss
    lora = None
    if lc.enabled:
        lora = {
            "r": lc.r, "lora_alpha": lc.lora_alpha, "lora_dropout": lc.lora_dropout,
            "target_modules": lc.target_modules if isinstance(lc.target_modules, str) else list(lc.target_modules),
            "use_dora": lc.use_dora, "use_rslora": lc.use_rslora,
        }
    return {
        "mode": plan.mode,
        "model": {
            "name_or_path": model_ref,
            "chat_template": TEMPLATE_FILE if has_template else None,
            "load_in_4bit": m.load_in_4bit,
            "attn_implementation": attn,
            "trust_remote_code": m.trust_remote_code,
            "allow_pickle_weights": m.allow_pickle_weights,
        },
        "data": {"train": TRAIN_FILE, "eval": EVAL_FILE if plan.eval else None},
        "device": t.device,
        "precision": t.precision,
        "lora": lora,
        "sft": sft,
    }


def _settings_yaml(settings: dict, config: RunConfig) -> str:
    import yaml

    head = (
        "# Settings read by train.py. Names follow TRL (SFTConfig), PEFT (LoraConfig) and transformers, so their\n"
        "# documentation applies. data.* and model.chat_template are relative to this folder; model.name_or_path is a\n"
        "# Hub id (org/name), an absolute folder, or ./base (relative to this folder).\n"
        "# mode: tokens = data/*.jsonl hold input_ids + labels; trl = they hold rows TRL tokenises and masks itself.\n"
        "# device: auto | cuda | mps | cpu;  precision: auto (bf16 on CUDA GPUs that support it, else fp32) | bf16 |\n"
        "# fp16 | fp32.  sft.gradient_checkpointing: null = on for CUDA GPUs, off elsewhere.  lora: null = full\n"
        "# fine-tune.\n"
    )
    return head + yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, width=100)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("trl", "transformers", "peft", "datasets", "torch"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(parts)


def _header(config: RunConfig, plan: ScriptPlan, base_note: str, run_dir: Path) -> str:
    """The script's docstring: what it trains, how it gets its labels and why, how to run it."""
    name = Path(str(config.output_dir)).name or "run"
    if plan.mode == MODE_TRL:
        what = ("data/train.jsonl holds the rows in TRL's own format (messages / prompt+completion / text) as the "
                "studio read them (format, column mapping and placeholders applied), and TRL builds the labels itself"
                + (" with assistant_only_loss=True (TRL's training version of the chat template marks the assistant "
                   "turns)" if plan.assistant_only_loss else "")
                + (" with completion_only_loss=True" if plan.completion_only_loss else "") + ".")
    else:
        what = ("data/train.jsonl holds SFT Studio's own input_ids and labels (-100 = no loss) for every trained "
                "row; TRL trains a dataset that already has them as it is.")
    eval_line = f" and {len(plan.eval)} evaluation row{'s' if len(plan.eval) != 1 else ''}" if plan.eval else ""
    wrap = textwrap.TextWrapper(width=110, break_long_words=False, break_on_hyphens=False)
    paragraphs = [
        f"Fine-tune with TRL + PEFT exactly as the SFT Studio run '{name}' does: the same base model, the same "
        f"hyperparameters and the same tokens with loss — without SFT Studio.",
        f"Exported from {run_dir} on {datetime.date.today().isoformat()} ({_versions()}).",
        f"Which tokens carry the loss ({plan.mode} mode): {what} Why: {plan.reason}.",
        f"{len(plan.train)} training rows ({plan.trained_tokens} of {plan.total_tokens} tokens trained){eval_line}"
        + (f"; {plan.dropped} rows of the data are not trained, as in the studio (`sft-studio preview` marks "
           f"them dropped)." if plan.dropped else "."),
        base_note[0].upper() + base_note[1:] + ".",
    ]
    needs = "torch transformers datasets trl peft" + (" bitsandbytes" if config.model.load_in_4bit else "")
    usage = [
        "Needs only: pip install " + needs,
        "",
        "    python train.py                            # train; writes ./output/checkpoints and ./output/"
        + ("adapter" if config.lora.enabled else "model"),
        "    python train.py --output-dir DIR           # elsewhere (never the studio's run folder by default)",
        "    python train.py --prepare-only rows.jsonl  # write the tokens and labels training will use; no training",
        "    python train.py --max-steps 2 --device cpu # a quick try",
        "",
        f"Settings: {SETTINGS_FILE} (TRL / PEFT names). {RUN_FILE_COPY} is the studio's run file, for reference.",
        "Not carried over: the studio's live monitoring and probe prompts, and its automatic speed settings on GPUs "
        "(padding-free batches, compiled layers, a micro-batch split that keeps the effective batch): none of them "
        "changes which tokens are trained.",
    ]
    if config.distributed.num_processes > 1:
        usage.append(f"The run used {config.distributed.num_processes} processes: accelerate launch "
                     f"--num_processes {config.distributed.num_processes} train.py")
    lines: list[str] = []
    for p in paragraphs:
        lines.extend(wrap.wrap(p))
        lines.append("")
    for u in usage:
        lines.extend(wrap.wrap(u) if u and not u.startswith("    ") else [u])
    return "\n".join(lines) + "\n"


def render_script(header: str) -> str:
    """train.py's text: the header docstring + the fixed body below (it reads config.yaml)."""
    docstring = header.replace("\\", "\\\\").replace('"""', "'''")  # Windows paths; no early end
    return '#!/usr/bin/env python3\n"""' + docstring + '"""\n' + _SCRIPT_BODY


_SCRIPT_BODY = '''
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL reports usage when a trainer is built
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")  # Apple GPUs: run missing operations on the CPU

HERE = Path(__file__).resolve().parent


def read_settings() -> dict:
    import yaml  # PyYAML is a dependency of transformers

    return yaml.safe_load((HERE / "config.yaml").read_text(encoding="utf-8"))


def here(path: str) -> Path:
    """A path in config.yaml: relative ones are relative to this folder, so the folder can be moved."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else HERE / p


def model_location(name_or_path: str) -> str:
    """A Hub id (org/name) stays as it is; anything that exists here is a local folder."""
    if name_or_path.startswith(("./", "../", "/", "~")) or here(name_or_path).exists():
        return str(here(name_or_path))
    return name_or_path


def choose_device(requested: str, precision: str) -> tuple[str, str]:
    """As SFT Studio does: a CUDA GPU (bf16 where it is supported, else fp32), then Apple MPS, then the CPU (fp32)."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        kind = "cuda"
    elif requested == "cuda":
        sys.exit("error: device is 'cuda' but no CUDA GPU is visible")
    elif requested in ("auto", "mps") and mps is not None and mps.is_available():
        kind = "mps"
    elif requested == "mps":
        sys.exit("error: device is 'mps' but Apple's Metal backend is not available")
    else:
        kind = "cpu"
    if precision == "auto":
        precision = "bf16" if kind == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    elif precision in ("bf16", "fp16") and kind == "cpu":
        sys.exit(f"error: precision {precision} is not used for training on the CPU; set precision: fp32 or auto")
    return kind, precision


def load_split(settings: dict, split: str):
    """data/<split>.jsonl as a datasets.Dataset: input_ids + labels (tokens mode) or TRL-format rows (trl mode).
    The `row` column (the row's position in the studio's data file) is ignored by the trainer."""
    from datasets import Dataset

    name = settings["data"].get(split)
    if not name:
        return None
    with here(name).open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if settings["mode"] == "tokens":
        return Dataset.from_dict({
            "row": [r["row"] for r in rows],
            "input_ids": [r["input_ids"] for r in rows],
            "labels": [r["labels"] for r in rows],
        })
    return Dataset.from_list(rows)


def build_trainer(settings: dict, output_dir: Path, device: str | None = None, max_steps: int | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    m = settings["model"]
    kind, precision = choose_device(device or settings.get("device") or "auto", settings.get("precision") or "auto")
    location = model_location(m["name_or_path"])
    remote = {"trust_remote_code": True} if m.get("trust_remote_code") else {}
    tokenizer = AutoTokenizer.from_pretrained(location, **remote)
    if m.get("chat_template"):
        tokenizer.chat_template = here(m["chat_template"]).read_text(encoding="utf-8")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    load = dict(remote, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    if not m.get("allow_pickle_weights"):
        load["use_safetensors"] = True
    if m.get("attn_implementation"):
        load["attn_implementation"] = m["attn_implementation"]
    if m.get("load_in_4bit"):
        if kind != "cuda":
            sys.exit(f"error: load_in_4bit (QLoRA) needs a CUDA GPU; this machine trains on {kind}")
        from transformers import BitsAndBytesConfig

        load["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
        )
    model = AutoModelForCausalLM.from_pretrained(location, **load)

    sft = dict(settings["sft"])
    if max_steps is not None:
        sft["max_steps"] = max_steps
    checkpointing = sft.pop("gradient_checkpointing", None)
    if checkpointing is None:
        checkpointing = kind == "cuda"
    args = SFTConfig(
        output_dir=str(output_dir / "checkpoints"),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=kind == "cpu",
        gradient_checkpointing=checkpointing,
        **sft,
    )
    peft_config = None
    if settings.get("lora"):
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **settings["lora"])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=load_split(settings, "train"),
        eval_dataset=load_split(settings, "eval"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    return trainer, tokenizer, kind, precision


def write_prepared(trainer, path: Path) -> int:
    """The trainer's own prepared datasets (after TRL's tokenisation, masking, truncation and dropping)."""
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for split, dataset in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
            for r in dataset or []:
                fh.write(json.dumps({"split": split, "row": r.get("row"), "input_ids": list(r["input_ids"]),
                                     "labels": list(r["labels"])}) + "\\n")
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\\n\\n")[0])
    parser.add_argument("--output-dir", default=str(HERE / "output"), help="where to write (default ./output)")
    parser.add_argument("--prepare-only", metavar="ROWS.jsonl",
                        help="write the prepared train/eval rows (input_ids, labels) as JSON lines and stop")
    parser.add_argument("--max-steps", type=int, default=None, help="override sft.max_steps")
    parser.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default=None, help="override device")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output")
    args = parser.parse_args(argv)
    settings = read_settings()
    output_dir = Path(args.output_dir).expanduser().resolve()
    trainer, tokenizer, kind, precision = build_trainer(settings, output_dir, args.device, args.max_steps)
    if args.prepare_only:
        n = write_prepared(trainer, Path(args.prepare_only))
        print(f"wrote {n} prepared rows to {args.prepare_only}")
        return 0
    rows = len(trainer.train_dataset)
    print(f"training {rows} rows on {kind} ({precision}); output: {output_dir}", flush=True)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    final = output_dir / ("adapter" if settings.get("lora") else "model")
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    print(f"saved {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
