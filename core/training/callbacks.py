"""A Trainer callback that turns Trainer logs into studio events and honours a ``STOP`` file."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from core.training.events import EventWriter

_METRIC_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens", "epoch")


class EventCallback(TrainerCallback):
    def __init__(self, events: EventWriter, output_dir: Path, run_config: Any = None) -> None:
        self.events = events
        self.output_dir = Path(output_dir)
        self.config = run_config
        self.stop_requested = False
        self._t0 = time.monotonic()
        self._last_time: float | None = None
        self._last_tokens: float | None = None
        self._start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.monotonic()
        self._start_step = state.global_step
        self.events.emit("progress", step=state.global_step, total=state.max_steps, epoch=state.epoch or 0.0, eta_s=None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})  # PrinterCallback mutates the dict it is given
        now = time.monotonic()
        metrics = {k: logs[k] for k in _METRIC_KEYS if k in logs}
        tokens = logs.get("num_tokens")
        if tokens is not None and self._last_tokens is not None and self._last_time is not None and now > self._last_time:
            metrics["tokens_per_second"] = round((tokens - self._last_tokens) / (now - self._last_time), 1)
        if tokens is not None:
            self._last_tokens, self._last_time = tokens, now
        for key, value in logs.items():
            if key.startswith("eval_") and key not in metrics:
                metrics[key] = value
        if "train_loss" in logs:
            metrics["train_loss"] = logs["train_loss"]
        self.events.emit("metrics", step=state.global_step, **metrics)
        loss = logs.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self.events.emit("warning", step=state.global_step, message=f"the loss is {loss}: training has diverged; lower the learning rate")

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self._start_step
        elapsed = time.monotonic() - self._t0
        eta = (elapsed / done) * (state.max_steps - state.global_step) if done > 0 else None
        self.events.emit("progress", step=state.global_step, total=state.max_steps, epoch=round(state.epoch or 0.0, 4),
                         eta_s=round(eta, 1) if eta is not None else None)
        stop_file = self.output_dir / "STOP"
        if stop_file.exists():
            self.stop_requested = True
            control.should_training_stop = True
            control.should_save = True
            self.events.emit("stopping", step=state.global_step, reason="STOP file")
        return control

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.events.emit("checkpoint", step=state.global_step, path=str(path))
