"""The Trainer side of the event stream: a callback that turns Trainer logs into studio events, honours
stop/pause (:mod:`core.training.control`), runs the watchdog and the probe prompts; and :class:`BatchStats`,
which counts what each optimizer step really trained (fed from ``training_step``, see session.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from core.training.control import TrainingControl
from core.training.events import EventWriter
from core.training.watchdog import Watchdog

log = logging.getLogger("sft_studio.train")

_METRIC_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens", "epoch")
PROBE_MAX_NEW_TOKENS = 48


class BatchStats:
    """Counts, per logging window, the tokens the model was fed, how many of them carry loss, and how much of the
    batch is padding. Fed from ``Trainer.training_step`` (the only place that sees each micro-batch in the main
    process, whatever ``dataloader_num_workers`` is)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens = 0  # real (non-padding) tokens
        self.positions = 0  # tensor positions including padding
        self.supervised = 0  # tokens whose next-token prediction is in the loss

    def add_batch(self, inputs: dict) -> None:
        try:
            ids = inputs.get("input_ids")
            labels = inputs.get("labels")
            mask = inputs.get("attention_mask")
            if ids is None:
                return
            self.positions += int(ids.numel())
            self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())
            if labels is not None:
                # the model shifts labels by one: the first position never carries loss
                self.supervised += int((labels[..., 1:] != -100).sum())
        except Exception as exc:  # statistics must never break training
            log.debug("batch statistics skipped: %s", exc)

    def window(self, steps: int) -> dict:
        """Per-optimizer-step figures for the window since the last reset."""
        if self.positions == 0 or steps <= 0:
            return {}
        return {
            "supervised_tokens": round(self.supervised / steps, 1),
            "tokens_in_step": round(self.tokens / steps, 1),
            "padding_share": round(1.0 - self.tokens / self.positions, 4),
        }


def accelerator_memory() -> dict:
    """GPU memory in GiB (CUDA: allocated/reserved/peak; MPS: allocated/driver). Empty on CPU. Never initialises
    CUDA by itself."""
    try:
        import torch
    except ImportError:
        return {}
    gib = 2**30
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {
            "gpu_allocated_gib": round(torch.cuda.memory_allocated() / gib, 3),
            "gpu_reserved_gib": round(torch.cuda.memory_reserved() / gib, 3),
            "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / gib, 3),
        }
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        try:
            return {"gpu_allocated_gib": round(mps.current_allocated_memory() / gib, 3),
                    "gpu_reserved_gib": round(mps.driver_allocated_memory() / gib, 3)}
        except Exception:
            return {}
    return {}


def generate_probe_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = PROBE_MAX_NEW_TOKENS) -> list[dict]:
    """A short greedy answer per prompt, through the run's chat template (the tokenizer carries it)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    samples = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                if getattr(tokenizer, "chat_template", None):
                    encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                            return_tensors="pt", return_dict=True)
                    ids = encoded["input_ids"]
                else:
                    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
                ids = ids.to(device)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=pad, use_cache=True)
                answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
                samples.append({"prompt": prompt, "completion": answer})
    finally:
        if was_training:
            model.train()
    return samples


class EventCallback(TrainerCallback):
    def __init__(self, events: EventWriter, output_dir: Path, run_config: Any = None,
                 control: TrainingControl | None = None, stats: BatchStats | None = None) -> None:
        self.events = events
        self.output_dir = Path(output_dir)
        self.config = run_config
        self.control = control if control is not None else TrainingControl(output_dir)
        self.stats = stats if stats is not None else BatchStats()
        self.watchdog = Watchdog()
        self.probe_prompts = list(getattr(getattr(run_config, "training", None), "probe_prompts", None) or [])
        self._stopping_announced = False
        self._t0 = time.monotonic()
        self._excluded_s = 0.0  # paused / probing time, left out of the ETA
        self._start_step = 0
        self._step_began: float | None = None
        self._train_s = 0.0  # pure step time (step begin -> step end), for tokens/s
        self._last_log_train_s = 0.0
        self._last_tokens: float | None = None
        self._last_log_step = 0
        self._local_tokens_at_log = 0

    @property
    def stop_requested(self) -> bool:
        return self.control.stop_reason is not None

    # --- lifecycle ---------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.monotonic()
        self._start_step = self._last_log_step = state.global_step
        self.stats.reset()
        self.events.emit("progress", step=state.global_step, total=state.max_steps, epoch=state.epoch or 0.0, eta_s=None)
        if state.global_step == 0:
            self._probe(state, kwargs)  # the base model's answers, to compare against

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_began = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if self._step_began is not None:
            self._train_s += now - self._step_began
            self._step_began = None
        done = state.global_step - self._start_step
        elapsed = now - self._t0 - self._excluded_s
        eta = (elapsed / done) * (state.max_steps - state.global_step) if done > 0 else None
        self.events.emit("progress", step=state.global_step, total=state.max_steps, epoch=round(state.epoch or 0.0, 4),
                         eta_s=round(eta, 1) if eta is not None else None)
        if getattr(args, "world_size", 1) > 1:
            # the agreed decision, not this rank's own view: a STOP file that appears a moment after the
            # all-reduce must wait for the next step on every rank alike
            stop = self._agree_on_control(args, state)
        else:
            if self.control.pause_requested and not self.control.stop_requested:
                self._pause(state, self.control.wait_while_paused)
            stop = self.control.stop_requested
        if stop and state.global_step < state.max_steps:
            control.should_training_stop = True
            control.should_save = True
            if not self._stopping_announced:
                self._stopping_announced = True
                self.events.emit("stopping", step=state.global_step, reason=self.control.stop_reason)
        return control

    def _pause(self, state, wait) -> None:
        self.events.emit("paused", step=state.global_step)
        log.info("paused at step %d", state.global_step)
        began = time.monotonic()
        wait()
        paused_s = time.monotonic() - began
        self._excluded_s += paused_s
        if not self.control.stop_requested:
            self.events.emit("resumed", step=state.global_step, paused_s=round(paused_s, 1))
            log.info("resumed at step %d after %.1f s", state.global_step, paused_s)

    def _agree_on_control(self, args, state) -> bool:
        """Several processes: stop and pause are decided together (an all-reduce of every rank's flags), so no
        rank stops, or waits in a pause, while another one waits for it in a collective. A pause polls together
        every half second: no collective ever waits longer than that."""
        from core.training.distributed import agree

        stop, pause = agree([self.control.stop_requested, self.control.pause_requested], args.device)
        if stop and self.control.stop_reason is None:
            self.control.request_stop("stop on another rank")
        if pause and not stop:
            agreed = {"stop": False}

            def wait() -> None:
                while True:
                    time.sleep(0.5)
                    still_stop, still_pause = agree([self.control.stop_requested, self.control.pause_requested],
                                                    args.device)
                    if still_stop and self.control.stop_reason is None:
                        self.control.request_stop("stop on another rank")
                    if still_stop or not still_pause:
                        agreed["stop"] = still_stop
                        return

            self._pause(state, wait)
            stop = agreed["stop"]
        return stop

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})  # PrinterCallback mutates the dict it is given
        metrics = {k: logs[k] for k in _METRIC_KEYS if k in logs}
        for key, value in logs.items():
            if key.startswith("eval_") and key not in metrics:
                metrics[key] = value
        if "train_loss" in logs:
            metrics["train_loss"] = logs["train_loss"]
        if "loss" in logs:  # a training log: attach what the steps since the last one trained
            steps = state.global_step - self._last_log_step
            metrics.update(self.stats.window(steps))
            train_s = self._train_s - self._last_log_train_s
            tokens = logs.get("num_tokens")
            if train_s > 0:
                if tokens is not None and self._last_tokens is not None:
                    metrics["tokens_per_second"] = round((tokens - self._last_tokens) / train_s, 1)
                elif self.stats.tokens:
                    metrics["tokens_per_second"] = round(self.stats.tokens / train_s, 1)
                metrics["step_seconds"] = round(train_s / max(steps, 1), 4)
            if tokens is not None:
                self._last_tokens = tokens
            self._last_log_train_s = self._train_s
            self._last_log_step = state.global_step
            self.stats.reset()
        metrics.update(accelerator_memory())
        if not state.is_world_process_zero:
            return
        log.info("step %d/%d: %s", state.global_step, state.max_steps,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        self.events.emit("metrics", step=state.global_step, **metrics)
        for kind, message in self.watchdog.check(state.global_step, logs):
            log.warning("%s", message)
            self.events.emit("warning", step=state.global_step, kind=kind, message=message)

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.events.emit("checkpoint", step=state.global_step, path=str(path))
        self._probe(state, kwargs)

    # --- probe prompts -----------------------------------------------------------------------------------
    def _probe(self, state, kwargs: dict) -> None:
        model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
        if not self.probe_prompts or model is None or tokenizer is None or not state.is_world_process_zero:
            return
        began = time.monotonic()
        try:
            samples = generate_probe_answers(model, tokenizer, self.probe_prompts)
        except Exception as exc:  # a probe must never end a run
            log.warning("probe prompts disabled: generation failed: %s: %s", type(exc).__name__, exc)
            self.events.emit("warning", step=state.global_step, kind="probe_failed",
                             message=f"The probe prompts could not be answered ({type(exc).__name__}: {exc}); "
                                     "training goes on without them.")
            self.probe_prompts = []
            return
        seconds = time.monotonic() - began
        self._excluded_s += seconds
        self.events.emit("sample", step=state.global_step, samples=samples, seconds=round(seconds, 2))
