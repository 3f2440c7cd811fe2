"""The fast training path: the "sdpa_varlen" attention (checked against SDPA on CPU, where it runs the same contract
through its reference implementation), the automatic choices that turn it on (varlen attention, padding-free batches,
compiled decoder layers, LoRA input casts), the model preparation they apply, and the memory model of compiled
layers."""

from __future__ import annotations

import pytest
import torch
from tuning_setup import CPU, H100, LENGTHS, MPS
from tuning_setup import lora_run_config as _cfg

from benchmarks.architectures import LLAMA_3_1_8B, LLAMA_3_2_1B, QWEN2_5_0_5B
from core.training import attention
from core.training.devices import DeviceInfo
from core.training.memory import estimate_memory, load_model_config
from core.training.performance import (
    RECOMPUTE_BUDGET,
    LoraInputCasts,
    TunedSettings,
    compile_decoder_layers,
    decoder_layers,
    tuned_settings,
)

# a tiny Llama (GQA: 4 query heads over 2 key/value heads), as in benchmarks/throughput.py
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": False}
SEQ_LENS = (7, 12, 5)  # three rows of different lengths, packed into one padding-free row


# ------------------------------------------------------------------------------------------- the attention kernel


def _tiny_pair():
    """The same random weights twice: once with "sdpa_varlen", once with PyTorch SDPA (the reference)."""
    from transformers import AutoModelForCausalLM

    attention.register()
    torch.manual_seed(0)
    # one config object each: from_config keeps the object it is given and sets its attention implementation
    varlen = AutoModelForCausalLM.from_config(load_model_config(TINY), attn_implementation=attention.NAME,
                                              dtype=torch.float32)
    sdpa = AutoModelForCausalLM.from_config(load_model_config(TINY), attn_implementation="sdpa", dtype=torch.float32)
    sdpa.load_state_dict(varlen.state_dict())
    assert varlen.config._attn_implementation == attention.NAME and sdpa.config._attn_implementation == "sdpa"
    return varlen.eval(), sdpa.eval()


@pytest.fixture(scope="module")
def pair():
    return _tiny_pair()


def _sequences(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, TINY["vocab_size"], (n,), generator=g) for n in SEQ_LENS]


def _packed(seqs: list[torch.Tensor]) -> dict:
    """One padding-free row as TRL's collator builds it (position ids restart at each row, int32 boundaries)."""
    lens = torch.tensor([len(s) for s in seqs])
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    return {
        "input_ids": torch.cat(seqs)[None],
        "position_ids": torch.cat([torch.arange(len(s)) for s in seqs])[None],
        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
        "max_length_q": int(lens.max()), "max_length_k": int(lens.max()),
    }


def _separately(model, seqs: list[torch.Tensor]) -> torch.Tensor:
    """Logits of each row run on its own, concatenated along the sequence."""
    return torch.cat([model(input_ids=s[None]).logits[0] for s in seqs])


def test_register_is_idempotent_and_known_to_transformers():
    from transformers import AttentionInterface

    assert attention.register() == attention.NAME == attention.register()
    assert AttentionInterface._global_mapping[attention.NAME] is attention.varlen_attention_forward


def test_packed_rows_attend_only_within_their_own_row(pair):
    varlen, sdpa = pair
    seqs = _sequences()
    with torch.no_grad():
        reference = _separately(sdpa, seqs)
        packed = varlen(**_packed(seqs)).logits[0]
        torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)

        # the boundaries are what keeps the rows apart: without them rows 2 and 3 see the tokens before them
        batch = _packed(seqs)
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
            batch.pop(key)
        unbounded = varlen(**batch).logits[0]
    first = SEQ_LENS[0]
    torch.testing.assert_close(unbounded[:first], reference[:first], atol=1e-5, rtol=1e-5)  # row 1 sees nothing else
    assert (unbounded[first:] - reference[first:]).abs().max() > 1e-3


def test_left_padded_batch_and_generation_match_sdpa(pair):
    varlen, sdpa = pair
    seqs = _sequences(seed=2)[:2]  # 7 and 12 tokens
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):], mask[row, width - len(s):] = s, 1
    assert not bool(mask.all())  # a real padded batch
    with torch.no_grad():
        got = varlen(input_ids=ids, attention_mask=mask).logits
        want = sdpa(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
        # and the real positions are what each row gives on its own (the padding is really ignored)
        torch.testing.assert_close(got[real], _separately(sdpa, [seqs[0], seqs[1]]), atol=1e-5, rtol=1e-5)

        kw = {"do_sample": False, "max_new_tokens": 5, "pad_token_id": 0}
        out_varlen = varlen.generate(input_ids=ids, attention_mask=mask, **kw)
        out_sdpa = sdpa.generate(input_ids=ids, attention_mask=mask, **kw)
        assert out_varlen.shape == (2, width + 5)
        assert torch.equal(out_varlen, out_sdpa)

        # unpadded batch through the KV cache (one new query against the whole cache: bottom-right causal)
        same = torch.stack([seqs[1][:6], seqs[1][6:]])
        ones = torch.ones_like(same)
        assert torch.equal(varlen.generate(input_ids=same, attention_mask=ones, **kw),
                           sdpa.generate(input_ids=same, attention_mask=ones, **kw))


def test_packed_gradients_match_per_row_sdpa():
    varlen, sdpa = _tiny_pair()  # own copies: this test changes .grad
    varlen.train(), sdpa.train()  # attention_dropout is 0: no randomness
    seqs = _sequences(seed=3)

    def loss_of(logits_per_row: list[torch.Tensor]) -> torch.Tensor:
        # next-token loss inside each row (TRL masks the first label of each packed row)
        losses = [torch.nn.functional.cross_entropy(lg[:-1], s[1:], reduction="sum")
                  for lg, s in zip(logits_per_row, seqs, strict=True)]
        return torch.stack(losses).sum() / sum(len(s) - 1 for s in seqs)

    packed = varlen(**_packed(seqs)).logits[0]
    loss_varlen = loss_of(list(packed.split(list(SEQ_LENS))))
    loss_sdpa = loss_of([sdpa(input_ids=s[None]).logits[0] for s in seqs])
    loss_varlen.backward()
    loss_sdpa.backward()
    torch.testing.assert_close(loss_varlen, loss_sdpa, atol=1e-6, rtol=1e-5)
    grads_sdpa = dict(sdpa.named_parameters())
    checked = 0
    for name, p in varlen.named_parameters():
        ref = grads_sdpa[name].grad
        assert p.grad is not None and ref is not None, name
        torch.testing.assert_close(p.grad, ref, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        checked += 1
    assert checked == len(grads_sdpa)
    # the attention weights really receive gradient through the varlen path
    assert varlen.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_supports_model():
    assert attention.supports_model(load_model_config(LLAMA_3_1_8B))
    assert attention.supports_model(load_model_config(QWEN2_5_0_5B))  # qwen2's sliding window is off
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 300}
    assert not attention.supports_model(load_model_config({"model_type": "mistral", **small, "sliding_window": 4096}))
    assert attention.supports_model(load_model_config({"model_type": "mistral", **small, "sliding_window": None}))
    assert not attention.supports_model(load_model_config({"model_type": "gemma2", **small, "head_dim": 16}))
    assert not attention.supports_model(load_model_config({**LLAMA_3_1_8B, "attn_logit_softcapping": 50.0}))
    assert not attention.supports_model(load_model_config({**QWEN2_5_0_5B, "use_sliding_window": True,
                                                           "sliding_window": 4096, "max_window_layers": 12}))
    assert not attention.supports_model(load_model_config({**LLAMA_3_1_8B, "head_dim": 512}))
    assert attention.supports_model(load_model_config({**LLAMA_3_1_8B, "head_dim": 256}))


def test_kernel_never_claimed_off_cuda():
    assert not attention.kernel_available("cpu")
    assert not attention.kernel_available("mps")


def test_soft_capped_layer_refuses_instead_of_computing_wrong_attention():
    q = torch.zeros(1, 4, 3, 16)
    kv = torch.zeros(1, 2, 3, 16)
    with pytest.raises(NotImplementedError, match="sdpa"):
        attention.varlen_attention_forward(None, q, kv, kv, None, softcap=50.0)
    with pytest.raises(NotImplementedError):
        attention.varlen_attention_forward(None, q, kv, kv, None, sliding_window=2)


# -------------------------------------------------------------------------------------------- automatic choices


def _fast(config=None, device=H100, arch=LLAMA_3_1_8B, **kw):
    kw = {"lengths": LENGTHS, "flash_attn": False, "liger": True, "varlen": True, "compile_ok": True, **kw}
    return tuned_settings(config or _cfg(), device, model_config=arch, **kw)


def _reason(t, *words: str) -> str:
    hits = [r for r in t.reasons if all(w in r for w in words)]
    assert hits, f"no reason line with {words}: {t.reasons}"
    return hits[0]


def test_h100_fast_path_choices_each_with_a_reason():
    t = _fast()
    assert t.attn_implementation == attention.NAME
    _reason(t, "attention sdpa_varlen")
    assert t.sft_overrides["padding_free"] is True and t.sft_overrides["max_length"] is None
    _reason(t, "padding-free")
    assert t.compile_layers is True
    _reason(t, "torch.compile", "CUDA")
    assert "use_liger_kernel" not in t.sft_args  # installed and supported, but the compiled layers do that work
    _reason(t, "Liger kernels off", "compiled")
    assert not any(r.startswith("Liger kernels on") for r in t.reasons)
    assert t.skip_lora_input_casts is True
    _reason(t, "LoRA layers read bf16")
    assert t.sft_args["gradient_checkpointing"] is False
    _reason(t, "gradient checkpointing off")
    assert t.memory is not None and t.memory.verdict == "fits"


def test_flash_attn_package_wins_over_the_builtin_kernel():
    t = _fast(flash_attn=True)
    assert t.attn_implementation == "flash_attention_2"
    assert t.sft_overrides["padding_free"] is True


def test_no_varlen_kernel_falls_back_to_sdpa():
    t = _fast(varlen=False)
    assert t.attn_implementation == "sdpa"
    _reason(t, "attention sdpa", "not available")
    assert t.sft_overrides["padding_free"] is True  # SDPA keeps padding-free rows apart with a block mask


def test_unsupported_architecture_falls_back_to_sdpa():
    t = _fast(arch={**LLAMA_3_1_8B, "attn_logit_softcapping": 50.0})
    assert t.attn_implementation == "sdpa"
    _reason(t, "does not fit this model")


def test_run_file_attention_and_compile_are_respected():
    c = _cfg()
    c.model.attn_implementation = "sdpa"
    t = _fast(c)
    assert t.attn_implementation is None  # the session loads with the run file's value
    assert not any(r.startswith("attention ") for r in t.reasons)

    t = _fast(_cfg(torch_compile=False))
    assert t.compile_layers is False
    assert not any("torch.compile of the decoder layers" in r for r in t.reasons)
    assert t.sft_args.get("use_liger_kernel") is True  # no compiled layers: Liger does the fusing again
    assert t.attn_implementation == attention.NAME


def test_qlora_recomputes_inside_the_compiled_layers():
    """QLoRA asks for the smallest footprint: on CUDA the compiled layers recompute (fused, under a memory budget)
    instead of transformers' eager checkpointing, and the estimate assumes that budget."""
    c = _cfg()
    c.model.load_in_4bit = True
    t = _fast(c)
    assert t.compile_layers is True
    assert t.sft_args["gradient_checkpointing"] is False
    assert t.recompute_budget == RECOMPUTE_BUDGET
    assert t.estimate_kwargs["recompute_budget"] == RECOMPUTE_BUDGET
    assert t.estimate_kwargs["gradient_checkpointing"] is True
    assert t.memory.assumptions["recompute_budget"] == RECOMPUTE_BUDGET
    _reason(t, "activations recomputed inside the compiled decoder layers", "load_in_4bit")


def test_qlora_without_inductor_uses_gradient_checkpointing():
    c = _cfg()
    c.model.load_in_4bit = True
    t = _fast(c, compile_ok=False)
    assert t.compile_layers is False and t.recompute_budget is None
    assert t.sft_args["gradient_checkpointing"] is True
    _reason(t, "torch.compile of the decoder layers off", "Triton")


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero3"])
def test_sharded_runs_keep_eager_layers_and_transformers_checkpointing(strategy):
    c = _cfg()
    c.model.load_in_4bit = True
    c.distributed.num_processes, c.distributed.strategy = 2, strategy
    t = _fast(c)
    assert t.compile_layers is False and t.recompute_budget is None
    assert t.sft_args["gradient_checkpointing"] is True
    _reason(t, "torch.compile of the decoder layers off", strategy)
    c.distributed.strategy = "ddp"
    assert _fast(c).compile_layers is True


def test_run_file_checkpointing_is_transformers_checkpointing_without_compile():
    c = _cfg(gradient_checkpointing=True)
    c.model.load_in_4bit = True
    t = _fast(c)
    assert t.compile_layers is False and t.recompute_budget is None
    assert "gradient_checkpointing" not in t.sft_args  # the session passes the run file's own value
    _reason(t, "torch.compile of the decoder layers off", "asks for gradient checkpointing")


def test_compiled_recompute_costs_less_than_keeping_everything():
    from core.training.memory import estimate_memory

    c = _cfg()
    kw = dict(model_config=LLAMA_3_1_8B, micro_batch=8, tokens=8192, padding_free=True, compiled=True,
              attn="sdpa_varlen")
    keep = estimate_memory(c, **kw, gradient_checkpointing=False).activations
    eager = estimate_memory(c, **kw, gradient_checkpointing=True).activations
    fused = estimate_memory(c, **kw, gradient_checkpointing=True, recompute_budget=RECOMPUTE_BUDGET).activations
    assert eager <= fused < keep
    assert fused <= eager + RECOMPUTE_BUDGET * (keep - eager)
    half = estimate_memory(c, **kw, gradient_checkpointing=True, recompute_budget=0.5).activations
    assert fused <= half < keep


@pytest.mark.parametrize("device", [MPS, CPU], ids=["mps", "cpu"])
def test_no_varlen_and_no_compile_off_cuda(device):
    t = _fast(device=device)  # varlen=True must not be trusted off CUDA
    assert t.attn_implementation == "sdpa"
    assert t.compile_layers is False
    assert "padding_free" not in t.sft_overrides
    assert "use_liger_kernel" not in t.sft_args
    _reason(t, "torch.compile of the decoder layers off", "not a CUDA run")


def test_skip_lora_input_casts_only_for_bf16_lora():
    assert _fast(_cfg(precision="fp32")).skip_lora_input_casts is False
    c = _cfg()
    c.lora.enabled = False
    assert _fast(c).skip_lora_input_casts is False
    assert _fast(device=CPU).skip_lora_input_casts is False
    assert _fast(_cfg(precision="bf16"), device=MPS).skip_lora_input_casts is False  # CUDA only


def test_explicit_compile_with_checkpointing_warns_about_memory():
    t = _fast(_cfg(torch_compile=True, gradient_checkpointing=True), arch=QWEN2_5_0_5B)
    assert t.compile_layers is True
    assert "memory warning" in _reason(t, "torch_compile", "checkpointing")


# --------------------------------------------------------------------------------------------- model preparation


def _tiny_peft(dtype=torch.float32):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(load_model_config(TINY), attn_implementation="sdpa", dtype=dtype)
    # init_lora_weights=False: a non-zero lora_B, so the adapter path changes the output
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0,
                                           init_lora_weights=False, task_type="CAUSAL_LM"))


def _lora_layers(model) -> list:
    return [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "cast_input_dtype_enabled")]


def test_lora_input_casts_are_off_only_inside_training_steps_and_change_no_bf16_result():
    model = _tiny_peft(torch.bfloat16).eval()
    layers = _lora_layers(model)
    assert len(layers) == 7 * TINY["num_hidden_layers"]  # q k v o gate up down per layer (lm_head is excluded)
    assert layers[0].lora_A["default"].weight.dtype == torch.float32  # PEFT keeps the adapter in fp32
    ids = torch.randint(1, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits

    tuned = TunedSettings(skip_lora_input_casts=True)
    lines = tuned.prepare_model(model)
    assert len(lines) == 1 and lines[0].startswith(f"{len(layers)} LoRA layers")
    assert all(m.cast_input_dtype_enabled is True for m in layers)  # untouched outside a training step
    with tuned.training_step_context():
        assert all(m.cast_input_dtype_enabled is False for m in layers)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            inside = model(input_ids=ids).logits
    assert all(m.cast_input_dtype_enabled is True for m in layers)
    assert torch.equal(before, inside)  # bit-identical: autocast casts the fp32 adapter weights instead

    # outside autocast (probe prompts at a checkpoint) the cast is still there: a bf16 input meets fp32 weights
    with torch.no_grad():
        out = model.generate(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=3,
                             do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)


def test_lora_input_casts_come_back_after_a_failed_step():
    model = _tiny_peft(torch.bfloat16)
    casts = LoraInputCasts(model)
    assert casts.layers
    with pytest.raises(RuntimeError, match="step failed"), casts:
        assert all(m.cast_input_dtype_enabled is False for m in casts.layers)
        raise RuntimeError("step failed")
    assert all(m.cast_input_dtype_enabled is True for m in casts.layers)


def test_prepare_model_does_nothing_when_not_asked():
    model = _tiny_peft()
    tuned = TunedSettings()
    assert tuned.prepare_model(model) == []
    with tuned.training_step_context():
        assert all(m.cast_input_dtype_enabled is True for m in _lora_layers(model))


def test_decoder_layers_found_through_the_peft_wrapper():
    model = _tiny_peft()
    layers = decoder_layers(model)
    assert isinstance(layers, torch.nn.ModuleList) and len(layers) == TINY["num_hidden_layers"]
    assert layers is model.base_model.model.model.layers
    assert decoder_layers(torch.nn.Linear(2, 2)) is None


def test_compile_decoder_layers_keeps_the_results():
    model = _tiny_peft().eval()
    ids = torch.randint(1, TINY["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert compile_decoder_layers(model) == TINY["num_hidden_layers"]
    layers = decoder_layers(model)
    assert all(layer._compiled_call_impl is not None for layer in layers)  # nn.Module.compile in place
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            after = model(input_ids=ids).logits
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_compiled_recompute_keeps_less_for_the_backward_and_the_same_gradients():
    """What the studio does when a run must recompute (QLoRA, or a run that would not fit): the compiled layers keep
    about half of what eager layers keep for the backward, and the gradients do not change."""
    import torch._functorch.config as functorch_config

    ids = torch.randint(1, TINY["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(3))

    def step(recompute: bool):
        torch.manual_seed(0)
        model = _tiny_peft()
        if recompute:
            compile_decoder_layers(model, recompute_budget=RECOMPUTE_BUDGET)
        kept = [0]

        def pack(t):
            kept[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss.detach(), grads, kept[0]

    budget = functorch_config.activation_memory_budget
    torch._dynamo.reset()
    try:
        eager_loss, eager_grads, eager_kept = step(False)
        loss, grads, kept = step(True)
        assert functorch_config.activation_memory_budget == RECOMPUTE_BUDGET
    finally:
        functorch_config.activation_memory_budget = budget
        torch._dynamo.reset()
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads, eager_grads, atol=1e-5, rtol=1e-4)
    assert kept < 0.7 * eager_kept


# ---------------------------------------------------------------------------------------------------- memory


def test_compiled_layers_keep_liger_sized_activations():
    c = _cfg()
    common = {"model_config": LLAMA_3_1_8B, "gradient_checkpointing": False, "tokens": 4096, "padding_free": True,
              "attn": attention.NAME}
    plain = estimate_memory(c, 80 * 2**30, **common)
    compiled = estimate_memory(c, 80 * 2**30, compiled=True, **common)
    liger = estimate_memory(c, 80 * 2**30, liger=True, **common)
    assert compiled.activations < plain.activations
    assert compiled.activations == liger.activations
    assert compiled.weights == plain.weights and compiled.total < plain.total


def test_a_run_that_needs_recomputation_keeps_its_compiled_layers() -> None:
    # a 24 GiB card: the 8B must recompute activations; the compiled layers do it (Liger stays off), and without a
    # working inductor it is transformers' checkpointing with Liger's kernels back on
    from core.training.devices import DeviceInfo
    from core.training.performance import tuned_settings

    small = DeviceInfo("cuda", "NVIDIA GeForce RTX 4090", 24 * 2**30, True)
    lengths = [200] * 900 + [1024] * 100
    t = tuned_settings(_cfg(), small, model_config=LLAMA_3_1_8B, lengths=lengths, flash_attn=False, liger=True,
                       varlen=True, compile_ok=True)
    assert t.sft_args["gradient_checkpointing"] is False and t.recompute_budget is not None
    assert t.compile_layers is True
    assert "use_liger_kernel" not in t.sft_args
    _reason(t, "activations recomputed inside the compiled decoder layers", "does not fit")
    eager = tuned_settings(_cfg(), small, model_config=LLAMA_3_1_8B, lengths=lengths, flash_attn=False, liger=True,
                           varlen=True, compile_ok=False)
    assert eager.sft_args["gradient_checkpointing"] is True and eager.compile_layers is False
    assert eager.sft_args.get("use_liger_kernel") is True
    assert any(r.startswith("Liger kernels on") for r in eager.reasons)
    assert not any(r.startswith("Liger kernels off") for r in eager.reasons)


def test_the_estimate_kwargs_are_those_of_the_chosen_settings() -> None:
    # the fit check (sft-studio probe) re-estimates with these: they must describe what training will do
    from core.training.devices import DeviceInfo
    from core.training.performance import tuned_settings

    small = DeviceInfo("cuda", "NVIDIA GeForce RTX 4090", 24 * 2**30, True)
    t = tuned_settings(_cfg(), small, model_config=LLAMA_3_1_8B, lengths=[200] * 900 + [1024] * 100,
                       flash_attn=False, liger=True, varlen=True, compile_ok=True)
    assert t.estimate_kwargs["gradient_checkpointing"] is True  # the settled choice, not the rejected try
    assert t.estimate_kwargs["recompute_budget"] is not None
    again = estimate_memory(_cfg(), small.total_memory, suggest=False, **t.estimate_kwargs)
    assert again.peak_allocated == t.memory.peak_allocated
    big = tuned_settings(_cfg(), H100, model_config=LLAMA_3_1_8B, lengths=[200] * 1000, flash_attn=False,
                         liger=True, varlen=True, compile_ok=True)
    assert big.estimate_kwargs["gradient_checkpointing"] is False and big.estimate_kwargs["compiled"] is True
    assert big.estimate_kwargs["attn"] == "sdpa_varlen" and big.estimate_kwargs["padding_free"] is True


def test_fit_check_on_a_gpu_estimates_the_settings_training_will_use(tmp_path, monkeypatch, tiny_model_factory):
    import yaml

    import core.probe
    import core.training.devices

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_factory("qwen2_5"))},
                                    "training": {"per_device_train_batch_size": 8}}))
    monkeypatch.setattr(core.training.devices, "detect_device", lambda preference="auto": H100)
    monkeypatch.setattr(attention, "kernel_available", lambda kind, capability=None: True)
    out = core.probe.probe(str(path))
    est = out["estimate"]
    assert out["errors"] == {}
    assert est["assumptions"]["padding_free"] is True and est["assumptions"]["attn"] == "sdpa_varlen"
    assert any(line.startswith("attention sdpa_varlen") for line in est["auto_choices"])
    monkeypatch.setattr(core.training.devices, "detect_device",
                        lambda preference="auto": DeviceInfo("cpu", "CPU", None, False))
    cpu = core.probe.probe(str(path))["estimate"]
    assert cpu["auto_choices"] == [] and cpu["assumptions"]["padding_free"] is False


# Peaks measured on an H100 (benchmarks/RESULTS.md, raw files 2026-11-23/24) for runs that recompute activations:
# (label, architecture, 4-bit, estimate_memory arguments, measured max_memory_allocated in GiB)
_RECOMPUTE_MEASURED = [
    ("0.5B b32, transformers' checkpointing", QWEN2_5_0_5B, False, {}, 1.894),
    ("0.5B b32, compiled recompute", QWEN2_5_0_5B, False, {"compiled": True, "recompute_budget": 0.0}, 2.300),
    ("1B QLoRA, checkpointing + Liger", LLAMA_3_2_1B, True, {"liger": True, "tokens": 2879, "micro_batch": 8}, 1.555),
    ("1B QLoRA, checkpointing", LLAMA_3_2_1B, True, {"tokens": 2879, "micro_batch": 8}, 1.630),
    ("8B QLoRA, checkpointing + Liger", LLAMA_3_1_8B, True, {"liger": True, "tokens": 2638, "micro_batch": 8}, 6.658),
    ("8B QLoRA, compiled recompute", LLAMA_3_1_8B, True,
     {"compiled": True, "recompute_budget": 0.0, "tokens": 2879, "micro_batch": 8}, 7.098),
    ("8B LoRA b8, compiled recompute", LLAMA_3_1_8B, False,
     {"compiled": True, "recompute_budget": 0.0, "tokens": 2638, "micro_batch": 8}, 16.820),
]


@pytest.mark.parametrize("label, arch, four_bit, kw, measured", _RECOMPUTE_MEASURED,
                         ids=[m[0] for m in _RECOMPUTE_MEASURED])
def test_recomputing_runs_are_estimated_within_15_percent_of_h100_peaks(label, arch, four_bit, kw, measured):
    c = _cfg()
    c.lora.lora_alpha = 32
    c.model.load_in_4bit = four_bit
    args = {"micro_batch": 32, "tokens": 7829, "padding_free": True, "attn": attention.NAME, **kw}
    est = estimate_memory(c, model_config=arch, gradient_checkpointing=True, device_kind="cuda", **args)
    assert est.peak_allocated / 2**30 == pytest.approx(measured, rel=0.15), label
