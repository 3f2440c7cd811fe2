"""``sft-studio bench``: a few real optimizer steps of exactly this run (same data, model, template and automatic
choices as ``sft-studio train``), timed after a warm-up, into a throw-away folder.

It answers what the memory estimate alone cannot: how fast this run trains here, and whether the estimate held.
Reported: trained tokens per second (real tokens, no padding), seconds per optimizer step, peak accelerator memory
against the fit check's estimate, and an estimated MFU where the device's peak bf16 rate is known.

MFU counts 4 × parameters FLOPs per token for LoRA (forward 2N, backward through the frozen weights 2N; the adapters'
own gradients are negligible) and 6 × N for full fine-tuning; recomputation under gradient checkpointing is not
counted (it is overhead, not useful work), as in the usual convention.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig

GiB = 2**30

# Dense bf16 tensor-core peaks (datasheets, without sparsity), by a substring of the CUDA device name.
PEAK_BF16_FLOPS = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("A6000", 155e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("A10G", 70e12), ("L4", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


@dataclass
class BenchResult:
    device: str
    steps_timed: int
    warmup_steps: int
    tokens_per_second: float | None
    seconds_per_step: float | None
    tokens_per_step: float | None
    peak_memory_gib: float | None  # torch.cuda.max_memory_allocated (None off CUDA)
    estimate_gib: float | None  # the estimate's peak_allocated for the settings the run used
    estimate_error: float | None  # estimate / measured - 1
    mfu: float | None
    parameters: int | None
    auto_choices: list[str] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        def num(v: float | None, fmt: str) -> str:
            return "n/a" if v is None else format(v, fmt)

        out = [f"device: {self.device}",
               f"timed: {self.steps_timed} optimizer steps after {self.warmup_steps} warm-up steps",
               f"trained tokens/s: {num(self.tokens_per_second, ',.0f')}  "
               f"({num(self.seconds_per_step, '.3f')} s/step, {num(self.tokens_per_step, ',.0f')} tokens/step)"]
        if self.peak_memory_gib is not None:
            est = (f"; estimate {self.estimate_gib:.2f} GiB ({self.estimate_error:+.1%})"
                   if self.estimate_gib is not None and self.estimate_error is not None else "")
            out.append(f"peak memory: {self.peak_memory_gib:.2f} GiB{est}")
        elif self.estimate_gib is not None:
            out.append(f"memory estimate: {self.estimate_gib:.2f} GiB (peak not measurable on this device)")
        out.append(f"estimated MFU: {num(None if self.mfu is None else 100 * self.mfu, '.1f')}"
                   + ("%" if self.mfu is not None else " (peak FLOP rate of this device unknown)"))
        if self.losses:
            out.append("loss: " + " → ".join(f"{v:.3f}" for _, v in (self.losses[0], self.losses[-1])))
        return out


def _clock(warmup: int):
    """A TrainerCallback that takes the time (after a device sync) at the end of the warm-up and of the last step,
    and the trainer's running count of real tokens (``num_tokens`` in its logs) at those steps."""
    from transformers import TrainerCallback

    def sync() -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            torch.mps.synchronize()

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: dict[int, float] = {}
            self.tokens: dict[int, float] = {}
            self.losses: list[tuple[int, float]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup or state.global_step == state.max_steps:
                sync()
                self.marks[state.global_step] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "num_tokens" in logs:
                self.tokens[state.global_step] = float(logs["num_tokens"])
            if "loss" in logs:
                self.losses.append((state.global_step, float(logs["loss"])))

    return Clock()


def run_bench(config: RunConfig, *, steps: int = 5, warmup: int = 2, workdir: str | Path | None = None) -> BenchResult:
    """Train ``warmup + steps`` optimizer steps of ``config`` into a temporary run folder (removed afterwards unless
    ``workdir`` is given) and measure the last ``steps``. Raises what :func:`run_training` raises."""
    from core.training.events import EventWriter
    from core.training.session import run_training

    if steps < 1 or warmup < 1:
        raise ValueError("bench needs at least one warm-up step and one timed step")
    cfg = copy.deepcopy(config)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sft-studio-bench-")
        workdir = tmp.name
    try:
        cfg.output_dir = str(Path(workdir) / "run")
        t = cfg.training
        t.max_steps = warmup + steps
        t.logging_steps = 1
        t.save_steps = max(t.save_steps, warmup + steps + 1)
        t.eval_steps = None
        t.probe_prompts = []
        t.report_to = []
        clock = _clock(warmup)
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        import io

        events = EventWriter(Path(cfg.output_dir) / "events.jsonl", stream=io.StringIO())  # kept off stdout
        try:
            result = run_training(cfg, events=events, callbacks=[clock])
        finally:
            events.close()
        peak = torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else None
    finally:
        if tmp is not None:
            tmp.cleanup()

    end = warmup + steps
    tps = spt = tokens_per_step = None
    if warmup in clock.marks and end in clock.marks and warmup in clock.tokens and end in clock.tokens:
        seconds = clock.marks[end] - clock.marks[warmup]
        tokens = clock.tokens[end] - clock.tokens[warmup]
        if seconds > 0:
            tps, spt, tokens_per_step = tokens / seconds, seconds / steps, tokens / steps
    est = result.memory_estimate
    estimate_gib = est.peak_allocated / GiB if est is not None else None
    params = est.params.total if est is not None else None
    device = result.device
    mfu = None
    if tps is not None and params and device is not None and device.kind == "cuda":
        rate = peak_flops(device.name)
        if rate:
            per_token = 4 if cfg.lora.enabled else 6
            mfu = tps * per_token * params / rate
    return BenchResult(
        device=device.describe() if device is not None else "unknown",
        steps_timed=steps, warmup_steps=warmup,
        tokens_per_second=None if tps is None else round(tps, 1),
        seconds_per_step=None if spt is None else round(spt, 4),
        tokens_per_step=None if tokens_per_step is None else round(tokens_per_step, 1),
        peak_memory_gib=None if peak is None else round(peak, 3),
        estimate_gib=None if estimate_gib is None else round(estimate_gib, 3),
        estimate_error=(round(estimate_gib / peak - 1, 4) if estimate_gib is not None and peak else None),
        mfu=None if mfu is None else round(mfu, 4), parameters=params,
        auto_choices=result.auto_choices, losses=clock.losses,
    )
