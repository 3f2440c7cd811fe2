"""Which device a run uses and at what precision. The GUI process must not initialise CUDA, so the app asks
this through a child process (``sft-studio`` commands run in one); core code may call it directly."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "cpu"
    name: str  # "NVIDIA H100 80GB HBM3", "Apple MPS", "CPU"
    total_memory: int | None  # bytes, None where unknown
    bf16: bool  # the device runs bfloat16 at full speed
    count: int = 1

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        mem = f", {self.total_memory / 2**30:.1f} GiB" if self.total_memory else ""
        many = f" ×{self.count}" if self.count > 1 else ""
        return f"{self.kind}: {self.name}{many}{mem}"


class DeviceError(Exception):
    """The requested device is not available here."""


def detect_device(preference: str = "auto") -> DeviceInfo:
    """The best available device (CUDA → MPS → CPU), or the one asked for; raises :class:`DeviceError` when
    the requested one is missing."""
    import torch

    if preference in ("auto", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, props.total_memory, torch.cuda.is_bf16_supported(), torch.cuda.device_count())
    if preference == "cuda":
        raise DeviceError("training.device is 'cuda' but no CUDA GPU is visible (torch.cuda.is_available() is False)")
    mps = getattr(torch.backends, "mps", None)
    if preference in ("auto", "mps") and mps is not None and mps.is_available():
        return DeviceInfo("mps", "Apple MPS", None, False)
    if preference == "mps":
        raise DeviceError("training.device is 'mps' but Apple's Metal backend is not available")
    import os

    return DeviceInfo("cpu", f"CPU ({os.cpu_count()} cores)", None, False)


def choose_precision(device: DeviceInfo, requested: str = "auto") -> str:
    """``bf16`` on CUDA GPUs that support it, otherwise ``fp32`` (fp16 only when asked: it needs loss scaling
    and breaks with 4-bit layers on older GPUs)."""
    if requested != "auto":
        if requested == "bf16" and not device.bf16 and device.kind == "cuda":
            raise DeviceError(f"training.precision is bf16 but {device.name} does not support bfloat16; use fp16 or auto")
        if requested in ("bf16", "fp16") and device.kind == "cpu":
            raise DeviceError(f"training.precision is {requested}, which this studio does not train with on the CPU; use fp32 or auto")
        return requested
    if device.kind == "cuda":
        return "bf16" if device.bf16 else "fp32"
    return "fp32"
