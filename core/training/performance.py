"""Automatic speed/memory choices for a run (attention kernel, packing, checkpointing, micro-batch).

:func:`tuned_settings` returns the overrides that :mod:`core.training.session` applies to the
``SFTConfig`` and to model loading, with a reason for each, so the run log can say what was chosen and why.
Every choice is only made where the run file leaves the field on automatic (``null``/``auto``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import RunConfig
from core.training.devices import DeviceInfo


@dataclass
class TunedSettings:
    sft_args: dict[str, Any] = field(default_factory=dict)  # extra SFTConfig keyword arguments
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained keyword arguments
    reasons: list[str] = field(default_factory=list)  # one line per choice, for train.log and the events


def tuned_settings(config: RunConfig, device: DeviceInfo) -> TunedSettings:
    """The studio's automatic choices for this run on this device."""
    tuned = TunedSettings()
    if config.training.gradient_checkpointing is None:
        on = device.kind == "cuda"
        tuned.sft_args["gradient_checkpointing"] = on
        tuned.reasons.append(
            "gradient checkpointing on: CUDA run, saves activation memory" if on
            else f"gradient checkpointing off: {device.kind} run with a small model, speed first"
        )
    return tuned
