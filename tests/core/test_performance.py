"""Selection logic of the automatic settings on fake CUDA / MPS / CPU devices."""

from __future__ import annotations

import pytest
from tuning_setup import CPU, H100, LENGTHS, MPS, SMALL_GPU
from tuning_setup import lora_run_config as _cfg

from benchmarks.architectures import LLAMA_3_1_8B, QWEN2_5_0_5B
from core.training.devices import DeviceInfo
from core.training.performance import tuned_settings


def test_cuda_fast_path_big_gpu():
    t = tuned_settings(_cfg(), H100, model_config=LLAMA_3_1_8B, lengths=LENGTHS, flash_attn=False, liger=True)
    assert t.attn_implementation == "sdpa"
    assert t.sft_overrides["padding_free"] is True and t.sft_overrides["max_length"] is None
    assert t.sft_args["gradient_checkpointing"] is False  # fits on 80 GB without recomputation
    assert t.sft_args["use_liger_kernel"] is True
    assert t.memory is not None and t.memory.verdict == "fits"
    assert len(t.reasons) >= 4 and all(isinstance(r, str) for r in t.reasons)


def test_flash_attention_when_installed():
    t = tuned_settings(_cfg(), H100, model_config=LLAMA_3_1_8B, lengths=LENGTHS, flash_attn=True, liger=False)
    assert t.attn_implementation == "flash_attention_2"
    assert "use_liger_kernel" not in t.sft_args


def test_liger_skipped_for_small_models():
    t = tuned_settings(_cfg(), H100, model_config=QWEN2_5_0_5B, lengths=LENGTHS, flash_attn=False, liger=True)
    assert "use_liger_kernel" not in t.sft_args


def test_small_gpu_turns_on_checkpointing_and_splits_batch():
    t = tuned_settings(_cfg(per_device_train_batch_size=16), SMALL_GPU, model_config=LLAMA_3_1_8B, lengths=LENGTHS,
                       flash_attn=False, liger=False)
    assert t.sft_args["gradient_checkpointing"] is True
    # an 8B bf16 model does not fit 8 GB at all: micro-batch drops to 1 with the effective batch kept
    assert t.sft_overrides["per_device_train_batch_size"] == 1
    assert t.sft_overrides["gradient_accumulation_steps"] == 16
    assert any("memory warning" in r for r in t.reasons)


def test_qlora_checkpointing_on_and_fits_small_gpu():
    c = _cfg()
    c.model.load_in_4bit = True
    t = tuned_settings(c, SMALL_GPU, model_config=LLAMA_3_1_8B, lengths=LENGTHS, flash_attn=False, liger=False)
    assert t.sft_args["gradient_checkpointing"] is True
    assert t.memory.verdict in ("fits", "tight")


def test_run_file_values_are_respected():
    c = _cfg(gradient_checkpointing=True, packing=True)
    c.model.attn_implementation = "eager"
    t = tuned_settings(c, H100, model_config=QWEN2_5_0_5B, lengths=LENGTHS, flash_attn=True, liger=False)
    assert "gradient_checkpointing" not in t.sft_args
    assert t.attn_implementation is None
    assert "padding_free" not in t.sft_overrides  # packing already goes padding-free in TRL


def test_mps_rules():
    c = _cfg()
    c.model.load_in_4bit = True
    t = tuned_settings(c, MPS, model_config=QWEN2_5_0_5B, flash_attn=True, liger=True)
    assert t.attn_implementation == "sdpa"  # no flash-attn on Apple GPUs
    assert t.sft_args["dataloader_pin_memory"] is False
    assert "use_liger_kernel" not in t.sft_args and "padding_free" not in t.sft_overrides
    assert any("fp32" in r for r in t.reasons)
    assert any("4-bit" in r for r in t.reasons)


def test_cpu_defaults():
    t = tuned_settings(_cfg(), CPU, model_config=QWEN2_5_0_5B, flash_attn=True, liger=True)
    assert t.sft_args["gradient_checkpointing"] is False
    assert t.attn_implementation == "sdpa" and not t.sft_overrides


def test_unknown_architecture_is_conservative_on_cuda():
    c = _cfg()
    c.model.name_or_path = "/nonexistent/model-folder"
    t = tuned_settings(c, H100, flash_attn=False, liger=True)
    assert t.sft_args["gradient_checkpointing"] is True
    assert "use_liger_kernel" not in t.sft_args


def test_sft_kwargs_merge():
    t = tuned_settings(_cfg(), H100, model_config=QWEN2_5_0_5B, lengths=LENGTHS, flash_attn=False, liger=False)
    merged = t.sft_kwargs({"max_length": 1024, "per_device_train_batch_size": 8, "learning_rate": 1e-4})
    assert merged["max_length"] is None and merged["padding_free"] is True and merged["learning_rate"] == 1e-4


# --- long rows (issue 18.3): one row per micro-batch, 16k-128k tokens, Llama-3.1-8B LoRA -------------------------
H200 = DeviceInfo("cuda", "NVIDIA H200", int(139.8 * 2**30), True)
GPU_48GB = DeviceInfo("cuda", "NVIDIA L40S", 48 * 2**30, True)


def _long(length: int) -> object:
    c = _cfg(per_device_train_batch_size=1)
    c.lora.lora_alpha = 32
    c.data.max_length = length
    return c


# Peaks measured on an H200 on 2026-12-02 by benchmarks/long_context.py (one row, the automatic path; RESULTS.md)
_LONG_MEASURED = [(16384, 85.938), (32768, 35.269), (65536, 55.046), (131072, 94.601)]


@pytest.mark.parametrize("length, measured", _LONG_MEASURED, ids=[f"{n // 1024}k" for n, _ in _LONG_MEASURED])
def test_long_rows_choose_recomputation_and_are_estimated_within_15_percent(length, measured):
    t = tuned_settings(_long(length), H200, model_config=LLAMA_3_1_8B, lengths=[length], flash_attn=False,
                       liger=False, varlen=True, compile_ok=True)
    # one row per micro-batch: nothing to pad, so SDPA's causal kernel rather than the variable-length one
    assert t.attn_implementation == "sdpa"
    assert "padding_free" not in t.sft_overrides
    # 16k fits with every activation kept; from 32k on the compiled layers recompute (budget 0)
    assert (t.recompute_budget is None) == (length == 16384)
    assert "activation_offloading" not in t.sft_args  # recomputation alone fits on 140 GB
    assert t.memory.verdict == "fits"
    assert t.memory.peak_allocated / 2**30 == pytest.approx(measured, rel=0.15)


def test_a_row_that_does_not_fit_with_recomputation_offloads_activations_to_the_host():
    # 64k tokens on 48 GB: recomputation alone needs ~55 GiB; the layers' saved inputs (~15 GiB) go to host memory
    t = tuned_settings(_long(65536), GPU_48GB, model_config=LLAMA_3_1_8B, lengths=[65536], flash_attn=False,
                       liger=False, varlen=True, compile_ok=True)
    assert t.recompute_budget == 0.0
    assert t.sft_args["activation_offloading"] is True
    assert t.memory.verdict in ("fits", "tight")
    assert t.memory.assumptions["activation_offloading"] is True
    reason = next(r for r in t.reasons if r.startswith("activation offloading on"))
    assert "GiB of host RAM" in reason and "65,536 tokens" in reason
    # the same row on the H200 needs none, and a short-row run on the small GPU is not offloaded either
    assert "activation_offloading" not in tuned_settings(
        _long(65536), H200, model_config=LLAMA_3_1_8B, lengths=[65536], flash_attn=False, liger=False).sft_args


def test_batches_of_several_rows_keep_the_variable_length_kernel():
    t = tuned_settings(_cfg(per_device_train_batch_size=8), H200, model_config=LLAMA_3_1_8B, lengths=LENGTHS,
                       flash_attn=False, liger=False, varlen=True, compile_ok=True)
    assert t.attn_implementation == "sdpa_varlen"
    assert t.sft_overrides["padding_free"] is True


def test_offloading_estimate_moves_the_layer_inputs_to_the_host():
    from core.training.memory import estimate_memory

    kw = dict(model_config=LLAMA_3_1_8B, gradient_checkpointing=True, micro_batch=1, tokens=131072, attn="sdpa",
              compiled=True, recompute_budget=0.0, device_kind="cuda")
    kept = estimate_memory(_long(131072), **kw)
    off = estimate_memory(_long(131072), offload=True, **kw)
    layer_input = 2 * 4096 * 131072  # bf16 hidden state of one layer
    assert off.assumptions["offloaded_to_host_bytes"] == (32 - 2) * layer_input
    assert kept.peak_allocated - off.peak_allocated == (32 - 2) * layer_input


def test_offloading_warns_when_the_host_has_too_little_ram(monkeypatch):
    import core.training.performance as perf

    monkeypatch.setattr(perf, "host_memory_bytes", lambda: 16 * 2**30)  # 15 GiB to offload, 16 GiB of RAM
    t = tuned_settings(_long(65536), GPU_48GB, model_config=LLAMA_3_1_8B, lengths=[65536], flash_attn=False,
                       liger=False, varlen=True, compile_ok=True)
    reason = next(r for r in t.reasons if r.startswith("activation offloading on"))
    assert "memory warning" in reason and "16 GiB of RAM" in reason
    monkeypatch.setattr(perf, "host_memory_bytes", lambda: 256 * 2**30)
    t = tuned_settings(_long(65536), GPU_48GB, model_config=LLAMA_3_1_8B, lengths=[65536], flash_attn=False,
                       liger=False, varlen=True, compile_ok=True)
    assert "memory warning" not in next(r for r in t.reasons if r.startswith("activation offloading on"))
