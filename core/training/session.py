"""A training run: TRL's ``SFTTrainer`` with a PEFT LoRA adapter, fed the examples built by
:mod:`core.masks` (so it trains on exactly what the preview showed), writing the run directory of
DESIGN.md §3.3 and the event stream of §3.4.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import RunConfig, save_run_config
from core.training.events import EventWriter

log = logging.getLogger("sft_studio.train")

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_DATA, EXIT_OOM = 0, 1, 2, 3, 4


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float | None
    dropped_rows: int


class TrainingFailed(Exception):
    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind, self.hint = kind, hint


def newest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest *complete* checkpoint: a half-written one (killed during save) lacks trainer_state.json
    or its adapter weights and is skipped."""
    if not checkpoints_dir.is_dir():
        return None
    candidates = []
    for path in checkpoints_dir.glob("checkpoint-*"):
        try:
            step = int(path.name.split("-")[-1])
        except ValueError:
            continue
        complete = (path / "trainer_state.json").is_file() and (
            (path / "adapter_model.safetensors").is_file() or (path / "model.safetensors").is_file()
        )
        if complete:
            candidates.append((step, path))
    return max(candidates)[1] if candidates else None


def _setup_file_log(output_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(output_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("sft_studio", "transformers", "trl", "peft"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("sft_studio").setLevel(logging.INFO)
    return handler


def run_training(config: RunConfig, events: EventWriter | None = None, resume: bool = False) -> TrainResult:
    """Train ``config`` to completion. Writes ``run.yaml`` first, then checkpoints, events and the adapter.

    Raises :class:`TrainingFailed` (kind: config | data | oom | crash) for failures the user can act on."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(config, output_dir / "run.yaml")
    handler = _setup_file_log(output_dir)
    own_writer = events is None
    if events is None:
        events = EventWriter(output_dir / "events.jsonl")
    try:
        return _train(config, output_dir, events, resume)
    finally:
        for name in ("sft_studio", "transformers", "trl", "peft"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
        if own_writer:
            events.close()


def _train(config: RunConfig, output_dir: Path, events: EventWriter, resume: bool) -> TrainResult:
    from core.pipeline import build_rows, open_run
    from core.training.devices import choose_precision, detect_device

    device = detect_device(config.training.device)
    precision = choose_precision(device, config.training.precision)
    log.info("device %s, precision %s", device.describe(), precision)

    run = open_run(config)
    for note in run.notes:
        log.warning(note)
        events.emit("warning", message=note)
    train_ids, eval_ids = _split(run, config)
    train_rows, dropped = _built(run, train_ids, build_rows)
    eval_rows, eval_dropped = _built(run, eval_ids, build_rows)
    for result in dropped + eval_dropped:
        where = f"{run.source_file}:{result.line}" if result.line else run.source_file
        log.warning("%s: row %d not trained: %s", where, result.row, result.dropped)
    if not train_rows:
        raise TrainingFailed("data", f"{run.source_file}: no row can be trained ({len(dropped)} rows reported)",
                             "run `sft-studio audit --config RUN.yaml` to see why each row is dropped")
    supervised = sum(sum(1 for x in labels if x != -100) for _, labels in train_rows)
    total_tokens = sum(len(ids) for ids, _ in train_rows)
    events.emit(
        "data",
        train_rows=len(train_rows),
        eval_rows=len(eval_rows),
        dropped_rows=len(dropped) + len(eval_dropped),
        tokens=total_tokens,
        supervised_tokens=supervised,
        template=run.template.name if run.template else None,
        mask_method=run.builder.training_template.method if run.template and run.builder.train_on != "all" else None,
    )

    import datasets
    import torch
    from datasets import Dataset

    datasets.disable_progress_bars()  # the event stream reports progress; tqdm bars only clutter train.log
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from core.training.callbacks import EventCallback
    from core.training.models import load_model, resolve_model_source
    from core.training.performance import tuned_settings

    source = resolve_model_source(config.model.name_or_path)
    tuned = tuned_settings(config, device)
    for reason in tuned.reasons:
        log.info("auto: %s", reason)
    quantization = None
    if config.model.load_in_4bit:
        if device.kind != "cuda":
            raise TrainingFailed("config", f"model.load_in_4bit needs a CUDA GPU; this machine trains on {device.kind}",
                                 "set model.load_in_4bit: false (LoRA in 16/32-bit) or train on a CUDA machine")
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
        )
    model = load_model(source, dtype=precision if precision != "fp16" else "fp32", quantization_config=quantization,
                       attn_implementation=config.model.attn_implementation, **tuned.model_kwargs)
    if run.template is not None:
        run.tokenizer.chat_template = run.template.text  # saved with the adapter: inference uses this template

    tc, lc = config.training, config.lora
    checkpointing = tuned.sft_args.pop("gradient_checkpointing", tc.gradient_checkpointing)
    has_eval = bool(eval_rows)
    args = SFTConfig(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=tc.num_train_epochs,
        max_steps=tc.max_steps,
        learning_rate=tc.learning_rate,
        per_device_train_batch_size=tc.per_device_train_batch_size,
        per_device_eval_batch_size=tc.per_device_train_batch_size,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        logging_steps=tc.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=tc.save_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(tc.eval_steps or tc.save_steps) if has_eval else None,
        seed=tc.seed,
        warmup_steps=tc.warmup_steps,
        lr_scheduler_type=tc.lr_scheduler_type,
        weight_decay=tc.weight_decay,
        max_grad_norm=tc.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.kind == "cpu",
        gradient_checkpointing=checkpointing,
        max_length=config.data.max_length,
        packing=tc.packing,
        report_to=list(tc.report_to) or "none",
        disable_tqdm=True,
        dataset_num_proc=None,
        save_only_model=False,
        **tuned.sft_args,
    )
    peft_config = None
    if lc.enabled:
        peft_config = LoraConfig(
            r=lc.r, lora_alpha=lc.lora_alpha, lora_dropout=lc.lora_dropout, target_modules=lc.target_modules,
            use_dora=lc.use_dora, use_rslora=lc.use_rslora, task_type="CAUSAL_LM",
        )
    train_ds = Dataset.from_dict({"input_ids": [r[0] for r in train_rows], "labels": [r[1] for r in train_rows]})
    eval_ds = (
        Dataset.from_dict({"input_ids": [r[0] for r in eval_rows], "labels": [r[1] for r in eval_rows]}) if has_eval else None
    )
    callback = EventCallback(events, output_dir, run_config=config)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=run.tokenizer,
        peft_config=peft_config, callbacks=[callback],
    )
    trainable, total = _param_counts(trainer.model)
    events.emit(
        "started", config=_config_summary(config), device=device.as_dict(), precision=precision,
        trainable_params=trainable, total_params=total, gradient_checkpointing=checkpointing,
        model=source.description, resumed=resume, auto_choices=tuned.reasons,
    )
    checkpoint = None
    if resume:
        checkpoint = newest_checkpoint(output_dir / "checkpoints")
        if checkpoint is None:
            log.warning("--resume: no complete checkpoint in %s; starting from the beginning", output_dir / "checkpoints")
        else:
            log.info("resuming from %s", checkpoint)
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.OutOfMemoryError as exc:
        raise TrainingFailed("oom", f"out of memory: {str(exc).splitlines()[0]}", _oom_hint(config)) from None

    adapter_dir = output_dir / "adapter"
    _save_atomically(trainer, run.tokenizer, adapter_dir)
    events.emit("finished", adapter=str(adapter_dir), steps=trainer.state.global_step,
                train_loss=output.training_loss, stopped_early=callback.stop_requested)
    return TrainResult(adapter_dir, trainer.state.global_step, output.training_loss, len(dropped) + len(eval_dropped))


def _split(run: Any, config: RunConfig) -> tuple[list[int], list[int]]:
    from core.data import split_eval

    n = len(run.dataset.examples)
    if config.data.eval_fraction > 0 and not config.data.eval_path:
        return split_eval(run.dataset, config.data.eval_fraction, config.training.seed)
    return list(range(n)), []


def _built(run: Any, ids: list[int], build_rows: Any) -> tuple[list[tuple[list[int], list[int]]], list[Any]]:
    rows, dropped = [], []
    for result in build_rows(run, ids, with_display=False):
        if result.dropped is None and result.built is not None:
            rows.append((result.built.input_ids, result.built.labels))
        else:
            dropped.append(result)
    return rows, dropped


def _param_counts(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _config_summary(config: RunConfig) -> dict:
    from core.config import config_to_dict

    return config_to_dict(config)


def _oom_hint(config: RunConfig) -> str:
    tc = config.training
    return (
        f"lower training.per_device_train_batch_size (now {tc.per_device_train_batch_size}) and raise "
        f"gradient_accumulation_steps to keep the effective batch, lower data.max_length (now {config.data.max_length}), "
        "turn on training.gradient_checkpointing, or use model.load_in_4bit (QLoRA)"
    )


def _save_atomically(trainer: Any, tokenizer: Any, adapter_dir: Path) -> None:
    """Write the adapter (+ tokenizer and chat template) into a temporary folder, then rename it into place,
    so a crash while saving never leaves a half-written adapter."""
    tmp = adapter_dir.with_name(adapter_dir.name + f".tmp-{os.getpid()}-{int(time.time())}")
    if tmp.exists():
        shutil.rmtree(tmp)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if adapter_dir.exists():
        old = adapter_dir.with_name(adapter_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        adapter_dir.rename(old)
        tmp.rename(adapter_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(adapter_dir)
