"""Selection logic of the automatic settings on fake CUDA / MPS / CPU devices."""

from __future__ import annotations

from tuning_setup import CPU, H100, LENGTHS, MPS, SMALL_GPU
from tuning_setup import lora_run_config as _cfg

from benchmarks.architectures import LLAMA_3_1_8B, QWEN2_5_0_5B
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
