"""Shared setup of the tests of the automatic speed/memory choices: fake devices, a row-length mix and a LoRA run
config (r=16, no dropout, like benchmarks/throughput.py)."""

from __future__ import annotations

from core.config import RunConfig
from core.training.devices import DeviceInfo

H100 = DeviceInfo("cuda", "NVIDIA H100", 80 * 2**30, True)
SMALL_GPU = DeviceInfo("cuda", "RTX 4060", 8 * 2**30, True)
MPS = DeviceInfo("mps", "Apple MPS", None, False)
CPU = DeviceInfo("cpu", "CPU", None, False)
LENGTHS = [200] * 900 + [1024] * 100  # tokens per row: mostly short, a tail at max_length


def lora_run_config(**training) -> RunConfig:
    """A LoRA run (r=16, dropout 0) with these ``training.*`` values."""
    c = RunConfig()
    c.lora.r, c.lora.lora_dropout = 16, 0.0
    for k, v in training.items():
        setattr(c.training, k, v)
    return c
