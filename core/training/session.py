"""A training run: TRL's ``SFTTrainer`` with a PEFT LoRA adapter, fed the examples built by
:mod:`core.masks` (so it trains on exactly what the preview showed), writing the run directory of
DESIGN.md §3.3 and the event stream of §3.4.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig, save_run_config
from core.training.control import TrainingControl
from core.training.events import EventWriter

log = logging.getLogger("sft_studio.train")

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_DATA, EXIT_OOM = 0, 1, 2, 3, 4


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float | None
    dropped_rows: int
    stopped_early: bool = False
    memory_estimate: Any = None  # the MemoryEstimate of the settings the run used (None: architecture unknown)
    auto_choices: list[str] = field(default_factory=list)  # what the studio chose and why (also in train.log)
    device: Any = None  # the DeviceInfo it trained on


class TrainingFailed(Exception):
    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind, self.hint = kind, hint


_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")


def checkpoint_is_complete(path: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last (after weights, optimizer and RNG state), so a checkpoint
    whose state parses and whose weights exist was fully written; one killed during save lacks either."""
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any((path / name).is_file() for name in _WEIGHT_FILES)


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(path.name.split("-")[-1])
    except ValueError:
        return None


def newest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest *complete* checkpoint (see :func:`checkpoint_is_complete`); a half-written one is skipped."""
    if not checkpoints_dir.is_dir():
        return None
    candidates = []
    for path in checkpoints_dir.glob("checkpoint-*"):
        step = _checkpoint_step(path)
        if step is not None and path.is_dir() and checkpoint_is_complete(path):
            candidates.append((step, path))
    return max(candidates)[1] if candidates else None


def set_aside_incomplete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Rename half-written checkpoints to ``incomplete-checkpoint-N`` so that the resumed run can write its own
    ``checkpoint-N`` cleanly and nothing ever loads them; kept, not deleted, in case a user wants to look."""
    moved = []
    if not checkpoints_dir.is_dir():
        return moved
    for path in sorted(checkpoints_dir.glob("checkpoint-*")):
        if _checkpoint_step(path) is None or not path.is_dir() or checkpoint_is_complete(path):
            continue
        target = path.with_name("incomplete-" + path.name)
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"incomplete-{path.name}.{n}")
        path.rename(target)
        moved.append(target)
    return moved


def _lock_held_by_this_process(output_dir: Path) -> bool:
    try:
        import json

        return json.loads((output_dir / ".lock").read_text() or "{}").get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


def _setup_file_log(output_dir: Path) -> logging.Handler:
    from core.training.distributed import in_rank_child, rank, rank_log_name

    handler = logging.FileHandler(output_dir / rank_log_name(rank() if in_rank_child() else 0), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("sft_studio", "transformers", "trl", "peft"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("sft_studio").setLevel(logging.INFO)
    return handler


def run_training(config: RunConfig, events: EventWriter | None = None, resume: bool = False,
                 control: TrainingControl | None = None, callbacks: list | None = None) -> TrainResult:
    """Train ``config`` to completion, or until ``control`` (stdin commands, STOP file, signals) stops it; a stop
    still saves a checkpoint and the adapter. Writes ``run.yaml`` first, then checkpoints, events and the adapter.
    With ``resume`` it continues from the newest complete checkpoint and appends to the same ``events.jsonl``.

    Raises :class:`TrainingFailed` (kind: config | data | oom | crash) for failures the user can act on."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # the caching allocator grows segments instead of stranding freed blocks of other sizes: long rows and
    # padding-free batches change every tensor's size from step to step (read when CUDA first allocates)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from core.training.distributed import in_rank_child, is_main_rank

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # a rank of a multi-process run: the launching wrapper holds the lock for all ranks
    if not _lock_held_by_this_process(output_dir) and not in_rank_child():
        from core.training.rundir import RunDirBusy, RunDirLock

        try:
            lock = RunDirLock(output_dir).acquire()
        except RunDirBusy as exc:
            raise TrainingFailed("config", str(exc), "") from None
        try:
            return run_training(config, events, resume, control, callbacks)
        finally:
            lock.release()
    if is_main_rank():
        save_run_config(config, output_dir / "run.yaml")
        _record_base_model(config, output_dir)
    handler = _setup_file_log(output_dir)
    own_writer = events is None
    if events is None:
        events = EventWriter(output_dir / "events.jsonl")
    try:
        return _train(config, output_dir, events, resume, control or TrainingControl(output_dir), callbacks or [])
    finally:
        for name in ("sft_studio", "transformers", "trl", "peft"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
        if own_writer:
            events.close()


def _train(config: RunConfig, output_dir: Path, events: EventWriter, resume: bool, control: TrainingControl,
           extra_callbacks: list) -> TrainResult:
    from core.pipeline import build_training_rows, open_run
    from core.training.devices import choose_precision, detect_device
    from core.training.distributed import is_main_rank, precision_request, world_size

    device = detect_device(config.training.device)
    precision = choose_precision(device, precision_request(config))
    distributed = world_size() > 1
    log.info("device %s, precision %s", device.describe(), precision)

    stage = _StageReporter(events)
    stage("data", "reading the data and the chat template")
    run = open_run(config)
    for note in run.notes:
        log.warning(note)
        events.emit("warning", message=note)
    stage("rows", "building input_ids and labels")
    rows = build_training_rows(run)
    train_rows, eval_rows = rows.train, rows.eval
    for source_file, result in rows.dropped:
        where = f"{source_file}:{result.line}" if result.line else source_file
        log.warning("%s: row %d not trained: %s", where, result.row, result.dropped)
    dropped = rows.dropped
    if not train_rows:
        raise TrainingFailed("data", f"{run.source_file}: no row can be trained ({len(dropped)} rows reported)",
                             "run `sft-studio audit --config RUN.yaml` to see why each row is dropped")
    supervised = sum(sum(1 for x in labels if x != -100) for _, labels in train_rows)
    total_tokens = sum(len(ids) for ids, _ in train_rows)
    events.emit(
        "data",
        train_rows=len(train_rows),
        eval_rows=len(eval_rows),
        dropped_rows=len(dropped),
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

    from core.training.callbacks import BatchStats, EventCallback
    from core.training.models import load_model, source_for
    from core.training.performance import tuned_settings

    source = source_for(config.model)  # carries trust_remote_code / allow_pickle_weights
    tuned = tuned_settings(config, device, lengths=[len(ids) for ids, _ in train_rows])
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
    stats = BatchStats()

    from core.training.syncfree import DeferredMetrics

    class StudioTrainer(DeferredMetrics, SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            stats.add_batch(inputs)  # what this micro-batch trains: supervised tokens, padding share
            with tuned.training_step_context():
                return super().training_step(model, inputs, num_items_in_batch)

    attn_implementation = config.model.attn_implementation or tuned.attn_implementation
    tuned.before_load(attn_implementation)
    stage("model", "loading the base model"
          + (" (dequantising the GGUF file)" if source.gguf_file else " (4-bit)" if quantization is not None else ""))
    try:
        model = load_model(source, dtype=precision if precision != "fp16" else "fp32", quantization_config=quantization,
                           attn_implementation=attn_implementation,
                           **tuned.model_kwargs)
    except Exception as exc:
        if _is_oom(exc):
            raise TrainingFailed("oom", f"out of memory while loading the model: {_first_line(exc)}{_memory_report(device)}",
                                 _oom_hint(config)) from None
        raise
    if run.template is not None:
        run.tokenizer.chat_template = run.template.text  # saved with the adapter: inference uses this template

    tc, lc = config.training, config.lora
    checkpointing = tuned.sft_args.pop("gradient_checkpointing", tc.gradient_checkpointing)
    has_eval = bool(eval_rows)
    args = SFTConfig(**tuned.sft_kwargs(dict(
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
        logging_nan_inf_filter=False,  # show a NaN loss as NaN (the watchdog reports it) instead of hiding it
        disable_tqdm=True,
        dataset_num_proc=None,
        save_only_model=False,
        # LoRA uses every trainable weight in each step: skip DDP's per-step search for unused ones
        **({"ddp_find_unused_parameters": False} if distributed else {}),
    )))
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
    callback = EventCallback(events, output_dir, run_config=config, control=control, stats=stats)
    if distributed and config.distributed.strategy != "ddp" and callback.probe_prompts:
        # generate() on a sharded model would need every rank; probes are a single-process / DDP feature
        log.warning("probe prompts are off with distributed.strategy %s", config.distributed.strategy)
        callback.probe_prompts = []
    stage("trainer", "adding the LoRA adapter and preparing the trainer" if lc.enabled else "preparing the trainer")
    trainer = StudioTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=run.tokenizer,
        peft_config=peft_config, callbacks=[callback, *extra_callbacks],
    )
    from transformers import PrinterCallback

    # Its print() of every log dict would raise BrokenPipeError once the app is gone (and kill the stop-and-save
    # that EOF asks for); the same numbers are in the events and, one line per log, in train.log.
    trainer.remove_callback(PrinterCallback)
    for line in tuned.prepare_model(trainer.model):
        log.info("auto: %s", line)
    trainable, total = _param_counts(trainer.model)
    stage("first_step", "running the first step" + (" (compiling the layers first)" if tuned.compile_layers else ""))
    checkpoint = None
    if resume:
        for moved in set_aside_incomplete_checkpoints(output_dir / "checkpoints"):
            log.warning("--resume: %s was half-written (killed while saving); set aside as %s", moved.name[11:], moved.name)
        checkpoint = newest_checkpoint(output_dir / "checkpoints")
        if checkpoint is None:
            log.warning("--resume: no complete checkpoint in %s; starting from the beginning", output_dir / "checkpoints")
        else:
            log.info("resuming from %s", checkpoint)
    events.emit(
        "started", config=_config_summary(config), device=device.as_dict(), precision=precision,
        trainable_params=trainable, total_params=total, gradient_checkpointing=checkpointing,
        model=source.description, resumed=resume, resumed_from=str(checkpoint) if checkpoint else None,
        resumed_from_step=_checkpoint_step(checkpoint) if checkpoint else None,
        auto_choices=tuned.reasons, pid=os.getpid(), host=socket.gethostname(),
        **({"distributed": {"world_size": world_size(), "strategy": config.distributed.strategy,
                            "backend": _backend(), "fsdp": bool(getattr(trainer, "is_fsdp_enabled", False)),
                            "deepspeed": bool(getattr(trainer, "is_deepspeed_enabled", False))}}
           if distributed else {}),
    )
    try:
        if checkpoint is not None and _reached_max_steps(checkpoint, tc.max_steps):
            # Killed after its last checkpoint (e.g. while saving the adapter): nothing is left to train, and
            # Trainer.train would re-enter the epoch and train one step past max_steps off an epoch boundary.
            from transformers import TrainerState
            from transformers.trainer_utils import TrainOutput

            trainer._load_from_checkpoint(str(checkpoint))
            trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
            output = TrainOutput(trainer.state.global_step, None, {})
        else:
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as exc:
        if _is_oom(exc):
            raise TrainingFailed("oom", f"out of memory at step {trainer.state.global_step}: {_first_line(exc)}"
                                        f"{_memory_report(device)}", _oom_hint(config)) from None
        raise

    adapter_dir = output_dir / "adapter"
    base = _record_base_model(config, output_dir) if is_main_rank() else None
    if distributed:
        _save_distributed(trainer, run.tokenizer, adapter_dir, base)
    else:
        _save_atomically(trainer, run.tokenizer, adapter_dir, base)
    stopped_early = control.stop_reason is not None and trainer.state.global_step < trainer.state.max_steps
    events.emit("finished", adapter=str(adapter_dir), steps=trainer.state.global_step, total=trainer.state.max_steps,
                train_loss=output.training_loss, stopped_early=stopped_early,
                stop_reason=control.stop_reason if stopped_early else None)
    return TrainResult(adapter_dir, trainer.state.global_step, output.training_loss, len(dropped),
                       stopped_early=stopped_early, memory_estimate=tuned.memory, auto_choices=list(tuned.reasons),
                       device=device)




def _reached_max_steps(checkpoint: Path, max_steps: int) -> bool:
    import json

    try:
        step = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError):
        return False
    return max_steps > 0 and step >= max_steps


def _param_counts(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _config_summary(config: RunConfig) -> dict:
    from core.config import config_to_dict

    return config_to_dict(config)


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _memory_report(device: Any) -> str:
    """`` (peak 71.2 GiB allocated, 76.0 GiB reserved of 79.1 GiB on NVIDIA H100)`` where CUDA can tell."""
    try:
        import torch

        if device.kind == "cuda" and torch.cuda.is_initialized():
            gib = 2**30
            total = device.total_memory or torch.cuda.get_device_properties(0).total_memory
            return (f" (peak {torch.cuda.max_memory_allocated() / gib:.1f} GiB allocated, "
                    f"{torch.cuda.memory_reserved() / gib:.1f} GiB reserved of {total / gib:.1f} GiB on {device.name})")
    except Exception:
        pass
    return ""


def _oom_hint(config: RunConfig) -> str:
    tc = config.training
    return (
        f"lower training.per_device_train_batch_size (now {tc.per_device_train_batch_size}) and raise "
        f"gradient_accumulation_steps to keep the effective batch, lower data.max_length (now {config.data.max_length}), "
        "turn on training.gradient_checkpointing, or use model.load_in_4bit (QLoRA)"
    )


class _StageReporter:
    """``stage`` events while the trainer starts (data, rows, model, trainer, first step): the app shows what the
    minute before the first step is spent on, with the elapsed time of each stage."""

    def __init__(self, events: EventWriter) -> None:
        self.events = events
        self.started = time.time()
        self.index = 0

    def __call__(self, name: str, message: str) -> None:
        self.index += 1
        log.info("start-up %d/%d: %s", self.index, STAGES, message)
        self.events.emit("stage", stage=name, message=message, index=self.index, total=STAGES,
                         elapsed_s=round(time.time() - self.started, 2))


STAGES = 5  # data, rows, model, trainer, first_step


def _record_base_model(config: RunConfig, output_dir: Path) -> Any:
    """Write ``base_model.json`` (the base's Hub id/revision or local path, core.provenance) and return it; a
    failure to identify the base never stops training."""
    from core.provenance import identify_base, read_base, record_base

    try:
        identity = read_base(output_dir, config.model.name_or_path) if (output_dir / "base_model.json").is_file() \
            else identify_base(config.model.name_or_path)
        record_base(identity, output_dir)
        return identity
    except Exception as exc:  # noqa: BLE001 - provenance is a record, not a reason to fail a run
        log.warning("could not record the base model's identity: %s", _first_line(exc))
        return None


def _save_atomically(trainer: Any, tokenizer: Any, adapter_dir: Path, base: Any = None) -> None:
    """Write the adapter (+ tokenizer and chat template) into a temporary folder, then rename it into place,
    so a crash while saving never leaves a half-written adapter. ``adapter_config.json`` names the portable base
    (a Hub id where one is known) instead of the path the studio loaded it from."""
    for stale in adapter_dir.parent.glob(adapter_dir.name + ".tmp-*"):  # left by a killed save; the run-dir
        shutil.rmtree(stale, ignore_errors=True)  # lock keeps other processes out of this folder
    tmp = adapter_dir.with_name(adapter_dir.name + f".tmp-{os.getpid()}-{int(time.time())}")
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if base is not None:
        from core.provenance import point_adapter_at_base

        point_adapter_at_base(tmp, base)
    _move_into_place(tmp, adapter_dir)


def _move_into_place(tmp: Path, adapter_dir: Path) -> None:
    """Replace ``adapter_dir`` by the finished ``tmp`` folder with renames only (never a half-written adapter)."""
    if adapter_dir.exists():
        old = adapter_dir.with_name(adapter_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        adapter_dir.rename(old)
        tmp.rename(adapter_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(adapter_dir)


def _backend() -> str | None:
    try:
        import torch.distributed as dist

        return dist.get_backend() if dist.is_initialized() else None
    except Exception:
        return None


def _save_distributed(trainer: Any, tokenizer: Any, adapter_dir: Path, base: Any = None) -> None:
    """Several processes: every rank takes part (FSDP gathers the full state dict, a collective), rank 0 alone
    writes the adapter into a temporary folder and renames it into place, as :func:`_save_atomically` does."""
    accelerator = trainer.accelerator
    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp-distributed")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # PEFT adapter files (+ the tokenizer) on rank 0 only
    if accelerator.is_main_process:
        tokenizer.save_pretrained(tmp)
        (tmp / "training_args.bin").unlink(missing_ok=True)
        if base is not None:
            from core.provenance import point_adapter_at_base

            point_adapter_at_base(tmp, base)
        _move_into_place(tmp, adapter_dir)
    accelerator.wait_for_everyone()
