"""The memory estimate: exact parameter counts offline, and a breakdown that moves the right way."""

from __future__ import annotations

import pytest

from benchmarks.architectures import LLAMA_3_1_8B, QWEN2_5_0_5B
from core.config import RunConfig
from core.training.memory import (
    FITS,
    WONT_FIT,
    GiB,
    count_parameters,
    estimate_memory,
    load_model_config,
    worst_case_tokens,
)

TINY = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "tie_word_embeddings": True}


def _cfg(**training):
    c = RunConfig()
    c.lora.r, c.lora.lora_alpha, c.lora.lora_dropout = 16, 32, 0.0
    for k, v in training.items():
        setattr(c.training, k, v)
    return c


def test_counts_equal_a_real_tiny_model(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(load_model_config(TINY), dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    real = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    total = sum(p.numel() for p in real.parameters())
    peft = get_peft_model(real, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    counts = count_parameters(str(tmp_path / "m"), _cfg().lora)  # read from the folder's config.json
    assert (counts.total, counts.trainable) == (total, trainable)


def test_real_architecture_counts():
    lora = _cfg().lora
    qwen = count_parameters(QWEN2_5_0_5B, lora)
    llama = count_parameters(LLAMA_3_1_8B, lora)
    assert qwen.total == 494_032_768  # tied embeddings counted once
    assert llama.total == 8_030_261_248
    assert llama.trainable == 41_943_040  # r=16 on q,k,v,o,gate,up,down of 32 layers


def test_monotonic_in_batch_and_length():
    arch = QWEN2_5_0_5B
    sizes = [estimate_memory(_cfg(per_device_train_batch_size=b), model_config=arch).total for b in (1, 2, 4, 8)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    c = _cfg()
    lengths = []
    for n in (256, 512, 1024, 2048):
        c.data.max_length = n
        lengths.append(estimate_memory(c, model_config=arch).total)
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_checkpointing_reduces_activations():
    c = _cfg()
    off = estimate_memory(c, model_config=LLAMA_3_1_8B, gradient_checkpointing=False, tokens=2048)
    on = estimate_memory(c, model_config=LLAMA_3_1_8B, gradient_checkpointing=True, tokens=2048)
    assert on.activations < off.activations / 5
    assert on.weights == off.weights


def test_four_bit_shrinks_weights_about_4x():
    c = _cfg()
    full = estimate_memory(c, model_config=LLAMA_3_1_8B)
    c.model.load_in_4bit = True
    quant = estimate_memory(c, model_config=LLAMA_3_1_8B)
    linear_ratio = (full.params.linear * 2) / (quant.weights - (quant.params.total - quant.params.linear) * 2)
    assert 3.8 < linear_ratio < 4.0  # NF4 + double-quantised constants
    assert 2.5 < full.weights / quant.weights < 4.0  # embeddings and lm_head stay 16-bit
    assert quant.adapter == full.adapter // 2  # TRL casts adapters to bf16 on a 4-bit base


def test_measured_h100_points_within_15_percent():
    """Peaks measured on an H100 (benchmarks/RESULTS.md), max_memory_allocated; the estimate must stay within 15%."""
    cases = [  # arch, gc, micro-batch, tokens (largest micro-batch), trained tokens, padding_free, liger, measured GiB
        (QWEN2_5_0_5B, True, 8, 8192, 1085, False, False, 2.23),
        (LLAMA_3_1_8B, True, 8, 7448, 1085, False, False, 19.50),
        (LLAMA_3_1_8B, False, 8, 2638, 1700, True, True, 30.46),
        (LLAMA_3_1_8B, False, 8, 2638, 1700, True, False, 34.05),
        (LLAMA_3_1_8B, True, 8, 2638, 1700, True, True, 16.57),
        (LLAMA_3_1_8B, False, 4, 2048, 600, False, False, 29.89),
    ]
    for arch, gc, batch, tokens, trained, pf, liger, measured in cases:
        est = estimate_memory(_cfg(per_device_train_batch_size=batch), model_config=arch, gradient_checkpointing=gc,
                              tokens=tokens, trained_tokens=trained, padding_free=pf, liger=liger)
        assert abs(est.peak_allocated / GiB / measured - 1) < 0.15, (arch["model_type"], gc, tokens, est.lines())


def test_verdict_and_suggestions():
    c = _cfg(per_device_train_batch_size=8)
    est = estimate_memory(c, 24 * GiB, model_config=LLAMA_3_1_8B, gradient_checkpointing=False, tokens=8192)
    assert est.verdict == WONT_FIT
    assert 1 <= len(est.suggestions) <= 2
    assert any("gradient_checkpointing" in s or "load_in_4bit" in s for s in est.suggestions)
    small = estimate_memory(c, 80 * GiB, model_config=QWEN2_5_0_5B, tokens=2048)
    assert small.verdict == FITS and not small.suggestions
    assert "GiB" in small.summary()


def test_worst_case_tokens():
    lengths = [100] * 95 + [1000] * 5
    assert worst_case_tokens(lengths, 4, padding_free=True) <= 4000
    assert worst_case_tokens(lengths, 4, padding_free=False) >= 400
    assert worst_case_tokens([], 4, True) == 0


def test_unknown_model_raises():
    from core.training.memory import MemoryEstimateError

    with pytest.raises(MemoryEstimateError):
        load_model_config("/nonexistent/folder-xyz")
