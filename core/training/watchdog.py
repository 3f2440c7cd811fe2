"""Plain-words warnings about a run going wrong, from the Trainer's logged numbers. Qt-free, torch-free.

It looks for what a learner would not spot in a curve until it is too late: a NaN/inf loss (diverged), a loss
of exactly 0 (nothing supervised, or a mask/label bug), and a gradient norm that explodes against its own
recent history. Each kind is reported once, then again only after ``repeat_every`` logged steps, so a run
that stays broken does not flood the event stream.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Watchdog:
    explode_factor: float = 10.0  # grad norm this many times the recent median counts as exploding
    explode_absolute: float = 1.0e4  # ... or above this, whatever the history
    warmup_logs: int = 3  # logged steps needed before the relative test applies
    repeat_every: int = 50
    _grad_norms: deque = field(default_factory=lambda: deque(maxlen=20))
    _last_warned: dict = field(default_factory=dict)

    def check(self, step: int, logs: dict) -> list[tuple[str, str]]:
        """``[(kind, message), ...]`` for this log entry; kinds: nan_loss, zero_loss, exploding_grad_norm."""
        found: list[tuple[str, str]] = []
        loss = _number(logs.get("loss"))
        if loss is not None and not math.isfinite(loss):
            found.append(("nan_loss", f"The loss is {loss} at step {step}: training has diverged and the weights may be "
                                      "ruined. Lower the learning rate (e.g. by 10x), keep gradient clipping on "
                                      "(max_grad_norm 1.0), and resume from an earlier checkpoint."))
        elif loss == 0.0:
            found.append(("zero_loss", f"The loss is exactly 0 at step {step}. Usually no token in the batch is "
                                       "trained (every label masked) or the answers leak into the inputs; check the "
                                       "Tokens page and data.train_on."))
        grad = _number(logs.get("grad_norm"))
        if grad is not None:
            if not math.isfinite(grad):
                found.append(("exploding_grad_norm", f"The gradient norm is {grad} at step {step}: gradients overflowed. "
                                                     "Lower the learning rate or use bf16/fp32 instead of fp16."))
            else:
                history = sorted(self._grad_norms)
                median = history[len(history) // 2] if history else None
                relative = (len(history) >= self.warmup_logs and median is not None and median > 0
                            and grad > self.explode_factor * median)
                if relative or grad > self.explode_absolute:
                    against = f", {grad / median:.0f}x its recent typical value {median:.3g}" if relative and median else ""
                    found.append(("exploding_grad_norm", f"The gradient norm jumped to {grad:.3g} at step {step}{against}. "
                                                         "The learning rate is probably too high; lower it or add warmup "
                                                         "steps, and watch the loss for a spike."))
                self._grad_norms.append(grad)
        return [(kind, message) for kind, message in found if self._due(kind, step)]

    def _due(self, kind: str, step: int) -> bool:
        last = self._last_warned.get(kind)
        if last is not None and step - last < self.repeat_every:
            return False
        self._last_warned[kind] = step
        return True


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
        return float(value)
    return None
